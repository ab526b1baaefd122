"""Read a JSON array of objects as JSON Lines, streaming, so pyarrow's JSON reader can parse it.

Why: `pyarrow.json.open_json` reads newline-delimited JSON only (one object per line), yet the
most common JSON export is a single array of objects, often pretty-printed with every key on a
line of its own (`[\\n  {\\n    "a": 1\\n  },\\n  ...\\n]`). `json.load` would hold the whole file
and every row as Python objects; rewriting it row by row in Python is slow.

How: `JsonArrayLines` rewrites the array's bytes into JSON Lines byte for byte, so the output has
the length of the input and every byte keeps its offset:

- `\\n` and `\\r` outside strings become spaces, which joins a pretty-printed element into one line
  (valid JSON has no raw newline inside a string; one that is there is left for pyarrow to
  report);
- the outer array's `[` and `]`, and a UTF-8 byte order mark, become spaces;
- each `,` at depth 1 outside strings (the separator between elements) becomes `\\n`.

Everything else is left alone: pyarrow parses the values and reports what is wrong inside an
element. The rewrite needs to know which bytes are inside strings and at what depth. That is
computed with numpy over a whole block at once, never byte by byte in Python: one table lookup
(`bytes.translate`) picks out the block's few interesting bytes (quotes, backslashes, brackets,
braces, commas, newlines) and everything after works on their positions. A quote is escaped when
an odd run of backslashes precedes it (run lengths come from the backslashes' positions); a byte
is inside a string when the cumulative count of unescaped quotes before it is odd; the depth is
the cumulative sum of the brackets and braces outside strings. The state a block ends in (inside
a string or not, the parity of a backslash run that ends the block, the depth, and a check still
waiting for its next byte) starts the next block, so the result does not depend on where blocks
end.

The same pass checks the array's structure, so that a file which is not an array of objects is
refused with a byte offset and a line (`JsonArrayError`) instead of an opaque parser error: the
first non-whitespace byte must be `[`, each element must start with `{` and end with `}`,
elements must be separated by commas (no trailing comma), and only whitespace may follow the
closing `]`.

Memory: one block of input (`block_bytes`), its rewritten copy and numpy temporaries that are
at most a few times the block (most are proportional to the number of interesting bytes), plus
what a `read` call asks for.
"""

import numpy as np
import pyarrow as pa

__all__ = ["JsonArrayError", "JsonArrayLines", "sniff_json_layout"]

_BOM = b"\xef\xbb\xbf"
_WHITESPACE = b" \t\r\n"

_TAB, _LF, _CR, _SPACE = 0x09, 0x0A, 0x0D, 0x20
_QUOTE, _COMMA, _BACKSLASH = 0x22, 0x2C, 0x5C
_LBRACKET, _RBRACKET, _LBRACE, _RBRACE = 0x5B, 0x5D, 0x7B, 0x7D
_TOKEN_TABLE = bytes(1 if byte in b'"\\[]{},\n\r' else 0 for byte in range(256))

_BEFORE, _INSIDE, _AFTER = 0, 1, 2  # where the scan is, relative to the outer array

# Structural bytes that want a particular next non-whitespace byte.
_OPEN = 0  # the outer `[`: `{` or `]` must follow
_SEPARATOR = 1  # a depth-1 comma: `{` must follow
_ELEMENT_END = 2  # the `}` ending an element: `,` or `]` must follow

# How far after such a byte to look for the next non-whitespace one before searching the block:
# enough for `,\n` and the indentation of a pretty-printed array.
_NEAR = 8

_FOUND = {
    _LBRACE: "a JSON object",
    _LBRACKET: "a JSON array",
    _QUOTE: "a string",
    ord("t"): "a boolean",
    ord("f"): "a boolean",
    ord("n"): "null",
    **dict.fromkeys(b"-0123456789", "a number"),
}


class JsonArrayError(ValueError):
    """The input is not a JSON array of objects.

    Attributes:
        message: what is wrong.
        offset: 0-based byte offset in the input where it is seen.
        line: 1-based line of that offset.
    """

    def __init__(self, message: str, offset: int, line: int):
        super().__init__(f"{message} (line {line}, byte offset {offset})")
        self.message = message
        self.offset = offset
        self.line = line

    def __reduce__(self):
        # The default would call the class with the formatted string only.
        return type(self), (self.message, self.offset, self.line)


