"""`datasets infer`: draft a dataset contract from a file nobody here wrote.

A new user's first step is a file, not a contract. This reads a bounded sample of the file (the
first `SAMPLE_ROWS` rows or `SAMPLE_BYTES` bytes, whichever ends first) and drafts:

* the columns as the file names them (CSV header, JSON keys in first-seen order, Parquet fields),
  with the warehouse names the naming convention gives them;
* each column's type, from the sampled values, judged by the same conversions a load applies
  (`validation.convert`), so the draft loads the rows it was drafted from: booleans, integers
  (never with leading zeros: `007` is an identifier, kept as text), floats (`1e3`, `NaN`), ISO
  dates and timestamps, dates and timestamps in a few common other forms (`2012/01/31`,
  `Jan 1 2000`, `31.01.2012 10:00`, as `csv.date_format`/`timestamp_format`), else text;
* nullability: a column is `nullable: false` only when the sample is the whole file and holds
  no null (a later row could hold one);
* for CSV, the dialect: the encoding (UTF-8, UTF-16 by its BOM, else Windows-1252 with a note),
  the delimiter (`,`, `;`, tab or `|`, by the most consistent field count) and the null markers
  found (`NA`, `NULL`, `N/A`, ...).

The draft is then checked the way a job would check the file: the first sampled rows are read
and validated with the worker's own reader and contract. A column that fails there (a reader
detail the sample's own parse did not see) is drafted as text instead, with a note. What the
sample cannot know (a value beyond it that fits no type, a key that repeats later) is said in
the notes at the top of the YAML.
"""

import codecs
import contextlib
import csv
import io
import json
import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import pyarrow as pa

from dw_pipelines.core import naming
from dw_pipelines.core.contracts import (
    ColumnSpec,
    ColumnType,
    ContractFileError,
    DatasetContract,
    parse_contract,
)
from dw_pipelines.core.errors import ContractViolation, DwError, SourceError
from dw_pipelines.core.readers import SourceFile, _json_lines, read_batches
from dw_pipelines.core.validation import ISO, TextFormats, conform_batch, convert

SAMPLE_ROWS = 10_000
SAMPLE_BYTES = 16 << 20
NULL_MARKERS = ("NA", "N/A", "NULL", "null", "None", "#N/A", "n/a")
DELIMITERS = (",", ";", "\t", "|")
# Tried in order; a format is taken when every sampled value of a column parses with it.
DATE_FORMATS = ("%Y/%m/%d", "%m/%d/%Y", "%d/%m/%Y", "%d.%m.%Y", "%b %d %Y", "%d %b %Y")
TIMESTAMP_FORMATS = (
    "%Y/%m/%d %H:%M:%S",
    "%Y/%m/%d %H:%M",
    "%m/%d/%Y %H:%M:%S",
    "%m/%d/%Y %H:%M",
    "%d/%m/%Y %H:%M:%S",
    "%d/%m/%Y %H:%M",
    "%d.%m.%Y %H:%M:%S",
    "%d.%m.%Y %H:%M",
)
_INTEGER = re.compile(r"^[+-]?\d+$")
_LEADING_ZERO = re.compile(r"^[+-]?0\d")
_BOOLEANS = {"true", "false"}
_ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_INT64 = (-(2**63), 2**63 - 1)


class InferenceError(DwError):
    """The file cannot be described by a contract (or not read at all)."""


