"""Build the core objects from `Settings`: the one wiring shared by the CLI, Dagster and tests."""

import functools
import sys
from pathlib import Path

import pyarrow as pa
from sqlalchemy.engine import Engine

from dw_pipelines.core.contracts import ContractRegistry
from dw_pipelines.core.db import create_db_engine
from dw_pipelines.core.faults import Faults, parse_faults
from dw_pipelines.core.ingestion import IngestionService
from dw_pipelines.core.landing import LandingZone
from dw_pipelines.core.outbox import DwIngestionJobQueue
from dw_pipelines.core.warehouse import Warehouse, create_warehouse_engine
from dw_pipelines.settings import SHIPPED_DATASETS_DIR, Settings


def load_contracts(settings: Settings) -> ContractRegistry:
    """Shipped dataset contracts plus those in `DW_DATASETS_PATH`.

    Parsed once per process and folder state: a run's resource and the code location would
    otherwise parse the same YAML files again. A changed, added or removed file (its mtime or
    name) is read afresh.
    """
    folders = [SHIPPED_DATASETS_DIR, settings.datasets_path]
    state = tuple(
        (str(path), path.stat().st_mtime_ns)
        for folder in folders
        if folder is not None and folder.is_dir()
        for path in sorted([*folder.glob("*.yaml"), *folder.glob("*.yml")])
    )
    return _contracts_for(tuple(str(f) if f else None for f in folders), state)


@functools.lru_cache(maxsize=8)
def _contracts_for(folders: tuple[str | None, ...], _state: tuple) -> ContractRegistry:
    return ContractRegistry.from_directories(*(Path(f) if f else None for f in folders))


def build_queue(
    settings: Settings, contracts: ContractRegistry | None = None
) -> DwIngestionJobQueue:
    return DwIngestionJobQueue(
        create_db_engine(settings.database_url),
        contracts or load_contracts(settings),
        LandingZone(settings.landing_roots, settings.s3_options),
    )


@functools.cache
def release_arrow_memory_promptly() -> None:
    """Arrow buffers from jemalloc, handed back to the OS as soon as they are freed.

    The default allocator keeps freed buffers for reuse (about 90 MB per reader thread here), so
    a run's peak RSS would stay high after each batch is loaded; returning them at once keeps the
    run process within its pod's memory request (see docs/benchmarks.md). Builds of pyarrow
    without jemalloc keep their default.
    """
    try:
        pa.set_memory_pool(pa.jemalloc_memory_pool())
        pa.jemalloc_set_decay_ms(0)
    except (NotImplementedError, pa.ArrowNotImplementedError):
        pass


@functools.cache
def keep_pandas_out_of_arrow() -> None:
    """pyarrow imports pandas (~40 MB resident) the first time it builds an array from Python
    or numpy values (`pa.array`, `pa.scalar`, a tz-aware timestamp's `as_py`) just to check
    whether the value is a pandas object; the data path does that on its first batch and never
    uses pandas. So let pyarrow's one optional probe find no pandas.

    Only the optional probe is affected: explicit pandas conversions (`to_pandas`,
    `Table.from_pandas`) still import pandas when called and turn pyarrow's pandas support back
    on, and a process that has imported pandas already is left as it is. Until then, pandas
    objects handed straight to `pa.array` in this process are read as plain sequences (a
    Categorical becomes strings); nothing in this package does that.
    """
    if "pandas" in sys.modules:
        return
    finder = _NoPandasFinder()
    sys.meta_path.insert(0, finder)
    try:
        pa.array([], pa.int64())  # pyarrow's first (and last) optional probe for pandas
    finally:
        sys.meta_path.remove(finder)


class _NoPandasFinder:
    """An import hook that makes `import pandas` fail while it is installed."""

    def find_spec(self, name: str, path: object = None, target: object = None) -> None:
        if name == "pandas" or name.startswith("pandas."):
            raise ImportError("pandas is not imported for pyarrow's optional probe")
        return None


def build_service(settings: Settings) -> IngestionService:
    release_arrow_memory_promptly()
    keep_pandas_out_of_arrow()
    contracts = load_contracts(settings)
    queue = build_queue(settings, contracts)
    return IngestionService(
        queue,
        Warehouse(
            warehouse_engine(settings, queue.engine),
            Faults(parse_faults(settings.fault_injection)),
            load_method=settings.pg_load_method,
            merge_rewrite_share=settings.merge_rewrite_share,
            merge_rewrite_min_rows=settings.merge_rewrite_min_rows,
            attach_min_rows=settings.attach_min_rows,
        ),
        contracts,
        queue.landing,
        batch_rows=settings.read_batch_rows,
        max_value_bytes=settings.max_value_bytes,
    )


def warehouse_engine(settings: Settings, outbox_engine: Engine) -> Engine:
    """The outbox's own engine when the warehouse is the same Postgres database (the usual
    set-up): a run then opens one connection and pool, not two; each first connection costs a
    run process a few milliseconds. SQLite warehouses attach their schemas on connect, so they
    keep an engine of their own."""
    if (
        settings.warehouse_url == settings.database_url
        and outbox_engine.dialect.name == "postgresql"
    ):
        return outbox_engine
    return create_warehouse_engine(settings.warehouse_url)


def dispose(service: IngestionService) -> None:
    service.queue.engine.dispose()
    service.warehouse.engine.dispose()
