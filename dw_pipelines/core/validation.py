"""Vectorised contract checks: cast each batch to the contract schema, or say exactly why not.

The happy path is one Arrow cast per column per batch, no Python per row. Only when a cast fails
do we look for the first offending value, by bisecting the column (a logarithmic number of casts),
so the error can name the row, line, column and value.
"""

import functools
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from dw_pipelines.core.contracts import ColumnSpec, DatasetContract
from dw_pipelines.core.errors import ContractViolation, SourceError
from dw_pipelines.core.readers import DEFAULT_BLOCK_BYTES, SourceFile, read_batches

# An ISO-8601 timestamp that already carries an offset after its time part.
_HAS_OFFSET = r"[Tt ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?\s*(Z|z|[+-]\d{2}(:?\d{2})?)$"
_DATE_ONLY = r"^(\d{4}-\d{2}-\d{2})$"


DEFAULT_MAX_VALUE_BYTES = 1 << 20


def conform_batch(
    batch: pa.RecordBatch,
    contract: DatasetContract,
    source: SourceFile,
    first_row: int,
    max_value_bytes: int = DEFAULT_MAX_VALUE_BYTES,
) -> pa.RecordBatch:
    """Return `batch` cast to `contract.arrow_schema`.

    Args:
        batch: raw batch from a reader, columns named and ordered as the contract's (warehouse
            names).
        contract: the dataset contract.
        source: the file, for error messages (and its format: date and timestamp formats of
            the contract's `csv:` apply to CSV files).
        first_row: 1-based data row number of the batch's first row.
        max_value_bytes: the largest text value accepted (a runaway value is almost always a
            broken file, e.g. an unbalanced quote, and would bloat every query).

    Raises:
        ContractViolation: a value does not fit its column type, or a non-nullable column is null.
    """
    formats = text_formats(contract, source.format)
    arrays = []
    for spec, array in zip(contract.columns, batch.columns, strict=True):
        converted = _convert_column(array, spec, source, first_row, formats)
        if not spec.nullable and converted.null_count:
            index = pc.index(pc.is_null(converted), True).as_py()
            raise _violation(
                source, first_row + index, spec, "is empty but the column is not nullable"
            )
        if pa.types.is_string(converted.type) and len(converted):
            lengths = pc.binary_length(converted)
            if (pc.max(lengths).as_py() or 0) > max_value_bytes:
                index = pc.index(pc.greater(lengths, max_value_bytes), True).as_py()
                size = lengths[index].as_py()
                raise _violation(
                    source,
                    first_row + index,
                    spec,
                    f"value is too large: {size} bytes, the limit is {max_value_bytes} "
                    "(DW_MAX_VALUE_BYTES)",
                )
            # PostgreSQL text cannot hold NUL; refuse it here, with its place, not at COPY time.
            has_nul = pc.match_substring(converted, "\x00")
            if pc.any(has_nul).as_py():
                index = pc.index(has_nul, True).as_py()
                raise _violation(source, first_row + index, spec, "contains a NUL (0x00) byte")
        arrays.append(converted)
    return pa.RecordBatch.from_arrays(arrays, schema=contract.arrow_schema)


@dataclass(frozen=True)
class TextFormats:
    """strptime formats of date and timestamp text (None: ISO 8601)."""

    date: str | None = None
    timestamp: str | None = None


ISO = TextFormats()


def text_formats(contract: DatasetContract, source_format: str) -> TextFormats:
    """The contract's `csv:` date and timestamp formats, for CSV files; ISO 8601 otherwise."""
    if source_format != "csv":
        return ISO
    return TextFormats(contract.csv.date_format, contract.csv.timestamp_format)


Parser = Callable[[pa.Array], pa.Array]


def text_parser(spec: ColumnSpec, formats: TextFormats = ISO) -> Parser:
    """How a text column becomes the column's type; raises `pa.ArrowInvalid` on a bad value."""
    kind = spec.type.name
    if kind == "timestamp":
        if formats.timestamp:
            return functools.partial(_strptime_timestamp, format=formats.timestamp)
        return _cast_timestamp
    if kind == "date" and formats.date:
        return functools.partial(_strptime_date, format=formats.date)
    if kind == "int64":
        return _cast_integer
    target = spec.type.arrow_type
    return lambda array: pc.cast(array, target, safe=True)


