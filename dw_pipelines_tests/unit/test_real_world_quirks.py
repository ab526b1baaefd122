"""Unit tier: what real exports do to the readers (pure: files in tmp_path, no database).

Headers as exports write them (spaces, capitals, brackets, a BOM, surrounding blanks, another
case), CSV dialects (banner lines, another quote character, NA markers, trailing delimiters,
dates in local forms, `12.0` integers) and JSON arrays. Each is loaded, or refused with a
message that names the file, line, row and column, with the warehouse column where it differs.
"""

import json
from datetime import UTC, date, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dw_pipelines.core.contracts import DatasetContract, parse_contract
from dw_pipelines.core.errors import ContractViolation
from dw_pipelines.core.readers import open_source, read_batches
from dw_pipelines.core.validation import conform_batch

PENGUINS = {
    "name": "penguins",
    "write_mode": "append",
    "primary_key": ["Sample Number"],
    "columns": [
        {"name": "studyName", "type": "string", "nullable": False},
        {"name": "Sample Number", "type": "int64", "nullable": False},
        {"name": "Culmen Length (mm)", "type": "float64"},
        {"name": "Date Egg", "type": "date"},
    ],
    "csv": {"null_values": ["", "NA"]},
}
HEADER = "studyName,Sample Number,Culmen Length (mm),Date Egg"


def contract(**overrides: object) -> DatasetContract:
    document = json.loads(json.dumps(PENGUINS))
    csv_overrides = overrides.pop("csv", None)
    document.update(overrides)
    if csv_overrides is not None:
        document["csv"] = {**document["csv"], **csv_overrides}
    return parse_contract(document)


def write(tmp_path: Path, text: str | bytes, name: str = "penguins.csv") -> Path:
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    return path


def load(path: Path, fmt: str, data: DatasetContract) -> pa.Table:
    source = open_source(path, fmt, data.csv)
    batches, first = [], 1
    for raw in read_batches(source, data, batch_rows=2):
        batches.append(conform_batch(raw, data, source, first))
        first += raw.num_rows
    return pa.Table.from_batches(batches, schema=data.arrow_schema)


def refusal(path: Path, fmt: str, data: DatasetContract) -> ContractViolation:
    with pytest.raises(ContractViolation) as caught:
        load(path, fmt, data)
    return caught.value


# --- headers ------------------------------------------------------------------------------------


def test_awkward_headers_load_under_warehouse_names(tmp_path: Path) -> None:
    path = write(tmp_path, f"\ufeff{HEADER}\r\nPAL0708,1,39.1,2007-11-11\r\nPAL0708,2,NA,NA\r\n")
    table = load(path, "csv", contract())
    assert table.schema.names == ["study_name", "sample_number", "culmen_length_mm", "date_egg"]
    assert table.to_pylist() == [
        {
            "study_name": "PAL0708",
            "sample_number": 1,
            "culmen_length_mm": 39.1,
            "date_egg": date(2007, 11, 11),
        },
        {"study_name": "PAL0708", "sample_number": 2, "culmen_length_mm": None, "date_egg": None},
    ]


def test_header_names_with_surrounding_blanks_match(tmp_path: Path) -> None:
    header = " studyName , Sample Number,Culmen Length (mm) ,Date Egg"
    path = write(tmp_path, f"{header}\nPAL,1,2.5,2007-11-11\n")
    assert load(path, "csv", contract()).column("culmen_length_mm").to_pylist() == [2.5]


def test_case_insensitive_match_follows_the_files_spelling(tmp_path: Path) -> None:
    path = write(tmp_path, f"{HEADER.upper()}\nPAL,1,2.5,2007-11-11\n")
    error = refusal(path, "csv", contract())
    assert "missing column(s) 'studyName' (warehouse column study_name)" in str(error)
    assert "the file has 'STUDYNAME', 'SAMPLE NUMBER'" in str(error)
    table = load(path, "csv", contract(match="case_insensitive"))
    assert table.column("sample_number").to_pylist() == [1]
    assert table.column("study_name").to_pylist() == ["PAL"]


def test_a_value_error_names_the_file_column_and_the_warehouse_column(tmp_path: Path) -> None:
    path = write(tmp_path, f"{HEADER}\nPAL,1,39.1,2007-11-11\nPAL,2,long,2007-11-12\n")
    error = refusal(path, "csv", contract())
    assert str(error) == (
        "penguins.csv, line 3, row 2, column 'Culmen Length (mm)' (warehouse column "
        "culmen_length_mm): value 'long' is not a valid float64"
    )
    assert (error.column, error.warehouse_column) == ("Culmen Length (mm)", "culmen_length_mm")


