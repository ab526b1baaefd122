"""Streaming readers: a source file as a sequence of Arrow record batches, never all at once.

Readers only read; they do not enforce types. CSV columns come out as strings (so a bad value
can be reported with its row and column), JSON columns with JSON-natural types, Parquet columns
as stored. `validation.conform_batch` then casts each batch to the contract's schema.

Each reader matches the file's column names (header, keys, Parquet fields) to the contract's
source names before the first batch (`match_header`), and yields the contract's columns in
contract order under their warehouse names: from here on only warehouse names are used. Parser
errors become `ContractViolation`/`SourceError` that name the file and the line. A contract may
accept a file whose columns differ: `extra_columns: ignore` leaves the undeclared ones out (not
even read where the format can select columns), `missing_columns: null` makes each nullable one
the file lacks a typed NULL column; `read_batches` reports both in a `ColumnReport`.

JSON comes as JSON Lines (`jsonl`) or as `json`: one array of objects, read streaming through
`core.jsonarray` (or JSON Lines, when the file starts with an object).

A source is a local file or an object in S3-compatible storage (`core.objectstore`). Both are
read through pyarrow streams, so the same parsers, contracts and messages apply; an object is
read with ranged GETs (text a block at a time, Parquet by footer and column chunk) and named by
its `s3://bucket/key` URI in every message. Store errors keep their class: throttling and
timeouts stay transient (`SourceUnavailable`), a denied or missing object is permanent.
"""

import atexit
import codecs
import contextlib
import csv
import decimal
import gc
import io
import json
import os
import threading
import time
import weakref
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.json as pajson

from dw_pipelines.core.contracts import (
    ColumnSpec,
    ColumnType,
    CsvOptions,
    DatasetContract,
    column_label,
)
from dw_pipelines.core.errors import ContractViolation, DwError, SourceError
from dw_pipelines.core.jsonarray import JsonArrayError, JsonArrayLines, sniff_json_layout
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
            if self.format in ("jsonl", "json"):
                return _json_line_of_row(self, row)
            return _csv_line_of_row(self, row, self.csv)
        except (OSError, UnicodeDecodeError, csv.Error, JsonArrayError):
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
    if options.quote_char is None:
        reader = csv.reader(lines, delimiter=options.delimiter, quoting=csv.QUOTE_NONE)
    else:
        reader = csv.reader(lines, delimiter=options.delimiter, quotechar=options.quote_char)
    header: list[str] | None = None
    data_row = 0
    next_line = 1
    skipped = 0
    for values in reader:
        line, next_line = next_line, reader.line_num + 1
        if skipped < options.skip_rows:  # Arrow's skip_rows: lines before the header
            skipped += 1
            continue
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


def _json_line_of_row(source: SourceFile, row: int) -> int | None:
    for record in _json_records(source):
        if record.row == row:
            return record.line(source)
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
    if fmt in ("csv", "jsonl", "json"):
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
        # This stream and every buffer it hands to Arrow, counted until freed (see `_Handoff`).
        self.handoff = _Handoff()
        self.handoff.track(self)

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
        return self.handoff.track(self._stream.read_buffer(nbytes))

    def read(self, nbytes: int | None = None) -> pa.Buffer:
        self._wait_for_room()
        data = self._stream.read(nbytes)
        return self.handoff.track(data if isinstance(data, pa.Buffer) else pa.py_buffer(data))

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def close(self) -> None:
        self.release()
        self.closed = True
        self._stream.close()


# How long an exiting process waits for Arrow's threads to free the Python objects it was given.
_LET_GO_SECONDS = 3.0


