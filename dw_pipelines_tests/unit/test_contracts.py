"""Unit tier: dataset contract parsing and the contract registry (pure, no database, no Dagster)."""

import copy
from pathlib import Path

import pyarrow as pa
import pytest
import yaml

from dw_pipelines.core.contracts import (
    TYPE_GRAMMAR,
    ColumnType,
    ContractFileError,
    ContractRegistry,
    check_identifier,
    column_label,
    load_contract_file,
    parse_contract,
)
from dw_pipelines.core.errors import CommandError, ConfigurationError
from dw_pipelines.settings import SHIPPED_DATASETS_DIR

BASE = {
    "name": "events",
    "write_mode": "append",
    "primary_key": ["event_id"],
    "columns": [
        {"name": "event_id", "type": "int64", "nullable": False},
        {"name": "payload", "type": "string"},
    ],
}


def contract_doc(**overrides: object) -> dict:
    doc = copy.deepcopy(BASE)
    doc.update(copy.deepcopy(overrides))
    return doc


def write_contract(directory: Path, doc: dict, file_name: str | None = None) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / (file_name or f"{doc['name']}.yaml")
    path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return path


# --- valid contracts -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "arrow_type"),
    [
        ("string", pa.string()),
        ("int64", pa.int64()),
        ("float64", pa.float64()),
        ("bool", pa.bool_()),
        ("date", pa.date32()),
        ("timestamp", pa.timestamp("us", tz="UTC")),
        ("decimal(12,2)", pa.decimal128(12, 2)),
        ("decimal( 10 , 3 )", pa.decimal128(10, 3)),
        ("decimal(38,38)", pa.decimal128(38, 38)),
        ("decimal(1,0)", pa.decimal128(1, 0)),
        ("  INT64 ", pa.int64()),
        ("Decimal(5,1)", pa.decimal128(5, 1)),
    ],
)
def test_column_type_maps_to_arrow(text: str, arrow_type: pa.DataType) -> None:
    assert ColumnType.parse(text).arrow_type == arrow_type


@pytest.mark.parametrize(
    ("text", "shown"),
    [("decimal( 10 , 3 )", "decimal(10,3)"), ("INT64", "int64"), ("timestamp", "timestamp")],
)
def test_column_type_str_is_canonical(text: str, shown: str) -> None:
    assert str(ColumnType.parse(text)) == shown


@pytest.mark.parametrize(
    "text", ["int", "varchar", "decimal", "decimal(0,0)", "decimal(39,2)", "decimal(5,6)", ""]
)
def test_column_type_refuses(text: str) -> None:
    with pytest.raises(ValueError, match=r"decimal|unknown type"):
        ColumnType.parse(text)


def test_parse_contract_builds_schema_and_defaults(tmp_path: Path) -> None:
    doc = contract_doc(
        columns=[
            {"name": "event_id", "type": "int64", "nullable": False},
            {"name": "price", "type": "decimal(10,3)", "description": "net"},
            {"name": "seen_at", "type": "timestamp"},
        ],
        owner="team@example.com",
    )
    contract = load_contract_file(write_contract(tmp_path, doc))
    assert contract.name == "events"
    assert contract.write_mode == "append"
    assert contract.primary_key == ("event_id",)
    assert contract.owner == "team@example.com"
    assert contract.column_names == ["event_id", "price", "seen_at"]
    assert contract.column("price").description == "net"
    assert contract.path == tmp_path / "events.yaml"
    assert contract.arrow_schema == pa.schema(
        [
            pa.field("event_id", pa.int64(), nullable=False),
            pa.field("price", pa.decimal128(10, 3), nullable=True),
            pa.field("seen_at", pa.timestamp("us", tz="UTC"), nullable=True),
        ]
    )
    # csv options default when the section is absent
    assert contract.csv.delimiter == ","
    assert contract.csv.null_values == ("",)
    assert contract.csv.encoding == "utf-8"
    with pytest.raises(KeyError):
        contract.column("nope")


