"""Dataset contracts: one YAML file per dataset, the single source of table and column names.

A contract fixes a dataset's columns and types, its primary key and its write mode. Every SQL
identifier the warehouse uses comes from a contract and is checked here against a strict pattern,
so no identifier ever comes from a command payload.

Contract file format::

    name: orders                    # dataset name = table name in dw_staging / dw_storage
    description: ...                # optional
    owner: team@example.com         # optional
    write_mode: append              # append (replace this job's rows) | merge (upsert by key)
    primary_key: [order_id]         # may be empty for append
    columns:
      - {name: order_id, type: int64, nullable: false}
      - {name: amount, type: "decimal(12,2)"}
    csv: {delimiter: ",", null_values: [""], encoding: utf-8}   # optional
    freshness: {max_age_hours: 26}  # optional: storage is stale when no job landed for longer
"""

import codecs
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pyarrow as pa
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from dw_pipelines.core.errors import CommandError, ConfigurationError

IDENTIFIER_PATTERN = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
# Names the warehouse adds itself; a contract may not declare them.
RESERVED_COLUMN_PREFIX = "_dw_"
_DECIMAL_PATTERN = re.compile(r"^decimal\(\s*(\d+)\s*,\s*(\d+)\s*\)$")
SIMPLE_TYPES = ("string", "int64", "float64", "bool", "date", "timestamp")
TYPE_GRAMMAR = "string, int64, float64, bool, date, timestamp, decimal(p,s)"


@dataclass(frozen=True)
class ColumnType:
    """A contract type. `name` is one of SIMPLE_TYPES or `decimal`."""

    name: str
    precision: int | None = None
    scale: int | None = None

    @classmethod
    def parse(cls, text: str) -> "ColumnType":
        text = text.strip().lower()
        if text in SIMPLE_TYPES:
            return cls(text)
        match = _DECIMAL_PATTERN.match(text)
        if match:
            precision, scale = int(match.group(1)), int(match.group(2))
            if not 1 <= precision <= 38 or scale > precision:
                raise ValueError(f"decimal({precision},{scale}) needs 1 <= p <= 38 and s <= p")
            return cls("decimal", precision, scale)
        raise ValueError(f"unknown type '{text}'; expected one of {TYPE_GRAMMAR}")

    def __str__(self) -> str:
        if self.name == "decimal":
            return f"decimal({self.precision},{self.scale})"
        return self.name

    @property
    def arrow_type(self) -> pa.DataType:
        if self.name == "decimal":
            return pa.decimal128(self.precision, self.scale)
        return {
            "string": pa.string(),
            "int64": pa.int64(),
            "float64": pa.float64(),
            "bool": pa.bool_(),
            "date": pa.date32(),
            # Timestamps are instants: stored as UTC, naive input is read as UTC.
            "timestamp": pa.timestamp("us", tz="UTC"),
        }[self.name]


@dataclass(frozen=True)
class ColumnSpec:
    name: str
    type: ColumnType
    nullable: bool = True
    description: str | None = None


@dataclass(frozen=True)
class CsvOptions:
    delimiter: str = ","
    null_values: tuple[str, ...] = ("",)
    encoding: str = "utf-8"


@dataclass(frozen=True)
class DatasetContract:
    name: str
    columns: tuple[ColumnSpec, ...]
    primary_key: tuple[str, ...]
    write_mode: Literal["append", "merge"]
    description: str | None = None
    owner: str | None = None
    csv: CsvOptions = field(default_factory=CsvOptions)
    # Hours after the last promoted job when storage counts as stale (None: no freshness check).
    freshness_max_age_hours: float | None = None
    path: Path | None = None

    @property
    def required_columns(self) -> list[str]:
        return [c.name for c in self.columns if not c.nullable]

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]

    @property
    def arrow_schema(self) -> pa.Schema:
        return pa.schema(
            [pa.field(c.name, c.type.arrow_type, nullable=c.nullable) for c in self.columns]
        )

    def column(self, name: str) -> ColumnSpec:
        for column in self.columns:
            if column.name == name:
                return column
        raise KeyError(name)