class _Handoff:
    """Python objects handed to Arrow (a stream, its buffers, a callback), counted until freed.

    Arrow's threads may still hold one of them after the reader that owns it is closed: a
    buffer read ahead and never parsed sits in a future on Arrow's thread pool for a moment.
    Freeing it takes the GIL; if that happens while the interpreter shuts down (a short-lived
    command that read a file and exits at once), Python ends that thread and the process dies
    in `std::terminate` ("terminate called without an active exception"). So the first handoff
    registers `_let_go_at_exit`, which runs before the interpreter shuts down and waits for the
    count of every handoff to reach zero (it takes microseconds: one block is in flight at
    most).
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._live = 0

    def track(self, obj: Any) -> Any:
        with self._cond:
            if self._live == 0:
                _holding(self, True)
            self._live += 1
        # Not called at exit for objects still alive: the count must say what Arrow holds.
        weakref.finalize(obj, self._freed).atexit = False
        return obj

    def _freed(self) -> None:
        with self._cond:
            self._live -= 1
            if self._live == 0:
                _holding(self, False)
            self._cond.notify_all()

    def wait(self, timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self._live <= 0, max(timeout, 0))


_held: set[_Handoff] = set()
_held_lock = threading.Lock()
_exit_hook_registered = False


def _holding(handoff: _Handoff, held: bool) -> None:
    global _exit_hook_registered
    with _held_lock:
        if not held:
            _held.discard(handoff)
            return
        _held.add(handoff)
        if not _exit_hook_registered:
            atexit.register(_let_go_at_exit)
            _exit_hook_registered = True


def _let_go_at_exit() -> None:
    """At interpreter exit, before shutdown: wait until Arrow has freed what readers handed it
    (see `_Handoff`)."""
    gc.collect()  # what only a reference cycle (a traceback, say) still holds
    deadline = time.monotonic() + _LET_GO_SECONDS
    with _held_lock:
        held = list(_held)
    for handoff in held:
        handoff.wait(deadline - time.monotonic())


@dataclass
class ColumnReport:
    """What the contract's column policies did to one file, for the job's audit trail.

    `read_batches` fills it in once it has matched the file's columns, before the first batch.

    Attributes:
        ignored: the file's columns left out of the load (`extra_columns: ignore`), as the file
            names them, in file order. For JSON, the undeclared keys of the first record: each
            record has its own keys, and Arrow's parser drops undeclared ones without naming
            them.
        missing: the contract columns the file lacks, loaded as NULL (`missing_columns: null`),
            by their file name, in contract order. Never for JSON, whose absent keys are NULL
            under either policy.
    """

    ignored: tuple[str, ...] = ()
    missing: tuple[str, ...] = ()


def read_batches(
    source: SourceFile,
    contract: DatasetContract,
    batch_rows: int,
    block_bytes: int = DEFAULT_BLOCK_BYTES,
    report: ColumnReport | None = None,
) -> Iterator[pa.RecordBatch]:
    """Yield the file's rows as record batches with the contract's column names, in order.

    `report`, when given, is told which file columns were left out or filled with NULL.
    """
    report = report if report is not None else ColumnReport()
    if source.format == "csv":
        yield from _read_csv(source, contract, batch_rows, block_bytes, report)
    elif source.format == "parquet":
        yield from _read_parquet(source, contract, batch_rows, report)
    elif source.format in ("jsonl", "json"):
        yield from _read_jsonl(source, contract, batch_rows, block_bytes, report)
    else:  # guarded by command validation; kept for callers that skip it
        raise SourceError(f"{source.name}: unsupported format '{source.format}'")
    if source.obj is not None:
        # Raised inside the stream, so the caller's staging load rolls back and is retried.
        source.obj.check_unchanged()


@dataclass(frozen=True)
class HeaderMatch:
    """Where a file holds the contract's columns.

    Attributes:
        names: the file's own spelling of each contract column it has, in contract order.
        positions: each contract column's index among the file's columns; None for a column
            the file lacks, loaded as NULL (`missing_columns: null`).
        unnamed_trailing: indexes of trailing columns without a header (a delimiter at the end
            of every line, as spreadsheet exports write): read, and required to be empty.
        ignored: the file's columns the contract does not declare, left out of the load
            (`extra_columns: ignore`), as the file names them, in file order.
        missing: the contract columns the file lacks (`missing_columns: null`), in contract
            order.
    """

    names: list[str]
    positions: list[int | None]
    unnamed_trailing: list[int]
    ignored: list[str] = field(default_factory=list)
    missing: list[ColumnSpec] = field(default_factory=list)

    def report_to(self, report: ColumnReport) -> None:
        report.ignored = tuple(self.ignored)
        report.missing = tuple(c.source for c in self.missing)

    def positions_in(self, read: list[int]) -> list[int | None]:
        """Each contract column's index in batches that hold only the file columns `read`, in
        that order (None: a missing column)."""
        at = {index: n for n, index in enumerate(read)}
        return [None if p is None else at[p] for p in self.positions]


def _quoted(names: Iterable[str]) -> str:
    return ", ".join(f"'{name}'" for name in names) or "none"


_IGNORE_HINT = "set `extra_columns: ignore` in the contract to load the file without them"


def match_header(
    source: SourceFile,
    found: list[str],
    contract: DatasetContract,
    allow_unnamed_trailing: bool = False,
) -> HeaderMatch:
    """Match the file's column names (header, keys, Parquet fields) to the contract's columns.

    Names are compared without surrounding whitespace (`" Name "` is `Name`) and, under
    `match: case_insensitive`, ignoring case. Repeated columns are refused, and so are
    unexpected and missing ones unless the contract's `extra_columns: ignore` and
    `missing_columns: null` accept them (a missing column that is `nullable: false` is always
    refused), each with the file's and the contract's names.
    """
    fold = str.casefold if contract.match == "case_insensitive" else str

    def key(name: str) -> str:
        return fold(name.strip())

    line = 1 + contract.csv.skip_rows if source.format == "csv" else None
    unnamed_trailing: list[int] = []
    if allow_unnamed_trailing:
        end = len(found)
        while end > 0 and not found[end - 1].strip():
            end -= 1
        unnamed_trailing = list(range(end, len(found)))
        declares_unnamed = "" in {key(c) for c in contract.source_names}
        if declares_unnamed and not any(not found[i].strip() for i in range(end)):
            unnamed_trailing = unnamed_trailing[1:]  # the first one is the declared column
    considered = [i for i in range(len(found)) if i not in unnamed_trailing]
    positions_by_key: dict[str, list[int]] = {}
    for index in considered:
        positions_by_key.setdefault(key(found[index]), []).append(index)
    repeated = [found[p[0]] for p in positions_by_key.values() if len(p) > 1]
    if repeated:
        raise ContractViolation(
            f"column(s) {_quoted(repeated)} appear more than once in the file",
            source=source.name,
            line=line,
        )
    wanted = {key(c.source): c for c in contract.columns}
    missing = [c for c in contract.columns if key(c.source) not in positions_by_key]
    refused = missing
    if contract.missing_columns == "null":
        refused = [c for c in missing if not c.nullable]
    if refused:
        raise ContractViolation(
            f"missing column(s) {_labels(refused)}; the file has "
            f"{_quoted(found[i] for i in considered)}{_missing_hint(contract, refused)}",
            source=source.name,
            line=line,
        )
    unexpected = [i for i in considered if key(found[i]) not in wanted]
    if unexpected and contract.extra_columns == "fail":
        raise ContractViolation(
            f"unexpected column(s) {_quoted(found[i] for i in unexpected)}; dataset "
            f"'{contract.name}' declares {_quoted(contract.source_names)}; {_IGNORE_HINT}",
            source=source.name,
            line=line,
        )
    if len(missing) == len(contract.columns):
        # Both policies together would load any file at all, as rows of NULLs.
        raise ContractViolation(
            f"the file has none of the columns dataset '{contract.name}' declares "
            f"({_quoted(contract.source_names)}); it has {_quoted(found[i] for i in considered)}",
            source=source.name,
            line=line,
        )
    positions = [positions_by_key.get(key(c.source), [None])[0] for c in contract.columns]
    return HeaderMatch(
        names=[found[i] for i in positions if i is not None],
        positions=positions,
        unnamed_trailing=unnamed_trailing,
        ignored=[found[i] for i in unexpected],
        missing=missing,
    )


def _missing_hint(contract: DatasetContract, refused: list[ColumnSpec]) -> str:
    """What would accept the file: `missing_columns: null`, which fills nullable columns only."""
    if contract.missing_columns == "null":
        return "; `missing_columns: null` does not apply to columns that are nullable: false"
    if all(not c.nullable for c in refused):
        return ""  # the option would not help
    return (
        "; set `missing_columns: null` in the contract to load nullable columns a file lacks "
        "as NULL"
    )


def _labels(columns: Iterable[ColumnSpec]) -> str:
    return ", ".join(column_label(c) for c in columns)


def _as_contract_batch(
    batch: pa.RecordBatch, positions: list[int | None], contract: DatasetContract
) -> pa.RecordBatch:
    """The contract's columns of a raw batch (`positions`: each one's index in it), in contract
    order, named as the warehouse names them (no data is copied). A column the file lacks is a
    typed NULL column: validation and the load see an ordinary batch."""
    return pa.RecordBatch.from_arrays(
        [
            batch.column(p) if p is not None else pa.nulls(batch.num_rows, spec.type.arrow_type)
            for p, spec in zip(positions, contract.columns, strict=True)
        ],
        names=contract.column_names,
    )


def _read_csv(
    source: SourceFile,
    contract: DatasetContract,
    batch_rows: int,
    block_bytes: int,
    report: ColumnReport,
) -> Iterator[pa.RecordBatch]:
    """CSV batches, every value as text (so a bad value is reported with its row and column).

    The file's header decides which text column is which contract column. Arrow needs each
    column's type when it opens the file, keyed by the name the file gives it; the contract's
    spelling is right for nearly every file, so the file is opened once with it and only opened
    again, with the file's own spelling, when the header differs in case or surrounding blanks
    or has columns to leave out (`extra_columns: ignore`).
    """
    options = contract.csv
    text_columns = [*contract.source_names, ""]  # "": unnamed trailing columns (must be empty)
    reader = stream = None
    try:
        reader, stream, bad_rows = _open_csv(source, options, text_columns, block_bytes)
        found = reader.schema.names
        header = match_header(source, found, contract, allow_unnamed_trailing=True)
        header.report_to(report)
        read = list(range(len(found)))  # the file's columns each batch holds, in order
        if header.ignored:
            # Arrow selects columns by name, and then neither builds nor checks the others. A
            # blank name may stand for several columns (a blank header in the middle, unnamed
            # trailing ones): then every column is read, all as text, so none is inferred.
            selectable = len(set(found)) == len(found)
            if selectable:
                kept = [p for p in header.positions if p is not None] + header.unnamed_trailing
                read = sorted(kept)
            _close_csv(reader, stream)
            reader, stream, bad_rows = _open_csv(
                source,
                options,
                [*found, ""],
                block_bytes,
                include=[found[i] for i in read] if selectable else None,
            )
        elif any(name not in text_columns for name in header.names):
            _close_csv(reader, stream)
            reader, stream, bad_rows = _open_csv(source, options, [*header.names, ""], block_bytes)
        positions = header.positions_in(read)
        unnamed = [(read.index(i), i) for i in header.unnamed_trailing]  # (in batch, in file)
        first_row = 1
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
            _check_unnamed_empty(source, batch, unnamed, first_row)
            first_row += batch.num_rows
            yield from _rechunk(_as_contract_batch(batch, positions, contract), batch_rows)
    finally:
        if reader is not None and stream is not None:
            # Released before the reader closes: its background reads must not wait for a
            # consumer that has stopped (an error, or a caller that abandons the batches).
            _close_csv(reader, stream)


def _open_csv(
    source: SourceFile,
    options: CsvOptions,
    text_columns: list[str],
    block_bytes: int,
    include: list[str] | None = None,
) -> "tuple[pacsv.CSVStreamingReader, _PacedStream, list[pacsv.InvalidRow]]":
    """Open the file for streaming, `text_columns` as text; `include`: only these columns."""
    bad_rows: list[pacsv.InvalidRow] = []

    def on_invalid_row(row: pacsv.InvalidRow) -> str:
        bad_rows.append(row)
        return "error"

    # Arrow's parser holds this Python callable as it holds the stream (see `_Handoff`).
    _Handoff().track(on_invalid_row)
    # Arrow transcodes any other encoding to UTF-8, with its own reads (see `_PacedStream`).
    utf8 = codecs.lookup(options.encoding).name == "utf-8"
    stream = None
    try:
        stream = _PacedStream(source.open_stream(), READ_AHEAD_BLOCKS if utf8 else None)
        reader = pacsv.open_csv(
            stream,
            read_options=pacsv.ReadOptions(
                block_size=block_bytes, encoding=options.encoding, skip_rows=options.skip_rows
            ),
            parse_options=pacsv.ParseOptions(
                delimiter=options.delimiter,
                quote_char=options.quote_char or False,
                # Quoted values may hold line breaks (addresses, notes): valid CSV.
                newlines_in_values=options.quote_char is not None,
                invalid_row_handler=on_invalid_row,
            ),
            convert_options=pacsv.ConvertOptions(
                column_types={name: pa.string() for name in text_columns},
                include_columns=include or [],
                null_values=list(options.null_values),
                strings_can_be_null=True,
                quoted_strings_can_be_null=False,
            ),
        )
    except (pa.ArrowInvalid, UnicodeDecodeError) as exc:
        _release(stream)
        stream = None  # the traceback keeps this frame: it must not keep the stream
        raise _csv_error(source, options, exc, bad_rows, block_bytes) from None
    except OSError as exc:
        _release(stream)
        stream = None
        raise source.io_error(exc) from None
    return reader, stream, bad_rows


def _close_csv(reader: "pacsv.CSVStreamingReader", stream: "_PacedStream") -> None:
    stream.release()
    reader.close()


def _check_unnamed_empty(
    source: SourceFile, batch: pa.RecordBatch, unnamed: list[tuple[int, int]], first_row: int
) -> None:
    """Refuse a value under a trailing column without a header (its data would be lost).

    `unnamed`: each such column's index in the batch and in the file."""
    for at_batch, index in unnamed:
        values = batch.column(at_batch)
        if not pa.types.is_string(values.type):  # no column type: Arrow inferred it
            values = values.cast(pa.string())
        filled = pc.fill_null(pc.not_equal(values, ""), False)
        if pc.any(filled).as_py():
            at = pc.index(filled, True).as_py()
            raise ContractViolation(
                f"value '{str(values[at].as_py())[:100]}' in a column without a header; "
                "name the column in the file and the contract, or leave it empty",
                source=source.name,
                row=first_row + at,
                line=source.line_of_row(first_row + at),
                column=f"#{index + 1}",
            )


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
    source: SourceFile, contract: DatasetContract, batch_rows: int, report: ColumnReport
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
        found = parquet.schema_arrow.names
        header = match_header(source, found, contract)
        header.report_to(report)
        # Only the contract's columns are read (ignored ones are never fetched nor decoded),
        # in contract order.
        positions = header.positions_in([p for p in header.positions if p is not None])
        with parquet:
            try:
                for batch in parquet.iter_batches(batch_size=batch_rows, columns=header.names):
                    yield _as_contract_batch(batch, positions, contract)
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


