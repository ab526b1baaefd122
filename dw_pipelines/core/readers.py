"""Streaming readers: a source file as a sequence of Arrow record batches, never all at once.

Readers only read; they do not enforce types. CSV columns come out as strings (so a bad value
can be reported with its row and column), JSONL columns with JSON-natural types, Parquet columns
as stored. `validation.conform_batch` then casts each batch to the contract's schema.

Each reader checks the header (column names) against the contract before the first batch, and
turns parser errors into `ContractViolation`/`SourceError` that name the file and the line.

A source is a local file or an object in S3-compatible storage (`core.objectstore`). Both are
read through pyarrow streams, so the same parsers, contracts and messages apply; an object is
read with ranged GETs (text a block at a time, Parquet by footer and column chunk) and named by
its `s3://bucket/key` URI in every message. Store errors keep their class: throttling and
timeouts stay transient (`SourceUnavailable`), a denied or missing object is permanent.
"""

import codecs
import csv
import decimal
import io
import json
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.json as pajson

from dw_pipelines.core.contracts import ColumnType, CsvOptions, DatasetContract
from dw_pipelines.core.errors import ContractViolation, DwError, SourceError
from dw_pipelines.core.objectstore import ObjectSource, classify_aws_error

# The error-path scanners read text line by line; over object storage each refill of this buffer
# is one ranged GET, so it is large enough to keep the requests few.
_SCAN_BUFFER_BYTES = 1 << 20


@dataclass(frozen=True)
class SourceFile:
    path: Path | PurePosixPath  # local file, or `bucket/key` of `obj`
    format: str
    size_bytes: int
    csv: CsvOptions = field(default_factory=CsvOptions)  # CSV dialect, for line look-ups
    obj: ObjectSource | None = field(default=None, compare=False)  # set for object storage
    # What identifies this version of the file (size, mtime or ETag): audited when staged, so
    # a rerun can tell whether the file changed since an earlier load.
    fingerprint: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def name(self) -> str:
        """How messages name the file: its file name, or the object's full s3:// URI."""
        return self.obj.uri if self.obj is not None else self.path.name

    @property
    def location(self) -> str:
        return self.obj.uri if self.obj is not None else str(self.path)

    def open_stream(self, buffer_size: int | None = None) -> pa.NativeFile:
        """The file as a sequential stream, decompressed by its extension (raises OSError)."""
        if self.obj is not None:
            return self.obj.open_stream(buffer_size)
        return pa.input_stream(str(self.path), compression="detect", buffer_size=buffer_size)

    def parquet_source(self) -> "str | pa.NativeFile":
        """What `pq.ParquetFile` reads: the local path, or a random-access object (ranged GETs)."""
        if self.obj is not None:
            return self.obj.open_file()
        return str(self.path)

    def io_error(self, exc: OSError, what: str = "cannot read") -> DwError:
        """The domain error for an I/O failure: store errors keep their class and name the
        bucket and key; other failures (a bad compressed stream ...) are permanent."""
        if self.obj is not None and (
            isinstance(exc, FileNotFoundError) or classify_aws_error(str(exc)) is not None
        ):
            return self.obj.error(exc)
        return SourceError(f"{self.name}: {what}: {exc}")

    def line_of_row(self, row: int) -> int | None:
        """1-based line where the 1-based data row `row` starts (None for Parquet).

        Only called to report an error, so it may rescan the file: pyarrow skips blank lines
        and a quoted CSV value may span lines, so "row + 1" is not always the line.
        """
        if self.format == "parquet":
            return None
        try:
            if self.format == "jsonl":
                return _jsonl_line_of_row(self, row)
            return _csv_line_of_row(self, row, self.csv)
        except (OSError, UnicodeDecodeError, csv.Error):
            return None


# The error-path scanners use the csv module, whose default field limit (128 KiB) is below the
# largest value a file may legitimately hold.
csv.field_size_limit(1 << 30)


def _text_lines(source: SourceFile, encoding: str, errors: str = "strict") -> Iterator[str]:
    with source.open_stream(buffer_size=_SCAN_BUFFER_BYTES) as stream:
        wrapper = io.TextIOWrapper(stream, encoding=encoding, errors=errors, newline="")
        yield from wrapper


@dataclass(frozen=True)
class _CsvRecord:
    row: int  # 1-based data row (the header is row 0)
    line: int  # 1-based line where the record starts
    values: list[str]
    header: list[str]

    def column(self, index: int) -> str:
        return self.header[index] if index < len(self.header) else f"#{index + 1}"