@dataclass
class Draft:
    """A drafted contract: the YAML document, and what the reader should know about it."""

    document: dict[str, Any]
    source_name: str
    rows_sampled: int
    whole_file: bool
    notes: list[str] = field(default_factory=list)

    def contract(self) -> DatasetContract:
        return parse_contract(self.document)

    def to_yaml(self) -> str:
        """The draft as a contract file: commented, one line per column, that parses back to
        `document` (checked here)."""
        doc = self.document
        sampled = (
            f"{self.rows_sampled} row(s) read: the whole file"
            if self.whole_file
            else f"the first {self.rows_sampled} row(s) read"
        )
        lines = [
            f"# Drafted by `dw-pipelines datasets infer` from {self.source_name} ({sampled}).",
            "# Review the types, nullability and primary key, then check it with "
            "`dw-pipelines datasets check`.",
        ]
        if self.notes:
            lines.append("# Notes:")
            lines += [f"# - {note}" for note in self.notes]
        lines.append(f"name: {doc['name']}")
        lines.append(f"description: {_scalar(doc['description'])}")
        lines.append(f"write_mode: {doc['write_mode']}")
        lines.append(f"primary_key: {_flow_list(doc['primary_key'])}")
        if doc.get("match", "exact") != "exact":
            lines.append(f"match: {doc['match']}")
        lines.append("columns:")
        contract = self.contract()
        for item, spec in zip(doc["columns"], contract.columns, strict=True):
            parts = [f"name: {_scalar(item['name'])}"]
            if "column" in item:
                parts.append(f"column: {item['column']}")
            parts.append(f"type: {_scalar(item['type'], plain=True)}")
            parts.append(f"nullable: {'true' if item['nullable'] else 'false'}")
            comment = f"  # stored as {spec.name}" if spec.renamed and "column" not in item else ""
            lines.append(f"  - {{{', '.join(parts)}}}{comment}")
        if "csv" in doc:
            lines.append("csv:")
            for key, value in doc["csv"].items():
                shown = (
                    _flow_list(value)
                    if isinstance(value, list)
                    else _scalar(value, plain=key != "delimiter")
                )
                lines.append(f"  {key}: {shown}")
        text = "\n".join(lines) + "\n"
        import yaml

        if yaml.safe_load(text) != doc:  # the hand-made layout must say exactly the document
            raise AssertionError("the drafted YAML does not parse back to the draft")
        return text


_PLAIN = re.compile(r"^[a-z][a-z0-9_.()/%-]*$")
_YAML_WORDS = {"true", "false", "yes", "no", "on", "off", "null", "y", "n"}


def _scalar(value: object, plain: bool = False) -> str:
    """A YAML scalar: JSON's quoting (valid YAML) for text, so any header survives; `plain`
    words (types, encodings) unquoted where YAML reads them back as the same text."""
    if isinstance(value, str):
        if plain and _PLAIN.match(value) and value not in _YAML_WORDS:
            return value
        return json.dumps(value, ensure_ascii=False)
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _flow_list(values: Sequence[object]) -> str:
    return "[" + ", ".join(_scalar(v) for v in values) + "]"


@dataclass
class _Column:
    """What the sample says about one column."""

    source: str
    values: list[str | None]  # text values (CSV, JSON strings), None for null
    json_kinds: set[str] = field(default_factory=set)  # JSON: the value kinds seen
    arrow_type: pa.DataType | None = None  # Parquet: the stored type


