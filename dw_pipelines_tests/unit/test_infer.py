"""Unit tier: `datasets infer` drafts contracts from files (pure: files on disk, no database).

Every draft is checked the way a user would use it: its YAML parses into a contract, and that
contract reads and validates the whole file with the worker's own reader.
"""

import codecs
import csv
import gzip
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from dw_pipelines.core.contracts import DatasetContract, parse_contract
from dw_pipelines.core.infer import Draft, InferenceError, infer_contract
from dw_pipelines.core.readers import open_source, read_batches
from dw_pipelines.core.validation import conform_batch


def draft_for(path: Path, fmt: str, **options) -> tuple[Draft, DatasetContract]:
    draft = infer_contract(open_source(path, fmt), **options)
    text = draft.to_yaml()
    document = yaml.safe_load(text)
    assert document == draft.document
    return draft, parse_contract(document)


def load_all(path: Path, fmt: str, contract: DatasetContract) -> pa.Table:
    """Read and validate the whole file as a job would."""
    source = open_source(path, fmt, contract.csv)
    batches, first = [], 1
    for raw in read_batches(source, contract, batch_rows=1000):
        batches.append(conform_batch(raw, contract, source, first))
        first += raw.num_rows
    return pa.Table.from_batches(batches, schema=contract.arrow_schema)


def types(contract: DatasetContract) -> dict[str, str]:
    return {c.source: str(c.type) for c in contract.columns}


def write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.write_bytes(text.encode(encoding))
    return path


# --- CSV ----------------------------------------------------------------------------------------


def test_csv_awkward_headers_types_and_null_markers(tmp_path: Path) -> None:
    path = write(
        tmp_path / "penguins raw.csv",
        "studyName,Sample Number,Culmen Length (mm),Date Egg,Clutch Completion,Sex,Zip,Seen At,"
        "Flag\n"
        "PAL0708,1,39.1,2007-11-11,Yes,MALE,01234,2020-01-01 10:00:00,true\n"
        "PAL0708,2,NA,2007-11-12,No,NA,02134,2020-01-01T11:00:00+02:00,FALSE\n"
        '"PAL, 0809",3,1e1,2007-11-13,Yes,FEMALE,10001,2020-01-02,True\n',
    )
    draft, contract = draft_for(path, "csv")
    assert contract.name == "penguins_raw"
    assert types(contract) == {
        "studyName": "string",
        "Sample Number": "int64",
        "Culmen Length (mm)": "float64",
        "Date Egg": "date",
        "Clutch Completion": "string",
        "Sex": "string",
        "Zip": "string",  # leading zeros: an identifier, not a number
        "Seen At": "timestamp",
        "Flag": "bool",
    }
    assert contract.column_names[:3] == ["study_name", "sample_number", "culmen_length_mm"]
    assert contract.csv.null_values == ("", "NA")
    assert draft.whole_file and draft.rows_sampled == 3
    # The whole file was sampled: columns without a null are required.
    nullable = {c.source: c.nullable for c in contract.columns}
    assert nullable["Sample Number"] is False
    assert nullable["Culmen Length (mm)"] is True and nullable["Sex"] is True
    assert any("'NA' is read as null" in note for note in draft.notes)
    table = load_all(path, "csv", contract)
    assert table.num_rows == 3
    assert table.column("culmen_length_mm").to_pylist() == [39.1, None, 10.0]
    assert table.column("zip").to_pylist() == ["01234", "02134", "10001"]
    assert table.column("study_name").to_pylist()[2] == "PAL, 0809"


@pytest.mark.parametrize(
    ("delimiter", "encoding", "bom", "newline"),
    [
        (";", "utf-8", b"", "\n"),
        ("\t", "utf-8", codecs.BOM_UTF8, "\r\n"),
        ("|", "utf-16", b"", "\n"),
        (",", "cp1252", b"", "\r\n"),
    ],
)
def test_csv_dialect_is_sniffed(
    tmp_path: Path, delimiter: str, encoding: str, bom: bytes, newline: str
) -> None:
    rows = [["Name", "Größe", "Wert"], ["Müller", "1,5" if delimiter != "," else "2", "x"]]
    rows.append(["Zoë", "3", "y"])
    text = newline.join(delimiter.join(r) for r in rows) + newline
    path = tmp_path / "export.csv"
    path.write_bytes(bom + text.encode(encoding))
    draft, contract = draft_for(path, "csv")
    assert contract.csv.delimiter == delimiter
    expected_encoding = {"utf-16": "utf-16", "cp1252": "cp1252"}.get(encoding, "utf-8")
    assert contract.csv.encoding == expected_encoding
    if encoding == "cp1252":
        assert any("not UTF-8" in note and "cp1252" in note for note in draft.notes)
    assert contract.source_names == ["Name", "Größe", "Wert"]
    assert contract.column_names == ["name", "grosse", "wert"]
    table = load_all(path, "csv", contract)
    assert table.column("name").to_pylist() == ["Müller", "Zoë"]