def convert(array: pa.Array, spec: ColumnSpec, formats: TextFormats = ISO) -> pa.Array:
    """`array` as the column's type, converted exactly as a load converts it.

    Raises:
        pa.ArrowInvalid: a value does not fit (`_convert_column` then finds which).
    """
    target = spec.type.arrow_type
    if array.type == target:
        return array
    if not pa.types.is_string(array.type) or spec.type.name == "string":
        return _cast_typed(array, target)
    parse = text_parser(spec, formats)
    try:
        return parse(array)  # the common case: clean text, one vectorised parse
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return parse(_prepare(array, spec, formats))


def _cast_typed(array: pa.Array, target: pa.DataType) -> pa.Array:
    """Typed input (Parquet, JSON numbers): a plain cast, which refuses lossy ones, except that
    finer timestamps are truncated to microseconds (PostgreSQL's precision), as nanosecond text
    is."""
    safe = not (pa.types.is_timestamp(array.type) and pa.types.is_timestamp(target))
    try:
        return pc.cast(array, target, safe=safe)
    except pa.ArrowNotImplementedError as exc:
        raise pa.ArrowInvalid(str(exc)) from None


def _convert_column(
    array: pa.Array,
    spec: ColumnSpec,
    source: SourceFile,
    first_row: int,
    formats: TextFormats = ISO,
) -> pa.Array:
    try:
        return convert(array, spec, formats)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass
    if not pa.types.is_string(array.type) or spec.type.name == "string":
        target = spec.type.arrow_type
        return _refuse(array, array, spec, source, first_row, lambda a: _cast_typed(a, target))
    prepared = _prepare(array, spec, formats)
    return _refuse(array, prepared, spec, source, first_row, text_parser(spec, formats))


def _refuse(
    original: pa.Array,
    prepared: pa.Array,
    spec: ColumnSpec,
    source: SourceFile,
    first_row: int,
    parse: Parser,
) -> pa.Array:
    index = _first_unparsable(prepared, parse)
    value = original[index].as_py() if index is not None else None
    row = first_row + (index or 0)
    shown = repr(value) if not isinstance(value, str) else f"'{value[:100]}'"
    raise _violation(source, row, spec, f"value {shown} is not a valid {spec.type}") from None


_UTC_MICROS = pa.timestamp("us", tz="UTC")


def _cast_timestamp(array: pa.Array, naive: bool = False) -> pa.Array:
    """ISO 8601 text to UTC microseconds: with an offset, or (`naive`, or when no value has
    one) read as UTC. Nanosecond text (9 fraction digits, common in exports) is accepted and
    truncated to microseconds, PostgreSQL's precision."""
    if not naive:
        try:
            return _cast_timestamp_as(array, naive=False)  # every value carries its offset
        except pa.ArrowInvalid:
            pass
    return _cast_timestamp_as(array, naive=True)


def _cast_timestamp_as(array: pa.Array, naive: bool) -> pa.Array:
    error: pa.ArrowInvalid | None = None
    for unit in ("us", "ns"):
        try:
            if naive:
                parsed = pc.assume_timezone(pc.cast(array, pa.timestamp(unit)), "UTC")
            else:
                parsed = pc.cast(array, pa.timestamp(unit, tz="UTC"))
            return parsed.cast(_UTC_MICROS, safe=False)
        except pa.ArrowInvalid as exc:
            error = exc
    assert error is not None
    raise error


def _strptime_timestamp(array: pa.Array, format: str) -> pa.Array:
    """Text in a strptime format to UTC microseconds; without `%z` the times are UTC."""
    parsed = pc.strptime(array, format=format, unit="us", error_is_null=False)
    if parsed.type.tz is None:
        parsed = pc.assume_timezone(parsed, "UTC")
    return parsed.cast(_UTC_MICROS)


def _strptime_date(array: pa.Array, format: str) -> pa.Array:
    return pc.strptime(array, format=format, unit="s", error_is_null=False).cast(pa.date32())


# An integer written as a float with a zero fraction (`12.0`, as pandas and R write integer
# columns that hold a null) or with a plus sign: the same integer, so it is accepted. `12.5`,
# `1e3` and `1,234` are refused: they are not (or not plainly) integers.
_WHOLE_NUMBER = r"^\+?(-?\d+)(?:\.0*)?$"