def test_parse_contract_reads_csv_options() -> None:
    doc = contract_doc(csv={"delimiter": ";", "null_values": ["", "NULL"], "encoding": "latin-1"})
    contract = parse_contract(doc)
    assert contract.csv.delimiter == ";"
    assert contract.csv.null_values == ("", "NULL")
    assert contract.csv.encoding == "latin-1"


def test_merge_with_primary_key_is_accepted() -> None:
    contract = parse_contract(contract_doc(write_mode="merge"))
    assert contract.write_mode == "merge"
    assert contract.primary_key == ("event_id",)


def test_append_without_primary_key_is_accepted() -> None:
    assert parse_contract(contract_doc(primary_key=[])).primary_key == ()


@pytest.mark.parametrize("name", ["a", "_x", "order_id", "x" * 63, "a1_b2"])
def test_check_identifier_accepts(name: str) -> None:
    assert check_identifier(name, "column name") == name


# --- refusals ------------------------------------------------------------------------------------


def column(name: str = "payload", type_: str = "string", **extra: object) -> dict:
    return {"name": name, "type": type_, **extra}


REFUSALS = [
    pytest.param(
        {"columns": [BASE["columns"][0], column(type_="varchar")]},
        "columns[1].type",
        "unknown type 'varchar'",
        id="unknown-type",
    ),
    pytest.param(
        {"columns": [BASE["columns"][0], column("Payload", column="Payload")]},
        "columns[1].column",
        "column 'Payload' must match",
        id="upper-case-override",
    ),
    pytest.param(
        {"columns": [BASE["columns"][0], column("p", column="p" * 64)]},
        "columns[1].column",
        "at most 63 characters",
        id="too-long-override",
    ),
    pytest.param(
        {"columns": [BASE["columns"][0], column("x", column="x; drop table")]},
        "columns[1].column",
        "'x; drop table' must match",
        id="sql-injection-override",
    ),
    pytest.param(
        {"columns": [BASE["columns"][0], column("_dw_job_id")]},
        "columns[1].name",
        "would be stored as _dw_job_id, but names starting with '_dw_' are the warehouse's",
        id="reserved-prefix",
    ),
    pytest.param(
        {"columns": [BASE["columns"][0], column("x", column="_dw_loaded_at")]},
        "columns[1].column",
        "names starting with '_dw_'",
        id="reserved-override",
    ),
    pytest.param(
        {"columns": [BASE["columns"][0], column("???")]},
        "columns[1].name",
        "'???' has no letters or digits",
        id="no-convention-name",
    ),
    pytest.param(
        {"columns": [BASE["columns"][0], column(), column()]},
        "columns[2].name",
        "'payload' names the same file column as columns[1]",
        id="duplicate-column",
    ),
    pytest.param(
        {"primary_key": ["missing_id"]},
        "primary_key[0]",
        "'missing_id' is not a declared column",
        id="pk-unknown-column",
    ),
    pytest.param(
        {"primary_key": ["payload"]},
        "primary_key[0]",
        "column 'payload' must be declared nullable: false",
        id="pk-nullable-column",
    ),
    pytest.param(
        {"primary_key": [], "write_mode": "merge"},
        "primary_key",
        "'merge' needs a non-empty primary_key",
        id="merge-without-pk",
    ),
    pytest.param({"partition_by": "day"}, "partition_by", "Extra inputs", id="extra-field"),
    pytest.param(
        {"columns": [BASE["columns"][0], column(format="iso")]},
        "columns[1].format",
        "Extra inputs",
        id="extra-column-field",
    ),
    pytest.param(
        {"csv": {"delimiter": ";;"}},
        "csv.delimiter",
        "exactly one character",
        id="two-char-delimiter",
    ),
    pytest.param(
        {"csv": {"encoding": "klingon-8"}},
        "csv.encoding",
        "unknown encoding 'klingon-8'",
        id="unknown-encoding",
    ),
    pytest.param(
        {"csv": {"quote_char": "''"}},
        "csv.quote_char",
        "one character, or null",
        id="two-char-quote",
    ),
    pytest.param(
        {"csv": {"skip_rows": -1}},
        "csv.skip_rows",
        "greater than or equal to 0",
        id="negative-skip-rows",
    ),
    pytest.param(
        {"csv": {"date_format": "YYYY-MM-DD"}},
        "csv.date_format",
        "not a strptime format",
        id="not-a-strptime-format",
    ),
    pytest.param(
        {"match": "fuzzy"},
        "match",
        "'exact' or 'case_insensitive'",
        id="unknown-match",
    ),
    pytest.param(
        {"write_mode": "upsert"}, "write_mode", "'append' or 'merge'", id="unknown-write-mode"
    ),
    pytest.param({"columns": []}, "columns", "at least 1 item", id="no-columns"),
    pytest.param({"name": "Events"}, "name", "dataset name 'Events' must match", id="bad-name"),
]


