"""Unit tier: `DwIngestionCommand` parsing, defaults and refusals.

Pure: no database, no Dagster.
"""

import uuid
from datetime import UTC, date, datetime, timedelta, timezone

import pytest

from dw_pipelines.core.commands import (
    DEFAULT_TENANT,
    FIRST_BUSINESS_DATE,
    DwIngestionCommand,
    infer_format,
)
from dw_pipelines.core.errors import CommandError

VALID = {"dataset": "orders", "source_uri": "/landing/orders_2024-01-01.csv"}


def parse(**overrides: object) -> DwIngestionCommand:
    return DwIngestionCommand.parse({**VALID, **overrides})


def refusal(data: dict) -> CommandError:
    with pytest.raises(CommandError) as caught:
        DwIngestionCommand.parse(data)
    return caught.value


# --- defaults ------------------------------------------------------------------------------------


def test_job_id_is_generated_uuid_and_idempotency_key_defaults_to_it() -> None:
    first, second = parse(), parse()
    assert str(uuid.UUID(first.job_id)) == first.job_id
    assert first.job_id != second.job_id
    assert first.idempotency_key == first.job_id
    assert first.tenant_id == DEFAULT_TENANT == "default"
    assert first.requested_by is None


def test_explicit_job_id_and_idempotency_key_are_kept() -> None:
    command = parse(job_id="job-1:retry.2", idempotency_key="client-key-42", tenant_id="acme_eu")
    assert command.job_id == "job-1:retry.2"
    assert command.idempotency_key == "client-key-42"
    assert command.tenant_id == "acme_eu"


def test_explicit_job_id_is_the_idempotency_key_when_none_given() -> None:
    assert parse(job_id="abc").idempotency_key == "abc"


def test_none_values_are_treated_as_absent() -> None:
    command = parse(job_id=None, format=None, business_date=None, tenant_id=None)
    assert uuid.UUID(command.job_id)
    assert command.format == "csv"
    assert command.tenant_id == "default"


@pytest.mark.parametrize(
    ("source_uri", "fmt"),
    [
        ("/l/a.csv", "csv"),
        ("/l/A.CSV", "csv"),
        ("/l/a.csv.gz", "csv"),
        ("/l/a.csv.bz2", "csv"),
        ("/l/a.parquet", "parquet"),
        ("/l/a.pq", "parquet"),
        ("/l/a.jsonl", "jsonl"),
        ("/l/a.ndjson", "jsonl"),
        ("/l/a.JSONL.GZ", "jsonl"),
        ("file:///l/dir.parquet/part-0.csv", "csv"),
    ],
)
def test_format_is_inferred_from_extension(source_uri: str, fmt: str) -> None:
    assert infer_format(source_uri) == fmt
    assert parse(source_uri=source_uri).format == fmt


@pytest.mark.parametrize("source_uri", ["/l/data.bin", "/l/csv", "/l/a.csv.txt", "/l/a.gz"])
def test_infer_format_returns_none_for_unknown(source_uri: str) -> None:
    assert infer_format(source_uri) is None


@pytest.mark.parametrize(
    ("source_uri", "fmt"),
    [("/l/a.csv", "parquet"), ("/l/data.bin", "jsonl"), ("/l/a.parquet", "csv")],
)
def test_explicit_format_wins(source_uri: str, fmt: str) -> None:
    assert parse(source_uri=source_uri, format=fmt).format == fmt


def test_business_date_defaults_to_requested_at_utc_date() -> None:
    # 23:30 at UTC-05:00 is already the next day in UTC.
    command = parse(requested_at="2024-05-01T23:30:00-05:00")
    assert command.requested_at == datetime(2024, 5, 2, 4, 30, tzinfo=UTC)
    assert command.requested_at.utcoffset() == timedelta(0)
    assert command.business_date == date(2024, 5, 2)


def test_naive_requested_at_is_utc() -> None:
    command = parse(requested_at=datetime(2024, 5, 1, 23, 30))
    assert command.requested_at == datetime(2024, 5, 1, 23, 30, tzinfo=UTC)
    assert command.requested_at.tzinfo is not None
    assert command.business_date == date(2024, 5, 1)


def test_aware_requested_at_is_converted_to_utc() -> None:
    tokyo = timezone(timedelta(hours=9))
    command = parse(requested_at=datetime(2024, 5, 2, 1, 0, tzinfo=tokyo))
    assert command.requested_at == datetime(2024, 5, 1, 16, 0, tzinfo=UTC)
    assert command.requested_at.utcoffset() == timedelta(0)
    assert command.business_date == date(2024, 5, 1)


def test_requested_at_defaults_to_now_utc() -> None:
    before = datetime.now(UTC)
    command = parse()
    after = datetime.now(UTC)
    assert before <= command.requested_at <= after
    assert command.business_date == command.requested_at.date()


def test_explicit_business_date_is_kept() -> None:
    command = parse(business_date="2024-02-29", requested_at="2025-01-01T00:00:00Z")
    assert command.business_date == date(2024, 2, 29)


def test_parse_returns_existing_command_unchanged() -> None:
    command = parse()
    assert DwIngestionCommand.parse(command) is command