# How much of a `json` file is looked at to tell an array from JSON Lines: the first byte that
# is not whitespace decides.
_JSON_SNIFF_BYTES = 64 << 10


class _Prefixed:
    """A stream that gives `head` (bytes already read) and then the rest of `stream`."""

    def __init__(self, head: bytes, stream: pa.NativeFile):
        self._head = head
        self._stream = stream
        self.closed = False

    def read(self, nbytes: int | None = None) -> bytes:
        if self._head:
            if nbytes is None or nbytes < 0:
                data, self._head = self._head + self._stream.read(), b""
                return data
            data, self._head = self._head[:nbytes], self._head[nbytes:]
            return data
        return self._stream.read(nbytes)

    def read_buffer(self, nbytes: int) -> pa.Buffer:
        return pa.py_buffer(self.read(nbytes))

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def close(self) -> None:
        self.closed = True
        self._stream.close()


def _json_lines(source: SourceFile) -> "tuple[Any, str]":
    """The source as JSON Lines bytes, and its layout ("lines" or "array").

    A `jsonl` file is JSON Lines. A `json` file is one array of objects (turned into JSON Lines
    on the fly by `JsonArrayLines`, byte for byte, so offsets stay true) or, when its first
    character is `{`, JSON Lines too: many exports write one object per line into `.json`.
    """
    raw = source.open_stream()
    if source.format != "json":
        return raw, "lines"
    head = b""
    try:
        while len(head) < _JSON_SNIFF_BYTES:
            chunk = raw.read(_JSON_SNIFF_BYTES - len(head))
            if not chunk:
                break
            head += chunk
            if head.lstrip(b"\xef\xbb\xbf \t\r\n"):
                break
    except BaseException:
        raw.close()
        raise
    layout = sniff_json_layout(head)
    stream = _Prefixed(head, raw)
    if layout == "array":
        return JsonArrayLines(stream), "array"
    if layout in ("lines", "empty"):
        return stream, "lines"
    stream.close()
    found = head.lstrip(b"\xef\xbb\xbf \t\r\n")[:20].decode("utf-8", "replace")
    raise ContractViolation(
        f"expected a JSON array of objects, or one JSON object per line; the file starts "
        f"with {found!r}",
        source=source.name,
        line=1,
    )


