"""The naming convention: from what a file calls a column to the warehouse column that stores it.

A contract names each column as the file does (`Culmen Length (mm)`, `studyName`, `1960`,
`주문번호`); SQL only ever sees the name derived here, which always matches
`contracts.IDENTIFIER_PATTERN`. The convention is snake_case, close to dlt's default, so a team
moving from dlt finds the same names:

1. Surrounding whitespace is dropped.
2. Every non-ASCII character is transliterated with `anyascii` (pinned: a different table would
   rename stored columns): `Größe` -> `Grosse`, `°C` -> `degC`, `µg` -> `ug`, `Дата` -> `Data`,
   full-width letters -> ASCII. Scripts without letter case (Hangul, CJK, ...) are transliterated in
   lower case, so that their syllables are not read as camelCase words: `주문번호` ->
   `jumunbeonho`, `日期` -> `riqi`. (No Unicode normalisation first: NFKC would turn the micro
   sign into a Greek mu, and `µg` into `mg`.)
3. camelCase and PascalCase words are split: `studyName` -> `study_name`, `HTTPStatus` ->
   `http_status`, `userID` -> `user_id`.
4. `%`, `#`, `&`, `+` and `@` become the words `percent`, `number`, `and`, `plus`, `at`.
5. Lower case; every run of other characters (spaces, punctuation, brackets) becomes one `_`;
   trailing underscores go, and leading ones too unless the name itself started with `_`
   (`_id` stays `_id`; `(mm) x` becomes `mm_x`).
6. A name that starts with a digit gets a `_` in front (`1960` -> `_1960`), as in dlt.
7. A name longer than 63 bytes (PostgreSQL's limit) keeps its first 54 characters and ends in
   `_` and 8 hex digits of a SHA-256 of the source name, so two long names that share their
   first 63 characters still get two columns, and each name depends only on itself: adding a
   column never renames another.

A name with nothing left (`""`, `"???"`) has no convention name: its column needs an explicit
`column:` in the contract. Names starting with `_dw_` are the warehouse's own (lineage) and are
refused. Collisions (two source names, one warehouse name) are refused by the contract, which
knows both names and the file.
"""

import hashlib
import re

from anyascii import anyascii

MAX_IDENTIFIER_BYTES = 63
RESERVED_PREFIX = "_dw_"
# A name cut to fit keeps this many characters, then "_" and the digest.
_KEPT_WHEN_SHORTENED = MAX_IDENTIFIER_BYTES - 9
_SYMBOL_WORDS = {"%": "percent", "#": "number", "&": "and", "+": "plus", "@": "at"}
_SYMBOLS = re.compile("[%#&+@]")
# dlt's two camelCase rules: a capitalised word after anything but "_", then a capital after a
# lower-case letter or digit.
_CAMEL_WORD = re.compile(r"([^_])([A-Z][a-z]+)")
_CAMEL_CAPITAL = re.compile(r"([a-z0-9])([A-Z])")
_OTHER = re.compile(r"[^a-z0-9_]+")
_UNDERSCORES = re.compile(r"_+")


class NamingError(ValueError):
    """The convention cannot name this column; the contract must give `column:` itself."""


def _to_ascii(text: str) -> str:
    """Transliterate character by character; uncased scripts in lower case (see module doc)."""
    if text.isascii():
        return text
    parts = []
    for char in text:
        if char.isascii():
            parts.append(char)
            continue
        ascii_form = anyascii(char)
        cased = char.lower() != char.upper()
        parts.append(ascii_form if cased else ascii_form.lower())
    return "".join(parts)


def snake_case(source_name: str) -> str:
    """The warehouse column for a source column name (rules 1-7 of the module docstring).

    Raises:
        NamingError: nothing usable is left of the name (e.g. an empty header).
    """
    text = _to_ascii(source_name.strip())
    text = _CAMEL_WORD.sub(r"\1_\2", text)
    text = _CAMEL_CAPITAL.sub(r"\1_\2", text).lower()
    text = _SYMBOLS.sub(lambda m: f"_{_SYMBOL_WORDS[m.group(0)]}_", text)
    text = _UNDERSCORES.sub("_", _OTHER.sub("_", text)).rstrip("_")
    keeps_underscore = text.startswith("_") and source_name.strip().startswith("_")
    text = text.lstrip("_")
    if not text:
        raise NamingError(
            f"{source_name!r} has no letters or digits to name a warehouse column after; "
            "give the column a `column:` name"
        )
    if keeps_underscore or text[0].isdigit():
        text = "_" + text
    return shorten(text, source_name)


def shorten(identifier: str, source_name: str) -> str:
    """`identifier` if it fits in 63 bytes, else its head plus a digest of `source_name`."""
    if len(identifier.encode()) <= MAX_IDENTIFIER_BYTES:
        return identifier
    digest = hashlib.sha256(source_name.encode()).hexdigest()[:8]
    return f"{identifier[:_KEPT_WHEN_SHORTENED].rstrip('_')}_{digest}"


def dataset_name_for(file_name: str) -> str:
    """A dataset name for a file (`Penguins Raw.csv.gz` -> `penguins_raw`): the convention
    applied to the name without its extensions, without the leading `_` of a leading digit
    (dataset names are table names; `2024_sales` reads better than `_2024_sales`)."""
    stem = file_name.rsplit("/", 1)[-1]
    while "." in stem.strip("."):
        stem = stem.rsplit(".", 1)[0]
    try:
        name = snake_case(stem)
    except NamingError:
        return "dataset"
    if name.startswith("_") and name[1:2].isdigit():
        name = "d" + name
    return name
