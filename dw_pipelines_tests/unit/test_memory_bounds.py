"""Unit tier: what bounds the run process's memory (issue 4: peak RSS, flat in the file's size).

* Arrow's streaming text readers read up to 32 blocks ahead on a background thread; the readers
  hold that to `READ_AHEAD_BLOCKS` (`readers._PacedStream`), without stalling on blocks that
  yield no rows and without hanging when the consumer stops early.
* The code location does not import what an ingestion run of a text file never uses, and the
  data path does not make pyarrow import pandas.
"""

import dataclasses
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from dw_pipelines.core import readers
from dw_pipelines.core.contracts import DatasetContract, load_contract_file
from dw_pipelines.core.readers import open_source, read_batches
from dw_pipelines.settings import SHIPPED_DATASETS_DIR

HEADER = "order_id,customer_id,order_date,amount,currency,status,is_gift,created_at,note"
BLOCK = 4096


@pytest.fixture(scope="module")
def orders() -> DatasetContract:
    return load_contract_file(SHIPPED_DATASETS_DIR / "orders.yaml")


def csv_line(n: int) -> str:
    return f"{n},{n + 7},2026-11-24,{n % 1000}.50,EUR,paid,false,2026-11-24T10:00:00Z,note {n}"


def json_line(n: int) -> str:
    return json.dumps(
        {
            "order_id": n,
            "customer_id": n + 7,
            "order_date": "2026-11-24",
            "amount": f"{n % 1000}.50",
            "currency": "EUR",
            "status": "paid",
            "is_gift": False,
            "created_at": "2026-11-24T10:00:00Z",
            "note": f"note {n}",
        }
    )


