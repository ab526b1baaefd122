"""Unit tier: the contract's policies for files whose columns differ from it (no database).

`extra_columns: ignore` leaves undeclared file columns out of the load; `missing_columns: null`
loads the nullable columns a file lacks as NULL. Each format is read from a real file in
tmp_path and conformed as the ingestion service conforms it; refusals name the file, the
column, and (for values) the row and line, which ignored and filled columns must not shift.
"""

import json
from datetime import date
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dw_pipelines.core.contracts import DatasetContract, parse_contract
from dw_pipelines.core.errors import ContractViolation
from dw_pipelines.core.readers import ColumnReport, open_source, read_batches
from dw_pipelines.core.validation import conform_batch

FORMATS = ["csv", "jsonl", "json", "parquet"]
SUFFIX = {"csv": "csv", "jsonl": "jsonl", "json": "json", "parquet": "parquet"}
IGNORE_HINT = "set `extra_columns: ignore` in the contract to load the file without them"
NULL_HINT = "set `missing_columns: null` in the contract to load nullable columns a file lacks"
NOT_NULLABLE = "`missing_columns: null` does not apply to columns that are nullable: false"


def contract(**policies: object) -> DatasetContract:
    columns = policies.pop("columns", None)
    return parse_contract(
        {
            "name": "sales",
            "write_mode": "append",
            "primary_key": ["Order ID"],
            "columns": columns
            or [
                {"name": "Order ID", "type": "int64", "nullable": False},  # stored as order_id
                {"name": "amount", "type": "float64"},
                {"name": "note", "type": "string"},
                {"name": "day", "type": "date"},
            ],
            **policies,
        }
    )


def record(order_id: int, /, **values: object) -> dict[str, object]:
    """A file record: the contract's columns, then `values` (extra ones, or replacements)."""
    row: dict[str, object] = {
        "Order ID": order_id,
        "amount": 1.5 * order_id,
        "note": f"n{order_id}",
        "day": f"2024-01-0{order_id}",
    }
    row.update(values)
    return {key: value for key, value in row.items() if value is not DROP}


DROP = object()  # a value that leaves its column out of the record


def write(tmp_path: Path, fmt: str, records: list[dict[str, object]]) -> Path:
    """The records as a file of `fmt`; every record has the first one's columns, in order."""
    path = tmp_path / f"sales.{SUFFIX[fmt]}"
    if fmt == "csv":
        header = list(records[0])
        lines = [",".join(header)]
        lines += [",".join("" if r[h] is None else str(r[h]) for h in header) for r in records]
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    elif fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    elif fmt == "json":
        path.write_text(json.dumps(records, indent=2), encoding="utf-8")
    else:
        pq.write_table(pa.Table.from_pylist(records), path)
    return path


def file_line(path: Path, fmt: str, row: int) -> int | None:
    """Where data row `row` starts in a file `write` wrote (None: Parquet has no lines)."""
    if fmt == "parquet":
        return None
    if fmt == "json":
        starts = [n for n, text in enumerate(path.read_text().splitlines(), 1) if text == "  {"]
        return starts[row - 1]
    return row + 1 if fmt == "csv" else row


def load(
    path: Path, fmt: str, data: DatasetContract, block_bytes: int = 1 << 20
) -> tuple[list[dict[str, object]], ColumnReport]:
    source = open_source(path, fmt, data.csv)
    report = ColumnReport()
    batches, first = [], 1
    for raw in read_batches(source, data, batch_rows=2, block_bytes=block_bytes, report=report):
        batches.append(conform_batch(raw, data, source, first))
        first += raw.num_rows
    return pa.Table.from_batches(batches, schema=data.arrow_schema).to_pylist(), report


def refusal(path: Path, fmt: str, data: DatasetContract) -> ContractViolation:
    with pytest.raises(ContractViolation) as caught:
        load(path, fmt, data)
    return caught.value


def stored(order_id: int, **values: object) -> dict[str, object]:
    row: dict[str, object] = {
        "order_id": order_id,
        "amount": 1.5 * order_id,
        "note": f"n{order_id}",
        "day": date(2024, 1, order_id),
    }
    row.update(values)
    return row


