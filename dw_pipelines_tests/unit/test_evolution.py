"""The logic of contract evolution without a database: which type changes are widenings, what a
plan lists for a stored table and a contract, and how `default:` and `renamed_from:` parse."""

import datetime as dt
from decimal import Decimal

import pytest

from dw_pipelines.core.contracts import ColumnType, ContractFileError, parse_contract
from dw_pipelines.core.evolution import (
    RecordedVersion,
    StoredColumn,
    TableShape,
    classify_type_change,
    contract_hash,
    plan_changes,
    schema_document,
)


@pytest.mark.parametrize(
    ("before", "after", "safe"),
    [
        ("int64", "float64", True),
        ("int64", "decimal(19,0)", True),
        ("int64", "decimal(21,2)", True),
        ("int64", "decimal(18,0)", False),  # 19 digits do not fit
        ("int64", "decimal(20,2)", False),
        ("decimal(8,2)", "decimal(10,2)", True),
        ("decimal(8,2)", "decimal(9,3)", True),
        ("decimal(8,2)", "decimal(8,3)", False),  # p' >= p and s' >= s, one integer digit lost
        ("decimal(8,2)", "decimal(8,1)", False),
        ("decimal(8,2)", "decimal(6,2)", False),
        ("date", "timestamp", True),
        ("timestamp", "date", False),
        ("float64", "int64", False),
        ("float64", "decimal(38,10)", False),
        ("string", "int64", False),
        ("int64", "string", False),
        ("bool", "int64", False),
        ("character varying(20)", "string", False),  # a type set by hand
    ],
)
def test_widenings_are_the_lossless_conversions(before: str, after: str, safe: bool) -> None:
    verdict, reason = classify_type_change(before, ColumnType.parse(after))
    assert verdict is safe, reason
    assert reason


BASE = {
    "name": "events",
    "write_mode": "merge",
    "primary_key": ["id"],
    "columns": [
        {"name": "id", "type": "int64", "nullable": False},
        {"name": "note", "type": "string"},
        {"name": "gone", "type": "string"},
    ],
}
STORED = TableShape(
    columns=(
        StoredColumn("id", "int64", False),
        StoredColumn("note", "string", True),
        StoredColumn("gone", "string", True),
    ),
    primary_key=("id",),
    key_name="pk_events",
)


def contract(**changes):
    return parse_contract({**BASE, **changes})


def recorded(document: dict) -> RecordedVersion:
    return RecordedVersion(1, contract_hash(document), document)


def test_a_matching_table_needs_nothing_and_an_unversioned_one_is_recorded() -> None:
    same = contract()
    assert plan_changes(STORED, recorded(schema_document(same)), same) == []
    [change] = plan_changes(STORED, None, same)
    assert (change.kind, change.safe) == ("record_existing", True)


def test_a_rename_without_renamed_from_is_a_drop_and_an_add() -> None:
    columns = [BASE["columns"][0], {"name": "remark", "type": "string"}, BASE["columns"][2]]
    changes = plan_changes(STORED, None, contract(columns=columns))
    assert [(c.kind, c.column, c.safe) for c in changes] == [
        ("add_column", "remark", True),
        ("drop_column", "note", False),
    ]


def test_renamed_from_keeps_the_column_and_applies_once() -> None:
    columns = [
        BASE["columns"][0],
        {"name": "Remark", "type": "string", "renamed_from": "note"},
        BASE["columns"][2],
    ]
    renamed = contract(columns=columns)
    [change] = plan_changes(STORED, None, renamed)
    assert (change.kind, change.before, change.after, change.safe) == (
        "rename_column",
        "note",
        "remark",
        False,
    )
    # Once storage has the new name, the declaration is history: nothing left to do.
    migrated = TableShape(
        (StoredColumn("id", "int64", False), StoredColumn("remark", "string", True),
         StoredColumn("gone", "string", True)),
        ("id",),
        "pk_events",
    )  # fmt: skip
    assert plan_changes(migrated, recorded(schema_document(renamed)), renamed) == []


def test_a_renamed_key_column_keeps_the_key() -> None:
    columns = [
        {"name": "event_id", "type": "int64", "nullable": False, "renamed_from": "id"},
        *BASE["columns"][1:],
    ]
    changes = plan_changes(STORED, None, contract(columns=columns, primary_key=["event_id"]))
    assert [c.kind for c in changes] == ["rename_column"]


def test_key_and_write_mode_changes_are_unsafe() -> None:
    columns = [BASE["columns"][0], {**BASE["columns"][1], "nullable": False}, BASE["columns"][2]]
    rekeyed = plan_changes(STORED, None, contract(columns=columns, primary_key=["id", "note"]))
    assert [(c.kind, c.safe) for c in rekeyed] == [
        ("set_not_null", False),
        ("change_primary_key", False),
    ]
    appended = plan_changes(STORED, None, contract(write_mode="append", primary_key=[]))
    assert [(c.kind, c.before, c.after) for c in appended] == [
        ("change_write_mode", "merge", "append")
    ]