def _csv_records(
    source: SourceFile, options: CsvOptions, errors: str = "strict"
) -> Iterator[_CsvRecord]:
    """The file's data records with their row and starting line, as pyarrow counts rows:
    blank lines are skipped, a quoted value may span lines. For error reports only (slow)."""
    lines = _text_lines(source, options.encoding, errors)
    reader = csv.reader(lines, delimiter=options.delimiter)
    header: list[str] | None = None
    data_row = 0
    next_line = 1
    for values in reader:
        line, next_line = next_line, reader.line_num + 1
        if not values:
            continue
        if header is None:
            header = values
            continue
        data_row += 1
        yield _CsvRecord(data_row, line, values, header)


def _first_undecodable(source: SourceFile, options: CsvOptions) -> tuple[int, int, str] | None:
    """(data row, line, column) of the first value that is not valid text in the encoding."""
    try:
        for record in _csv_records(source, options, errors="surrogateescape"):
            for index, value in enumerate(record.values):
                if any("\udc80" <= ch <= "\udcff" for ch in value):
                    return record.row, record.line, record.column(index)
    except (OSError, csv.Error):
        return None
    return None


def _csv_line_of_row(source: SourceFile, row: int, options: CsvOptions) -> int | None:
    for record in _csv_records(source, options):
        if record.row == row:
            return record.line
    return None


def _first_oversize_record(
    source: SourceFile, options: CsvOptions, limit: int
) -> tuple[int, int, str, int] | None:
    """(data row, line, largest column, row size) of the first record over `limit` bytes."""
    try:
        for record in _csv_records(source, options, errors="replace"):
            sizes = [len(v.encode(options.encoding, errors="replace")) for v in record.values]
            if sum(sizes) > limit:
                largest = max(range(len(sizes)), key=sizes.__getitem__)
                return record.row, record.line, record.column(largest), sum(sizes)
    except (OSError, csv.Error):
        return None
    return None


def _first_ragged_record(source: SourceFile, options: CsvOptions) -> tuple[int | None, int | None]:
    """(data row, line) of the first record whose field count differs from the header's."""
    try:
        for record in _csv_records(source, options):
            if len(record.values) != len(record.header):
                return record.row, record.line
    except (OSError, UnicodeDecodeError, csv.Error):
        pass
    return None, None


def _jsonl_line_of_row(source: SourceFile, row: int) -> int | None:
    data_row = 0
    for number, line in enumerate(_text_lines(source, "utf-8"), start=1):
        if line.strip():
            data_row += 1
            if data_row == row:
                return number
    return None


_MAGIC = {
    b"\x1f\x8b": ".gz",
    b"BZh": ".bz2",
    b"\x28\xb5\x2f\xfd": ".zst",
    b"\x04\x22\x4d\x18": ".lz4",
}


def open_source(
    source: "Path | ObjectSource", fmt: str, csv_options: CsvOptions | None = None
) -> SourceFile:
    """Check the file can be read as `fmt` before any parsing: present, not empty, not disguised.

    `source` is what `LandingZone.resolve` returns: a local path, or an object whose HEAD
    (size, ETag) it already holds; its first bytes are then one ranged GET.
    """
    if isinstance(source, ObjectSource):
        size, name, shown = source.info.size_bytes, source.name, source.uri
        path: Path | PurePosixPath = PurePosixPath(source.location.fs_path)
        fingerprint = source.info.fingerprint()
        head = b""
        if size:
            try:
                with source.open_file() as handle:
                    head = handle.read_at(4, 0)
            except OSError as exc:
                raise source.error(exc) from None
    else:
        path = source
        try:
            stat = os.stat(path)
            with open(path, "rb") as handle:
                head = handle.read(4)
        except OSError as exc:
            raise SourceError(f"{path}: cannot read: {exc.strerror}") from None
        size, name, shown = stat.st_size, path.name, path.name
        # Size and modification time: free with the stat above. A content hash would cost a
        # second full read of every file on the hot path.
        fingerprint = {
            "size_bytes": size,
            "mtime": datetime.fromtimestamp(stat.st_mtime_ns / 1e9, UTC).isoformat(),
        }
    if size == 0:
        raise SourceError(f"{shown}: the file is empty (0 bytes)")
    if fmt in ("csv", "jsonl"):
        for magic, suffix in _MAGIC.items():
            if head.startswith(magic) and not name.lower().endswith(suffix):
                raise SourceError(
                    f"{shown}: the file is {suffix[1:]}-compressed but not named so; "
                    f"name it {name}{suffix} to have it decompressed"
                )
    return SourceFile(
        path=path,
        format=fmt,
        size_bytes=size,
        csv=csv_options or CsvOptions(),
        obj=source if isinstance(source, ObjectSource) else None,
        fingerprint=fingerprint,
    )