# --- extra_columns: ignore ----------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_ignore_leaves_extra_columns_out_and_loads_the_rest(tmp_path: Path, fmt: str) -> None:
    records = [{"Coupon": f"c{i}", **record(i), "Region": f"r{i}"} for i in (1, 2, 3)]
    path = write(tmp_path, fmt, records)
    rows, report = load(path, fmt, contract(extra_columns="ignore"))
    assert rows == [stored(1), stored(2), stored(3)]
    assert report == ColumnReport(ignored=("Coupon", "Region"))


@pytest.mark.parametrize("fmt", FORMATS)
def test_extra_columns_are_refused_by_default_with_the_way_to_accept_them(
    tmp_path: Path, fmt: str
) -> None:
    path = write(tmp_path, fmt, [record(1, Coupon="A1"), record(2, Coupon="B2")])
    error = refusal(path, fmt, contract())
    kind = "field" if "json" in fmt else "column"
    assert f"unexpected {kind}(s) 'Coupon'" in str(error)
    assert IGNORE_HINT in str(error)
    # CSV is refused at its header, JSON at the first record with an undeclared key.
    assert error.line == (1 if fmt == "csv" else file_line(path, fmt, 1))


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_bad_value_after_an_ignored_column_keeps_its_row_line_and_column(
    tmp_path: Path, fmt: str
) -> None:
    amounts = ["1.5", "3.0", "lots"]  # text in every format, so Parquet holds it too
    records = [{"Coupon": f"c{i}", **record(i, amount=amounts[i - 1])} for i in (1, 2, 3)]
    path = write(tmp_path, fmt, records)
    data = contract(extra_columns="ignore")
    if "json" in fmt:
        data = contract(
            extra_columns="ignore",
            columns=[
                {"name": "Order ID", "type": "int64", "nullable": False},
                {
                    "name": "amount",
                    "type": "decimal(6,2)",
                },  # JSON: text may hold a decimal, not a float64
                {"name": "note", "type": "string"},
                {"name": "day", "type": "date"},
            ],
        )
    error = refusal(path, fmt, data)
    assert (error.row, error.line, error.column) == (3, file_line(path, fmt, 3), "amount")
    assert "'lots'" in str(error)


def test_a_bad_value_after_a_filled_column_keeps_its_row_and_line(tmp_path: Path) -> None:
    lines = ["Order ID,Coupon,amount", "1,a,1.5", "2,b,2.5", "", "3,c,lots"]
    path = tmp_path / "sales.csv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    error = refusal(path, "csv", contract(extra_columns="ignore", missing_columns="null"))
    assert (error.row, error.line, error.column) == (3, 5, "amount")  # the blank line counts


def test_a_bad_value_in_a_column_the_contract_renames_is_named_both_ways(tmp_path: Path) -> None:
    path = write(
        tmp_path, "csv", [record(1, Coupon="a"), record(2, Coupon="b", **{"Order ID": "x"})]
    )
    error = refusal(path, "csv", contract(extra_columns="ignore"))
    assert str(error) == (
        "sales.csv, line 3, row 2, column 'Order ID' (warehouse column order_id): "
        "value 'x' is not a valid int64"
    )


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_repeated_columns_are_refused_under_either_policy(tmp_path: Path, fmt: str) -> None:
    data = contract(extra_columns="ignore", missing_columns="null")
    for repeated in ["amount", "Coupon"]:  # a declared column, and an undeclared one
        header = ["Order ID", repeated, "note", repeated]
        if fmt == "csv":
            path = tmp_path / "sales.csv"
            path.write_text(",".join(header) + "\n1,2,x,3\n", encoding="utf-8")
        else:
            path = tmp_path / "sales.parquet"
            table = pa.table(
                [pa.array([1]), pa.array([2.0]), pa.array(["x"]), pa.array([3.0])], names=header
            )
            pq.write_table(table, path)
        error = refusal(path, fmt, data)
        assert f"column(s) '{repeated}' appear more than once in the file" in str(error)


@pytest.mark.parametrize("fmt", ["jsonl", "json"])
def test_a_repeated_key_is_refused_under_either_policy(tmp_path: Path, fmt: str) -> None:
    text = '{"Order ID": 1, "amount": 1.5, "amount": 2.5}'
    path = tmp_path / f"sales.{fmt}"
    path.write_text(text if fmt == "jsonl" else f"[{text}]", encoding="utf-8")
    error = refusal(path, fmt, contract(extra_columns="ignore", missing_columns="null"))
    assert "specified twice" in str(error)