def _cast_integer(array: pa.Array) -> pa.Array:
    try:
        return pc.cast(array, pa.int64(), safe=True)
    except pa.ArrowInvalid:
        whole = pc.replace_substring_regex(array, _WHOLE_NUMBER, r"\1")
        return pc.cast(whole, pa.int64(), safe=True)


def _prepare(array: pa.Array, spec: ColumnSpec, formats: TextFormats) -> pa.Array:
    """Normalise text before a parse: trim blanks; give ISO timestamps without an offset UTC's."""
    trimmed = pc.utf8_trim_whitespace(array)
    if spec.type.name == "timestamp" and not formats.timestamp:
        # A bare date is that day's midnight, UTC.
        trimmed = pc.replace_substring_regex(trimmed, _DATE_ONLY, r"\1T00:00:00")
        has_offset = pc.match_substring_regex(trimmed, _HAS_OFFSET)
        with_utc = pc.binary_join_element_wise(trimmed, pa.scalar("Z"), "")
        trimmed = pc.if_else(pc.fill_null(has_offset, True), trimmed, with_utc)
    return trimmed


def _first_unparsable(array: pa.Array, parse: Parser) -> int | None:
    """Index of the first value that does not parse, found by bisection over slices."""

    def parses(offset: int, length: int) -> bool:
        try:
            parse(array.slice(offset, length))
            return True
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            return False

    low, high = 0, len(array)
    if parses(low, high):
        return None
    # Invariant: the first bad value lies in [low, high).
    while high - low > 1:
        middle = (low + high) // 2
        if parses(low, middle - low):
            low = middle
        else:
            high = middle
    return low


def _violation(source: SourceFile, row: int, spec: ColumnSpec, message: str) -> ContractViolation:
    return ContractViolation(
        message,
        source=source.name,
        row=row,
        line=source.line_of_row(row),
        column=spec.source,
        warehouse_column=spec.name,
    )


# Key hashing: one 64-bit value per row. Equal keys always hash alike; different keys collide
# with probability ~n²/2⁶⁵ (1e-6 at 5M rows) or by construction (the string hash is polynomial),
# and a collision only costs an exact re-check, never a wrong verdict.
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_STRING_BASE = np.uint64(0x100000001B3)
_NULL_HASH = np.uint64(0x5BD1E9955BD1E995)
_powers = np.ones(1, dtype=np.uint64)
_STRING_CHUNK_BYTES = 1 << 20