def infer_contract(
    source: SourceFile,
    name: str | None = None,
    primary_key: Sequence[str] = (),
    write_mode: str = "append",
    sample_rows: int = SAMPLE_ROWS,
    sample_bytes: int = SAMPLE_BYTES,
) -> Draft:
    """Draft a contract for `source` (see the module docstring).

    Args:
        source: the opened file (`readers.open_source`).
        name: the dataset name; by default derived from the file name.
        primary_key: key columns, by the file's names (or their warehouse names).
        write_mode: `append` or `merge` (which needs a primary key).
        sample_rows: rows read at most.
        sample_bytes: bytes read at most (uncompressed).

    Raises:
        InferenceError: the file cannot be read or described (empty, nested JSON values,
            Parquet types without a contract type, a key column that is missing, null or
            repeated in the sample).
    """
    dataset = name or naming.dataset_name_for(source.name)
    notes: list[str] = []
    csv_options: dict[str, Any] | None = None
    if source.format == "csv":
        columns, whole, csv_options = _sample_csv(source, sample_rows, sample_bytes, notes)
    elif source.format in ("jsonl", "json"):
        columns, whole = _sample_json(source, sample_rows, sample_bytes)
    elif source.format == "parquet":
        columns, whole = _sample_parquet(source, sample_rows)
    else:
        raise InferenceError(f"{source.name}: unsupported format '{source.format}'")
    rows = max((len(c.values) for c in columns), default=0)
    if not columns or rows == 0:
        raise InferenceError(f"{source.name}: no data rows to infer a contract from")
    formats = TextFormats()
    items: list[dict[str, Any]] = []
    for column in columns:
        kind, formats = _column_type(column, formats, notes)
        item: dict[str, Any] = {"name": column.source, "type": kind}
        nullable = (not whole) or any(v is None for v in column.values)
        item["nullable"] = nullable
        if not column.source.strip():
            item["column"] = f"unnamed_{len(items) + 1}"
            notes.append(
                f"column {len(items) + 1} has no name in the file: stored as {item['column']}"
            )
        items.append(item)
    if csv_options is not None:
        if formats.date:
            csv_options["date_format"] = formats.date
        if formats.timestamp:
            csv_options["timestamp_format"] = formats.timestamp
    if not whole:
        notes.append(
            "nullable: true for every column: the sample is not the whole file, so a later row "
            "may hold a null; set false where the data guarantees a value"
        )
    key = _key_columns(columns, items, primary_key, source)
    if write_mode == "merge" and not key:
        raise InferenceError("write_mode merge needs --primary-key")
    document: dict[str, Any] = {
        "name": dataset,
        "description": f"Drafted from {source.name}",
        "write_mode": write_mode,
        "primary_key": key,
        "columns": items,
    }
    if csv_options is not None:
        document["csv"] = csv_options
    draft = Draft(document, source.name, rows, whole, notes)
    try:
        draft.contract()
    except ContractFileError as exc:
        raise InferenceError(f"{source.name}: {exc}") from None
    _check_by_loading(draft, source, rows)
    return draft


def _key_columns(
    columns: list[_Column], items: list[dict[str, Any]], wanted: Sequence[str], source: SourceFile
) -> list[str]:
    """The key as file names, its columns made non-nullable; refused when the sample shows it
    cannot be a key (missing column, a null, a repeated value)."""
    if not wanted:
        return []
    by_source = {c.source: i for i, c in enumerate(columns)}
    by_warehouse = {}
    for index, column in enumerate(columns):
        try:
            by_warehouse[items[index].get("column") or naming.snake_case(column.source)] = index
        except naming.NamingError:
            continue
    positions = []
    for entry in wanted:
        index = by_source.get(entry, by_warehouse.get(entry))
        if index is None:
            known = ", ".join(f"'{c.source}'" for c in columns)
            raise InferenceError(f"primary key '{entry}' is not a column of the file ({known})")
        if any(columns[index].values[r] is None for r in range(len(columns[index].values))):
            raise InferenceError(
                f"primary key column '{columns[index].source}' holds a null in the sample"
            )
        positions.append(index)
    rows = len(columns[positions[0]].values)
    seen: dict[tuple, int] = {}
    for row in range(rows):
        value = tuple(columns[i].values[row] for i in positions)
        if value in seen:
            pairs = zip(positions, value, strict=True)
            shown = ", ".join(f"{columns[i].source}={v!r}" for i, v in pairs)
            raise InferenceError(
                f"{source.name}: primary key ({shown}) repeats on data rows {seen[value] + 1} "
                f"and {row + 1}: not a key"
            )
        seen[value] = row
    for index in positions:
        items[index]["nullable"] = False
    return [columns[i].source for i in positions]


# --- types ----------------------------------------------------------------------------------------


