"""Unit tier: streaming readers + `conform_batch` on small files in tmp_path (no DB, no Dagster).

Batches are conformed the way the ingestion service does it: `first_row` starts at 1 and advances by
each batch's row count.
"""

import dataclasses
import gzip
import json
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dw_pipelines.core.contracts import (
    ContractRegistry,
    CsvOptions,
    DatasetContract,
    load_contract_file,
)
from dw_pipelines.core.errors import ContractViolation, SourceError
from dw_pipelines.core.readers import SourceFile, open_source, read_batches
from dw_pipelines.core.validation import conform_batch
from dw_pipelines.settings import SAMPLES_DIR, SHIPPED_DATASETS_DIR

ORDERS_HEADER = "order_id,customer_id,order_date,amount,currency,status,is_gift,created_at,note"

EVERY_TYPE_YAML = """\
name: every_type
write_mode: append
primary_key: [id]
columns:
  - {name: id, type: int64, nullable: false}
  - {name: label, type: string}
  - {name: score, type: float64}
  - {name: flag, type: bool}
  - {name: day, type: date}
  - {name: seen_at, type: timestamp}
  - {name: price, type: "decimal(10,3)", nullable: false}
  - {name: code, type: string, nullable: false}
"""
EVERY_TYPE_HEADER = "id,label,score,flag,day,seen_at,price,code"


@pytest.fixture(scope="module")
def orders() -> DatasetContract:
    return load_contract_file(SHIPPED_DATASETS_DIR / "orders.yaml")


@pytest.fixture
def every_type(tmp_path: Path) -> DatasetContract:
    path = tmp_path / "contracts" / "every_type.yaml"
    path.parent.mkdir()
    path.write_text(EVERY_TYPE_YAML, encoding="utf-8")
    return load_contract_file(path)


def order_line(order_id: int = 1, /, **values: str) -> str:
    row = {
        "order_id": str(order_id),
        "customer_id": "7",
        "order_date": "2024-01-02",
        "amount": "19.99",
        "currency": "EUR",
        "status": "paid",
        "is_gift": "",
        "created_at": "2024-01-02T08:00:00Z",
        "note": "",
    }
    row.update(values)
    return ",".join(row.values())


def write_csv(tmp_path: Path, lines: list[str], name: str = "orders.csv") -> Path:
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def order_record(order_id: object = 1, /, **values: object) -> dict:
    record = {
        "order_id": order_id,
        "customer_id": 7,
        "order_date": "2024-01-02",
        "amount": 19.99,
        "currency": "EUR",
        "status": "paid",
        "is_gift": None,
        "created_at": "2024-01-02T08:00:00Z",
        "note": None,
    }
    record.update(values)
    return record


def write_jsonl(tmp_path: Path, lines: list[object], name: str = "orders.jsonl") -> Path:
    path = tmp_path / name
    text = "\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines)
    path.write_text(text + "\n", encoding="utf-8")
    return path


def load(
    path: Path, fmt: str, contract: DatasetContract, batch_rows: int = 1000
) -> tuple[list[pa.RecordBatch], list[int]]:
    """Read and conform every batch; returns the batches and the first_row used for each."""
    source = open_source(path, fmt)
    batches, first_rows = [], []
    first_row = 1
    for raw in read_batches(source, contract, batch_rows):
        batch = conform_batch(raw, contract, source, first_row)
        batches.append(batch)
        first_rows.append(first_row)
        first_row += batch.num_rows
    return batches, first_rows


def rows(path: Path, fmt: str, contract: DatasetContract, batch_rows: int = 1000) -> list[dict]:
    batches, _ = load(path, fmt, contract, batch_rows)
    return [row for batch in batches for row in batch.to_pylist()]


def violation(
    path: Path, fmt: str, contract: DatasetContract, batch_rows: int = 1000
) -> ContractViolation:
    with pytest.raises(ContractViolation) as caught:
        load(path, fmt, contract, batch_rows)
    assert caught.value.source == path.name
    assert str(caught.value).startswith(path.name)
    return caught.value


# --- sources -------------------------------------------------------------------------------------