@pytest.mark.parametrize(("overrides", "field", "detail"), REFUSALS)
def test_invalid_contract_file_names_file_and_field(
    tmp_path: Path, overrides: dict, field: str, detail: str
) -> None:
    path = write_contract(tmp_path, contract_doc(**overrides), file_name="events.yaml")
    with pytest.raises(ConfigurationError) as caught:
        load_contract_file(path)
    message = str(caught.value)
    assert str(path) in message
    assert field in message
    assert detail in message


def test_parse_contract_without_path_says_contract() -> None:
    with pytest.raises(ConfigurationError, match=r"invalid dataset contract <contract>: name"):
        parse_contract(contract_doc(name="Bad"))


@pytest.mark.parametrize("document", [None, "just a string", ["a", "list"]])
def test_non_mapping_document_is_refused(tmp_path: Path, document: object) -> None:
    path = tmp_path / "events.yaml"
    path.write_text(yaml.safe_dump(document), encoding="utf-8")
    with pytest.raises(ConfigurationError, match="invalid dataset contract"):
        load_contract_file(path)


def test_name_must_match_file_name(tmp_path: Path) -> None:
    path = write_contract(tmp_path, contract_doc(name="events"), file_name="clicks.yaml")
    with pytest.raises(ConfigurationError) as caught:
        load_contract_file(path)
    assert str(path) in str(caught.value)
    assert "name 'events' must match the file name" in str(caught.value)


def test_unparsable_yaml_names_file(tmp_path: Path) -> None:
    path = tmp_path / "events.yaml"
    path.write_text("name: [unclosed\n", encoding="utf-8")
    with pytest.raises(ConfigurationError, match="cannot read dataset contract") as caught:
        load_contract_file(path)
    assert str(path) in str(caught.value)


def test_missing_file_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="cannot read dataset contract"):
        load_contract_file(tmp_path / "absent.yaml")


@pytest.mark.parametrize("name", ["amount\n", "orders\n"])
def test_identifier_with_trailing_newline_is_refused(name: str) -> None:
    with pytest.raises(ValueError, match="must match"):
        check_identifier(name, "column name")


def test_source_names_with_surrounding_whitespace_are_trimmed() -> None:
    doc = contract_doc(columns=[BASE["columns"][0], column("payload\n")])
    contract = parse_contract(doc)
    assert contract.column("payload").source == "payload"