def _read_jsonl(
    source: SourceFile,
    contract: DatasetContract,
    batch_rows: int,
    block_bytes: int,
    report: ColumnReport,
) -> Iterator[pa.RecordBatch]:
    """JSON Lines and JSON array batches. Keys are matched to the columns' source names; under
    `match: case_insensitive` the first object's spelling of a key is the file's spelling.

    Each record has its own keys: one it lacks is NULL under either `missing_columns` policy
    (many writers leave out null values). Under `extra_columns: ignore` Arrow's parser skips
    undeclared keys, which are never converted.
    """
    stream = None
    ignore = contract.extra_columns == "ignore"
    try:
        names = contract.source_names
        first = None
        if contract.match == "case_insensitive" or ignore:
            first = _first_json_record(source)
        if contract.match == "case_insensitive":
            names = _json_key_spelling(first, contract)
        if ignore:
            report.ignored = _ignored_json_keys(source, contract, first, names)
        schema = pa.schema(
            [
                pa.field(name, _jsonl_read_type(spec.type.arrow_type))
                for name, spec in zip(names, contract.columns, strict=True)
            ]
        )
        lines, _ = _json_lines(source)
        stream = _PacedStream(lines, READ_AHEAD_BLOCKS)
        try:
            reader = pajson.open_json(
                stream,
                read_options=pajson.ReadOptions(block_size=block_bytes),
                parse_options=pajson.ParseOptions(
                    explicit_schema=schema,
                    unexpected_field_behavior="ignore" if ignore else "error",
                ),
            )
        except pa.ArrowInvalid as exc:
            if "Empty JSON stream" in str(exc):
                return  # no records (`[]`, blank lines): the caller reports "no data rows"
            raise
        for batch in reader:
            stream.taken()
            renamed = pa.RecordBatch.from_arrays(
                [batch.column(name) for name in names], names=contract.column_names
            )
            yield from _rechunk(renamed, batch_rows)
    except JsonArrayError as exc:
        raise ContractViolation(exc.message, source=source.name, line=exc.line) from None
    except pa.ArrowInvalid as exc:
        raise _locate_jsonl_error(source, contract, exc) from None
    except OSError as exc:
        raise source.io_error(exc) from None
    finally:
        _release(stream)


