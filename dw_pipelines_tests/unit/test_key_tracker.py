"""The in-file primary-key check: hashes on the happy path, exact values on a repeated hash."""

import datetime
import decimal
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from dw_pipelines.core import validation
from dw_pipelines.core.contracts import parse_contract
from dw_pipelines.core.readers import open_source
from dw_pipelines.core.validation import KeyTracker, conformed_keys, hash_keys


def run(key_columns, batches, rescan=None, **options):
    tracker = KeyTracker(key_columns, **options)
    for batch in batches:
        tracker.add(batch)
    calls = []

    def again():
        calls.append(1)
        return rescan() if rescan is not None else list(batches)

    return tracker.first_duplicate(again), len(calls)


def batch(**columns):
    return pa.record_batch(columns)


def test_unique_keys_never_rescan():
    batches = [batch(id=list(range(i * 1000, (i + 1) * 1000))) for i in range(5)]
    assert run(("id",), batches) == (None, 0)


def test_a_forced_hash_collision_between_different_keys_does_not_fail(monkeypatch):
    # Every row hashes alike: the tracker must fall back to the exact values and find that no
    # key repeats, rather than refuse the file.
    monkeypatch.setattr(
        validation, "hash_keys", lambda b, cols: np.zeros(b.num_rows, dtype=np.uint64)
    )
    batches = [batch(id=[1, 2, 3], v=["a", "b", "c"]), batch(id=[4, 5], v=["d", "e"])]
    assert run(("id",), batches) == (None, 1)
    assert run(("id", "v"), [batch(id=[1, 1], v=["a", "b"])]) == (None, 1)


def test_real_duplicates_are_found_through_a_collision(monkeypatch):
    # Two different keys collide (hash 7) and a third key really repeats (hash 9).
    real = validation.hash_keys

    def colliding(b, cols):
        hashes = real(b, cols)
        ids = b.column("id").to_numpy()
        hashes[(ids == 10) | (ids == 20)] = 7
        hashes[ids == 30] = 9
        return hashes

    monkeypatch.setattr(validation, "hash_keys", colliding)
    batches = [batch(id=[10, 30, 1]), batch(id=[2, 20, 3]), batch(id=[30, 4, 30])]
    assert run(("id",), batches) == (({"id": 30}, (2, 7), 3), 1)


def test_the_earliest_repeated_key_is_reported_with_its_first_two_rows():
    first = batch(id=[5, 3, 9], v=["a", "b", "c"])
    second = batch(id=[1, 9, 3], v=["d", "e", "f"])  # 3 (rows 2, 6) and 9 (rows 3, 5) repeat
    assert run(("id",), [first, second]) == (({"id": 3}, (2, 6), 2), 1)


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (["x", "y", "", "y", ""], ({"k": "y"}, (2, 4), 2)),
        ([b"\x00a", b"a", b"a\x00", b"a"], ({"k": b"a"}, (2, 4), 2)),
        ([1.5, -0.0, 0.0], ({"k": -0.0}, (2, 3), 2)),  # equal, as in PostgreSQL
        ([True, False, False], ({"k": False}, (2, 3), 2)),
        (
            [decimal.Decimal("1.10"), decimal.Decimal("-1.10"), decimal.Decimal("1.10")],
            ({"k": decimal.Decimal("1.10")}, (1, 3), 2),
        ),
        (
            [datetime.date(2020, 1, 2), datetime.date(2020, 1, 1), datetime.date(2020, 1, 1)],
            ({"k": datetime.date(2020, 1, 1)}, (2, 3), 2),
        ),
    ],
)
def test_every_key_type_hashes_equal_values_alike(values, expected):
    array = pa.array(values)
    if isinstance(values[0], decimal.Decimal):
        array = array.cast(pa.decimal128(12, 2))
    assert run(("k",), [pa.record_batch({"k": array})]) == (expected, 1)


def test_hashes_do_not_depend_on_batch_boundaries_or_slicing():
    strings = pa.array(["alpha", "", "beta", "gamma", "alpha", "βeta"])
    ints = pa.array([1, 2, 3, 4, 5, 6], pa.int64())
    whole = hash_keys(pa.record_batch({"s": strings, "i": ints}), ("s", "i"))
    sliced = hash_keys(pa.record_batch({"s": strings.slice(2), "i": ints.slice(2)}), ("s", "i"))
    assert list(whole[2:]) == list(sliced)
    assert len(set(whole.tolist())) == 6
    # Composite keys are not symmetric in their columns.
    ab = hash_keys(batch(a=["x", "y"], b=["y", "x"]), ("a", "b"))
    assert ab[0] != ab[1]


def test_many_distinct_strings_do_not_collide():
    values = pa.array([f"customer-{i:07d}" for i in range(300_000)])
    hashes = hash_keys(pa.record_batch({"k": values}), ("k",))
    assert len(np.unique(hashes)) == len(values)