# Text is parsed a block at a time and no row may be larger than one block. Arrow's streaming
# readers read up to 32 blocks ahead on a background thread; `_PacedStream` holds that to
# READ_AHEAD_BLOCKS, so block size times read-ahead (plus the batches being parsed) bounds the
# reader's memory whatever the file's size. Reading a 5M-row CSV, Arrow's memory peaked at
# ~80 MB with 2 MiB blocks and the full read-ahead (~300 MB with 8 MiB blocks), ~20 MB paced.
DEFAULT_BLOCK_BYTES = 2 << 20
READ_AHEAD_BLOCKS = 4
# A stalled consumer (or a block that yields no batch, e.g. only blank lines) must never stall
# the reader for good: after this wait one more block is read anyway.
_READ_AHEAD_WAIT_SECONDS = 0.5


class _PacedStream:
    """A readable stream that lets Arrow's background reader run at most `ahead` reads
    beyond what the consumer has taken (`taken` is called per batch it takes); None: no limit.

    Arrow's streaming CSV and JSON readers read their input one block per `read` call and
    yield a batch per block (an empty one for a block without rows), so reads minus batches
    taken is the number of blocks held ahead. Not so when Arrow transcodes the input (a CSV
    encoding other than UTF-8 may take several reads per block): such streams are not paced.
    Arrow calls `read_buffer` from its I/O thread (with the GIL); the wait releases the GIL.
    """

    def __init__(self, stream: pa.NativeFile, ahead: int | None):
        self._stream = stream
        self._ahead = ahead
        self._reads = 0
        self._taken = 0
        self._released = False
        self._cond = threading.Condition()
        self.closed = False

    def taken(self) -> None:
        with self._cond:
            self._taken += 1
            self._cond.notify_all()

    def release(self) -> None:
        """No more pacing (the consumer is done or gone): never keep the reader waiting."""
        with self._cond:
            self._released = True
            self._cond.notify_all()

    def _wait_for_room(self) -> None:
        with self._cond:
            while (
                self._ahead is not None
                and not self._released
                and self._reads - self._taken > self._ahead
            ):
                if not self._cond.wait(_READ_AHEAD_WAIT_SECONDS):
                    break
            self._reads += 1

    def read_buffer(self, nbytes: int) -> pa.Buffer:
        self._wait_for_room()
        return self._stream.read_buffer(nbytes)

    def read(self, nbytes: int | None = None) -> bytes:
        self._wait_for_room()
        return self._stream.read(nbytes)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def close(self) -> None:
        self.release()
        self.closed = True
        self._stream.close()


def read_batches(
    source: SourceFile,
    contract: DatasetContract,
    batch_rows: int,
    block_bytes: int = DEFAULT_BLOCK_BYTES,
) -> Iterator[pa.RecordBatch]:
    """Yield the file's rows as record batches with the contract's column names, in order."""
    if source.format == "csv":
        yield from _read_csv(source, contract, batch_rows, block_bytes)
    elif source.format == "parquet":
        yield from _read_parquet(source, contract, batch_rows)
    elif source.format == "jsonl":
        yield from _read_jsonl(source, contract, batch_rows, block_bytes)
    else:  # guarded by command validation; kept for callers that skip it
        raise SourceError(f"{source.name}: unsupported format '{source.format}'")
    if source.obj is not None:
        # Raised inside the stream, so the caller's staging load rolls back and is retried.
        source.obj.check_unchanged()


def check_columns(source: SourceFile, found: list[str], contract: DatasetContract) -> None:
    expected = contract.column_names
    missing = [c for c in expected if c not in found]
    if missing:
        raise ContractViolation(
            f"missing column(s) {', '.join(missing)}; the file has {', '.join(found) or 'none'}",
            source=source.name,
            line=1 if source.format == "csv" else None,
        )
    unexpected = [c for c in found if c not in expected]
    if unexpected:
        raise ContractViolation(
            f"unexpected column(s) {', '.join(unexpected)}; dataset '{contract.name}' "
            f"declares {', '.join(expected)}",
            source=source.name,
            line=1 if source.format == "csv" else None,
        )
    duplicated = sorted({c for c in found if found.count(c) > 1})
    if duplicated:
        raise ContractViolation(
            f"column(s) {', '.join(duplicated)} appear more than once",
            source=source.name,
            line=1 if source.format == "csv" else None,
        )


