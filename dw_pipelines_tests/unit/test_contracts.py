"""Unit tier: dataset contract parsing and the contract registry (pure, no database, no Dagster)."""

import copy
from pathlib import Path

import pyarrow as pa
import pytest
import yaml

from dw_pipelines.core.contracts import (
    ColumnType,
    ContractRegistry,
    check_identifier,
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
        "columns.1.type",
        "unknown type 'varchar'",
        id="unknown-type",
    ),
    pytest.param(
        {"columns": [BASE["columns"][0], column("Payload")]},
        "columns.1.name",
        "'Payload' must match",
        id="upper-case",
    ),
    pytest.param(
        {"columns": [BASE["columns"][0], column("1payload")]},
        "columns.1.name",
        "'1payload' must match",
        id="starts-with-digit",
    ),
    pytest.param(
        {"columns": [BASE["columns"][0], column("p" * 64)]},
        "columns.1.name",
        "at most 63 characters",
        id="too-long",
    ),
    pytest.param(
        {"columns": [BASE["columns"][0], column("x; drop table")]},
        "columns.1.name",
        "'x; drop table' must match",
        id="sql-injection",
    ),
    pytest.param(
        {"columns": [BASE["columns"][0], column("_dw_job_id")]},
        "columns.1.name",
        "'_dw_' are reserved",
        id="reserved-prefix",
    ),
    pytest.param(
        {"columns": [BASE["columns"][0], column(), column()]},
        "columns:",
        "duplicate column names ['payload']",
        id="duplicate-column",
    ),
    pytest.param(
        {"primary_key": ["missing_id"]},
        "primary_key:",
        "'missing_id' is not a declared column",
        id="pk-unknown-column",
    ),
    pytest.param(
        {"primary_key": ["payload"]},
        "primary_key:",
        "column 'payload' must be declared nullable: false",
        id="pk-nullable-column",
    ),
    pytest.param(
        {"primary_key": [], "write_mode": "merge"},
        "primary_key:",
        "'merge' needs a non-empty primary_key",
        id="merge-without-pk",
    ),
    pytest.param({"partition_by": "day"}, "partition_by", "Extra inputs", id="extra-field"),
    pytest.param(
        {"columns": [BASE["columns"][0], column(format="iso")]},
        "columns.1.format",
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


def test_contract_column_with_trailing_newline_is_refused() -> None:
    doc = contract_doc(columns=[BASE["columns"][0], column("payload\n")])
    with pytest.raises(ConfigurationError, match=r"columns\.1\.name"):
        parse_contract(doc)


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
    assert [c.name for c in registry] == ["clicks", "customers", "events", "orders"]
    orders = registry.get("orders")
    assert orders.write_mode == "append"
    assert orders.primary_key == ("order_id",)
    assert orders.column("amount").type.arrow_type == pa.decimal128(12, 2)
    assert registry.get("customers").write_mode == "merge"
    assert registry.get("events").path == extra / "events.yaml"


def test_registry_refuses_duplicate_dataset_across_directories(tmp_path: Path) -> None:
    extra = tmp_path / "extra"
    orders_doc = contract_doc(name="orders")
    duplicate = write_contract(extra, orders_doc)
    with pytest.raises(ConfigurationError, match="dataset 'orders' is defined twice") as caught:
        ContractRegistry.from_directories(SHIPPED_DATASETS_DIR, extra)
    assert str(duplicate) in str(caught.value)
    assert str(SHIPPED_DATASETS_DIR / "orders.yaml") in str(caught.value)


def test_registry_refuses_missing_directory(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(ConfigurationError, match="does not exist") as caught:
        ContractRegistry.from_directories(missing)
    assert str(missing) in str(caught.value)


def test_registry_reports_bad_file_in_directory(tmp_path: Path) -> None:
    path = write_contract(tmp_path, contract_doc(write_mode="merge", primary_key=[]))
    with pytest.raises(ConfigurationError, match="primary_key") as caught:
        ContractRegistry.from_directories(tmp_path)
    assert str(path) in str(caught.value)


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