def test_open_source_records_size_and_name(tmp_path: Path) -> None:
    path = write_csv(tmp_path, [ORDERS_HEADER, order_line()])
    source = open_source(path, "csv")
    assert source.size_bytes == path.stat().st_size > 0
    assert source.name == "orders.csv"
    assert source.format == "csv"


def test_open_source_missing_file_is_source_error(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="cannot read") as caught:
        open_source(tmp_path / "gone.csv", "csv")
    assert "gone.csv" in str(caught.value)


@pytest.mark.parametrize(
    ("fmt", "text", "line"),
    [
        ("csv", "a\n1\n2\n3\n4\n", 5),
        ("csv", 'a\n1\n"two\nlines"\n3\n4\n', 6),  # a quoted value spanning lines
        ("jsonl", '{"a": 1}\n{"a": 2}\n{"a": 3}\n{"a": 4}\n', 4),
        ("parquet", "", None),
    ],
)
def test_line_of_row(tmp_path: Path, fmt: str, text: str, line: int | None) -> None:
    path = tmp_path / f"x.{fmt}"
    path.write_text(text)
    assert SourceFile(path, fmt, 0).line_of_row(4) == line


def test_unsupported_format_is_source_error(tmp_path: Path, orders: DatasetContract) -> None:
    path = write_csv(tmp_path, [ORDERS_HEADER])
    with pytest.raises(SourceError, match="unsupported format 'xml'"):
        list(read_batches(SourceFile(path, "xml", 1), orders, 10))


# --- CSV: good files -----------------------------------------------------------------------------


def test_csv_every_type_exact_values(tmp_path: Path, every_type: DatasetContract) -> None:
    path = write_csv(
        tmp_path,
        [
            EVERY_TYPE_HEADER,
            '1,Größe ✓ 김민준,1.5,true,2024-02-29,2024-03-01T10:00:00+02:00,12.345,""',
            "2,,,false,,2024-03-01 10:00:00,0.5,B",
            '3,"",-2e3,TRUE, 2024-01-01 ,2024-03-01T23:59:59.123456Z,-7,"a, ""quoted"" b"',
        ],
        name="every_type.csv",
    )
    (batch,), _ = load(path, "csv", every_type)
    assert batch.schema == every_type.arrow_schema
    assert batch.to_pylist() == [
        {
            "id": 1,
            "label": "Größe ✓ 김민준",
            "score": 1.5,
            "flag": True,
            "day": date(2024, 2, 29),
            "seen_at": datetime(2024, 3, 1, 8, 0, tzinfo=UTC),  # +02:00 converted to UTC
            "price": Decimal("12.345"),
            "code": "",  # quoted empty string stays a string, even in a non-nullable column
        },
        {
            "id": 2,
            "label": None,  # unquoted empty field is NULL
            "score": None,
            "flag": False,
            "day": None,
            "seen_at": datetime(2024, 3, 1, 10, 0, tzinfo=UTC),  # naive read as UTC
            "price": Decimal("0.500"),
            "code": "B",
        },
        {
            "id": 3,
            "label": "",
            "score": -2000.0,
            "flag": True,
            "day": date(2024, 1, 1),  # blanks around non-string values are trimmed
            "seen_at": datetime(2024, 3, 1, 23, 59, 59, 123456, tzinfo=UTC),
            "price": Decimal("-7.000"),
            "code": 'a, "quoted" b',
        },
    ]


def test_csv_orders_values(tmp_path: Path, orders: DatasetContract) -> None:
    path = write_csv(
        tmp_path,
        [
            ORDERS_HEADER,
            order_line(1, amount="250.5", is_gift="true", note='"gift wrap, red"'),
            order_line(2, is_gift="0", created_at="2024-01-02T10:45:00-01:30", note='""'),
        ],
    )
    first, second = rows(path, "csv", orders)
    assert first["amount"] == Decimal("250.50")
    assert first["is_gift"] is True
    assert first["note"] == "gift wrap, red"
    assert first["order_date"] == date(2024, 1, 2)
    assert second["is_gift"] is False
    assert second["created_at"] == datetime(2024, 1, 2, 12, 15, tzinfo=UTC)
    assert second["note"] == ""