def sniff_json_layout(first_bytes: bytes) -> str:
    """How a `.json` file is laid out, from its first bytes.

    Args:
        first_bytes: the start of the file, enough of it to get past leading whitespace.

    Returns:
        "array" when the first non-whitespace byte (after an optional UTF-8 BOM) is `[`,
        "lines" when it is `{` (JSON Lines, or a single object), "empty" when `first_bytes`
        holds only whitespace, "other" otherwise.
    """
    text = bytes(first_bytes)
    if text.startswith(_BOM):
        text = text[len(_BOM) :]
    text = text.lstrip(_WHITESPACE)
    if not text:
        return "empty"
    return {_LBRACKET: "array", _LBRACE: "lines"}.get(text[0], "other")


class JsonArrayLines:
    """A readable, non-seekable binary stream over `raw` that yields the NDJSON form of the JSON
    array `raw` holds.

    Hand it to `pyarrow.json.open_json`. Output line k holds element k at the byte offsets it
    has in `raw`. Structural errors raise `JsonArrayError` from `read` (and through pyarrow,
    which re-raises it unchanged).

    Args:
        raw: the array's bytes: any object with `.read(n) -> bytes` (a pyarrow NativeFile or a
            Python binary file). `close` closes it.
        block_bytes: how much of `raw` is read and rewritten at a time.
    """

    def __init__(self, raw, block_bytes: int = 1 << 20):
        if block_bytes < 1:
            raise ValueError(f"block_bytes must be positive, not {block_bytes}")
        self._raw = raw
        self._block_bytes = block_bytes
        self.closed = False
        self._out = b""  # the rewritten block being handed out
        self._out_pos = 0
        self._eof = False
        self._error: JsonArrayError | None = None
        self._offset = 0  # input bytes scanned so far
        self._bom = 0  # bytes of the BOM the input starts with
        self._lines = 0  # `\n` bytes among them
        self._phase = _BEFORE
        self._in_string = False
        self._string_start = (0, 1)  # (offset, line) of the quote that opened the string
        self._backslashes_odd = False  # the last block ended in an odd run of backslashes
        self._depth = 0
        self._separators = 0
        self._elements = 0
        # (kind, number, offset, line) of a check whose next non-whitespace byte is in a later
        # block; number is the separator's or that of the element ended.
        self._pending: tuple[int, int, int, int] | None = None

    @property
    def elements(self) -> int:
        """Top-level elements seen so far."""
        return self._elements

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def close(self) -> None:
        """Close the stream and `raw`."""
        if not self.closed:
            self.closed = True
            self._out = b""
            self._raw.close()

    def __enter__(self) -> "JsonArrayLines":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def read_buffer(self, nbytes: int) -> pa.Buffer:
        """`read`, as a pyarrow buffer (what pyarrow's readers call)."""
        return pa.py_buffer(self.read(nbytes))

    def read(self, nbytes: int = -1) -> bytes:
        """The next `nbytes` rewritten bytes (all that are left when negative); b"" at the end.

        Fewer than `nbytes` only at the end of the input: pyarrow's JSON reader takes each read
        as a block, and a row may straddle at most two of them.

        Raises:
            JsonArrayError: the input is not a JSON array of objects (again on later calls).
        """
        if self.closed:
            raise ValueError("I/O operation on closed file")
        want = -1 if nbytes is None or nbytes < 0 else nbytes
        parts = []
        while want != 0:
            if self._out_pos == len(self._out) and not self._next_block():
                break
            end = len(self._out) if want < 0 else min(len(self._out), self._out_pos + want)
            parts.append(self._out[self._out_pos : end])
            if want > 0:
                want -= end - self._out_pos
            self._out_pos = end
        return b"".join(parts)

    def _next_block(self) -> bool:
        """Rewrite the next block of `raw` into `_out`; False at the end of the input."""
        if self._error is not None:
            raise self._error
        if self._eof:
            return False
        try:
            chunk = self._read_raw()
            if not chunk:
                self._eof = True
                self._out, self._out_pos = b"", 0
                self._finish()
                return False
            self._out, self._out_pos = self._rewrite(chunk), 0
        except JsonArrayError as exc:
            self._error = exc
            raise
        return True

    def _read_raw(self) -> bytes:
        chunk = self._raw.read(self._block_bytes)
        if not isinstance(chunk, bytes):
            chunk = bytes(chunk)
        if self._offset == 0:
            # A BOM is recognised whole, even when blocks are smaller than it.
            while 0 < len(chunk) < len(_BOM):
                more = self._raw.read(len(_BOM) - len(chunk))
                if not more:
                    break
                chunk += bytes(more)
        return chunk

    def _finish(self) -> None:
        if self._phase == _BEFORE:
            found = "an empty file" if self._offset == self._bom else "only whitespace"
            raise JsonArrayError(
                f"expected a JSON array of objects, found {found}", self._offset, self._lines + 1
            )
        if self._phase == _INSIDE:
            if self._in_string:
                raise JsonArrayError("unterminated string", *self._string_start)
            raise JsonArrayError(
                "the JSON array is not closed (truncated file?)", self._offset, self._lines + 1
            )

    def _line_at(self, b: np.ndarray, at: int) -> int:
        # Lines are counted only where an error or an open string needs one.
        return self._lines + int(np.count_nonzero(b[:at] == _LF)) + 1

    def _error_at(self, b: np.ndarray, at: int, message: str) -> JsonArrayError:
        return JsonArrayError(message, self._offset + at, self._line_at(b, at))

    def _rewrite(self, chunk: bytes) -> bytes:
        out = np.frombuffer(chunk, dtype=np.uint8).copy()
        if self._offset == 0 and chunk.startswith(_BOM):
            self._bom = len(_BOM)
            out[: self._bom] = _SPACE
        # The scans read `out`, where the BOM already counts as whitespace; each rewrite is
        # done after them, when the block is known to be sound.
        if self._phase == _BEFORE:
            self._find_array(out)
        if self._phase == _INSIDE:
            lines = self._rewrite_array(out, chunk)
        else:
            lines = int(np.count_nonzero(out == _LF))
            if self._phase == _AFTER:
                self._check_only_whitespace(out, 0)
            out[(out == _LF) | (out == _CR)] = _SPACE
        self._lines += lines
        self._offset += out.size
        return out.tobytes()

    def _find_array(self, b: np.ndarray) -> None:
        non_ws = _non_whitespace(b)
        if non_ws.any():
            at = int(non_ws.argmax())
            if b[at] != _LBRACKET:
                found = _describe(int(b[at]))
                raise self._error_at(b, at, f"expected a JSON array of objects, found {found}")
            self._phase = _INSIDE  # `_rewrite_array` takes the `[` itself, at depth 0

    def _check_only_whitespace(self, b: np.ndarray, start: int) -> None:
        non_ws = _non_whitespace(b[start:])
        if non_ws.any():
            at = start + int(non_ws.argmax())
            raise self._error_at(b, at, "unexpected data after the end of the JSON array")

    def _rewrite_array(self, b: np.ndarray, chunk: bytes) -> int:
        """Check and rewrite a block inside the array (or the one that opens it).

        Returns:
            the number of `\\n` bytes in the block's input.
        """
        tokens = np.flatnonzero(np.frombuffer(chunk.translate(_TOKEN_TABLE), dtype=bool))
        kinds = b[tokens]
        quotes = kinds == _QUOTE
        backslashes = kinds == _BACKSLASH
        unescaped = quotes
        odd_at_end = False
        if self._backslashes_odd or backslashes.any():
            quote_at = np.flatnonzero(quotes)
            escaped, odd_at_end = _escaped(
                tokens[backslashes], tokens[quote_at], self._backslashes_odd, b.size
            )
            unescaped = quotes.copy()
            unescaped[quote_at[escaped]] = False
        # A byte is inside a string when an odd number of unescaped quotes precede it (the
        # uint8 sum wraps around, which keeps the parity).
        in_string = (np.cumsum(unescaped, dtype=np.uint8) & 1).view(bool)
        if self._in_string:
            in_string = ~in_string
        structural = np.flatnonzero(~(quotes | backslashes | in_string))
        at = tokens[structural]
        sk = kinds[structural]
        opens = (sk == _LBRACKET) | (sk == _LBRACE)
        closes = (sk == _RBRACKET) | (sk == _RBRACE)
        # int32 is faster; the depth cannot change by more than the block's size.
        wide = b.size + abs(self._depth) >= 1 << 31
        step = opens.view(np.int8) - closes.view(np.int8)
        depth = self._depth + np.cumsum(step, dtype=np.int64 if wide else np.int32)

        end_at = None
        array_end = np.flatnonzero(closes & (depth == 0))
        if array_end.size:
            # Steps are of one, so the depth first gets back to 0 at the array's `]`. What
            # follows is trailing data, not array content.
            keep = int(array_end[0]) + 1
            at, sk, depth = at[:keep], sk[:keep], depth[:keep]
            opens, closes = opens[:keep], closes[:keep]
            end_at = int(at[-1])

        array_open = np.flatnonzero(opens & (depth == 1))
        separators = at[(sk == _COMMA) & (depth == 1)]
        element_open = np.flatnonzero(opens & (depth == 2))
        element_end = np.flatnonzero(closes & (depth == 1))
        ended = self._elements + np.searchsorted(element_open, element_end, side="right")

        errors = []
        mismatched = np.flatnonzero(sk[element_end] != _RBRACE)
        if mismatched.size:
            first = int(mismatched[0])
            where = int(at[element_end[first]])
            errors.append(
                self._error_at(b, where, f"mismatched brackets in element {int(ended[first])}")
            )
        pending, self._pending = self._pending, None
        checks_at = [at[array_open], separators, at[element_end]]
        checks_kind = [
            np.full(array_open.size, _OPEN),
            np.full(separators.size, _SEPARATOR),
            np.full(element_end.size, _ELEMENT_END),
        ]
        checks_number = [
            np.ones(array_open.size, dtype=np.int64),
            self._separators + np.arange(1, separators.size + 1),
            ended,
        ]
        if pending is not None:
            checks_at.insert(0, [-1])  # just before the block
            checks_kind.insert(0, [pending[0]])
            checks_number.insert(0, [pending[1]])
        checks_at = np.concatenate(checks_at)
        if checks_at.size:
            order = np.argsort(checks_at, kind="stable")
            kind = np.concatenate(checks_kind)[order]
            number = np.concatenate(checks_number)[order]
            errors += self._check_next_bytes(b, checks_at[order], kind, number, pending)
        if end_at is not None:
            try:
                self._check_only_whitespace(b, end_at + 1)
            except JsonArrayError as exc:
                errors.append(exc)
        if errors:
            raise min(errors, key=lambda error: error.offset)

        newlines = kinds == _LF
        quote_count = int(np.count_nonzero(unescaped))
        in_string_at_end = self._in_string ^ bool(quote_count % 2)
        if in_string_at_end and quote_count:
            # Where the open string started is reported if the input ends inside it.
            last = tokens.size - 1 - int(unescaped[::-1].argmax())
            line = self._lines + int(np.count_nonzero(newlines[:last])) + 1
            self._string_start = (self._offset + int(tokens[last]), line)

        # The block is sound: rewrite it, then carry its state into the next one.
        b[at[(sk == _LF) | (sk == _CR)]] = _SPACE
        b[at[array_open]] = _SPACE
        if end_at is not None:
            b[end_at] = _SPACE
            tail = b[end_at + 1 :]  # whitespace only, its newlines not among `at`
            tail[(tail == _LF) | (tail == _CR)] = _SPACE
            self._phase = _AFTER
        b[separators] = _LF
        self._in_string = in_string_at_end
        self._backslashes_odd = odd_at_end
        if depth.size:
            self._depth = int(depth[-1])
        self._separators += int(separators.size)
        self._elements += int(element_open.size)
        return int(np.count_nonzero(newlines))

    def _check_next_bytes(
        self,
        b: np.ndarray,
        checks_at: np.ndarray,
        kinds: np.ndarray,
        numbers: np.ndarray,
        pending: tuple[int, int, int, int] | None,
    ) -> list[JsonArrayError]:
        """Check the first non-whitespace byte after each structural byte at `checks_at`.

        `checks_at` is ascending; -1 stands for the pending check of the previous block.

        A check whose next byte is not in this block becomes `_pending` (only the last one
        can be: each of the others is followed by the next).

        Returns:
            the first error of each kind found.
        """
        n = b.size
        nxt = checks_at + 1
        nxt[nxt >= n] = -1
        blank = np.flatnonzero(nxt >= 0)
        blank = blank[~_non_whitespace(b[nxt[blank]])]
        if blank.size:
            # Whitespace first: look a little further, then, for longer runs, in the block.
            near = nxt[blank][:, None] + np.arange(1, _NEAR)
            inside = near < n
            near_non_ws = _non_whitespace(b[np.minimum(near, n - 1)]) & inside
            found_near = near_non_ws.any(axis=1)
            nxt[blank] = np.where(found_near, near[:, 0] + near_non_ws.argmax(axis=1), -1)
            far = ~found_near & inside[:, -1]
            if far.any():
                # The next byte starts a run of non-whitespace after the (blank) window.
                non_ws = _non_whitespace(b)
                run_starts = np.append(np.flatnonzero(non_ws[1:] & ~non_ws[:-1]) + 1, -1)
                nxt[blank[far]] = run_starts[np.searchsorted(run_starts[:-1], near[far, -1])]
        resolved = nxt >= 0
        if not resolved[-1]:
            at = int(checks_at[-1])
            if at < 0:
                self._pending = pending
            else:
                line = self._line_at(b, at)
                self._pending = (int(kinds[-1]), int(numbers[-1]), self._offset + at, line)

        found = b[np.maximum(nxt, 0)]
        opens, separators, ends = kinds == _OPEN, kinds == _SEPARATOR, kinds == _ELEMENT_END
        is_brace, is_bracket = found == _LBRACE, found == _RBRACKET
        not_object = resolved & (opens | separators) & ~is_brace & ~is_bracket
        trailing = resolved & separators & is_bracket
        no_separator = resolved & ends & (found != _COMMA) & ~is_bracket
        errors = []
        if not_object.any():
            i = int(not_object.argmax())
            element = int(numbers[i]) + int(separators[i])
            message = f"element {element} is not a JSON object (found {_describe(int(found[i]))})"
            errors.append(self._error_at(b, int(nxt[i]), message))
        if no_separator.any():
            i = int(no_separator.argmax())
            message = (
                f"expected ',' or ']' after element {int(numbers[i])} "
                f"(found {_describe(int(found[i]))})"
            )
            errors.append(self._error_at(b, int(nxt[i]), message))
        if trailing.any():
            # Reported at the comma, which is what to delete.
            i = int(trailing.argmax())
            message = f"trailing comma after element {int(numbers[i])}"
            if checks_at[i] < 0:
                errors.append(JsonArrayError(message, pending[2], pending[3]))
            else:
                errors.append(self._error_at(b, int(checks_at[i]), message))
        return errors


