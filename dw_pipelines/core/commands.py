"""`DwIngestionCommand`: "load this file into dataset X for tenant T", validated at the door.

A command is checked in two stages. `DwIngestionCommand.parse` checks what the command says on its
own (field formats, the date, the format name); `validate_against` checks it against the world
(the dataset exists, the source file exists inside a landing root). Both raise `CommandError`
naming the field, so a gateway can report it back to its caller.
"""

import re
import uuid
from collections.abc import Mapping
from datetime import UTC, date, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from dw_pipelines.core.errors import CommandError

# `json`: one array of objects (or JSON Lines, when the file starts with an object).
FORMATS = ("csv", "parquet", "jsonl", "json")
_EXTENSION_FORMATS = {
    ".csv": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "json",
}
_COMPRESSION_SUFFIXES = (".gz", ".bz2", ".zst", ".lz4")
# job ids travel as Dagster run keys and run tags: keep them short and tag-safe.
JOB_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"
TENANT_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
DEFAULT_TENANT = "default"
# Storage assets are partitioned by business date (daily, bounded); dates before this one have no
# partition. Changing it changes the Dagster partitions definition.
FIRST_BUSINESS_DATE = date(2020, 1, 1)


def infer_format(source_uri: str) -> str | None:
    """Format from the file name: `x.csv`, `x.csv.gz`, `x.parquet`, `x.jsonl` ..."""
    name = source_uri.rsplit("/", 1)[-1].lower()
    for suffix in _COMPRESSION_SUFFIXES:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    for extension, fmt in _EXTENSION_FORMATS.items():
        if name.endswith(extension):
            return fmt
    return None


class DwIngestionCommand(BaseModel):
    """One ingestion request. Build with `DwIngestionCommand.parse(...)` to get `CommandError`s."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    job_id: str = Field(default_factory=lambda: str(uuid.uuid4()), pattern=JOB_ID_PATTERN)
    idempotency_key: str = Field(default="", max_length=255)
    tenant_id: str = Field(default=DEFAULT_TENANT, pattern=TENANT_PATTERN)
    dataset: str = Field(min_length=1, max_length=63)
    source_uri: str = Field(min_length=1, max_length=2048)
    format: Literal["csv", "parquet", "jsonl", "json"] | None = None
    business_date: date | None = None
    requested_by: str | None = Field(default=None, max_length=255)
    requested_at: datetime = Field(default_factory=lambda: datetime.now(UTC))

    @field_validator("business_date", mode="before")
    @classmethod
    def _strict_date(cls, value: Any) -> Any:
        if isinstance(value, str) and not re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
            raise ValueError(f"'{value}' is not a date in YYYY-MM-DD form")
        return value

    @field_validator("source_uri")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be blank")
        return value

    @field_validator("requested_at")
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)

    @model_validator(mode="after")
    def _defaults(self) -> "DwIngestionCommand":
        # Frozen model: fill derived defaults through object.__setattr__ once, at validation.
        if not self.idempotency_key:
            object.__setattr__(self, "idempotency_key", self.job_id)
        if self.format is None:
            inferred = infer_format(self.source_uri)
            if inferred is None:
                raise ValueError(
                    f"format: cannot infer the format of '{self.source_uri}' from its extension; "
                    f"pass one of {', '.join(FORMATS)}"
                )
            object.__setattr__(self, "format", inferred)
        if self.business_date is None:
            object.__setattr__(self, "business_date", self.requested_at.date())
        return self

    @classmethod
    def parse(cls, data: "Mapping[str, Any] | DwIngestionCommand") -> "DwIngestionCommand":
        """Validate a mapping (e.g. a JSON payload); `CommandError` names the first bad field."""
        if isinstance(data, DwIngestionCommand):
            return data
        cleaned = {k: v for k, v in dict(data).items() if v is not None}
        try:
            return cls.model_validate(cleaned)
        except ValidationError as exc:
            raise _command_error(exc) from None

    def check_business_date(self, today: date) -> None:
        """Refuse dates without a partition: before FIRST_BUSINESS_DATE or after `today` (UTC)."""
        assert self.business_date is not None  # filled in by validation
        if self.business_date < FIRST_BUSINESS_DATE:
            raise CommandError(
                "business_date",
                f"{self.business_date.isoformat()} is before the first business date "
                f"{FIRST_BUSINESS_DATE.isoformat()}",
            )
        if self.business_date > today:
            raise CommandError(
                "business_date",
                f"{self.business_date.isoformat()} is in the future "
                f"(today is {today.isoformat()}, UTC)",
            )

    def to_payload(self) -> dict[str, Any]:
        """The JSON document stored in the outbox `payload` column."""
        return self.model_dump(mode="json")


def _command_error(exc: ValidationError) -> CommandError:
    err = exc.errors()[0]
    field = ".".join(str(p) for p in err["loc"]) or "command"
    message = err["msg"]
    if message.startswith("Value error, "):
        message = message[len("Value error, ") :]
    if err["type"] == "missing":
        message = "is required"
    elif err["type"] == "extra_forbidden":
        message = "is not a field of an ingestion command"
    elif err["type"] == "literal_error" and field == "format":
        message = f"unknown format {err.get('input')!r}; expected one of {', '.join(FORMATS)}"
    elif err["type"] == "string_pattern_mismatch":
        message = f"{err.get('input')!r} does not match {err['ctx']['pattern']}"
    elif field == "business_date":
        message = f"{err.get('input')!r} is not a valid date (YYYY-MM-DD)"
    if field == "command" and message.startswith("format:"):
        field, message = "format", message[len("format: ") :]
    return CommandError(field, message)