def _first_json_record(source: SourceFile) -> "_JsonRecord | None":
    """The first record, as the standard json module reads it (None: none, or unreadable; the
    reader then reports it, with its place)."""
    try:
        return next(_json_records(source), None)
    except (JsonArrayError, UnicodeDecodeError):
        return None


def _first_keys(first: "_JsonRecord | None") -> list[str]:
    value = first.value if first is not None else None
    return list(value) if isinstance(value, dict) else []


def _json_key_spelling(first: "_JsonRecord | None", contract: DatasetContract) -> list[str]:
    """Under `match: case_insensitive`: how the first object spells each contract column (the
    contract's spelling for keys it does not have)."""
    by_key = {key.strip().casefold(): key for key in _first_keys(first)}
    return [by_key.get(c.source.strip().casefold(), c.source) for c in contract.columns]


def _ignored_json_keys(
    source: SourceFile,
    contract: DatasetContract,
    first: "_JsonRecord | None",
    names: list[str],
) -> tuple[str, ...]:
    """The first record's keys that Arrow's parser will skip (`names`: the keys it reads).

    A first record with keys but none of the contract's is refused: the policy would load any
    JSON at all, as rows of NULLs.
    """
    keys = _first_keys(first)
    read = set(names)
    ignored = tuple(key for key in keys if key not in read)
    if keys and len(ignored) == len(keys):
        assert first is not None
        raise ContractViolation(
            f"the first record has none of the keys dataset '{contract.name}' declares "
            f"({_quoted(contract.source_names)}); it has {_quoted(keys)}",
            source=source.name,
            line=first.line(source),
            row=first.row,
        )
    return ignored