def test_conformed_keys_rereads_the_file_with_converted_values(tmp_path: Path):
    contract = parse_contract(
        {
            "name": "t",
            "write_mode": "merge",
            "primary_key": ["id", "day"],
            "columns": [
                {"name": "id", "type": "int64", "nullable": False},
                {"name": "day", "type": "date", "nullable": False},
                {"name": "note", "type": "string"},
            ],
        }
    )
    path = tmp_path / "t.csv"
    path.write_text('id,day,note\n 7 ,2026-01-02,a\n8,2026-01-02,"b\nc"\n7,2026-01-02,d\n')
    source = open_source(path, "csv", contract.csv)
    keys = pa.Table.from_batches(list(conformed_keys(source, contract, batch_rows=2)))
    assert keys.column_names == ["id", "day"]
    assert keys["id"].to_pylist() == [7, 8, 7]
    # Too small a read block for a row: read again with larger ones, without repeating rows.
    again = pa.Table.from_batches(list(conformed_keys(source, contract, block_bytes=16)))
    assert again.to_pylist() == keys.to_pylist()


def test_long_text_is_hashed_in_bounded_slices_with_the_same_result(monkeypatch):
    rng = np.random.default_rng(3)
    values = pa.array(["x" * int(rng.integers(0, 300)) + str(i) for i in range(5000)])
    whole = hash_keys(pa.record_batch({"k": values}), ("k",))
    for chunk in (1, 7, 1000):
        monkeypatch.setattr(validation, "_STRING_CHUNK_BYTES", chunk)
        assert list(hash_keys(pa.record_batch({"k": values}), ("k",))) == list(whole)
        sliced = hash_keys(pa.record_batch({"k": values.slice(5)}), ("k",))
        assert list(sliced) == list(whole[5:])


def test_hashes_past_the_memory_budget_go_to_disk_and_still_meet():
    """The first batch stays in memory, the others are spilled: a key repeated between the two,
    and another repeated within the spilled parts, are found as without spilling."""
    batches = [batch(id=list(range(i * 1000, (i + 1) * 1000))) for i in range(6)]
    batches[5] = batch(id=[*range(5000, 5998), 17, 4321])  # 17: batch 0; 4321: batch 4
    expected = ({"id": 17}, (18, 5999), 2)
    assert run(("id",), batches) == (expected, 1)
    assert run(("id",), batches, in_memory=1500) == (expected, 1)
    unique = [batch(id=list(range(i * 1000, (i + 1) * 1000))) for i in range(6)]
    assert run(("id",), unique, in_memory=1500) == (None, 0)


def test_the_spill_file_goes_with_the_check():
    tracker = KeyTracker(("id",), in_memory=10)
    for i in range(3):
        tracker.add(batch(id=list(range(i * 100, (i + 1) * 100))))
    spill = tracker._spill
    assert spill is not None and not spill.closed
    assert tracker.first_duplicate(lambda: []) is None
    assert spill.closed


def test_memory_stays_flat_whatever_the_rows():
    """3M keys in 64k-row batches: without a budget the tracker holds 24 MB of hashes; with one
    of 256k hashes (2 MB) its peak stays near the budget plus a batch and one hash range."""

    def peak(**options) -> int:
        tracemalloc.start()
        try:
            tracker = KeyTracker(("id",), **options)
            for start in range(0, 3_000_000, 65_536):
                ids = pa.array(np.arange(start, min(start + 65_536, 3_000_000)))
                tracker.add(pa.record_batch({"id": ids}))
            assert tracker.first_duplicate(lambda: []) is None
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    unbounded, bounded = peak(in_memory=10_000_000), peak(in_memory=1 << 18)
    assert unbounded > 24_000_000
    assert bounded < 8_000_000, bounded


@pytest.mark.parametrize("values", [[], [7], [3, 3, 3], [1, 2, 2, 5, 9, 9, 9, 12], list(range(50))])
def test_distinct_sorted_is_np_unique_of_a_sorted_array(values):
    array = np.array(values, dtype=np.uint64)
    assert validation._distinct_sorted(array).tolist() == np.unique(array).tolist()


def test_the_data_path_does_not_import_numpy_ma():
    # numpy.ma costs 0.15-0.23 s to import, paid by every run process that triggers it: the key
    # check of a file without repeated keys and the row numbers of a staging load must not
    # (np.unique and pa.array(ndarray) do).
    script = """
import sys
import io
import pyarrow.csv
from dw_pipelines.core.validation import KeyTracker
from dw_pipelines.core.warehouse.staging import _with_lineage
tracker = KeyTracker(("id",))
# Read, as the data path does (pa.array of a Python list would import numpy.ma itself).
batch = pyarrow.csv.read_csv(io.BytesIO(b"id\\n1\\n2\\n3\\n4\\n")).to_batches()[0]
tracker.add(batch)
found = tracker.first_duplicate(lambda: [batch])
# (The job id column of a SQLite staging load is a pa.scalar: that imports numpy.ma; a
# Postgres staging partition supplies it as its default.)
numbered = list(_with_lineage([batch, batch], "job", include_job_id=False))
assert found is None, found  # (a repeated key is the failure path: it may import numpy.ma)
assert numbered[1].column("_dw_row_number").to_pylist() == [5, 6, 7, 8]
print("numpy.ma" in sys.modules)
"""
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False"