def test_csv_batches_continue_row_numbering(tmp_path: Path, orders: DatasetContract) -> None:
    path = write_csv(tmp_path, [ORDERS_HEADER, *(order_line(i) for i in range(1, 6))])
    batches, first_rows = load(path, "csv", orders, batch_rows=2)
    assert [b.num_rows for b in batches] == [2, 2, 1]
    assert first_rows == [1, 3, 5]
    assert [r["order_id"] for b in batches for r in b.to_pylist()] == [1, 2, 3, 4, 5]


def test_csv_header_only_yields_no_rows(tmp_path: Path, orders: DatasetContract) -> None:
    assert rows(write_csv(tmp_path, [ORDERS_HEADER]), "csv", orders) == []


def test_csv_gz_is_decompressed(tmp_path: Path, orders: DatasetContract) -> None:
    path = tmp_path / "orders.csv.gz"
    text = "\n".join([ORDERS_HEADER, order_line(1), order_line(2, amount="3.1")]) + "\n"
    path.write_bytes(gzip.compress(text.encode("utf-8")))
    result = rows(path, "csv", orders)
    assert [r["order_id"] for r in result] == [1, 2]
    assert result[1]["amount"] == Decimal("3.10")


def test_csv_columns_in_other_order_are_selected_by_name(
    tmp_path: Path, orders: DatasetContract
) -> None:
    names = ORDERS_HEADER.split(",")
    values = order_line(42, note="hi").split(",")
    path = write_csv(tmp_path, [",".join(reversed(names)), ",".join(reversed(values))])
    (row,) = rows(path, "csv", orders)
    assert row["order_id"] == 42
    assert row["note"] == "hi"
    assert list(row) == names


def test_csv_declared_encoding_and_delimiter(tmp_path: Path, orders: DatasetContract) -> None:
    contract = dataclasses.replace(orders, csv=CsvOptions(delimiter=";", encoding="latin-1"))
    path = tmp_path / "orders.csv"
    lines = [ORDERS_HEADER.replace(",", ";"), order_line(1, note="Größe").replace(",", ";")]
    path.write_bytes(("\n".join(lines) + "\n").encode("latin-1"))
    (row,) = rows(path, "csv", contract)
    assert row["note"] == "Größe"


def test_csv_custom_null_values(tmp_path: Path, orders: DatasetContract) -> None:
    contract = dataclasses.replace(orders, csv=CsvOptions(null_values=("", "NULL")))
    path = write_csv(tmp_path, [ORDERS_HEADER, order_line(1, note="NULL", is_gift="NULL")])
    (row,) = rows(path, "csv", contract)
    assert row["note"] is None
    assert row["is_gift"] is None


# --- CSV: errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bad_row", "values", "column", "message"),
    [
        (4, {"customer_id": "abc"}, "customer_id", "value 'abc' is not a valid int64"),
        (1, {"amount": "12.345"}, "amount", "value '12.345' is not a valid decimal(12,2)"),
        (2, {"amount": "twelve"}, "amount", "value 'twelve' is not a valid decimal(12,2)"),
        (3, {"currency": ""}, "currency", "is empty but the column is not nullable"),
        (5, {"order_date": "2024-02-30"}, "order_date", "value '2024-02-30' is not a valid date"),
        (2, {"is_gift": "maybe"}, "is_gift", "value 'maybe' is not a valid bool"),
        (1, {"created_at": "noon"}, "created_at", "value 'noon' is not a valid timestamp"),
        (3, {"order_id": "1.5"}, "order_id", "value '1.5' is not a valid int64"),
        (4, {"order_id": "99999999999999999999"}, "order_id", "is not a valid int64"),
    ],
)
def test_csv_bad_value_is_located(
    tmp_path: Path,
    orders: DatasetContract,
    bad_row: int,
    values: dict,
    column: str,
    message: str,
) -> None:
    data = [order_line(i, **(values if i == bad_row else {})) for i in range(1, 6)]
    path = write_csv(tmp_path, [ORDERS_HEADER, *data])
    error = violation(path, "csv", orders)
    assert error.row == bad_row
    assert error.line == bad_row + 1
    assert error.column == column
    assert message in str(error)
    assert f"line {bad_row + 1}, row {bad_row}, column '{column}'" in str(error)