class _ColumnModel(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    type: str
    nullable: bool = True
    description: str | None = None

    @field_validator("name")
    @classmethod
    def _name_is_identifier(cls, value: str) -> str:
        check_identifier(value, "column name")
        if value.startswith(RESERVED_COLUMN_PREFIX):
            raise ValueError(f"column names starting with '{RESERVED_COLUMN_PREFIX}' are reserved")
        return value

    @field_validator("type")
    @classmethod
    def _type_parses(cls, value: str) -> str:
        ColumnType.parse(value)
        return value


class _CsvModel(BaseModel):
    model_config = ConfigDict(extra="forbid")
    delimiter: str = ","
    null_values: list[str] = Field(default_factory=lambda: [""])
    encoding: str = "utf-8"

    @field_validator("delimiter")
    @classmethod
    def _single_char(cls, value: str) -> str:
        if len(value) != 1:
            raise ValueError("delimiter must be exactly one character")
        return value

    @field_validator("encoding")
    @classmethod
    def _known_encoding(cls, value: str) -> str:
        try:
            codecs.lookup(value)
        except LookupError:
            raise ValueError(f"unknown encoding '{value}'") from None
        return value


class _FreshnessModel(BaseModel):
    model_config = ConfigDict(extra="forbid")
    max_age_hours: float = Field(gt=0)


class _ContractModel(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    columns: list[_ColumnModel] = Field(min_length=1)
    primary_key: list[str]
    write_mode: Literal["append", "merge"]
    description: str | None = None
    owner: str | None = None
    csv: _CsvModel = Field(default_factory=_CsvModel)
    freshness: _FreshnessModel | None = None

    @field_validator("name")
    @classmethod
    def _name_is_identifier(cls, value: str) -> str:
        check_identifier(value, "dataset name")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> "_ContractModel":
        names = [c.name for c in self.columns]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"columns: duplicate column names {duplicates}")
        for key in self.primary_key:
            if key not in names:
                raise ValueError(f"primary_key: '{key}' is not a declared column")
            if next(c for c in self.columns if c.name == key).nullable:
                raise ValueError(f"primary_key: column '{key}' must be declared nullable: false")
        if self.write_mode == "merge" and not self.primary_key:
            raise ValueError("primary_key: write_mode 'merge' needs a non-empty primary_key")
        return self


def check_identifier(value: str, what: str) -> str:
    """Refuse anything that is not a plain lower-case SQL identifier."""
    if not IDENTIFIER_PATTERN.fullmatch(value):
        raise ValueError(
            f"{what} '{value}' must match {IDENTIFIER_PATTERN.pattern} "
            "(lower-case letters, digits, underscore; at most 63 characters)"
        )
    return value


def parse_contract(data: object, path: Path | None = None) -> DatasetContract:
    """Validate one contract document; errors name the file and the field."""
    where = str(path) if path else "<contract>"
    try:
        model = _ContractModel.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'contract'}: {err['msg']}"
            for err in exc.errors()
        )
        raise ConfigurationError(f"invalid dataset contract {where}: {problems}") from None
    return DatasetContract(
        name=model.name,
        columns=tuple(
            ColumnSpec(c.name, ColumnType.parse(c.type), c.nullable, c.description)
            for c in model.columns
        ),
        primary_key=tuple(model.primary_key),
        write_mode=model.write_mode,
        description=model.description,
        owner=model.owner,
        csv=CsvOptions(model.csv.delimiter, tuple(model.csv.null_values), model.csv.encoding),
        freshness_max_age_hours=model.freshness.max_age_hours if model.freshness else None,
        path=path,
    )


def load_contract_file(path: Path) -> DatasetContract:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigurationError(f"cannot read dataset contract {path}: {exc}") from None
    contract = parse_contract(data, path)
    if contract.name != path.stem:
        raise ConfigurationError(
            f"invalid dataset contract {path}: name '{contract.name}' must match the file name"
        )
    return contract


class ContractRegistry:
    """The known datasets, by name."""

    def __init__(self, contracts: Iterable[DatasetContract]):
        self._contracts: dict[str, DatasetContract] = {}
        for contract in contracts:
            if contract.name in self._contracts:
                first = self._contracts[contract.name].path
                raise ConfigurationError(
                    f"dataset '{contract.name}' is defined twice: {first} and {contract.path}"
                )
            self._contracts[contract.name] = contract

    @classmethod
    def from_directories(cls, *directories: Path | None) -> "ContractRegistry":
        """Load every `*.yaml`/`*.yml` file of the given directories (None entries are skipped)."""
        contracts = []
        for directory in directories:
            if directory is None:
                continue
            if not directory.is_dir():
                raise ConfigurationError(f"dataset contract directory {directory} does not exist")
            files = sorted([*directory.glob("*.yaml"), *directory.glob("*.yml")])
            contracts.extend(load_contract_file(f) for f in files)
        return cls(contracts)

    def get(self, name: str) -> DatasetContract:
        try:
            return self._contracts[name]
        except KeyError:
            known = ", ".join(sorted(self._contracts)) or "none"
            raise CommandError("dataset", f"unknown dataset '{name}' (known: {known})") from None

    def __contains__(self, name: object) -> bool:
        return name in self._contracts

    def __iter__(self) -> Iterator[DatasetContract]:
        return iter(sorted(self._contracts.values(), key=lambda c: c.name))

    def __len__(self) -> int:
        return len(self._contracts)
