"""Dataset contracts: one YAML file per dataset, the single source of table and column names.

A contract fixes a dataset's columns and types, its primary key and its write mode. It speaks the
file's language: a column's `name` is what the file calls it (any header a real export has), and
its warehouse column is derived by the naming convention (`core.naming`) or given as `column:`.
Only warehouse names reach SQL; each is checked here against a strict pattern, so no identifier
ever comes from a file header or a command payload.

Contract file format::

    name: penguins                  # dataset name = table name in dw_staging / dw_storage
    description: ...                # optional
    owner: team@example.com         # optional
    write_mode: append              # append (replace this job's rows) | merge (upsert by key)
    primary_key: [Sample Number]    # columns by their file name (or warehouse name); may be
                                    # empty for append
    match: exact                    # or case_insensitive: headers matched ignoring case
    extra_columns: fail             # or ignore: file columns the contract does not declare
    missing_columns: fail           # or null: nullable columns absent from a file load as NULL
    columns:
      - {name: Sample Number, type: int64, nullable: false}    # stored as sample_number
      - {name: "Culmen Length (mm)", type: float64}            # stored as culmen_length_mm
      - {name: "", column: row_name, type: string}             # an empty header needs column:
      - {name: Island, type: string, nullable: false, default: unknown}  # stored rows get it
      - {name: Bill Depth, type: float64, renamed_from: culmen_depth_mm} # keeps the old data
    csv: {delimiter: ",", null_values: ["", NA], encoding: utf-8}   # optional
    freshness: {max_age_hours: 26}  # optional: storage is stale when no job landed for longer

Contracts load one file at a time (`ContractRegistry.from_directories`): a broken file is a
problem of its own dataset only, reported with its file, field path and reason, while every
other dataset keeps working.

`default:` and `renamed_from:` describe how storage follows a changed contract
(`core.evolution`): a column added to a dataset that already has rows gets `default` in those
rows (NULL without one), and `renamed_from` names the warehouse column a column used to be
stored as, so that a rename keeps its data instead of dropping one column and adding another.
"""

import codecs
import datetime as dt
import decimal
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from dw_pipelines.core import naming
from dw_pipelines.core.errors import CommandError, ConfigurationError

IDENTIFIER_PATTERN = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
# Names the warehouse adds itself; no warehouse column of a contract may start with it.
RESERVED_COLUMN_PREFIX = naming.RESERVED_PREFIX
_DECIMAL_PATTERN = re.compile(r"^decimal\(\s*(\d+)\s*,\s*(\d+)\s*\)$")
SIMPLE_TYPES = ("string", "int64", "float64", "bool", "date", "timestamp")
TYPE_GRAMMAR = "string, int64, float64, bool, date, timestamp, decimal(p,s)"
MATCH_MODES = ("exact", "case_insensitive")
EXTRA_COLUMN_POLICIES = ("fail", "ignore")
MISSING_COLUMN_POLICIES = ("fail", "null")


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
    """One contract column.

    `name` is the warehouse column, the only name SQL ever sees (a checked identifier, derived by
    `core.naming` or given as `column:`). `source_name` is what the file calls the column (CSV
    header, JSON key, Parquet field): the contract's `name:`. None means the same as `name`.
    """

    name: str
    type: ColumnType
    nullable: bool = True
    description: str | None = None
    source_name: str | None = None
    # The value rows stored before this column existed get (a Python value of `type`; None:
    # NULL). Only used when storage gains the column.
    default: Any = None
    # The warehouse column this column was stored as before a rename (None: not renamed).
    renamed_from: str | None = None

    def __post_init__(self) -> None:
        if self.source_name is None:
            object.__setattr__(self, "source_name", self.name)

    @property
    def source(self) -> str:
        """The file's name for the column (typed as a plain str)."""
        return self.name if self.source_name is None else self.source_name

    @property
    def renamed(self) -> bool:
        """Whether the warehouse column differs from the file's name for it."""
        return self.source != self.name


@dataclass(frozen=True)
class CsvOptions:
    delimiter: str = ","
    null_values: tuple[str, ...] = ("",)
    encoding: str = "utf-8"
    # None: no quoting at all (a quote character is data).
    quote_char: str | None = '"'
    # Lines before the header row (a title, an export banner).
    skip_rows: int = 0
    # strptime formats of date and timestamp text in CSV files (None: ISO 8601).
    date_format: str | None = None
    timestamp_format: str | None = None