def test_ignored_csv_columns_are_neither_converted_nor_checked(tmp_path: Path) -> None:
    # Arrow infers nothing for them (the values change kind after the first block) and does
    # not check their text (a Latin-1 byte in a UTF-8 file).
    lines = ["Order ID,Legacy,amount"] + [f"{i},{i},1.5" for i in range(1, 400)]
    lines += ["400,caf\xe9 au lait,1.5"]
    path = tmp_path / "sales.csv"
    path.write_bytes(("\n".join(lines) + "\n").encode("latin-1"))
    data = contract(extra_columns="ignore", missing_columns="null")
    rows, report = load(path, "csv", data, block_bytes=1024)
    assert [r["order_id"] for r in rows] == list(range(1, 401))
    assert report == ColumnReport(ignored=("Legacy",), missing=("note", "day"))


def test_ignored_csv_columns_beside_unnamed_trailing_ones(tmp_path: Path) -> None:
    # A blank header in the middle (R's row names) is an undeclared column; the trailing blank
    # ones (a delimiter ending every line) must still be empty, whichever way Arrow reads them.
    lines = [",Order ID,amount,note,day,,", "a,1,1.5,n1,2024-01-01,,", "b,2,3.0,n2,2024-01-02,,"]
    path = tmp_path / "sales.csv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    rows, report = load(path, "csv", contract(extra_columns="ignore"))
    assert rows == [stored(1), stored(2)]
    assert report == ColumnReport(ignored=("",))
    lines[2] += "x"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    error = refusal(path, "csv", contract(extra_columns="ignore"))
    assert (error.row, error.line, error.column) == (2, 3, "#7")
    # One trailing blank column: the columns are selected by name, the number stays the file's.
    path.write_text("Coupon,Order ID,amount,note,day,\nx,1,1.5,n1,2024-01-01,oops\n")
    error = refusal(path, "csv", contract(extra_columns="ignore"))
    assert (error.row, error.line, error.column) == (1, 2, "#6")
    assert "in a column without a header" in str(error)


def test_ignore_in_json_drops_undeclared_keys_of_every_record(tmp_path: Path) -> None:
    # Each record has its own keys; the parser skips undeclared ones in all of them (nested
    # values too), and the audit names those of the first record.
    records = [
        record(1, Coupon="A1"),
        record(2, Promo={"code": [1, 2]}),
        record(3, Coupon=None, Region="north"),
    ]
    path = write(tmp_path, "jsonl", records)
    rows, report = load(path, "jsonl", contract(extra_columns="ignore"))
    assert rows == [stored(1), stored(2), stored(3)]
    assert report == ColumnReport(ignored=("Coupon",))


def test_case_insensitive_keys_are_not_ignored(tmp_path: Path) -> None:
    path = write(tmp_path, "json", [{"order id": 1, "AMOUNT": 1.5, "Coupon": "x"}])
    rows, report = load(path, "json", contract(extra_columns="ignore", match="case_insensitive"))
    assert rows == [stored(1, note=None, day=None)]
    assert report == ColumnReport(ignored=("Coupon",))


# --- missing_columns: null ----------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_null_loads_missing_nullable_columns_as_typed_nulls(tmp_path: Path, fmt: str) -> None:
    path = write(tmp_path, fmt, [record(i, note=DROP, day=DROP) for i in (1, 2, 3)])
    data = contract(missing_columns="null")
    source = open_source(path, fmt, data.csv)
    report = ColumnReport()
    raw = next(read_batches(source, data, batch_rows=10, report=report))
    # Typed as the contract types them: validation and the load see an ordinary batch.
    assert raw.schema.field("note").type == pa.string()
    assert raw.schema.field("day").type == pa.date32()
    assert raw.column("day").null_count == 3
    rows, report = load(path, fmt, data)
    assert rows == [stored(i, note=None, day=None) for i in (1, 2, 3)]
    assert report == ColumnReport(missing=("note", "day"))