def _column_type(
    column: _Column, formats: TextFormats, notes: list[str]
) -> tuple[str, TextFormats]:
    """The column's contract type, and the formats with any date/timestamp format it needs."""
    if column.arrow_type is not None:
        return _parquet_type(column), formats
    present = [v for v in column.values if v is not None]
    if column.json_kinds - {"string", "null"}:
        return _json_type(column), formats
    if not present:
        return "string", formats
    if all(v.strip().lower() in _BOOLEANS for v in present):
        return "bool", formats
    if all(_INTEGER.match(v.strip()) for v in present) and not any(
        _LEADING_ZERO.match(v.strip()) for v in present
    ):
        if all(_INT64[0] <= int(v) <= _INT64[1] for v in present):
            return "int64", formats
        return "string", formats
    array = pa.array(present, pa.string())
    if any(_LEADING_ZERO.match(v.strip()) for v in present) and _converts(array, "float64", ISO):
        return "string", formats  # numbers with leading zeros: codes, not quantities
    if column.json_kinds:  # JSON strings: dates and timestamps, in ISO form only
        candidates = ["date", "timestamp"]
    else:
        candidates = ["float64", "date", "timestamp"]
    for kind in candidates:
        if kind == "date" and not all(_ISO_DATE.match(v.strip()) for v in present):
            continue  # a timestamp column's bare dates are dates, but not every value is one
        if _converts(array, kind, ISO):
            return kind, formats
    if column.json_kinds:
        return "string", formats
    for kind, known, options in (
        ("date", formats.date, DATE_FORMATS),
        ("timestamp", formats.timestamp, TIMESTAMP_FORMATS),
    ):
        for candidate in ([known] if known else []) + [f for f in options if f != known]:
            trial = replace(formats, **{kind: candidate})
            if _converts(array, kind, trial):
                if known and candidate != known:
                    notes.append(
                        f"column '{column.source}' writes {kind}s as {candidate}, another column "
                        f"as {known}: one csv {kind}_format serves a contract, so it is text"
                    )
                    return "string", formats
                if candidate.startswith("%m/%d/") and _converts(
                    array, kind, replace(trial, **{kind: _dmy(candidate)})
                ):
                    notes.append(
                        f"column '{column.source}': every date reads as month/day and as "
                        f"day/month; drafted as {candidate}, check it"
                    )
                return kind, trial
    return "string", formats


def _dmy(mdy_format: str) -> str:
    return mdy_format.replace("%m/%d/", "%d/%m/")


def _converts(array: pa.Array, kind: str, formats: TextFormats) -> bool:
    spec = ColumnSpec("c", ColumnType.parse(kind))
    try:
        convert(array, spec, formats)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return False
    return True


def _json_type(column: _Column) -> str:
    kinds = column.json_kinds - {"null"}
    if kinds <= {"bool"}:
        return "bool"
    if kinds <= {"int"}:
        return "int64"
    if kinds <= {"int", "float"}:
        return "float64"
    shown = ", ".join(sorted(kinds))
    raise InferenceError(
        f"key '{column.source}' holds values of several kinds ({shown}): a contract column "
        "has one type"
    )


def _parquet_type(column: _Column) -> str:
    kind = column.arrow_type
    assert kind is not None
    if pa.types.is_dictionary(kind):
        kind = kind.value_type
    if pa.types.is_boolean(kind):
        return "bool"
    if pa.types.is_integer(kind):
        return "int64"
    if pa.types.is_floating(kind):
        return "float64"
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return "string"
    if pa.types.is_date(kind):
        return "date"
    if pa.types.is_timestamp(kind):
        return "timestamp"
    if pa.types.is_decimal(kind) and kind.precision <= 38:
        return f"decimal({kind.precision},{kind.scale})"
    raise InferenceError(
        f"field '{column.source}' is stored as {kind}, which no contract type holds "
        "(string, int64, float64, bool, date, timestamp, decimal(p,s))"
    )


# --- samples --------------------------------------------------------------------------------------


def _read_head(source: SourceFile, limit: int) -> tuple[bytes, bool]:
    """The first `limit` bytes of the (decompressed) file, and whether that is all of it."""
    try:
        with source.open_stream() as stream:
            head = stream.read(limit)
            whole = len(head) < limit or not stream.read(1)
    except OSError as exc:
        raise source.io_error(exc) from None
    return head, whole