def test_unexpected_and_repeated_headers_are_named_as_the_file_has_them(tmp_path: Path) -> None:
    path = write(tmp_path, f"{HEADER},Body Mass (g)\nPAL,1,2.5,2007-11-11,3750\n")
    assert "unexpected column(s) 'Body Mass (g)'" in str(refusal(path, "csv", contract()))
    path = write(tmp_path, f"{HEADER}, Date Egg\nPAL,1,2.5,2007-11-11,x\n")
    assert "column(s) 'Date Egg' appear more than once" in str(refusal(path, "csv", contract()))


def test_duplicate_key_names_the_file_columns(tmp_path: Path) -> None:
    from dw_pipelines.core.ingestion import _raise_if_duplicate
    from dw_pipelines.core.validation import KeyTracker

    data = contract()
    path = write(tmp_path, f"{HEADER}\nPAL,1,2.5,NA\nPAL,1,2.6,NA\n")
    source = open_source(path, "csv", data.csv)
    keys = KeyTracker(data.primary_key)
    first = 1
    for raw in read_batches(source, data, batch_rows=10):
        batch = conform_batch(raw, data, source, first)
        keys.add(batch)
        first += batch.num_rows
    with pytest.raises(ContractViolation) as caught:
        _raise_if_duplicate(keys, data, source)
    assert "column 'Sample Number' (warehouse column sample_number)" in str(caught.value)
    assert "duplicate primary key (Sample Number=1) on rows 1 and 2" in str(caught.value)


# --- CSV dialects -------------------------------------------------------------------------------


def test_trailing_delimiters_make_unnamed_columns_that_must_stay_empty(tmp_path: Path) -> None:
    path = write(tmp_path, f"{HEADER},,\nPAL,1,2.5,2007-11-11,,\nPAL,2,2.6,2007-11-12,,\n")
    assert load(path, "csv", contract()).num_rows == 2
    path = write(tmp_path, f"{HEADER},,\nPAL,1,2.5,2007-11-11,,\nPAL,2,2.6,2007-11-12,,lost\n")
    error = refusal(path, "csv", contract())
    assert str(error) == (
        "penguins.csv, line 3, row 2, column '#6': value 'lost' in a column without a header; "
        "name the column in the file and the contract, or leave it empty"
    )


def test_skip_rows_skips_a_banner_and_lines_still_count_from_the_top(tmp_path: Path) -> None:
    text = f"Export of 2026-12-01\nGenerated by LIMS\n{HEADER}\nPAL,1,2.5,NA\nPAL,x,2.6,NA\n"
    path = write(tmp_path, text)
    data = contract(csv={"skip_rows": 2})
    error = refusal(path, "csv", data)
    assert str(error).startswith("penguins.csv, line 5, row 2, column 'Sample Number'")
    path = write(tmp_path, text.replace("PAL,x", "PAL,2"))
    assert load(path, "csv", data).column("sample_number").to_pylist() == [1, 2]


def test_another_quote_character_and_no_quoting(tmp_path: Path) -> None:
    path = write(tmp_path, f"{HEADER}\n'PAL, 07',1,2.5,NA\n")
    table = load(path, "csv", contract(csv={"quote_char": "'"}))
    assert table.column("study_name").to_pylist() == ["PAL, 07"]
    path = write(tmp_path, f'{HEADER}\n"PAL",1,2.5,NA\n')
    table = load(path, "csv", contract(csv={"quote_char": None}))
    assert table.column("study_name").to_pylist() == ['"PAL"']


def test_quoted_fields_hold_newlines_delimiters_and_quotes(tmp_path: Path) -> None:
    path = write(tmp_path, f'{HEADER}\n"PAL ""07"",\nsecond line",1,2.5,NA\nPAL,2,x,NA\n')
    error = refusal(path, "csv", contract())
    assert "line 4, row 2" in str(error)  # the quoted value spans lines 2 and 3
    path = write(tmp_path, f'{HEADER}\n"PAL ""07"",\nsecond line",1,2.5,NA\n')
    assert load(path, "csv", contract()).column("study_name").to_pylist() == [
        'PAL "07",\nsecond line'
    ]