@dataclass(frozen=True)
class DatasetContract:
    name: str
    columns: tuple[ColumnSpec, ...]
    primary_key: tuple[str, ...]  # warehouse column names
    write_mode: Literal["append", "merge"]
    description: str | None = None
    owner: str | None = None
    csv: CsvOptions = field(default_factory=CsvOptions)
    # Hours after the last promoted job when storage counts as stale (None: no freshness check).
    freshness_max_age_hours: float | None = None
    path: Path | None = None
    # How a file's column names are compared with the columns' source names.
    match: Literal["exact", "case_insensitive"] = "exact"
    # Columns of a file that the contract does not declare: refused, or left out of the load.
    extra_columns: Literal["fail", "ignore"] = "fail"
    # Nullable contract columns a file does not have: refused, or loaded as NULL.
    missing_columns: Literal["fail", "null"] = "fail"

    @property
    def required_columns(self) -> list[str]:
        return [c.name for c in self.columns if not c.nullable]

    @property
    def column_names(self) -> list[str]:
        """Warehouse column names, in contract order."""
        return [c.name for c in self.columns]

    @property
    def source_names(self) -> list[str]:
        """The file's column names, in contract order."""
        return [c.source for c in self.columns]

    @property
    def renamed_columns(self) -> list[ColumnSpec]:
        return [c for c in self.columns if c.renamed]

    @property
    def arrow_schema(self) -> pa.Schema:
        """The schema of conformed batches (warehouse column names)."""
        return pa.schema(
            [pa.field(c.name, c.type.arrow_type, nullable=c.nullable) for c in self.columns]
        )

    def column(self, name: str) -> ColumnSpec:
        """The column stored as `name`."""
        for column in self.columns:
            if column.name == name:
                return column
        raise KeyError(name)


def column_label(spec: ColumnSpec) -> str:
    """How messages name a column: the file's name, plus the warehouse column where it differs."""
    if spec.renamed:
        return f"'{spec.source}' (warehouse column {spec.name})"
    return f"'{spec.name}'"


class ContractFileError(ConfigurationError):
    """A contract file that cannot be used, with every problem found in it.

    Attributes:
        path: the file (None for a document parsed without one).
        dataset: the dataset it would define (its file name without extension).
        problems: (field path, reason) pairs, e.g. ("columns[3].type", "unknown type 'int'").
    """

    def __init__(
        self,
        path: Path | None,
        dataset: str | None,
        problems: Sequence[tuple[str, str]],
        verb: str = "invalid",
    ):
        self.path = path
        self.dataset = dataset
        self.problems = tuple(problems)
        where = str(path) if path else "<contract>"
        listed = "; ".join(f"{p}: {r}" if p else r for p, r in self.problems)
        super().__init__(f"{verb} dataset contract {where}: {listed}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "file": str(self.path) if self.path else None,
            "dataset": self.dataset,
            "errors": [{"field": p, "reason": r} for p, r in self.problems],
        }