def _read_csv(
    source: SourceFile, contract: DatasetContract, batch_rows: int, block_bytes: int
) -> Iterator[pa.RecordBatch]:
    options = contract.csv
    # ~1 KiB per row is generous for warehouse rows; pyarrow's block size bounds memory per batch.
    block_size = block_bytes
    bad_rows: list[pacsv.InvalidRow] = []

    def on_invalid_row(row: pacsv.InvalidRow) -> str:
        bad_rows.append(row)
        return "error"

    # Arrow transcodes any other encoding to UTF-8, with its own reads (see `_PacedStream`).
    utf8 = codecs.lookup(options.encoding).name == "utf-8"
    stream = None
    try:
        stream = _PacedStream(source.open_stream(), READ_AHEAD_BLOCKS if utf8 else None)
        reader = pacsv.open_csv(
            stream,
            read_options=pacsv.ReadOptions(block_size=block_size, encoding=options.encoding),
            parse_options=pacsv.ParseOptions(
                delimiter=options.delimiter,
                # Quoted values may hold line breaks (addresses, notes): valid CSV.
                newlines_in_values=True,
                invalid_row_handler=on_invalid_row,
            ),
            convert_options=pacsv.ConvertOptions(
                column_types={name: pa.string() for name in contract.column_names},
                null_values=list(options.null_values),
                strings_can_be_null=True,
                quoted_strings_can_be_null=False,
            ),
        )
    except (pa.ArrowInvalid, UnicodeDecodeError) as exc:
        _release(stream)
        raise _csv_error(source, options, exc, bad_rows, block_bytes) from None
    except OSError as exc:
        _release(stream)
        raise source.io_error(exc) from None
    with reader:
        try:
            check_columns(source, reader.schema.names, contract)
            while True:
                try:
                    batch = reader.read_next_batch()
                except StopIteration:
                    return
                except (pa.ArrowInvalid, UnicodeDecodeError) as exc:
                    raise _csv_error(source, options, exc, bad_rows, block_bytes) from None
                except OSError as exc:
                    raise source.io_error(exc) from None
                stream.taken()
                yield from _rechunk(batch.select(contract.column_names), batch_rows)
        finally:
            # Before the reader closes: its background reads must not wait for a consumer that
            # has stopped (an error, or a caller that abandons the batches).
            stream.release()


def _release(stream: "_PacedStream | None") -> None:
    if stream is not None:
        stream.release()


def _csv_error(
    source: SourceFile, options: CsvOptions, exc: Exception, bad_rows: list, block_bytes: int
) -> Exception:
    if bad_rows:
        bad = bad_rows[0]
        # The multi-threaded parser does not know line numbers: find the row again, slowly.
        row, line = _first_ragged_record(source, options)
        return ContractViolation(
            f"expected {bad.expected_columns} fields, found {bad.actual_columns}: "
            f"{bad.text[:200]!r}",
            source=source.name,
            line=line,
            row=row,
        )
    message = str(exc).splitlines()[0]
    if "straddling" in message or "block size" in message:
        where = _first_oversize_record(source, options, block_bytes)
        problem = (
            f"a row is larger than the read block of {block_bytes} bytes (an oversize value, "
            "or an unbalanced quote that runs on; values may be at most DW_MAX_VALUE_BYTES)"
        )
        if where is None:
            return ContractViolation(problem, source=source.name)
        row, line, column, size = where
        return ContractViolation(
            f"value is too large: the row holds {size} bytes, {problem}",
            source=source.name,
            row=row,
            line=line,
            column=column,
        )
    if isinstance(exc, UnicodeDecodeError) or "invalid utf" in message.lower():
        where = _first_undecodable(source, options)
        problem = f"not valid {options.encoding} text (declare the file's encoding in the contract)"
        if where is None:
            return SourceError(f"{source.name}: {problem}: {message}")
        row, line, column = where
        return ContractViolation(problem, source=source.name, row=row, line=line, column=column)
    return ContractViolation(f"unreadable CSV: {message}", source=source.name)


def _read_parquet(
    source: SourceFile, contract: DatasetContract, batch_rows: int
) -> Iterator[pa.RecordBatch]:
    import pyarrow.parquet as pq  # ~9 MB resident: only for Parquet sources

    handle = None
    try:
        handle = source.parquet_source()
        # Over object storage, pre-buffering coalesces a row group's column chunks into a few
        # large ranged GETs instead of one small request per column.
        parquet = pq.ParquetFile(handle, pre_buffer=source.obj is not None)
    except pa.ArrowInvalid as exc:
        _close(handle)
        raise SourceError(f"{source.name}: not a readable Parquet file: {exc}") from None
    except OSError as exc:
        _close(handle)
        raise source.io_error(exc, "not a readable Parquet file") from None
    try:
        check_columns(source, parquet.schema_arrow.names, contract)
        with parquet:
            try:
                yield from parquet.iter_batches(
                    batch_size=batch_rows, columns=contract.column_names
                )
            except pa.ArrowInvalid as exc:
                raise SourceError(f"{source.name}: corrupt Parquet data: {exc}") from None
            except OSError as exc:
                raise source.io_error(exc, "corrupt Parquet data") from None
    finally:
        _close(handle)