def test_csv_bad_int_on_row_4_is_line_5(tmp_path: Path, orders: DatasetContract) -> None:
    data = [order_line(i, customer_id="x7" if i == 4 else "7") for i in range(1, 6)]
    error = violation(write_csv(tmp_path, [ORDERS_HEADER, *data]), "csv", orders)
    assert (error.line, error.row, error.column) == (5, 4, "customer_id")
    assert str(error) == (
        "orders.csv, line 5, row 4, column 'customer_id': value 'x7' is not a valid int64"
    )


@pytest.mark.parametrize(
    ("bad_row", "values", "column"),
    [
        (6, {"is_gift": "maybe"}, "is_gift"),
        (5, {"status": ""}, "status"),
        (7, {"amount": "1e"}, "amount"),
    ],
)
def test_csv_error_in_later_batch_has_absolute_row(
    tmp_path: Path, orders: DatasetContract, bad_row: int, values: dict, column: str
) -> None:
    data = [order_line(i, **(values if i == bad_row else {})) for i in range(1, 8)]
    error = violation(write_csv(tmp_path, [ORDERS_HEADER, *data]), "csv", orders, batch_rows=2)
    assert error.row == bad_row
    assert error.line == bad_row + 1
    assert error.column == column


@pytest.mark.parametrize(
    ("header", "row", "detail"),
    [
        (
            ORDERS_HEADER.removesuffix(",note"),
            order_line(1).removesuffix(","),
            "missing column(s) 'note'",
        ),
        (ORDERS_HEADER.replace("amount", "amt"), order_line(1), "missing column(s) 'amount'"),
        (ORDERS_HEADER + ",discount", order_line(1) + ",5", "unexpected column(s) 'discount'"),
        (ORDERS_HEADER + ",note", order_line(1) + ",x", "column(s) 'note' appear more than once"),
    ],
    ids=["missing", "renamed", "unexpected", "duplicated"],
)
def test_csv_header_mismatch(
    tmp_path: Path, orders: DatasetContract, header: str, row: str, detail: str
) -> None:
    path = write_csv(tmp_path, [header, row])
    error = violation(path, "csv", orders)
    assert error.line == 1
    assert error.row is None
    assert error.column is None
    assert detail in str(error)
    assert str(error).startswith("orders.csv, line 1: ")


def test_csv_wrong_delimiter_contract(tmp_path: Path, orders: DatasetContract) -> None:
    contract = dataclasses.replace(orders, csv=CsvOptions(delimiter=";"))
    error = violation(write_csv(tmp_path, [ORDERS_HEADER, order_line(1)]), "csv", contract)
    assert error.line == 1
    assert "missing column(s) 'order_id', 'customer_id'" in str(error)
    assert f"the file has '{ORDERS_HEADER}'" in str(error)


@pytest.mark.parametrize(
    ("extra", "found"), [(",surplus", 10), (None, 3)], ids=["too-many", "too-few"]
)
def test_csv_row_with_wrong_field_count(
    tmp_path: Path, orders: DatasetContract, extra: str | None, found: int
) -> None:
    bad = order_line(2) + extra if extra else "2,7,2024-01-02"
    path = write_csv(tmp_path, [ORDERS_HEADER, order_line(1), bad, order_line(3)])
    error = violation(path, "csv", orders)
    assert f"expected 9 fields, found {found}" in str(error)
    assert repr(bad) in str(error)


def test_csv_row_with_too_many_fields_reports_line(tmp_path: Path, orders: DatasetContract) -> None:
    path = write_csv(tmp_path, [ORDERS_HEADER, order_line(1), order_line(2) + ",surplus"])
    error = violation(path, "csv", orders)
    assert error.line == 3
    assert error.row == 2