class ReadAheadProbe:
    """Counts the blocks the reader has read ahead of the batches taken, at its peak."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch):
        self.most_ahead = 0
        self.reads = 0
        self._lock = threading.Lock()
        probe = self
        real_read = readers._PacedStream.read_buffer

        def read_buffer(stream, nbytes):
            buffer = real_read(stream, nbytes)
            with probe._lock:
                probe.reads += 1
                probe.most_ahead = max(probe.most_ahead, stream._reads - stream._taken)
            return buffer

        monkeypatch.setattr(readers._PacedStream, "read_buffer", read_buffer)


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_the_reader_reads_a_bounded_number_of_blocks_ahead(
    tmp_path: Path, orders: DatasetContract, monkeypatch: pytest.MonkeyPatch, fmt: str
):
    rows = 20_000
    path = tmp_path / f"orders.{fmt}"
    if fmt == "csv":
        path.write_text("\n".join([HEADER, *map(csv_line, range(1, rows + 1))]) + "\n")
    else:
        path.write_text("\n".join(map(json_line, range(1, rows + 1))) + "\n")
    assert path.stat().st_size > 100 * BLOCK  # far more blocks than Arrow's own read-ahead
    probe = ReadAheadProbe(monkeypatch)
    source = open_source(path, fmt, orders.csv)

    seen = 0
    for batch in read_batches(source, orders, batch_rows=65_536, block_bytes=BLOCK):
        seen += batch.num_rows
        time.sleep(0.002)  # a consumer slower than the reader: the read-ahead fills up

    assert seen == rows
    assert probe.reads > 100
    # Arrow's own read-ahead would reach 32 blocks; a little over the bound is the read being
    # counted and the block whose batch Arrow holds for the consumer.
    assert probe.most_ahead <= readers.READ_AHEAD_BLOCKS + 2
    assert readers.READ_AHEAD_BLOCKS + 2 < 32


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_blocks_without_rows_do_not_stall_the_reader(
    tmp_path: Path, orders: DatasetContract, fmt: str
):
    path = tmp_path / f"blank.{fmt}"
    line = csv_line if fmt == "csv" else json_line
    head = [HEADER] if fmt == "csv" else []
    # 100 blocks of nothing but line breaks between two rows, then rows with gaps.
    blank = "\n" * (100 * BLOCK)
    text = "\n".join([*head, line(1)]) + "\n" + blank + line(2) + "\n"
    text += "".join("\n" * 500 + line(n) + "\n" for n in range(3, 13))
    path.write_text(text)
    source = open_source(path, fmt, orders.csv)

    started = time.monotonic()
    rows = sum(b.num_rows for b in read_batches(source, orders, 65_536, block_bytes=BLOCK))

    assert rows == 12
    # A stall per empty block would cost READ_AHEAD_WAIT seconds each (100 blocks).
    assert time.monotonic() - started < 10 * readers._READ_AHEAD_WAIT_SECONDS


def test_a_consumer_that_stops_early_does_not_leave_the_reader_waiting(
    tmp_path: Path, orders: DatasetContract
):
    path = tmp_path / "orders.csv"
    path.write_text("\n".join([HEADER, *map(csv_line, range(1, 20_001))]) + "\n")
    source = open_source(path, "csv", orders.csv)

    started = time.monotonic()
    for _ in range(20):
        batches = read_batches(source, orders, batch_rows=100, block_bytes=BLOCK)
        next(batches)
        batches.close()  # what a failed load does to the stream it was fed

    assert time.monotonic() - started < 5


def test_the_code_location_does_not_import_what_a_text_file_run_never_uses():
    # pyarrow.parquet alone is ~9 MB of resident memory; Parquet sources import it on use.
    code = (
        "import sys, warnings; warnings.simplefilter('ignore');"
        "import dw_pipelines.definitions;"
        "print(sorted(m for m in ('pyarrow.parquet', 'pandas', 'pyarrow.dataset')"
        " if m in sys.modules))"
    )
    assert run_python(code) == "[]"


def run_python(code: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    return result.stdout.strip()


def test_the_data_path_does_not_make_pyarrow_import_pandas():
    # pyarrow imports pandas (~40 MB resident) on its first array built from Python or numpy
    # values, as the load does for its lineage columns and the preview's timestamps.
    code = (
        "import sys, numpy as np, pyarrow as pa;"
        "from dw_pipelines.services import keep_pandas_out_of_arrow;"
        "keep_pandas_out_of_arrow();"
        "pa.array(np.arange(3)); pa.repeat(pa.scalar('job', pa.string()), 3);"
        "micros = pa.py_buffer(np.array([0, 1], dtype=np.int64).tobytes());"
        "utc = pa.timestamp('us', tz='UTC');"
        "ts = pa.Array.from_buffers(utc, 2, [None, micros]).to_pylist();"
        "print('pandas' in sys.modules, ts[1].isoformat())"
    )
    assert run_python(code) == "False 1970-01-01T00:00:00.000001+00:00"


def test_explicit_pandas_conversions_still_work():
    code = (
        "import sys, pyarrow as pa;"
        "from dw_pipelines.services import keep_pandas_out_of_arrow;"
        "keep_pandas_out_of_arrow();"
        "frame = pa.table({'a': [1, 2]}).to_pandas();"
        "import pandas as pd;"
        "print(type(frame).__name__, pa.array(pd.Categorical(['x', 'y'])).type.id"
        " == pa.dictionary(pa.int8(), pa.string()).id)"
    )
    assert run_python(code) == "DataFrame True"


def test_a_transcoded_csv_is_read_without_pacing_stalls(tmp_path: Path, orders: DatasetContract):
    # Arrow transcodes UTF-16 with two reads per block: pacing by reads would stall each block.
    contract = dataclasses.replace(orders, csv=dataclasses.replace(orders.csv, encoding="utf-16"))
    path = tmp_path / "orders_utf16.csv"
    path.write_bytes(("\n".join([HEADER, *map(csv_line, range(1, 5_001))]) + "\n").encode("utf-16"))
    source = open_source(path, "csv", contract.csv)

    started = time.monotonic()
    rows = sum(b.num_rows for b in read_batches(source, contract, 65_536, block_bytes=BLOCK))

    assert rows == 5_000
    assert path.stat().st_size > 50 * BLOCK
    assert time.monotonic() - started < 10 * readers._READ_AHEAD_WAIT_SECONDS