@dataclass(frozen=True)
class _JsonRecord:
    row: int  # 1-based data row
    number: int  # 1-based line of the JSON Lines form (= the file's line for JSON Lines)
    offset: int  # byte offset where the record starts
    layout: str
    value: object  # the parsed value, or the json.JSONDecodeError of a line that is not JSON

    def line(self, source: SourceFile) -> int | None:
        """The record's line in the file. An array element's line is counted in the original
        bytes (its JSON Lines form keeps every byte's offset): one more pass, on error only."""
        if self.layout == "lines":
            return self.number
        try:
            return _line_at_offset(source, self.offset)
        except OSError:
            return None


def _byte_lines(stream: Any) -> Iterator[bytes]:
    pending = b""
    while True:
        chunk = stream.read(_SCAN_BUFFER_BYTES)
        if not chunk:
            break
        *complete, pending = (pending + chunk).split(b"\n")
        for line in complete:
            yield line + b"\n"
    if pending:
        yield pending


def _line_at_offset(source: SourceFile, offset: int) -> int:
    newlines = 0
    with source.open_stream(buffer_size=_SCAN_BUFFER_BYTES) as stream:
        remaining = offset
        while remaining > 0:
            chunk = stream.read(min(remaining, _SCAN_BUFFER_BYTES))
            if not chunk:
                break
            newlines += chunk.count(b"\n")
            remaining -= len(chunk)
    return newlines + 1