def test_every_problem_of_a_file_is_reported_with_its_field(tmp_path: Path) -> None:
    doc = contract_doc(
        columns=[
            {"name": "Event ID", "type": "int64", "nullable": False},
            {"name": "event_id", "type": "string"},
            {"name": "", "type": "string"},
            {"name": "When", "type": "datetime"},
        ],
        primary_key=["Nope"],
    )
    path = write_contract(tmp_path, doc, file_name="events.yaml")
    # pydantic's shape errors come first (an unknown type): the file is refused with them.
    with pytest.raises(ContractFileError) as caught:
        load_contract_file(path)
    assert caught.value.problems == (
        ("columns[3].type", "unknown type 'datetime'; expected one of " + TYPE_GRAMMAR),
    )
    doc["columns"][3]["type"] = "timestamp"
    path = write_contract(tmp_path, doc, file_name="events.yaml")
    with pytest.raises(ContractFileError) as caught:
        load_contract_file(path)
    assert caught.value.path == path
    assert caught.value.dataset == "events"
    fields = [field for field, _ in caught.value.problems]
    assert fields == ["columns[2].name", "columns[1]", "primary_key[0]"]
    reasons = dict(caught.value.problems)
    assert "give the column a `column:` name" in reasons["columns[2].name"]
    assert reasons["columns[1]"] == (
        "columns 'Event ID' (columns[0]) and 'event_id' would both be stored as warehouse "
        "column event_id; give one of them another `column:` name"
    )
    assert reasons["primary_key[0]"] == "'Nope' is not a declared column"
    assert caught.value.to_dict()["errors"][2] == {
        "field": "primary_key[0]",
        "reason": "'Nope' is not a declared column",
    }


# --- source names and warehouse columns ----------------------------------------------------------


def test_columns_keep_the_file_names_and_get_warehouse_names() -> None:
    contract = parse_contract(
        contract_doc(
            columns=[
                {"name": "Sample Number", "type": "int64", "nullable": False},
                {"name": "Culmen Length (mm)", "type": "float64"},
                {"name": "studyName", "type": "string", "column": "study"},
                {"name": "", "type": "string", "column": "row_name"},
                {"name": "1960", "type": "float64"},
            ],
            primary_key=["Sample Number"],
        )
    )
    assert contract.column_names == [
        "sample_number",
        "culmen_length_mm",
        "study",
        "row_name",
        "_1960",
    ]
    assert contract.source_names == ["Sample Number", "Culmen Length (mm)", "studyName", "", "1960"]
    assert contract.primary_key == ("sample_number",)
    assert [c.name for c in contract.renamed_columns] == contract.column_names
    assert contract.arrow_schema.names == contract.column_names
    assert column_label(contract.column("culmen_length_mm")) == (
        "'Culmen Length (mm)' (warehouse column culmen_length_mm)"
    )


def test_primary_key_may_name_the_warehouse_column() -> None:
    doc = contract_doc(
        columns=[{"name": "Order ID", "type": "int64", "nullable": False}],
        primary_key=["order_id"],
        write_mode="merge",
    )
    assert parse_contract(doc).primary_key == ("order_id",)


def test_case_insensitive_match_refuses_names_equal_but_for_case() -> None:
    doc = contract_doc(
        columns=[
            {"name": "Name", "type": "string", "column": "name_a"},
            {"name": "NAME", "type": "string", "column": "name_b"},
        ],
        primary_key=[],
    )
    assert parse_contract(doc).match == "exact"  # two file columns, told apart by case
    doc["match"] = "case_insensitive"
    with pytest.raises(ContractFileError) as caught:
        parse_contract(doc)
    assert caught.value.problems == (
        (
            "columns[1].name",
            "'NAME' names the same file column as columns[0] ('Name') "
            "(ignoring case: match is case_insensitive)",
        ),
    )


def test_unicode_and_long_names_get_distinct_identifiers() -> None:
    long_a = "Average number of widgets produced per production line per shift, plant A"
    long_b = "Average number of widgets produced per production line per shift, plant B"
    contract = parse_contract(
        contract_doc(
            columns=[
                {"name": "주문번호", "type": "int64", "nullable": False},
                {"name": long_a, "type": "float64"},
                {"name": long_b, "type": "float64"},
            ],
            primary_key=["주문번호"],
        )
    )
    key, first, second = contract.column_names
    assert key == "jumunbeonho"
    assert len(first) == len(second) == 63
    assert first != second
    assert first[:54] == second[:54]
    assert all(check_identifier(name, "column") for name in contract.column_names)