def _close(handle: object) -> None:
    if isinstance(handle, pa.NativeFile):
        handle.close()


def _jsonl_read_type(arrow_type: pa.DataType) -> pa.DataType:
    # JSON has no date/timestamp: those arrive as strings and are parsed by `conform_batch`.
    if pa.types.is_date(arrow_type) or pa.types.is_timestamp(arrow_type):
        return pa.string()
    return arrow_type


def _read_jsonl(
    source: SourceFile, contract: DatasetContract, batch_rows: int, block_bytes: int
) -> Iterator[pa.RecordBatch]:
    schema = pa.schema([pa.field(f.name, _jsonl_read_type(f.type)) for f in contract.arrow_schema])
    stream = None
    try:
        stream = _PacedStream(source.open_stream(), READ_AHEAD_BLOCKS)
        reader = pajson.open_json(
            stream,
            read_options=pajson.ReadOptions(block_size=block_bytes),
            parse_options=pajson.ParseOptions(
                explicit_schema=schema, unexpected_field_behavior="error"
            ),
        )
        for batch in reader:
            stream.taken()
            yield from _rechunk(batch.select(contract.column_names), batch_rows)
    except pa.ArrowInvalid as exc:
        raise _locate_jsonl_error(source, contract, exc) from None
    except OSError as exc:
        raise source.io_error(exc) from None
    finally:
        _release(stream)


def _locate_jsonl_error(source: SourceFile, contract: DatasetContract, exc: Exception) -> Exception:
    """Slow path, on failure only: find the first bad line with the standard json module."""
    expected = set(contract.column_names)
    try:
        return _first_bad_jsonl_line(source, contract, expected, exc)
    except UnicodeDecodeError as decode_error:
        return SourceError(f"{source.name}: not valid UTF-8: {decode_error}")
    except OSError as io_error:
        return source.io_error(io_error)


def _first_bad_jsonl_line(
    source: SourceFile, contract: DatasetContract, expected: set[str], exc: Exception
) -> Exception:
    # Streamed line by line: a bad line far into a large object is found without holding it.
    for number, text in enumerate(_text_lines(source, "utf-8"), start=1):
        if not text.strip():
            continue
        try:
            value = json.loads(text)
        except json.JSONDecodeError as decode_error:
            return ContractViolation(
                f"invalid JSON: {decode_error.msg}", source=source.name, line=number, row=number
            )
        if not isinstance(value, dict):
            return ContractViolation(
                "expected a JSON object", source=source.name, line=number, row=number
            )
        unexpected = sorted(set(value) - expected)
        if unexpected:
            return ContractViolation(
                f"unexpected field(s) {', '.join(unexpected)}",
                source=source.name,
                line=number,
                row=number,
                column=unexpected[0],
            )
        for column in contract.columns:
            bad = _json_type_mismatch(value.get(column.name), column.type)
            if bad:
                return ContractViolation(
                    bad, source=source.name, line=number, row=number, column=column.name
                )
    return ContractViolation(f"unreadable JSONL: {str(exc).splitlines()[0]}", source=source.name)


def _json_type_mismatch(value: object, column_type: ColumnType) -> str | None:
    if value is None:
        return None
    kind = column_type.name
    if kind in ("string", "date", "timestamp"):
        ok = isinstance(value, str)
    elif kind == "bool":
        ok = isinstance(value, bool)
    elif kind == "int64":
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind == "float64":
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    else:  # decimal: a number or a string holding one, within precision and scale
        ok = _fits_decimal(value, column_type)
    return None if ok else f"value {value!r} is not a valid {column_type}"


def _fits_decimal(value: object, column_type: ColumnType) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return False
    try:
        number = decimal.Decimal(str(value))
    except decimal.InvalidOperation:
        return False
    if not number.is_finite():
        return False
    _, digits, exponent = number.normalize().as_tuple()
    scale = max(-exponent, 0)
    integer_digits = max(len(digits) + exponent, 0)
    return (
        scale <= column_type.scale and integer_digits <= column_type.precision - column_type.scale
    )


def _rechunk(batch: pa.RecordBatch, batch_rows: int) -> Iterator[pa.RecordBatch]:
    for offset in range(0, batch.num_rows, batch_rows):
        yield batch.slice(offset, batch_rows)