def test_csv_date_and_timestamp_formats(tmp_path: Path) -> None:
    path = write(
        tmp_path / "weather.csv",
        "day,month,reading at,us day\n"
        "2012/01/31,Jan 1 2000,31.01.2012 10:00,01/31/2012\n"
        "2012/02/01,Feb 10 2000,01.02.2012 11:30,02/01/2012\n",
    )
    draft, contract = draft_for(path, "csv")
    # One csv.date_format serves the contract: the first date column's form wins.
    assert types(contract) == {
        "day": "date",
        "month": "string",
        "reading at": "timestamp",
        "us day": "string",
    }
    assert contract.csv.date_format == "%Y/%m/%d"
    assert contract.csv.timestamp_format == "%d.%m.%Y %H:%M"
    assert sum("one csv date_format serves a contract" in note for note in draft.notes) == 2
    table = load_all(path, "csv", contract)
    assert [d.isoformat() for d in table.column("day").to_pylist()] == ["2012-01-31", "2012-02-01"]
    assert table.column("reading_at").to_pylist()[0].isoformat() == "2012-01-31T10:00:00+00:00"


def test_csv_ambiguous_day_month_is_noted(tmp_path: Path) -> None:
    path = write(tmp_path / "d.csv", "when\n01/02/2012\n03/04/2012\n")
    draft, contract = draft_for(path, "csv")
    assert contract.csv.date_format == "%m/%d/%Y"
    assert any("month/day and as day/month" in note for note in draft.notes)
    path = write(tmp_path / "e.csv", "when\n01/02/2012\n31/04/2012\n")
    _, contract = draft_for(path, "csv")
    assert contract.csv.date_format == "%d/%m/%Y"


def test_csv_trailing_unnamed_columns_and_empty_header(tmp_path: Path) -> None:
    # R's write.csv names its row-name column "", spreadsheets end lines with a delimiter.
    path = write(tmp_path / "r.csv", '"","mpg","cyl",,\n"Mazda RX4",21,6,,\n"Datsun",22.8,4,,\n')
    draft, contract = draft_for(path, "csv")
    assert contract.source_names == ["", "mpg", "cyl"]
    assert contract.column_names == ["unnamed_1", "mpg", "cyl"]
    assert any("no name in the file" in note for note in draft.notes)
    table = load_all(path, "csv", contract)
    assert table.column("unnamed_1").to_pylist() == ["Mazda RX4", "Datsun"]
    assert table.column("mpg").to_pylist() == [21.0, 22.8]


def test_csv_sample_bound_keeps_columns_nullable(tmp_path: Path) -> None:
    lines = ["id,value"] + [f"{i},{i * 2}" for i in range(1, 501)]
    path = write(tmp_path / "big.csv", "\n".join(lines) + "\n")
    draft, contract = draft_for(path, "csv", sample_rows=100)
    assert draft.rows_sampled == 100 and not draft.whole_file
    assert all(c.nullable for c in contract.columns)
    assert any("not the whole file" in note for note in draft.notes)
    assert "the first 100 row(s) read" in draft.to_yaml()
    assert load_all(path, "csv", contract).num_rows == 500


def test_compressed_csv(tmp_path: Path) -> None:
    path = tmp_path / "x.csv.gz"
    path.write_bytes(gzip.compress(b"a,b\n1,x\n2,y\n"))
    _, contract = draft_for(path, "csv")
    assert types(contract) == {"a": "int64", "b": "string"}


def test_primary_key_and_merge(tmp_path: Path) -> None:
    path = write(tmp_path / "airports.csv", "iata,name\n00M,Thigpen\n00R,Livingston\n")
    _, contract = draft_for(path, "csv", primary_key=["iata"], write_mode="merge")
    assert contract.primary_key == ("iata",)
    assert contract.write_mode == "merge"
    assert contract.column("iata").nullable is False
    with pytest.raises(InferenceError, match="merge needs --primary-key"):
        infer_contract(open_source(path, "csv"), write_mode="merge")
    with pytest.raises(InferenceError, match=r"primary key 'code' is not a column"):
        infer_contract(open_source(path, "csv"), primary_key=["code"])
    dup = write(tmp_path / "dup.csv", "k,v\n1,a\n2,b\n1,c\n")
    with pytest.raises(InferenceError, match=r"\(k='1'\) repeats on data rows 1 and 3"):
        infer_contract(open_source(dup, "csv"), primary_key=["k"])
    null = write(tmp_path / "null.csv", "k,v\n1,a\n,b\n")
    with pytest.raises(InferenceError, match="holds a null"):
        infer_contract(open_source(null, "csv"), primary_key=["k"])


def test_name_is_taken_from_the_option(tmp_path: Path) -> None:
    path = write(tmp_path / "Weird File (1).csv", "a\n1\n")
    assert draft_for(path, "csv")[1].name == "weird_file_1"
    assert draft_for(path, "csv", name="chosen")[1].name == "chosen"