def _mix(values: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser, in place on a uint64 array: spreads every input bit."""
    values ^= values >> np.uint64(30)
    values *= np.uint64(0xBF58476D1CE4E5B9)
    values ^= values >> np.uint64(27)
    values *= np.uint64(0x94D049BB133111EB)
    values ^= values >> np.uint64(31)
    return values


def _string_powers(length: int) -> np.ndarray:
    global _powers
    if len(_powers) < length:
        grown = np.full(max(length, 2 * len(_powers)), _STRING_BASE, dtype=np.uint64)
        grown[0] = 1
        _powers = np.cumprod(grown, dtype=np.uint64)  # wraps modulo 2⁶⁴, as wanted
    return _powers[:length]


def _hash_binary(array: pa.Array) -> np.ndarray:
    """Σ byte_j · B^j over each value's bytes (modulo 2⁶⁴), mixed with its length: a few numpy
    passes over the data buffer, no Python object per value."""
    if pa.types.is_string(array.type) or pa.types.is_binary(array.type):
        offset_type = np.int32
    else:
        offset_type = np.int64
    _, offsets_buffer, data_buffer = array.buffers()
    offsets = np.frombuffer(offsets_buffer, dtype=offset_type)[
        array.offset : array.offset + len(array) + 1
    ].astype(np.int64)
    if offsets[-1] - offsets[0] > _STRING_CHUNK_BYTES and len(array) > 1:
        # The passes below use ~32 bytes of scratch per data byte: bound them by hashing
        # slices of at most _STRING_CHUNK_BYTES of text each (or one longer value alone).
        parts = []
        start = 0
        while start < len(array):
            end = int(np.searchsorted(offsets, offsets[start] + _STRING_CHUNK_BYTES, "right")) - 1
            end = max(end, start + 1)
            parts.append(_hash_binary(array.slice(start, end - start)))
            start = end
        return np.concatenate(parts)
    lengths = np.diff(offsets)
    begin = offsets[0]
    total = int(offsets[-1] - begin)
    if total:
        data = np.frombuffer(data_buffer, dtype=np.uint8, count=total, offset=int(begin))
        starts = offsets[:-1] - begin
        position = np.arange(total, dtype=np.int64)
        position -= np.repeat(starts, lengths)
        terms = _string_powers(int(lengths.max()))[position]
        del position
        terms *= data
        sums = np.zeros(total + 1, dtype=np.uint64)
        np.cumsum(terms, out=sums[1:])
        del terms
        hashes = sums[offsets[1:] - begin] - sums[starts]
    else:
        hashes = np.zeros(len(array), dtype=np.uint64)
    hashes ^= lengths.astype(np.uint64) * _GOLDEN
    return _mix(hashes)


def _hash_column(array: pa.Array) -> np.ndarray:
    if not len(array):
        return np.empty(0, dtype=np.uint64)
    kind = array.type
    if pa.types.is_dictionary(kind):
        array = array.dictionary_decode()
        kind = array.type
    if (
        pa.types.is_string(kind)
        or pa.types.is_large_string(kind)
        or pa.types.is_binary(kind)
        or pa.types.is_large_binary(kind)
    ):
        hashes = _hash_binary(array)
    elif pa.types.is_boolean(kind):
        hashes = _mix(pc.cast(array, pa.uint8()).to_numpy(zero_copy_only=False).astype(np.uint64))
    elif pa.types.is_floating(kind):
        values = array.to_numpy(zero_copy_only=False).astype(np.float64)
        values += 0.0  # -0.0 becomes 0.0: Arrow (and PostgreSQL) hold them equal
        hashes = _mix(values.view(np.uint64))
    elif pa.types.is_integer(kind) or pa.types.is_temporal(kind) or pa.types.is_decimal(kind):
        # Integers, dates, timestamps, decimals: hash the fixed-width value bytes themselves
        # (one value's bytes are canonical: decimals of one type share their scale).
        width = kind.bit_width // 8
        per_value = max(width // 8, 1)
        words = np.frombuffer(
            array.buffers()[1],
            dtype=f"<u{min(width, 8)}",
            offset=array.offset * width,
            count=len(array) * per_value,
        ).astype(np.uint64)
        words = words.reshape(len(array), per_value)
        hashes = _mix(words[:, 0].copy())
        for index in range(1, per_value):
            hashes = _mix(hashes * _GOLDEN + words[:, index])
    else:  # not a contract type; correct, if slow
        values = [str(value) for value in array.to_pylist()]
        hashes = _hash_binary(pa.array(values, pa.string()))
    if array.null_count:
        hashes[array.is_null().to_numpy(zero_copy_only=False)] = _NULL_HASH
    return hashes


def hash_keys(batch: pa.RecordBatch, key_columns: tuple[str, ...]) -> np.ndarray:
    """One uint64 per row of `batch`, combining the hashes of its `key_columns`."""
    combined: np.ndarray | None = None
    for name in key_columns:
        hashes = _hash_column(batch.column(name))
        combined = hashes if combined is None else _mix(combined * _GOLDEN + hashes)
    assert combined is not None
    return combined


DuplicateKey = tuple[dict[str, object], tuple[int, ...], int]
_RANGES = 32
_MAX_HASH = (1 << 64) - 1
_RANGE_WIDTH = (1 << 64) // _RANGES
_RANGE_STARTS = np.array([i * _RANGE_WIDTH for i in range(1, _RANGES)], dtype=np.uint64)
_HASH_BYTES = 8


# Hashes a KeyTracker keeps in memory (8 bytes each: 16 MB); the sorted parts of a larger file
# go to a temporary file, so that memory stays flat however many rows the file has (a 20M-row
# file held 160 MB of hashes; the run's peak RSS was 369 MB against 282 MB at 5M rows).
KEY_HASHES_IN_MEMORY = 1 << 21


class KeyTracker:
    """Finds primary-key duplicates within one file while the file streams by.

    Keeps one 64-bit hash per row (8 bytes a row whatever the key, in numpy arrays) instead of
    the key values, which cost ~24 bytes a row for an int64 key once sorted (and more for text).
    Each batch's hashes are sorted as they arrive; past `in_memory` hashes, the sorted parts are
    appended to an anonymous temporary file instead of kept (disk: 8 bytes a row, 160 MB for 20M
    rows; it is deleted when the tracker is). At the end equal hashes are found one hash range at
    a time, reading each part's slice of the range. Only if two hashes are equal (a duplicate,
    or very rarely a collision) does `first_duplicate` read the keys again, through `rescan`, to
    decide exactly and to name the rows: the happy path never needs the values back.
    """

    def __init__(self, key_columns: tuple[str, ...], in_memory: int | None = None):
        self.key_columns = key_columns
        self.in_memory = KEY_HASHES_IN_MEMORY if in_memory is None else in_memory
        self._parts: list[np.ndarray] = []  # each batch's key hashes, sorted
        self._held = 0  # hashes in _parts
        self._spill: BinaryIO | None = None
        # Each spilled part: its first hash's index in _spill, and where each range starts in it
        self._spilled: list[tuple[int, np.ndarray]] = []
        self._spilled_hashes = 0
        self._rows = 0
        self._candidates: np.ndarray | None = None

    def add(self, batch: pa.RecordBatch) -> None:
        if self.key_columns and batch.num_rows:
            hashes = hash_keys(batch, self.key_columns)
            hashes.sort()  # sorted parts let the end work one hash range at a time
            if self._held + len(hashes) <= self.in_memory:
                self._parts.append(hashes)
                self._held += len(hashes)
            else:
                if self._spill is None:
                    self._spill = tempfile.TemporaryFile(prefix="dw-key-hashes-")
                self._spill.write(hashes.tobytes())
                # Where each hash range starts in this part: the end reads one range of each
                # part straight from the file (a binary search in a mapped file would map a
                # page-cache window around every probe: +66 MB of RSS for 10M rows).
                bounds = np.searchsorted(hashes, _RANGE_STARTS)
                self._spilled.append(
                    (self._spilled_hashes, np.concatenate([[0], bounds, [len(hashes)]]))
                )
                self._spilled_hashes += len(hashes)
        self._rows += batch.num_rows

    def close(self) -> None:
        """Drop the hashes (and the temporary file) now rather than when collected."""
        self._parts, self._spilled = [], []
        if self._spill is not None:
            self._spill.close()
            self._spill = None

    def _repeated_hashes(self) -> np.ndarray:
        """The sorted distinct hash values held by more than one row.

        Equal hashes fall into the same range of values, so the ranges are checked one after
        the other: gathering one range from the sorted parts costs 1/_RANGES of the hashes'
        memory, where concatenating them all would double it (80 MB at 5M rows). A spilled
        part's slice of the range is read from the file at the offsets noted in `add`.
        """
        if self._spill is not None:
            self._spill.flush()
        found = []
        for index in range(_RANGES):
            low, high = index * _RANGE_WIDTH, (index + 1) * _RANGE_WIDTH
            slices = []
            for part in self._parts:
                start = 0 if index == 0 else np.searchsorted(part, np.uint64(low))
                end = len(part) if high > _MAX_HASH else np.searchsorted(part, np.uint64(high))
                if end > start:
                    slices.append(part[start:end])
            for first, bounds in self._spilled:
                start, end = int(bounds[index]), int(bounds[index + 1])
                if end > start:
                    assert self._spill is not None
                    self._spill.seek((first + start) * _HASH_BYTES)
                    data = self._spill.read((end - start) * _HASH_BYTES)
                    slices.append(np.frombuffer(data, dtype=np.uint64))
            if not slices:
                continue
            hashes = np.concatenate(slices)
            del slices
            hashes.sort()
            found.append(_distinct_sorted(hashes[1:][hashes[1:] == hashes[:-1]]))
        return np.concatenate(found) if found else np.empty(0, dtype=np.uint64)

    def first_duplicate(
        self, rescan: Callable[[], Iterable[pa.RecordBatch]]
    ) -> DuplicateKey | None:
        """(key, the first two 1-based rows holding it, how many rows share it), or None.

        Args:
            rescan: gives the same rows again, in the same order and with the same (conformed)
                key values, as batches holding at least the key columns. Only called when two
                rows share a hash.
        """
        if not self.key_columns or self._rows < 2:
            return None
        if self._candidates is None:
            self._candidates = self._repeated_hashes()
            self.close()  # not needed any more: free them before a re-read
        if not len(self._candidates):
            return None
        return _exact_duplicate(self.key_columns, self._candidates, rescan())


def _distinct_sorted(values: np.ndarray) -> np.ndarray:
    """The distinct values of a sorted array: what np.unique gives it, without sorting it again
    (and without np.unique, whose first call imports numpy.ma: 0.15 s of every run process)."""
    if len(values) < 2:
        return values
    first = np.empty(len(values), dtype=bool)
    first[0] = True
    np.not_equal(values[1:], values[:-1], out=first[1:])
    return values[first]


def _exact_duplicate(
    key_columns: tuple[str, ...], candidates: np.ndarray, batches: Iterable[pa.RecordBatch]
) -> DuplicateKey | None:
    """The first real duplicate among the rows whose key hash is one of `candidates`."""
    names = list(key_columns)
    parts: list[pa.RecordBatch] = []
    first_row = 1
    for batch in batches:
        hashes = hash_keys(batch, key_columns)
        slot = np.minimum(np.searchsorted(candidates, hashes), len(candidates) - 1)
        hits = np.flatnonzero(candidates[slot] == hashes)
        if len(hits):
            keys = batch.select(names).take(pa.array(hits))
            rows = pa.array(hits + first_row, pa.int64())
            parts.append(keys.append_column("_row", rows))
        first_row += batch.num_rows
    if not parts:
        return None
    table = pa.Table.from_batches(parts).combine_chunks()
    count = table.num_rows
    if count < 2:
        return None
    # Sorted by key, then row: each run of equal keys starts with its earliest row.
    order = pc.sort_indices(
        table, sort_keys=[*[(name, "ascending") for name in names], ("_row", "ascending")]
    )
    ordered = table.take(order)
    same_as_next = None
    for name in names:
        column = ordered[name]
        equal = pc.equal(column.slice(1), column.slice(0, count - 1))
        same_as_next = equal if same_as_next is None else pc.and_(same_as_next, equal)
    if not pc.any(same_as_next).as_py():
        return None  # only hash collisions: no duplicate
    # The earliest row holding a repeated key is that key's first occurrence.
    positions = pc.indices_nonzero(same_as_next)
    first = pc.min(pc.take(ordered["_row"], positions)).as_py()
    at = pc.index(table["_row"], first).as_py()
    key = {name: table[name][at].as_py() for name in names}
    mask = None
    for name in names:
        equal = pc.equal(table[name], table[name][at])
        mask = equal if mask is None else pc.and_(mask, equal)
    rows = pc.filter(table["_row"], mask)
    shown = tuple(sorted(rows.to_pylist())[:2])
    return key, shown, len(rows)


def conformed_keys(
    source: SourceFile,
    contract: DatasetContract,
    batch_rows: int = 65_536,
    block_bytes: int = DEFAULT_BLOCK_BYTES,
) -> Iterator[pa.RecordBatch]:
    """The file's primary-key columns again, converted as `conform_batch` converts them: the
    re-read `KeyTracker.first_duplicate` needs on its (rare) exact path.

    The first read already succeeded, so a failure here is a row larger than the read block
    (the load may have used a larger one): read again with larger blocks, skipping the rows
    already given.
    """
    specs = [contract.column(name) for name in contract.primary_key]
    formats = text_formats(contract, source.format)
    given = 0
    while True:
        try:
            seen = 0
            for raw in read_batches(source, contract, batch_rows, block_bytes):
                end = seen + raw.num_rows
                if end > given:
                    skip = given - seen if given > seen else 0
                    part = raw.slice(skip)
                    arrays = [
                        _convert_column(part.column(spec.name), spec, source, given + 1, formats)
                        for spec in specs
                    ]
                    yield pa.RecordBatch.from_arrays(arrays, names=list(contract.primary_key))
                    given = end
                seen = end
            return
        except (ContractViolation, SourceError):
            if block_bytes >= source.size_bytes:
                raise
            block_bytes *= 8