@pytest.mark.parametrize("fmt", ["jsonl", "json"])
def test_absent_json_keys_are_null_under_either_policy(tmp_path: Path, fmt: str) -> None:
    path = write(tmp_path, fmt, [record(i, note=DROP, day=DROP) for i in (1, 2)])
    for data in (contract(), contract(missing_columns="null")):
        rows, report = load(path, fmt, data)
        assert rows == [stored(i, note=None, day=None) for i in (1, 2)]
        assert report == ColumnReport()  # nothing filled: JSON records' keys are their own


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_missing_columns_are_refused_by_default_with_the_way_to_accept_them(
    tmp_path: Path, fmt: str
) -> None:
    path = write(tmp_path, fmt, [record(1, note=DROP)])
    error = refusal(path, fmt, contract())
    assert "missing column(s) 'note'; the file has 'Order ID', 'amount', 'day'" in str(error)
    assert NULL_HINT in str(error)
    assert error.line == (1 if fmt == "csv" else None)


REQUIRED = [
    {"name": "Order ID", "type": "int64", "nullable": False},
    {"name": "amount", "type": "float64"},
    {"name": "Currency", "type": "string", "nullable": False},
]


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_a_missing_non_nullable_column_is_refused_under_null(tmp_path: Path, fmt: str) -> None:
    path = write(tmp_path, fmt, [{"Order ID": 1, "Coupon": "x"}])
    data = contract(missing_columns="null", extra_columns="ignore", columns=REQUIRED)
    error = refusal(path, fmt, data)
    assert str(error).startswith(
        f"sales.{fmt}{', line 1' if fmt == 'csv' else ''}: missing column(s) "
        "'Currency' (warehouse column currency); the file has 'Order ID', 'Coupon'; "
    )
    assert NOT_NULLABLE in str(error)
    # Without the policy the message does not offer it: it would not help.
    path = write(tmp_path, fmt, [{"Order ID": 1, "amount": 2.0}])
    error = refusal(path, fmt, contract(columns=REQUIRED))
    assert "missing column(s) 'Currency' (warehouse column currency)" in str(error)
    assert "missing_columns" not in str(error)


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_the_primary_key_is_never_filled(tmp_path: Path, fmt: str) -> None:
    path = write(tmp_path, fmt, [record(1, **{"Order ID": DROP})])
    error = refusal(path, fmt, contract(missing_columns="null"))
    assert "missing column(s) 'Order ID' (warehouse column order_id)" in str(error)
    assert NOT_NULLABLE in str(error)


@pytest.mark.parametrize("fmt", ["jsonl", "json"])
def test_a_non_nullable_key_absent_from_json_is_refused_at_its_record(
    tmp_path: Path, fmt: str
) -> None:
    records = [{"Order ID": 1, "Currency": "EUR"}, {"Order ID": 2, "amount": 2.0}]
    path = write(tmp_path, fmt, records)
    error = refusal(path, fmt, contract(missing_columns="null", columns=REQUIRED))
    assert (error.row, error.line, error.column) == (2, file_line(path, fmt, 2), "Currency")
    assert "is empty but the column is not nullable" in str(error)


def test_a_file_with_none_of_the_contracts_columns_is_refused(tmp_path: Path) -> None:
    # With both policies and no required column any file would load, as rows of NULLs.
    nullable = [{"name": "amount", "type": "float64"}, {"name": "note", "type": "string"}]
    data = contract(
        extra_columns="ignore", missing_columns="null", primary_key=[], columns=nullable
    )
    path = write(tmp_path, "csv", [{"city": "Oslo", "temp": 3}])
    error = refusal(path, "csv", data)
    assert str(error) == (
        "sales.csv, line 1: the file has none of the columns dataset 'sales' declares "
        "('amount', 'note'); it has 'city', 'temp'"
    )
    path = write(tmp_path, "json", [{"city": "Oslo", "temp": 3}, {"amount": 1.0}])
    error = refusal(path, "json", data)
    assert (error.row, error.line) == (1, 2)
    assert "the first record has none of the keys dataset 'sales' declares" in str(error)
    # One shared column is enough.
    path = write(tmp_path, "csv", [{"city": "Oslo", "note": "cold"}])
    assert load(path, "csv", data) == (
        [{"amount": None, "note": "cold"}],
        ColumnReport(ignored=("city",), missing=("amount",)),
    )


def test_without_a_report_read_batches_still_applies_the_policies(tmp_path: Path) -> None:
    path = write(tmp_path, "csv", [record(1, Coupon="x", note=DROP)])
    data = contract(extra_columns="ignore", missing_columns="null")
    (raw,) = read_batches(open_source(path, "csv", data.csv), data, batch_rows=10)
    assert raw.schema.names == ["order_id", "amount", "note", "day"]