def test_na_is_null_only_where_the_contract_says_so(tmp_path: Path) -> None:
    path = write(tmp_path, f'{HEADER}\nNA,1,NA,NA\n"NA",2,NULL,\n')
    error = refusal(path, "csv", contract())
    assert "row 1, column 'studyName' (warehouse column study_name): is empty" in str(error)
    data = contract(
        columns=[dict(PENGUINS["columns"][0], nullable=True), *PENGUINS["columns"][1:]],
        csv={"null_values": ["", "NA", "NULL"]},
    )
    table = load(path, "csv", data)
    # A quoted "NA" is text: only unquoted markers are nulls.
    assert table.column("study_name").to_pylist() == [None, "NA"]
    assert table.column("culmen_length_mm").to_pylist() == [None, None]


def test_dates_and_timestamps_in_local_forms(tmp_path: Path) -> None:
    document = {
        "name": "weather",
        "write_mode": "append",
        "primary_key": [],
        "columns": [
            {"name": "date", "type": "date"},
            {"name": "reading", "type": "timestamp"},
        ],
        "csv": {"date_format": "%Y/%m/%d", "timestamp_format": "%d.%m.%Y %H:%M %z"},
    }
    data = parse_contract(document)
    path = write(tmp_path, "date,reading\n2012/01/31,31.01.2012 10:00 +0100\n", "weather.csv")
    assert load(path, "csv", data).to_pylist() == [
        {"date": date(2012, 1, 31), "reading": datetime(2012, 1, 31, 9, 0, tzinfo=UTC)}
    ]
    path = write(tmp_path, "date,reading\n2012/01/31,x\n2012-02-01,\n", "weather.csv")
    error = refusal(path, "csv", data)
    assert str(error) == (
        "weather.csv, line 3, row 2, column 'date': value '2012-02-01' is not a valid date"
    )


def test_iso_timestamps_with_and_without_zone_t_or_space(tmp_path: Path) -> None:
    data = parse_contract(
        {
            "name": "t",
            "write_mode": "append",
            "primary_key": [],
            "columns": [{"name": "at", "type": "timestamp"}],
        }
    )
    values = [
        "2024-01-02T08:00:00Z",
        "2024-01-02 08:00:00",
        "2024-01-02T09:00:00+01:00",
        "2024-01-02 09:00:00+0100",
        "2024-01-02T08:00:00.000000001",
        "2024-01-02",
    ]
    path = write(tmp_path, "at\n" + "\n".join(values) + "\n", "t.csv")
    got = load(path, "csv", data).column("at").to_pylist()
    assert got[:5] == [datetime(2024, 1, 2, 8, tzinfo=UTC)] * 5
    assert got[5] == datetime(2024, 1, 2, tzinfo=UTC)


def test_integers_written_as_floats_load_and_fractions_are_refused(tmp_path: Path) -> None:
    data = parse_contract(
        {
            "name": "n",
            "write_mode": "append",
            "primary_key": [],
            "columns": [{"name": "count", "type": "int64"}, {"name": "x", "type": "float64"}],
        }
    )
    path = write(tmp_path, "count,x\n12.0,1e3\n+7,-2.5E-1\n-3.00,NaN\n", "n.csv")
    table = load(path, "csv", data)
    assert table.column("count").to_pylist() == [12, 7, -3]
    assert table.column("x").to_pylist()[:2] == [1000.0, -0.25]
    path = write(tmp_path, "count,x\n12.0,1\n12.5,2\n", "n.csv")
    assert str(refusal(path, "csv", data)).endswith(
        "line 3, row 2, column 'count': value '12.5' is not a valid int64"
    )
    path = write(tmp_path, "count,x\n1e3,1\n", "n.csv")
    assert "value '1e3' is not a valid int64" in str(refusal(path, "csv", data))


# --- JSON arrays and Parquet --------------------------------------------------------------------


def cars_contract(**overrides: object) -> DatasetContract:
    document = {
        "name": "cars",
        "write_mode": "append",
        "primary_key": [],
        "columns": [
            {"name": "Name", "type": "string", "nullable": False},
            {"name": "Miles_per_Gallon", "type": "float64"},
            {"name": "Year", "type": "date"},
        ],
        **overrides,
    }
    return parse_contract(document)


CARS = [
    {"Name": 'chevrolet, "malibu"', "Miles_per_Gallon": 18, "Year": "1970-01-01"},
    {"Name": "vw [beetle] {x}", "Miles_per_Gallon": None, "Year": "1971-01-01"},
    {"Name": "ford", "Year": "1972-01-01"},
]