def _non_whitespace(b: np.ndarray) -> np.ndarray:
    return (b != _SPACE) & (b != _LF) & (b != _CR) & (b != _TAB)


def _escaped(
    backslash_at: np.ndarray, quote_at: np.ndarray, odd_before: bool, n: int
) -> tuple[np.ndarray, bool]:
    """Which quotes follow an odd run of backslashes, and whether the block ends in one.

    Args:
        backslash_at: positions of the block's backslashes, ascending.
        quote_at: positions of its quotes, ascending.
        odd_before: the previous block ended in an odd run, which one at position 0 continues.
        n: the block's size.
    """
    if not backslash_at.size:
        return (quote_at == 0) & odd_before, False
    index = np.arange(backslash_at.size)
    # Index of the first backslash of the run each backslash belongs to.
    run_first = np.maximum.accumulate(np.where(np.diff(backslash_at, prepend=-2) != 1, index, 0))
    run_length = index - run_first + 1 + ((backslash_at[run_first] == 0) & odd_before)
    before = np.searchsorted(backslash_at, quote_at) - 1  # the last backslash before each quote
    clipped = np.maximum(before, 0)
    escaped = (
        (before >= 0) & (backslash_at[clipped] == quote_at - 1) & (run_length[clipped] % 2 == 1)
    )
    escaped |= (quote_at == 0) & odd_before
    odd_at_end = bool(backslash_at[-1] == n - 1 and run_length[-1] % 2 == 1)
    return escaped, odd_at_end


def _describe(byte: int) -> str:
    if byte in _FOUND:
        return _FOUND[byte]
    if 0x20 < byte < 0x7F:
        return f"'{chr(byte)}'"
    return f"byte 0x{byte:02X}"