def test_csv_line_number_after_blank_line(tmp_path: Path, orders: DatasetContract) -> None:
    path = write_csv(
        tmp_path, [ORDERS_HEADER, order_line(1), "", order_line(2), order_line(3, customer_id="x")]
    )
    error = violation(path, "csv", orders)
    assert error.row == 3
    assert error.line == 5


def test_csv_latin1_declared_utf8(tmp_path: Path, orders: DatasetContract) -> None:
    path = tmp_path / "latin1.csv"
    text = "\n".join([ORDERS_HEADER, order_line(1, note="Größe")]) + "\n"
    path.write_bytes(text.encode("latin-1"))
    with pytest.raises(ContractViolation) as caught:
        load(path, "csv", orders)
    error = caught.value
    assert (error.line, error.row, error.column) == (2, 1, "note")
    assert str(error).startswith("latin1.csv, line 2, row 1, column 'note': not valid utf-8 text")


def test_csv_empty_file(tmp_path: Path, orders: DatasetContract) -> None:
    path = tmp_path / "empty.csv"
    path.write_bytes(b"")
    with pytest.raises(SourceError, match=r"empty\.csv: the file is empty \(0 bytes\)"):
        load(path, "csv", orders)


# --- JSONL ---------------------------------------------------------------------------------------


def test_jsonl_good_file(tmp_path: Path, orders: DatasetContract) -> None:
    path = write_jsonl(
        tmp_path,
        [
            order_record(1, amount=42.5, is_gift=True, note="첫 주문"),
            order_record(2, amount="13.37", created_at="2024-01-02T08:30:00+09:00", note=""),
            order_record(3, amount=7, created_at="2024-01-02 08:30:00"),
        ],
    )
    first, second, third = rows(path, "jsonl", orders)
    assert first["amount"] == Decimal("42.50")  # decimal given as a JSON number
    assert second["amount"] == Decimal("13.37")  # decimal given as a string
    assert third["amount"] == Decimal("7.00")
    assert first["is_gift"] is True
    assert second["is_gift"] is None
    assert first["note"] == "첫 주문"
    assert second["note"] == ""
    assert third["note"] is None
    assert first["order_date"] == date(2024, 1, 2)
    assert second["created_at"] == datetime(2024, 1, 1, 23, 30, tzinfo=UTC)
    assert third["created_at"] == datetime(2024, 1, 2, 8, 30, tzinfo=UTC)


def test_jsonl_batches(tmp_path: Path, orders: DatasetContract) -> None:
    path = write_jsonl(tmp_path, [order_record(i) for i in range(1, 6)])
    batches, first_rows = load(path, "jsonl", orders, batch_rows=2)
    assert [b.num_rows for b in batches] == [2, 2, 1]
    assert first_rows == [1, 3, 5]


def test_jsonl_every_type(tmp_path: Path, every_type: DatasetContract) -> None:
    record = {
        "id": 1,
        "label": None,
        "score": 2,
        "flag": False,
        "day": "2024-02-29",
        "seen_at": "2024-03-01T10:00:00+02:00",
        "price": "12.345",
        "code": "",
    }
    (row,) = rows(write_jsonl(tmp_path, [record], name="every_type.jsonl"), "jsonl", every_type)
    assert row == {
        **record,
        "score": 2.0,
        "day": date(2024, 2, 29),
        "seen_at": datetime(2024, 3, 1, 8, 0, tzinfo=UTC),
        "price": Decimal("12.345"),
    }


def test_jsonl_string_in_int_field_on_line_3(tmp_path: Path, orders: DatasetContract) -> None:
    path = write_jsonl(tmp_path, [order_record(1), order_record(2), order_record("three")])
    error = violation(path, "jsonl", orders)
    assert (error.line, error.row, error.column) == (3, 3, "order_id")
    assert "value 'three' is not a valid int64" in str(error)