def test_an_empty_file_has_nothing_to_infer(tmp_path: Path) -> None:
    path = write(tmp_path / "header.csv", "a,b\n")
    with pytest.raises(InferenceError, match="no data rows"):
        infer_contract(open_source(path, "csv"))


# --- JSON ---------------------------------------------------------------------------------------


CARS = [
    {"Name": "chevrolet chevelle", "Miles_per_Gallon": 18, "Cylinders": 8, "Year": "1970-01-01"},
    {"Name": "vw", "Miles_per_Gallon": None, "Cylinders": 4, "Year": "1971-01-01"},
    {"Name": "ford", "Miles_per_Gallon": 25.5, "Cylinders": 4, "Year": "1972-01-01", "x": True},
]


@pytest.mark.parametrize("layout", ["array", "lines", "jsonl"])
def test_json_records(tmp_path: Path, layout: str) -> None:
    if layout == "array":
        path = tmp_path / "cars.json"
        path.write_text(json.dumps(CARS, indent=3), encoding="utf-8")
    else:
        path = tmp_path / ("cars.json" if layout == "lines" else "cars.jsonl")
        path.write_text("\n".join(json.dumps(r) for r in CARS) + "\n", encoding="utf-8")
    fmt = "jsonl" if layout == "jsonl" else "json"
    _, contract = draft_for(path, fmt)
    assert types(contract) == {
        "Name": "string",
        "Miles_per_Gallon": "float64",
        "Cylinders": "int64",
        "Year": "date",
        "x": "bool",
    }
    nullable = {c.source: c.nullable for c in contract.columns}
    assert nullable == {
        "Name": False,
        "Miles_per_Gallon": True,
        "Cylinders": False,
        "Year": False,
        "x": True,  # absent from two records
    }
    assert "csv" not in yaml.safe_load(draft_for(path, fmt)[0].to_yaml())
    table = load_all(path, fmt, contract)
    assert table.column("miles_per_gallon").to_pylist() == [18.0, None, 25.5]
    assert table.column("x").to_pylist() == [None, None, True]


def test_json_nested_values_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "nested.json"
    path.write_text(json.dumps([{"a": 1, "b": {"c": 2}}]), encoding="utf-8")
    with pytest.raises(InferenceError, match="key 'b' holds nested objects or arrays"):
        infer_contract(open_source(path, "json"))


def test_json_mixed_kinds_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "mixed.jsonl"
    path.write_text('{"a": 1}\n{"a": "one"}\n', encoding="utf-8")
    with pytest.raises(InferenceError, match=r"key 'a' holds values of several kinds"):
        infer_contract(open_source(path, "jsonl"))


def test_json_that_is_not_records_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "numbers.json"
    path.write_text("[1, 2, 3]", encoding="utf-8")
    with pytest.raises(InferenceError, match="not a JSON object"):
        infer_contract(open_source(path, "json"))


# --- Parquet ------------------------------------------------------------------------------------


def test_parquet_types(tmp_path: Path) -> None:
    table = pa.table(
        {
            "Order ID": pa.array([1, 2], pa.int32()),
            "amount": pa.array([None, 1], pa.decimal128(12, 2)),
            "ratio": pa.array([0.5, 1.5], pa.float32()),
            "when": pa.array([1, 2], pa.timestamp("ns")),
            "day": pa.array([1, 2], pa.date32()),
            "kind": pa.array(["a", "b"]).dictionary_encode(),
            "ok": pa.array([True, False]),
        }
    )
    path = tmp_path / "orders.parquet"
    pq.write_table(table, path)
    draft, contract = draft_for(path, "parquet", primary_key=["Order ID"])
    assert types(contract) == {
        "Order ID": "int64",
        "amount": "decimal(12,2)",
        "ratio": "float64",
        "when": "timestamp",
        "day": "date",
        "kind": "string",
        "ok": "bool",
    }
    assert contract.primary_key == ("order_id",)
    assert draft.whole_file
    loaded = load_all(path, "parquet", contract)
    assert loaded.column("order_id").to_pylist() == [1, 2]


def test_parquet_nested_types_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "nested.parquet"
    pq.write_table(pa.table({"tags": pa.array([["a"], ["b", "c"]])}), path)
    with pytest.raises(InferenceError, match="field 'tags' is stored as list"):
        infer_contract(open_source(path, "parquet"))


def test_draft_yaml_round_trips_any_header(tmp_path: Path) -> None:
    headers = [
        'quote " and \\ slash',
        "colon: yes",
        "# not a comment",
        "null",
        "주문번호",
        "- dash",
    ]
    path = tmp_path / "odd.csv"
    with path.open("w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows([headers, ["1"] * len(headers)])
    _, contract = draft_for(path, "csv")
    assert contract.source_names == headers
    assert load_all(path, "csv", contract).num_rows == 1