def test_command_is_frozen() -> None:
    command = parse()
    with pytest.raises(ValueError):
        command.dataset = "customers"  # type: ignore[misc]


# --- refusals ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "field", "detail"),
    [
        pytest.param({**VALID, "format": "xml"}, "format", "unknown format 'xml'", id="xml"),
        pytest.param(
            {**VALID, "source_uri": "/l/data.bin"},
            "format",
            "cannot infer the format of '/l/data.bin'",
            id="no-inferable-format",
        ),
        pytest.param({"dataset": "orders"}, "source_uri", "is required", id="missing-source"),
        pytest.param({**VALID, "source_uri": "   "}, "source_uri", "must not be blank", id="blank"),
        pytest.param({**VALID, "source_uri": ""}, "source_uri", "at least 1", id="empty-source"),
        pytest.param({"source_uri": "/l/a.csv"}, "dataset", "is required", id="missing-dataset"),
        pytest.param({**VALID, "dataset": ""}, "dataset", "at least 1", id="empty-dataset"),
        pytest.param(
            {**VALID, "business_date": "2024-13-01"},
            "business_date",
            "'2024-13-01' is not a valid date",
            id="month-13",
        ),
        pytest.param(
            {**VALID, "business_date": "2024-02-30"},
            "business_date",
            "'2024-02-30' is not a valid date",
            id="feb-30",
        ),
        pytest.param(
            {**VALID, "business_date": "20240101"},
            "business_date",
            "'20240101' is not a valid date",
            id="compact-date",
        ),
        pytest.param(
            {**VALID, "business_date": "yesterday"},
            "business_date",
            "'yesterday' is not a valid date",
            id="word-date",
        ),
        pytest.param({**VALID, "job_id": "job 1"}, "job_id", "'job 1' does not match", id="space"),
        pytest.param({**VALID, "job_id": "j" * 129}, "job_id", "does not match", id="too-long"),
        pytest.param({**VALID, "job_id": "-job"}, "job_id", "does not match", id="leading-dash"),
        pytest.param({**VALID, "job_id": "job\n"}, "job_id", "does not match", id="newline"),
        pytest.param(
            {**VALID, "tenant_id": "acme corp"},
            "tenant_id",
            "'acme corp' does not match",
            id="tenant-space",
        ),
        pytest.param({**VALID, "tenant_id": "a:b"}, "tenant_id", "does not match", id="colon"),
        pytest.param({**VALID, "tenant_id": "t" * 65}, "tenant_id", "does not match", id="long"),
        pytest.param(
            {**VALID, "priority": "high"},
            "priority",
            "is not a field of an ingestion command",
            id="extra-field",
        ),
        pytest.param(
            {**VALID, "idempotency_key": "k" * 256}, "idempotency_key", "at most 255", id="key"
        ),
    ],
)
def test_refusal_names_field(data: dict, field: str, detail: str) -> None:
    error = refusal(data)
    assert error.field == field
    assert detail in error.reason
    assert str(error).startswith(f"{field}: ")
    assert error.permanent is True
    assert isinstance(error, ValueError)


@pytest.mark.parametrize("job_id", ["a", "A" * 128, "run.1_2:3-4", "0abc"])
def test_valid_job_ids(job_id: str) -> None:
    assert parse(job_id=job_id).job_id == job_id


# --- business date window ------------------------------------------------------------------------

TODAY = date(2024, 6, 15)


@pytest.mark.parametrize(
    "business_date", [FIRST_BUSINESS_DATE, date(2022, 3, 4), TODAY - timedelta(days=1), TODAY]
)
def test_check_business_date_accepts_window(business_date: date) -> None:
    parse(business_date=business_date.isoformat()).check_business_date(TODAY)


@pytest.mark.parametrize(
    ("business_date", "detail"),
    [
        (FIRST_BUSINESS_DATE - timedelta(days=1), "is before the first business date 2020-01-01"),
        (date(1999, 12, 31), "is before the first business date"),
        (TODAY + timedelta(days=1), "is in the future (today is 2024-06-15, UTC)"),
        (date(2030, 1, 1), "is in the future"),
    ],
)
def test_check_business_date_refuses_outside_window(business_date: date, detail: str) -> None:
    command = parse(business_date=business_date.isoformat())
    with pytest.raises(CommandError) as caught:
        command.check_business_date(TODAY)
    assert caught.value.field == "business_date"
    assert business_date.isoformat() in caught.value.reason
    assert detail in caught.value.reason


# --- payload round trip --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"job_id": "j-1", "tenant_id": "acme", "requested_by": "alice", "format": "parquet"},
        {"business_date": "2021-07-04", "requested_at": "2024-05-01T23:30:00+02:00"},
        {"source_uri": "file:///landing/x.ndjson", "idempotency_key": "k"},
    ],
)
def test_to_payload_round_trips(overrides: dict) -> None:
    command = parse(**overrides)
    payload = command.to_payload()
    assert isinstance(payload["requested_at"], str)
    assert payload["business_date"] == command.business_date.isoformat()
    again = DwIngestionCommand.model_validate(payload)
    assert again == command
    assert again.to_payload() == payload
    assert DwIngestionCommand.parse(payload) == command