def _decode(head: bytes, whole: bool, notes: list[str]) -> tuple[str, str]:
    """(text, encoding name for the contract) of a CSV sample."""
    for bom, encoding in ((codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16")):
        if head.startswith(bom):
            body = head if whole else head[: len(head) - len(head) % 2]
            return body.decode("utf-16", errors="replace"), encoding
    if head.startswith(codecs.BOM_UTF8):
        head = head[len(codecs.BOM_UTF8) :]
    try:
        return head.decode("utf-8"), "utf-8"
    except UnicodeDecodeError as exc:
        if not whole and exc.start >= len(head) - 3:  # a character cut by the sample's end
            return head[: exc.start].decode("utf-8"), "utf-8"
        where = exc.start
    try:
        text = head.decode("cp1252")
        encoding = "cp1252"
    except UnicodeDecodeError:
        text = head.decode("latin-1")
        encoding = "latin-1"
    notes.append(
        f"the file is not UTF-8 (byte {where} is not valid UTF-8); read as {encoding}: check "
        "that accented characters look right, or set csv.encoding to the export's encoding"
    )
    return text, encoding


def _sniff_delimiter(text: str) -> str:
    """The candidate whose field count is the most consistent (and largest) over the first
    records; `,` when nothing better shows."""
    lines = text.splitlines()[:50]
    best, best_score = ",", (0.0, 0)
    for delimiter in DELIMITERS:
        try:
            records = list(csv.reader(lines, delimiter=delimiter))
        except csv.Error:
            continue
        counts = [len(r) for r in records if r]
        if not counts:
            continue
        mode = max(set(counts), key=counts.count)
        if mode < 2:
            continue
        score = (counts.count(mode) / len(counts), mode)
        if score > best_score:
            best, best_score = delimiter, score
    return best


def _sample_csv(
    source: SourceFile, sample_rows: int, sample_bytes: int, notes: list[str]
) -> tuple[list[_Column], bool, dict[str, Any]]:
    head, whole = _read_head(source, sample_bytes)
    if not head.strip():
        raise InferenceError(f"{source.name}: the file is empty")
    text, encoding = _decode(head, whole, notes)
    delimiter = _sniff_delimiter(text)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    records: list[list[str]] = []
    try:
        for record in reader:
            if not record:
                continue  # blank lines: the reader skips them too
            records.append(record)
            if len(records) > sample_rows + 1:
                break
    except csv.Error as exc:
        if whole:
            raise InferenceError(f"{source.name}: unreadable CSV: {exc}") from None
    if not whole or len(records) > sample_rows + 1:
        whole = False
        records = records[: min(len(records) - 1, sample_rows + 1)]  # the last may be cut
    if not records:
        raise InferenceError(f"{source.name}: no header row")
    header = [name.strip() for name in records[0]]
    data = records[1:]
    # Trailing columns without a header (a delimiter ending every line) that hold nothing:
    # the reader ignores them.
    while (
        header
        and not header[-1]
        and all(len(header) > len(r) or not r[len(header) - 1] for r in data)
    ):
        header.pop()
    markers = sorted({v for r in data for v in r if v in NULL_MARKERS}, key=NULL_MARKERS.index)
    null_values = ["", *markers]
    columns = []
    for index, name in enumerate(header):
        values: list[str | None] = []
        for record in data:
            value = record[index] if index < len(record) else ""
            values.append(None if value in null_values else value)
        columns.append(_Column(name, values))
    for marker in markers:
        where = [c.source for i, c in enumerate(columns) if _has(data, i, marker)]
        notes.append(
            f"'{marker}' is read as null (found in {', '.join(repr(w) for w in where)}); "
            "it is null in every column, text columns too"
        )
    options: dict[str, Any] = {"delimiter": delimiter, "null_values": null_values}
    options["encoding"] = encoding
    return columns, whole, options


def _has(records: list[list[str]], index: int, value: str) -> bool:
    return any(index < len(r) and r[index] == value for r in records)


def _json_kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "string"
    return "nested"


def _sample_json(
    source: SourceFile, sample_rows: int, sample_bytes: int
) -> tuple[list[_Column], bool]:
    records: list[dict[str, Any]] = []
    whole = True
    read = 0
    for line in _json_sample_lines(source):
        read += len(line)
        if read > sample_bytes or len(records) >= sample_rows:
            whole = False
            break
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InferenceError(
                f"{source.name}: record {len(records) + 1} is not valid JSON: {exc.msg}"
            ) from None
        if not isinstance(value, dict):
            raise InferenceError(f"{source.name}: record {len(records) + 1} is not an object")
        records.append(value)
    keys: dict[str, None] = {}
    for record in records:
        keys.update(dict.fromkeys(record))
    columns = []
    for key in keys:
        values = [record.get(key) for record in records]
        kinds = {_json_kind(v) for v in values}
        if "nested" in kinds:
            raise InferenceError(
                f"{source.name}: key '{key}' holds nested objects or arrays, which a contract "
                "column cannot hold; flatten the export"
            )
        texts = [v if isinstance(v, str) else (None if v is None else str(v)) for v in values]
        if any(isinstance(v, float) and not math.isfinite(v) for v in values):
            kinds.add("float")
        columns.append(_Column(key, texts, json_kinds=kinds or {"null"}))
    return columns, whole


def _json_sample_lines(source: SourceFile) -> Iterator[bytes]:
    try:
        lines, _ = _json_lines(source)
        with contextlib.closing(lines):
            pending = b""
            while True:
                chunk = lines.read(1 << 20)
                if not chunk:
                    break
                *complete, pending = (pending + chunk).split(b"\n")
                yield from complete
            if pending:
                yield pending
    except ContractViolation as exc:
        raise InferenceError(str(exc)) from None
    except (ValueError, OSError) as exc:  # JsonArrayError is a ValueError
        raise InferenceError(f"{source.name}: {exc}") from None


def _sample_parquet(source: SourceFile, sample_rows: int) -> tuple[list[_Column], bool]:
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(source.parquet_source())
    except (pa.ArrowInvalid, OSError) as exc:
        raise InferenceError(f"{source.name}: not a readable Parquet file: {exc}") from None
    with parquet:
        schema = parquet.schema_arrow
        batch = next(parquet.iter_batches(batch_size=sample_rows), None)
        total = parquet.metadata.num_rows
    columns = []
    for index, arrow_field in enumerate(schema):
        values: list[str | None] = []
        if batch is not None:
            # As text: what the key check compares (bounded by the sample). Arrow's own cast
            # first: Python objects cannot hold every value (a nanosecond timestamp needs
            # pandas, which pyarrow may fail to import in this process).
            column = batch.column(index)
            try:
                values = column.cast(pa.string()).to_pylist()
            except (pa.ArrowNotImplementedError, pa.ArrowInvalid):
                values = [None if v is None else str(v) for v in column.to_pylist()]
        columns.append(_Column(arrow_field.name, values, arrow_type=arrow_field.type))
    return columns, batch is not None and batch.num_rows >= total


# --- the check by loading -------------------------------------------------------------------------


def _check_by_loading(draft: Draft, source: SourceFile, rows: int) -> None:
    """Read and validate the sampled rows with the worker's reader under the drafted contract.

    A column that does not load as drafted becomes text (with a note); anything else that
    fails is an error of the file, reported as a job would report it.
    """
    for _ in range(len(draft.document["columns"]) + 1):
        contract = draft.contract()
        source = replace(source, csv=contract.csv)
        try:
            _load_sample(contract, source, rows)
            return
        except ContractViolation as exc:
            index = _failed_column(contract, exc)
            item = draft.document["columns"][index] if index is not None else None
            if item is None or (item["type"] == "string" and item["nullable"]):
                raise InferenceError(f"the draft does not load the file: {exc}") from None
            if item["type"] == "string":
                item["nullable"] = True
            else:
                item["type"] = "string"
            draft.notes.append(
                f"column '{item['name']}' did not load as drafted ({exc}); drafted as "
                f"{item['type']}{'' if item['nullable'] else ', not nullable'}"
            )
        except SourceError as exc:
            raise InferenceError(str(exc)) from None
    raise InferenceError("the draft does not load the file")


def _failed_column(contract: DatasetContract, exc: ContractViolation) -> int | None:
    if exc.warehouse_column is None and exc.column is None:
        return None
    for index, spec in enumerate(contract.columns):
        if spec.name == (exc.warehouse_column or exc.column) or spec.source == exc.column:
            return index
    return None


def _load_sample(contract: DatasetContract, source: SourceFile, rows: int) -> None:
    first_row = 1
    batches = read_batches(source, contract, batch_rows=min(rows, 65_536))
    try:
        for raw in batches:
            if first_row > rows:
                break
            raw = raw.slice(0, rows - first_row + 1)
            conform_batch(raw, contract, source, first_row)
            first_row += raw.num_rows
    finally:
        batches.close()