@pytest.mark.parametrize(
    ("record", "column", "message"),
    [
        (order_record(2, order_id=2.5), "order_id", "value 2.5 is not a valid int64"),
        (order_record(2, is_gift="yes"), "is_gift", "value 'yes' is not a valid bool"),
        (order_record(2, currency=5), "currency", "value 5 is not a valid string"),
        (order_record(2, order_date="2024-13-01"), "order_date", "is not a valid date"),
        (order_record(2, created_at=None), "created_at", "is empty but the column is not"),
        (
            {k: v for k, v in order_record(2).items() if k != "status"},
            "status",
            "is empty but the column is not nullable",
        ),
    ],
)
def test_jsonl_bad_value_on_line_2(
    tmp_path: Path, orders: DatasetContract, record: dict, column: str, message: str
) -> None:
    error = violation(write_jsonl(tmp_path, [order_record(1), record]), "jsonl", orders)
    assert (error.line, error.row, error.column) == (2, 2, column)
    assert message in str(error)


def test_jsonl_invalid_json_on_line_2(tmp_path: Path, orders: DatasetContract) -> None:
    path = write_jsonl(tmp_path, [order_record(1), '{"order_id": 2,', order_record(3)])
    error = violation(path, "jsonl", orders)
    assert (error.line, error.row) == (2, 2)
    assert "invalid JSON" in str(error)


def test_jsonl_not_an_object(tmp_path: Path, orders: DatasetContract) -> None:
    path = write_jsonl(tmp_path, [order_record(1), "[1, 2]"])
    error = violation(path, "jsonl", orders)
    assert error.line == 2
    assert "expected a JSON object" in str(error)


def test_jsonl_unexpected_field(tmp_path: Path, orders: DatasetContract) -> None:
    path = write_jsonl(tmp_path, [order_record(1), order_record(2, coupon="X")])
    error = violation(path, "jsonl", orders)
    assert (error.line, error.row, error.column) == (2, 2, "coupon")
    assert "unexpected field(s) 'coupon'" in str(error)


@pytest.mark.parametrize("amount", [12.345, "12.345", "abc"], ids=["number", "string", "text"])
def test_jsonl_bad_decimal_is_located(
    tmp_path: Path, orders: DatasetContract, amount: object
) -> None:
    path = write_jsonl(tmp_path, [order_record(1), order_record(2, amount=amount)])
    error = violation(path, "jsonl", orders)
    assert (error.line, error.row, error.column) == (2, 2, "amount")


def test_jsonl_line_number_after_blank_line(tmp_path: Path, orders: DatasetContract) -> None:
    path = write_jsonl(tmp_path, [order_record(1), "", order_record(2, order_date="2024-13-01")])
    error = violation(path, "jsonl", orders)
    assert error.line == 3


def test_jsonl_gz_is_decompressed(tmp_path: Path, orders: DatasetContract) -> None:
    path = tmp_path / "orders.jsonl.gz"
    path.write_bytes(gzip.compress((json.dumps(order_record(9)) + "\n").encode("utf-8")))
    assert [r["order_id"] for r in rows(path, "jsonl", orders)] == [9]


# --- Parquet -------------------------------------------------------------------------------------


def every_type_table(**replace: pa.Array) -> pa.Table:
    columns = {
        "id": pa.array([1, 2], pa.int32()),
        "label": pa.array(["Größe", None]),
        "score": pa.array([1.5, None], pa.float32()),
        "flag": pa.array([True, None]),
        "day": pa.array([date(2024, 2, 29), None]),
        "seen_at": pa.array([datetime(2024, 3, 1, 10, 0), None], pa.timestamp("ms")),
        "price": pa.array([Decimal("12.345"), Decimal("-1.5")], pa.decimal128(10, 3)),
        "code": pa.array(["", "B"]),
    }
    columns.update(replace)
    return pa.table(columns)