def test_metadata_changes_are_safe_and_say_what_changed() -> None:
    before = contract()
    after = contract(description="described", owner="a@example.com")
    [change] = plan_changes(STORED, recorded(schema_document(before)), after)
    assert (change.kind, change.safe) == ("change_metadata", True)
    assert "description, owner" in change.reason
    assert contract_hash(schema_document(before)) != contract_hash(schema_document(after))


def test_source_names_and_csv_options_are_not_part_of_the_schema() -> None:
    columns = [{**BASE["columns"][0], "column": "id", "name": "Event ID"}, *BASE["columns"][1:]]
    other = contract(columns=columns, primary_key=["Event ID"], csv={"delimiter": ";"})
    assert contract_hash(schema_document(other)) == contract_hash(schema_document(contract()))


def test_new_columns_are_safe_when_stored_rows_can_get_a_value() -> None:
    columns = [
        *BASE["columns"],
        {"name": "a", "type": "string"},
        {"name": "b", "type": "int64", "nullable": False, "default": 0},
        {"name": "c", "type": "int64", "nullable": False},
    ]
    changes = plan_changes(STORED, None, contract(columns=columns))
    assert [(c.column, c.safe) for c in changes] == [("a", True), ("b", True), ("c", False)]
    assert "declare `default:`" in changes[2].reason


@pytest.mark.parametrize(
    ("type_", "default", "parsed"),
    [
        ("int64", 7, 7),
        ("int64", "-12", -12),
        ("float64", "1.5", 1.5),
        ("decimal(8,2)", "12.25", Decimal("12.25")),
        ("bool", True, True),
        ("string", 0, "0"),
        ("date", dt.date(2026, 1, 2), dt.date(2026, 1, 2)),
        ("date", "2026-01-02", dt.date(2026, 1, 2)),
        ("timestamp", "2026-01-02T03:04:05+02:00", dt.datetime(2026, 1, 2, 1, 4, 5, tzinfo=dt.UTC)),
        ("timestamp", "2026-01-02", dt.datetime(2026, 1, 2, tzinfo=dt.UTC)),
    ],
)
def test_defaults_parse_to_their_column_type(type_: str, default, parsed) -> None:
    columns = [*BASE["columns"], {"name": "x", "type": type_, "default": default}]
    assert contract(columns=columns).column("x").default == parsed


@pytest.mark.parametrize(
    ("column", "field", "words"),
    [
        ({"name": "x", "type": "int64", "default": "seven"}, "default", "is not a int64 value"),
        ({"name": "x", "type": "int64", "default": True}, "default", "is not a int64 value"),
        ({"name": "x", "type": "bool", "default": "yes"}, "default", "is not a bool value"),
        ({"name": "x", "type": "decimal(4,2)", "default": "123.4"}, "default", "decimal(4,2)"),
        ({"name": "x", "type": "decimal(4,2)", "default": "1.234"}, "default", "decimal(4,2)"),
        ({"name": "x", "type": "date", "default": "2026-13-01"}, "default", "not a date"),
        ({"name": "x", "type": "string", "renamed_from": "note"}, "renamed_from", "still a col"),
        ({"name": "x", "type": "string", "renamed_from": "x"}, "renamed_from", "own name"),
    ],
)
def test_bad_defaults_and_renames_are_refused_with_their_field(column, field, words) -> None:
    with pytest.raises(ContractFileError) as refused:
        contract(columns=[*BASE["columns"], column])
    [(path, reason)] = refused.value.problems
    assert path == f"columns[3].{field}"
    assert words in reason


def test_renamed_from_accepts_the_old_file_name() -> None:
    columns = [*BASE["columns"][:2], {"name": "Gone Now", "type": "string",
                                      "renamed_from": "Old Name"}]  # fmt: skip
    assert contract(columns=columns).column("gone_now").renamed_from == "old_name"


@pytest.mark.parametrize(
    ("value", "type_", "fits"),
    [
        ("1.25", "decimal(8,2)", True),
        ("1.250", "decimal(8,2)", True),  # trailing zeros are not precision
        ("1.25", "decimal(8,1)", False),
        ("123456.78", "decimal(8,2)", True),
        ("1234567.8", "decimal(8,2)", False),
        ("0", "decimal(1,1)", True),
        ("0.5", "decimal(1,1)", True),
        ("1", "decimal(1,1)", False),
        ("-99.99", "decimal(4,2)", True),
        ("1E+3", "decimal(4,0)", True),
        ("1E+3", "decimal(3,0)", False),
        ("NaN", "decimal(8,2)", False),
    ],
)
def test_decimal_fits_means_stored_without_rounding(value: str, type_: str, fits: bool) -> None:
    from dw_pipelines.core.contracts import decimal_fits

    assert decimal_fits(Decimal(value), ColumnType.parse(type_)) is fits