# --- registry ------------------------------------------------------------------------------------


def test_registry_loads_shipped_and_extra_directories(tmp_path: Path) -> None:
    extra = tmp_path / "extra"
    write_contract(extra, contract_doc())
    write_contract(extra, contract_doc(name="clicks"), file_name="clicks.yml")
    registry = ContractRegistry.from_directories(SHIPPED_DATASETS_DIR, None, extra)
    assert "orders" in registry
    assert "customers" in registry
    assert "events" in registry and "clicks" in registry
    assert len(registry) == 4
    assert registry.problems == []
    assert [c.name for c in registry] == ["clicks", "customers", "events", "orders"]
    orders = registry.get("orders")
    assert orders.write_mode == "append"
    assert orders.primary_key == ("order_id",)
    assert orders.column("amount").type.arrow_type == pa.decimal128(12, 2)
    assert registry.get("customers").write_mode == "merge"
    assert registry.get("events").path == extra / "events.yaml"


def test_a_broken_contract_is_a_problem_of_its_own_dataset_only(tmp_path: Path) -> None:
    extra = tmp_path / "extra"
    write_contract(extra, contract_doc())
    broken = write_contract(extra, contract_doc(name="clicks", write_mode="merge", primary_key=[]))
    unreadable = extra / "views.yaml"
    unreadable.write_text("name: [unclosed\n", encoding="utf-8")
    registry = ContractRegistry.from_directories(SHIPPED_DATASETS_DIR, extra)
    assert [c.name for c in registry] == ["customers", "events", "orders"]
    assert registry.broken_datasets == ["clicks", "views"]
    assert [p.path for p in registry.problems] == [broken, unreadable]
    assert registry.get("events").name == "events"
    with pytest.raises(CommandError) as caught:
        registry.get("clicks")
    assert caught.value.field == "dataset"
    assert str(caught.value) == (
        f"dataset: dataset 'clicks' cannot be used: invalid dataset contract {broken}: "
        "primary_key: write_mode 'merge' needs a non-empty primary_key"
    )
    with pytest.raises(CommandError, match=r"dataset 'views' cannot be used: cannot read"):
        registry.get("views")


def test_two_files_of_one_dataset_are_both_refused(tmp_path: Path) -> None:
    extra = tmp_path / "extra"
    duplicate = write_contract(extra, contract_doc(name="orders"))
    registry = ContractRegistry.from_directories(SHIPPED_DATASETS_DIR, extra)
    assert "orders" not in registry
    assert "customers" in registry
    shipped = SHIPPED_DATASETS_DIR / "orders.yaml"
    assert sorted(str(p.path) for p in registry.problems) == sorted([str(shipped), str(duplicate)])
    with pytest.raises(CommandError) as caught:
        registry.get("orders")
    message = str(caught.value)
    assert "is also defined by" in message
    assert str(shipped) in message and str(duplicate) in message


def test_a_missing_directory_is_reported_not_fatal(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    registry = ContractRegistry.from_directories(SHIPPED_DATASETS_DIR, missing)
    assert registry.missing_directories == (missing,)
    assert "orders" in registry
    with pytest.raises(CommandError) as caught:
        registry.get("events")
    assert f"contract folder {missing} does not exist" in str(caught.value)


def test_registry_get_unknown_dataset_lists_known() -> None:
    registry = ContractRegistry.from_directories(SHIPPED_DATASETS_DIR)
    with pytest.raises(CommandError) as caught:
        registry.get("nope")
    assert caught.value.field == "dataset"
    assert "unknown dataset 'nope'" in str(caught.value)
    assert "(known: customers, orders)" in str(caught.value)


def test_empty_registry_says_none_known() -> None:
    with pytest.raises(CommandError, match=r"known: none"):
        ContractRegistry([]).get("orders")