def test_a_json_array_loads_streaming(tmp_path: Path) -> None:
    path = write(tmp_path, json.dumps(CARS, indent=3), "cars.json")
    table = load(path, "json", cars_contract())
    assert table.schema.names == ["name", "miles_per_gallon", "year"]
    assert table.column("name").to_pylist() == [c["Name"] for c in CARS]
    assert table.column("miles_per_gallon").to_pylist() == [18.0, None, None]


def test_a_json_file_of_lines_loads_too(tmp_path: Path) -> None:
    path = write(tmp_path, "\n".join(json.dumps(c) for c in CARS) + "\n", "cars.json")
    assert load(path, "json", cars_contract()).num_rows == 3


def test_a_json_array_error_names_the_elements_line(tmp_path: Path) -> None:
    bad = [*CARS, {"Name": "x", "Miles_per_Gallon": "fast", "Year": "1973-01-01"}]
    path = write(tmp_path, json.dumps(bad, indent=2), "cars.json")
    error = refusal(path, "json", cars_contract())
    starts = [
        n for n, line in enumerate(json.dumps(bad, indent=2).splitlines(), 1) if line == "  {"
    ]
    expected_line = starts[3]
    assert (error.row, error.line) == (4, expected_line)
    assert "column 'Miles_per_Gallon' (warehouse column miles_per_gallon)" in str(error)
    assert "value 'fast' is not a valid float64" in str(error)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"data": [1, 2]', "line 1, row 1: invalid JSON"),
        ("[1, 2]", "element 1 is not a JSON object"),
        ('[{"Name": "a"}', "not closed"),
        ('"just a string"', "expected a JSON array of objects, or one JSON object per line"),
    ],
)
def test_json_that_is_not_an_array_of_objects_is_refused(
    tmp_path: Path, text: str, message: str
) -> None:
    path = write(tmp_path, text, "cars.json")
    assert message in str(refusal(path, "json", cars_contract()))


def test_json_keys_match_case_insensitively_when_asked(tmp_path: Path) -> None:
    records = [{"name": "a", "MILES_PER_GALLON": 1, "year": "1970-01-01"}]
    path = write(tmp_path, json.dumps(records), "cars.json")
    error = refusal(path, "json", cars_contract())
    assert "unexpected field(s) 'name', 'MILES_PER_GALLON', 'year'" in str(error)
    table = load(path, "json", cars_contract(match="case_insensitive"))
    assert table.to_pylist() == [{"name": "a", "miles_per_gallon": 1.0, "year": date(1970, 1, 1)}]


def test_parquet_fields_are_matched_by_name_in_any_order(tmp_path: Path) -> None:
    path = tmp_path / "cars.parquet"
    pq.write_table(
        pa.table(
            {
                "Year": pa.array([date(1970, 1, 1)]),
                "Name": ["a"],
                "Miles_per_Gallon": pa.array([1], pa.int32()),
            }
        ),
        path,
    )
    table = load(path, "parquet", cars_contract())
    assert table.to_pylist() == [{"name": "a", "miles_per_gallon": 1.0, "year": date(1970, 1, 1)}]


# --- what Arrow is handed ----------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["csv", "json"])
def test_arrow_frees_every_python_object_it_was_handed(tmp_path: Path, fmt: str) -> None:
    """A reader stopped early (as `datasets infer` stops after its sample) leaves nothing of
    ours in Arrow's threads for long: what is still held at interpreter shutdown can abort the
    process (`readers._Handoff`). Every stream, buffer and callback handed over is counted
    until freed."""
    import gc

    from dw_pipelines.core import readers

    rows = [{"Name": f"car {i}", "Miles_per_Gallon": i, "Year": "1970-01-01"} for i in range(5000)]
    if fmt == "csv":
        text = "Name,Miles_per_Gallon,Year\n" + "".join(
            f"{r['Name']},{r['Miles_per_Gallon']},{r['Year']}\n" for r in rows
        )
    else:
        text = json.dumps(rows, indent=2)
    path = write(tmp_path, text, f"cars.{fmt}")
    data = cars_contract()
    batches = read_batches(open_source(path, fmt, data.csv), data, batch_rows=10, block_bytes=4096)
    next(batches)
    assert readers._held  # a stream and its buffers are out with Arrow now
    batches.close()
    del batches
    gc.collect()
    held = list(readers._held)
    assert all(handoff.wait(5.0) for handoff in held)
    assert not readers._held