class _ColumnModel(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    column: str | None = None
    type: str
    nullable: bool = True
    description: str | None = None
    # Any: YAML reads `default: 2026-01-01` as a date and `default: 0` as an int.
    default: Any = None
    renamed_from: str | None = None

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
    quote_char: str | None = '"'
    skip_rows: int = Field(default=0, ge=0)
    date_format: str | None = None
    timestamp_format: str | None = None

    @field_validator("delimiter")
    @classmethod
    def _single_char(cls, value: str) -> str:
        if len(value) != 1 or value in "\r\n":
            raise ValueError("delimiter must be exactly one character (not a line break)")
        return value

    @field_validator("quote_char")
    @classmethod
    def _quote_single_char(cls, value: str | None) -> str | None:
        if value is not None and (len(value) != 1 or value in "\r\n"):
            raise ValueError("quote_char must be one character, or null for no quoting")
        return value

    @field_validator("encoding")
    @classmethod
    def _known_encoding(cls, value: str) -> str:
        try:
            codecs.lookup(value)
        except LookupError:
            raise ValueError(f"unknown encoding '{value}'") from None
        return value

    @field_validator("date_format", "timestamp_format")
    @classmethod
    def _strptime_format(cls, value: str | None) -> str | None:
        if value is not None and "%" not in value:
            raise ValueError(f"'{value}' is not a strptime format (e.g. %Y/%m/%d)")
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
    match: Literal["exact", "case_insensitive"] = "exact"
    extra_columns: Literal["fail", "ignore"] = "fail"
    missing_columns: Literal["fail", "null"] = "fail"
    description: str | None = None
    owner: str | None = None
    csv: _CsvModel = Field(default_factory=_CsvModel)
    freshness: _FreshnessModel | None = None


def check_identifier(value: str, what: str) -> str:
    """Refuse anything that is not a plain lower-case SQL identifier."""
    if not IDENTIFIER_PATTERN.fullmatch(value):
        raise ValueError(
            f"{what} '{value}' must match {IDENTIFIER_PATTERN.pattern} "
            "(lower-case letters, digits, underscore; at most 63 characters)"
        )
    return value


def _field_path(location: Sequence[object]) -> str:
    """pydantic's error location as a field path: ('columns', 3, 'type') -> columns[3].type."""
    path = ""
    for part in location:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path


def _pydantic_problems(exc: ValidationError) -> list[tuple[str, str]]:
    problems = []
    for err in exc.errors():
        message = err["msg"]
        if message.startswith("Value error, "):
            message = message[len("Value error, ") :]
        problems.append((_field_path(err["loc"]), message))
    return problems


def _warehouse_columns(model: _ContractModel) -> tuple[list[str | None], list[tuple[str, str]]]:
    """Each column's warehouse name (None where it has none) and the problems found.

    Refused: a `column:` that is not an identifier, a name with no convention name and no
    `column:`, a reserved `_dw_` name, two file names for one warehouse column, and one file
    name twice (under `match: case_insensitive`, twice ignoring case).
    """
    problems: list[tuple[str, str]] = []
    names: list[str | None] = []
    for index, column in enumerate(model.columns):
        where = f"columns[{index}]"
        if column.column is not None:
            try:
                check_identifier(column.column, "column")
            except ValueError as exc:
                problems.append((f"{where}.column", str(exc)))
                names.append(None)
                continue
            name = column.column
        else:
            try:
                name = naming.snake_case(column.name)
            except naming.NamingError as exc:
                problems.append((f"{where}.name", str(exc)))
                names.append(None)
                continue
        if name.startswith(RESERVED_COLUMN_PREFIX):
            problems.append(
                (
                    f"{where}.{'column' if column.column is not None else 'name'}",
                    f"column {column.name!r} would be stored as {name}, but names starting "
                    f"with '{RESERVED_COLUMN_PREFIX}' are the warehouse's lineage columns; "
                    "give it another `column:` name",
                )
            )
            names.append(None)
            continue
        names.append(name)
    first_by_name: dict[str, int] = {}
    for index, name in enumerate(names):
        if name is None:
            continue
        if name in first_by_name:
            other = first_by_name[name]
            problems.append(
                (
                    f"columns[{index}]",
                    f"columns {model.columns[other].name!r} (columns[{other}]) and "
                    f"{model.columns[index].name!r} would both be stored as warehouse column "
                    f"{name}; give one of them another `column:` name",
                )
            )
        else:
            first_by_name[name] = index
    fold = str.casefold if model.match == "case_insensitive" else (lambda text: text)
    first_by_source: dict[str, int] = {}
    for index, column in enumerate(model.columns):
        key = fold(column.name.strip())
        if key in first_by_source:
            other = first_by_source[key]
            how = " (ignoring case: match is case_insensitive)" if fold is str.casefold else ""
            problems.append(
                (
                    f"columns[{index}].name",
                    f"{column.name!r} names the same file column as columns[{other}] "
                    f"({model.columns[other].name!r}){how}",
                )
            )
        else:
            first_by_source[key] = index
    return names, problems


def _resolve_key(
    model: _ContractModel, names: list[str | None]
) -> tuple[tuple[str, ...], list[tuple[str, str]]]:
    """The primary key as warehouse names. Entries name columns as the file does or by their
    warehouse column (the file's name wins where both could apply)."""
    problems: list[tuple[str, str]] = []
    key: list[str] = []
    for index, entry in enumerate(model.primary_key):
        where = f"primary_key[{index}]"
        position = next(
            (i for i, c in enumerate(model.columns) if c.name.strip() == entry.strip()), None
        )
        if position is None:
            position = next((i for i, n in enumerate(names) if n == entry), None)
        if position is None:
            problems.append((where, f"'{entry}' is not a declared column"))
            continue
        warehouse = names[position]
        if warehouse is None:
            continue  # that column's own problem is reported already
        if model.columns[position].nullable:
            problems.append((where, f"column '{entry}' must be declared nullable: false"))
        if warehouse in key:
            problems.append((where, f"column '{entry}' is listed twice"))
            continue
        key.append(warehouse)
    if model.write_mode == "merge" and not model.primary_key:
        problems.append(("primary_key", "write_mode 'merge' needs a non-empty primary_key"))
    return tuple(key), problems


def decimal_fits(value: decimal.Decimal, column_type: ColumnType) -> bool:
    """Whether `value` is stored in `column_type` (a decimal) exactly, without rounding."""
    if not value.is_finite():
        return False
    _sign, digits, exponent = value.normalize().as_tuple()
    assert isinstance(exponent, int)
    scale = max(-exponent, 0)
    integer_digits = max(len(digits) + exponent, 0) if any(digits) else 0
    return scale <= (column_type.scale or 0) and integer_digits <= (
        (column_type.precision or 0) - (column_type.scale or 0)
    )


def parse_default(value: Any, column_type: ColumnType) -> Any:
    """A column's `default:` as a Python value of its type (raises ValueError saying why not).

    YAML has already typed some values (`0`, `true`, `2026-01-01`); anything else is text and is
    read as a file's value would be in ISO form. Timestamps without a zone are UTC, as in files.
    """
    if value is None:
        return None
    name = column_type.name
    if isinstance(value, bool) != (name == "bool"):
        raise ValueError(f"{value!r} is not a {column_type} value")
    text = value.isoformat() if isinstance(value, (dt.date, dt.datetime)) else str(value).strip()
    try:
        if name == "string":
            return str(value)
        if name == "bool":
            return value
        if name == "int64":
            number = int(text)
            if not -(2**63) <= number < 2**63:
                raise ValueError
            return number
        if name == "float64":
            return float(text)
        if name == "decimal":
            number = decimal.Decimal(text)
            if not decimal_fits(number, column_type):
                raise ValueError
            return number
        if name == "date":
            if isinstance(value, dt.datetime):
                raise ValueError
            return dt.date.fromisoformat(text)
        stamp = dt.datetime.fromisoformat(text)
        if stamp.tzinfo is None:
            stamp = stamp.replace(tzinfo=dt.UTC)
        return stamp.astimezone(dt.UTC)
    except (ValueError, ArithmeticError):
        raise ValueError(f"{value!r} is not a {column_type} value") from None


def _column_evolution(
    model: _ContractModel, names: list[str | None]
) -> tuple[list[Any], list[str | None], list[tuple[str, str]]]:
    """Each column's parsed `default:` and `renamed_from:` (as a warehouse name), and problems."""
    defaults: list[Any] = []
    renamed: list[str | None] = []
    problems: list[tuple[str, str]] = []
    for index, column in enumerate(model.columns):
        where = f"columns[{index}]"
        try:
            defaults.append(parse_default(column.default, ColumnType.parse(column.type)))
        except ValueError as exc:
            problems.append((f"{where}.default", str(exc)))
            defaults.append(None)
        old = column.renamed_from
        if old is None:
            renamed.append(None)
            continue
        if not IDENTIFIER_PATTERN.fullmatch(old):
            try:
                old = naming.snake_case(old)
            except naming.NamingError as exc:
                problems.append((f"{where}.renamed_from", str(exc)))
                renamed.append(None)
                continue
        if old == names[index]:
            problems.append((f"{where}.renamed_from", f"'{old}' is this column's own name"))
            old = None
        elif old in names:
            problems.append(
                (
                    f"{where}.renamed_from",
                    f"'{old}' is still a column of this contract; a renamed column's old name "
                    "must be gone",
                )
            )
            old = None
        elif old in renamed:
            problems.append((f"{where}.renamed_from", f"'{old}' is renamed by two columns"))
            old = None
        renamed.append(old)
    return defaults, renamed, problems


def parse_contract(data: object, path: Path | None = None) -> DatasetContract:
    """Validate one contract document.

    Raises:
        ContractFileError: with every problem found (field path and reason), naming the file.
    """
    dataset = path.stem if path else None
    try:
        model = _ContractModel.model_validate(data)
    except ValidationError as exc:
        raise ContractFileError(path, dataset, _pydantic_problems(exc)) from None
    problems: list[tuple[str, str]] = []
    try:
        check_identifier(model.name, "dataset name")
    except ValueError as exc:
        problems.append(("name", str(exc)))
    if path is not None and model.name != path.stem:
        problems.append(("name", f"name '{model.name}' must match the file name"))
    names, column_problems = _warehouse_columns(model)
    key, key_problems = _resolve_key(model, names)
    defaults, renamed, evolution_problems = _column_evolution(model, names)
    problems += column_problems + key_problems + evolution_problems
    warehouse_names = [n for n in names if n is not None]
    if problems or len(warehouse_names) != len(model.columns):
        raise ContractFileError(path, dataset, problems)
    csv = model.csv
    return DatasetContract(
        name=model.name,
        columns=tuple(
            ColumnSpec(
                name=warehouse,
                type=ColumnType.parse(c.type),
                nullable=c.nullable,
                description=c.description,
                source_name=c.name.strip(),
                default=default,
                renamed_from=old,
            )
            for c, warehouse, default, old in zip(
                model.columns, warehouse_names, defaults, renamed, strict=True
            )
        ),
        primary_key=key,
        write_mode=model.write_mode,
        description=model.description,
        owner=model.owner,
        csv=CsvOptions(
            delimiter=csv.delimiter,
            null_values=tuple(csv.null_values),
            encoding=csv.encoding,
            quote_char=csv.quote_char,
            skip_rows=csv.skip_rows,
            date_format=csv.date_format,
            timestamp_format=csv.timestamp_format,
        ),
        freshness_max_age_hours=model.freshness.max_age_hours if model.freshness else None,
        path=path,
        match=model.match,
        extra_columns=model.extra_columns,
        missing_columns=model.missing_columns,
    )


def load_contract_file(path: Path) -> DatasetContract:
    """Read and validate one contract file (raises `ContractFileError`)."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        reason = " ".join(str(exc).split())
        raise ContractFileError(path, path.stem, [("", reason)], verb="cannot read") from None
    return parse_contract(data, path)


def contract_files(directory: Path) -> list[Path]:
    """The contract files of a folder: `*.yaml` and `*.yml`, by name."""
    return sorted([*directory.glob("*.yaml"), *directory.glob("*.yml")])


class ContractRegistry:
    """The known datasets, by name, and the contract files that could not be used.

    A refused file makes its own dataset unusable (`get` raises its error) and nothing else.
    Two files that declare the same dataset are both refused: choosing one silently would load
    data under a contract nobody meant.
    """

    def __init__(
        self,
        contracts: Iterable[DatasetContract],
        problems: Iterable[ContractFileError] = (),
        missing_directories: Iterable[Path] = (),
    ):
        self._contracts: dict[str, DatasetContract] = {}
        self.problems: list[ContractFileError] = list(problems)
        self.missing_directories = tuple(missing_directories)
        by_name: dict[str, list[DatasetContract]] = {}
        for contract in contracts:
            by_name.setdefault(contract.name, []).append(contract)
        for name, defined in by_name.items():
            if len(defined) == 1:
                self._contracts[name] = defined[0]
                continue
            for contract in defined:
                others = ", ".join(str(c.path) for c in defined if c is not contract)
                self.problems.append(
                    ContractFileError(
                        contract.path,
                        name,
                        [("name", f"dataset '{name}' is also defined by {others}; keep one")],
                    )
                )
        self.problems.sort(key=lambda p: (p.dataset or "", str(p.path)))

    @classmethod
    def from_directories(cls, *directories: Path | None) -> "ContractRegistry":
        """Load every contract file of the given folders, each on its own (None entries are
        skipped; a folder that does not exist is reported, not fatal)."""
        contracts: list[DatasetContract] = []
        problems: list[ContractFileError] = []
        missing: list[Path] = []
        for directory in directories:
            if directory is None:
                continue
            if not directory.is_dir():
                missing.append(directory)
                continue
            for path in contract_files(directory):
                try:
                    contracts.append(load_contract_file(path))
                except ContractFileError as exc:
                    problems.append(exc)
        return cls(contracts, problems, missing)

    def problem(self, name: str) -> ContractFileError | None:
        """The first refused contract file of dataset `name`, if any."""
        return next((p for p in self.problems if p.dataset == name), None)

    @property
    def broken_datasets(self) -> list[str]:
        """Datasets whose contract file was refused (and which therefore cannot be loaded)."""
        return sorted({p.dataset for p in self.problems if p.dataset})

    def get(self, name: str) -> DatasetContract:
        """The contract of `name`.

        Raises:
            CommandError: (field `dataset`) the dataset's contract was refused (its own error),
                or no contract defines it.
        """
        try:
            return self._contracts[name]
        except KeyError:
            pass
        problem = self.problem(name)
        if problem is not None:
            raise CommandError("dataset", f"dataset '{name}' cannot be used: {problem}") from None
        known = ", ".join(sorted(self._contracts)) or "none"
        message = f"unknown dataset '{name}' (known: {known})"
        if self.missing_directories:
            folders = ", ".join(str(d) for d in self.missing_directories)
            message += f"; contract folder {folders} does not exist"
        raise CommandError("dataset", message) from None

    def __contains__(self, name: object) -> bool:
        return name in self._contracts

    def __iter__(self) -> Iterator[DatasetContract]:
        return iter(sorted(self._contracts.values(), key=lambda c: c.name))

    def __len__(self) -> int:
        return len(self._contracts)