def _json_records(source: SourceFile) -> Iterator[_JsonRecord]:
    """The records of a JSON Lines or JSON array file, in order, parsed one line of the JSON
    Lines form at a time with the standard json module: for error reports (slow) and the first
    object's keys. Raises `UnicodeDecodeError` and `JsonArrayError` as met."""
    lines, layout = _json_lines(source)
    with contextlib.closing(lines):
        row = 0
        offset = 0
        for number, raw in enumerate(_byte_lines(lines), start=1):
            start = offset
            offset += len(raw)
            if number == 1 and raw.startswith(codecs.BOM_UTF8):
                raw = raw[len(codecs.BOM_UTF8) :]
            text = raw.decode("utf-8")
            if not text.strip():
                continue
            row += 1
            start += len(raw) - len(raw.lstrip())
            try:
                value: object = json.loads(text)
            except json.JSONDecodeError as decode_error:
                value = decode_error
            yield _JsonRecord(row, number, start, layout, value)


def _locate_jsonl_error(source: SourceFile, contract: DatasetContract, exc: Exception) -> Exception:
    """Slow path, on failure only: find the first bad record with the standard json module."""
    try:
        return _first_bad_json_record(source, contract, exc)
    except UnicodeDecodeError as decode_error:
        return SourceError(f"{source.name}: not valid UTF-8: {decode_error}")
    except JsonArrayError as array_error:
        return ContractViolation(array_error.message, source=source.name, line=array_error.line)
    except OSError as io_error:
        return source.io_error(io_error)


def _first_bad_json_record(
    source: SourceFile, contract: DatasetContract, exc: Exception
) -> Exception:
    fold = str.casefold if contract.match == "case_insensitive" else str
    columns = {fold(c.source): c for c in contract.columns}
    ignore = contract.extra_columns == "ignore"
    # Streamed a record at a time: a bad record far into a large file is found without
    # holding the file.
    for record in _json_records(source):
        value = record.value
        problem: tuple[str, ColumnSpec | None, str | None] | None = None
        if isinstance(value, json.JSONDecodeError):
            problem = (f"invalid JSON: {value.msg}", None, None)
        elif not isinstance(value, dict):
            problem = ("expected a JSON object", None, None)
        elif not ignore and (unexpected := [key for key in value if fold(key) not in columns]):
            problem = (
                f"unexpected field(s) {_quoted(unexpected)}; {_IGNORE_HINT}",
                None,
                unexpected[0],
            )
        else:
            for key, item in value.items():
                column = columns.get(fold(key))
                if column is None:
                    continue  # skipped by the parser (extra_columns: ignore)
                bad = _json_type_mismatch(item, column.type)
                if bad:
                    problem = (bad, column, None)
                    break
        if problem is not None:
            message, column, key = problem
            return ContractViolation(
                message,
                source=source.name,
                line=record.line(source),
                row=record.row,
                column=column.source if column is not None else key,
                warehouse_column=column.name if column is not None else None,
            )
    return ContractViolation(f"unreadable JSON: {str(exc).splitlines()[0]}", source=source.name)


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