def test_parquet_good_file_with_casts(tmp_path: Path, every_type: DatasetContract) -> None:
    path = tmp_path / "every_type.parquet"
    pq.write_table(every_type_table(), path)
    (batch,), _ = load(path, "parquet", every_type)
    assert batch.schema == every_type.arrow_schema
    assert batch.column("id").type == pa.int64()  # int32 in the file
    assert batch.to_pylist() == [
        {
            "id": 1,
            "label": "Größe",
            "score": 1.5,
            "flag": True,
            "day": date(2024, 2, 29),
            "seen_at": datetime(2024, 3, 1, 10, 0, tzinfo=UTC),
            "price": Decimal("12.345"),
            "code": "",
        },
        {
            "id": 2,
            "label": None,
            "score": None,
            "flag": None,
            "day": None,
            "seen_at": None,
            "price": Decimal("-1.500"),
            "code": "B",
        },
    ]


def test_parquet_columns_are_matched_by_name(tmp_path: Path, every_type: DatasetContract) -> None:
    table = every_type_table()
    path = tmp_path / "every_type.parquet"
    pq.write_table(table.select(list(reversed(table.column_names))), path)
    (row, _) = rows(path, "parquet", every_type)
    assert list(row) == every_type.column_names
    assert row["id"] == 1
    assert row["code"] == ""


def test_parquet_batches(tmp_path: Path, every_type: DatasetContract) -> None:
    path = tmp_path / "every_type.parquet"
    big = pa.concat_tables([every_type_table()] * 3)
    pq.write_table(big, path)
    batches, first_rows = load(path, "parquet", every_type, batch_rows=4)
    assert [b.num_rows for b in batches] == [4, 2]
    assert first_rows == [1, 5]


def test_parquet_missing_column(tmp_path: Path, every_type: DatasetContract) -> None:
    path = tmp_path / "every_type.parquet"
    pq.write_table(every_type_table().drop_columns(["code"]), path)
    error = violation(path, "parquet", every_type)
    assert "missing column(s) 'code'" in str(error)
    assert error.line is None
    assert error.row is None


def test_parquet_null_in_non_nullable_column(tmp_path: Path, every_type: DatasetContract) -> None:
    path = tmp_path / "every_type.parquet"
    pq.write_table(every_type_table(code=pa.array(["A", None])), path)
    error = violation(path, "parquet", every_type)
    assert (error.row, error.line, error.column) == (2, None, "code")
    assert "is empty but the column is not nullable" in str(error)


def test_parquet_uncastable_value(tmp_path: Path, every_type: DatasetContract) -> None:
    path = tmp_path / "every_type.parquet"
    pq.write_table(every_type_table(id=pa.array(["1", "two"])), path)
    error = violation(path, "parquet", every_type)
    assert (error.row, error.column) == (2, "id")
    assert "value 'two' is not a valid int64" in str(error)


@pytest.mark.parametrize("content", [b"", b"nope", b"PAR1 but not really a parquet file PAR1"])
def test_non_parquet_file_is_source_error(
    tmp_path: Path, every_type: DatasetContract, content: bytes
) -> None:
    path = tmp_path / "fake.parquet"
    path.write_bytes(content)
    with pytest.raises(SourceError) as caught:
        load(path, "parquet", every_type)
    assert "fake.parquet" in str(caught.value)
    assert ("Parquet" if content else "the file is empty") in str(caught.value)


# --- shipped samples -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("file_name", "dataset", "fmt", "count"),
    [
        ("orders_2026-11-24.csv", "orders", "csv", 6),
        ("orders_2026-11-25.jsonl", "orders", "jsonl", 4),
        ("customers.csv", "customers", "csv", 5),
        ("customers_2026-11-25.parquet", "customers", "parquet", 3),
    ],
)
def test_shipped_samples_conform(file_name: str, dataset: str, fmt: str, count: int) -> None:
    contract = ContractRegistry.from_directories(SHIPPED_DATASETS_DIR).get(dataset)
    batches, _ = load(SAMPLES_DIR / file_name, fmt, contract, batch_rows=2)
    assert sum(b.num_rows for b in batches) == count
    assert all(b.schema == contract.arrow_schema for b in batches)


def test_shipped_bad_sample_is_located(orders: DatasetContract) -> None:
    error = violation(SAMPLES_DIR / "orders_bad.csv", "csv", orders)
    assert (error.line, error.row, error.column) == (3, 2, "amount")
    assert "value 'twelve' is not a valid decimal(12,2)" in str(error)
