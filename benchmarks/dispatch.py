# ruff: noqa: T201
"""Dispatch benchmark: what it costs to get jobs into the outbox and runs out of Dagster.

Four sections, each on its own fresh PostgreSQL database `dw_bench_<random>` (dropped at the end):

    enqueue   jobs/s of `queue.enqueue`, one job per transaction and in batches of 500 on one
              connection/transaction (`queue.enqueue_many(commands)`, formerly `queue.enqueue(cmd,
              connection=conn)`); target >= 5,000 jobs/s in batches
    sensor    one evaluation of `dw_outbox_sensor` (DW_SENSOR_BATCH_SIZE=100) with 10,000
              PENDING rows, on a `dg.instance_for_test()` instance; target < 1 s and 100 run
              requests
    imports   wall time of a fresh `python -c "import dw_pipelines.definitions"` against
              `python -c "import dagster, pandas, pyarrow, sqlalchemy, psycopg"` (median of
              interleaved runs); target ratio <= 1.3
    runs      a full in-process run of dw_ingestion_job for a 10-row file against a trivial job
              of two no-op assets on the same instance (median of interleaved runs after one
              warm-up each), on a `dg.instance_for_test()` instance (SQLite, as on a laptop) and
              on one with Postgres storage (as in production); target ratio <= 1.3. For
              reference, the same 10-row job through the service alone (no Dagster) is timed
              alongside.

Two more sections run only when named in `--sections` (`--sections all` runs all six):

    same-shape  a 10-row dw_ingestion_job run against a no-op job of the SAME SHAPE on the same
                instance: two assets with the real partitions definition and the same six load
                checks with the same `blocking` flags (the specs are copied from the real assets
                of build_definitions(settings), selected by `load_check_keys`), bodies that do
                nothing; both with the tags the outbox sensor gives a run (`run_tags`); SQLite
                and Postgres instance storage; target ratio <= 1.3. Also the
                share of the run's wall time spent in this project's own code (sampled inside
                the run, see `OwnCodeSampler`); target <= 10 %.
    throughput  --throughput-jobs (200; --quick 10) ten-row jobs through the REAL daemon
                (`dagster-daemon run`, DefaultRunLauncher, QueuedRunCoordinator with the limits
                of helm-values.yaml, Postgres instance storage, the outbox sensor on), spread
                over --throughput-datasets (4) datasets: jobs/min from the first enqueue to the
                last COMPLETED row, against runs/min of a trivial two-asset job of the same code
                location (benchmarks/throughput_location.py) with the same tags; target >= 0.8x.
                Then where a run's wall time goes, from the runs' event logs. Several minutes.

    .venv/bin/python benchmarks/dispatch.py
    .venv/bin/python benchmarks/dispatch.py --quick            # small sizes, a smoke test
    .venv/bin/python benchmarks/dispatch.py --sections sensor,runs --json
    .venv/bin/python benchmarks/dispatch.py --check            # exit 1 when a target is missed
    .venv/bin/python benchmarks/dispatch.py --sections same-shape,throughput --quick
"""

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import benchlib as bl

SECTIONS = ("enqueue", "sensor", "imports", "runs", "same-shape")  # the default
# Run only when named (or with `--sections all`): throughput starts a daemon and takes minutes.
OPT_IN_SECTIONS = ("throughput",)
IMPORT_PROJECT = "import dw_pipelines.definitions"
IMPORT_BASELINE = "import dagster, pandas, pyarrow, sqlalchemy, psycopg"
SMALL_FILE_ROWS = 10


@dataclass
class Row:
    section: str
    measurement: str
    value: float
    unit: str
    display: str
    target: str = ""
    ok: bool | None = None
    samples: list[float] | None = None


@dataclass
class Context:
    args: argparse.Namespace
    workdir: Path
    env: dict[str, str]  # DW_* except the database URL
    small_file: Path

    def use_database(self, url: str) -> dict[str, str]:
        """Point this process's DW_* environment at `url` (Dagster resources read it)."""
        env = {**self.env, "DW_DATABASE_URL": bl.sqlalchemy_url(url)}
        os.environ.update(env)
        return env


# ------------------------------------------------------------------------------- helpers


@contextmanager
def quiet(log_path: Path, fds: tuple[int, ...] = (2,)) -> Iterator[None]:
    """Send file descriptor 2 (Dagster's console logs) to `log_path` for the block; with
    `fds=(1, 2)` stdout too (subprocesses started in the block keep writing there)."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = {fd: os.dup(fd) for fd in fds}
    with open(log_path, "ab") as log_file:
        for fd in fds:
            os.dup2(log_file.fileno(), fd)
    try:
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        for fd, copy in saved.items():
            os.dup2(copy, fd)
            os.close(copy)


def commands(ctx: Context, count: int) -> list[dict]:
    tag = uuid.uuid4().hex[:12]
    return [
        {
            "dataset": "events",
            "source_uri": str(ctx.small_file),
            "business_date": bl.BUSINESS_DATE,
            "idempotency_key": f"bench-{tag}-{i}",
        }
        for i in range(count)
    ]


def enqueue_batched(queue, cmds: list[dict], batch_size: int) -> None:
    """`enqueue_many`: one transaction and three statements per batch."""
    for start in range(0, len(cmds), batch_size):
        queue.enqueue_many(cmds[start : start + batch_size])


def timed(action: Callable[[], object]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def pending(queue) -> int:
    return queue.count_by_status().get("PENDING", 0)


# ------------------------------------------------------------------------------ sections


def section_enqueue(ctx: Context) -> list[Row]:
    from dw_pipelines.services import build_queue
    from dw_pipelines.settings import Settings

    args = ctx.args
    with bl.scratch_database(args.server_url, keep=args.keep_db) as url:
        queue = build_queue(Settings.from_env(ctx.use_database(url)))
        for cmd in commands(ctx, 20):  # warm-up: pool, statement caches
            queue.enqueue(cmd)
        single, batched = [], []
        for _ in range(args.repeat):
            cmds = commands(ctx, args.single)
            single.append(args.single / timed(lambda c=cmds: [queue.enqueue(x) for x in c]))
            cmds = commands(ctx, args.batched)
            batched.append(
                args.batched / timed(lambda c=cmds: enqueue_batched(queue, c, args.batch_size))
            )
        expected = 20 + args.repeat * (args.single + args.batched)
        if pending(queue) != expected:
            raise SystemExit(f"FAILED: {pending(queue)} PENDING rows, expected {expected}")
        queue.engine.dispose()
    single_rate, batched_rate = bl.median(single), bl.median(batched)
    return [
        Row(
            "enqueue",
            f"one job per transaction ({args.single:,} jobs)",
            round(single_rate),
            "jobs/s",
            f"{single_rate:,.0f} jobs/s",
            samples=[round(s) for s in single],
        ),
        Row(
            "enqueue",
            f"batches of {args.batch_size} on one connection ({args.batched:,} jobs)",
            round(batched_rate),
            "jobs/s",
            f"{batched_rate:,.0f} jobs/s",
            ">= 5,000 jobs/s",
            batched_rate >= 5_000,
            samples=[round(s) for s in batched],
        ),
    ]


def section_sensor(ctx: Context) -> list[Row]:
    import dagster as dg

    from dw_pipelines.definitions import build_definitions
    from dw_pipelines.defs.resources import DwResource
    from dw_pipelines.services import build_queue
    from dw_pipelines.settings import Settings

    args = ctx.args
    with bl.scratch_database(args.server_url, keep=args.keep_db) as url:
        settings = Settings.from_env(ctx.use_database(url))
        queue = build_queue(settings)
        enqueue_batched(queue, commands(ctx, args.pending), 500)
        sensor = build_definitions(settings).resolve_sensor_def("dw_outbox_sensor")
        seconds, requests, pending_at_ticks = [], [], []
        with quiet(ctx.workdir / "dagster.log"), dg.instance_for_test() as instance:
            for _ in range(args.ticks):
                pending_at_ticks.append(pending(queue))
                resources = {"dw": DwResource()}
                with dg.build_sensor_context(instance=instance, resources=resources) as context:
                    started = time.perf_counter()
                    result = sensor(context)
                    seconds.append(time.perf_counter() - started)
                requests.append(len(getattr(result, "run_requests", None) or []))
        claimed = pending_at_ticks[0] - pending(queue)
        if claimed != sum(requests):
            raise SystemExit(f"FAILED: {claimed} rows claimed but {sum(requests)} run requests")
        queue.engine.dispose()
    tick = bl.median(seconds)
    batch = settings.sensor_batch_size
    return [
        Row(
            "sensor",
            f"one tick, {pending_at_ticks[0]:,} PENDING, batch {batch} "
            f"(median of {len(seconds)}; first {seconds[0]:.3f} s)",
            round(tick, 4),
            "s",
            f"{tick:.3f} s",
            "< 1 s",
            tick < 1.0,
            samples=[round(s, 4) for s in seconds],
        ),
        Row(
            "sensor",
            "run requests per tick",
            min(requests),
            "requests",
            f"{min(requests)}" if min(requests) == max(requests) else f"{requests}",
            f"{batch}",
            all(r == batch for r in requests),
            samples=requests,
        ),
    ]


def import_seconds(statement: str, env: dict[str, str]) -> tuple[float, float]:
    """(process wall seconds, import-only seconds) of one fresh interpreter."""
    code = f"import time; t = time.perf_counter(); {statement}; print(time.perf_counter() - t)"
    started = time.perf_counter()
    completed = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False
    )
    wall = time.perf_counter() - started
    if completed.returncode != 0:
        raise SystemExit(f"FAILED: {statement}:\n{completed.stderr[-2000:]}")
    return wall, float(completed.stdout.strip().splitlines()[-1])


def section_imports(ctx: Context) -> list[Row]:
    args = ctx.args
    # The code server's environment: contracts folder, a Postgres URL (no connection is made).
    env = {**os.environ, **ctx.env, "DW_DATABASE_URL": bl.sqlalchemy_url(args.server_url)}
    import_seconds(IMPORT_PROJECT, env)  # warm-up: page cache, .pyc files
    import_seconds(IMPORT_BASELINE, env)
    project, baseline = [], []
    for _ in range(args.imports):  # interleaved, so drift hits both alike
        project.append(import_seconds(IMPORT_PROJECT, env))
        baseline.append(import_seconds(IMPORT_BASELINE, env))
    project_wall = bl.median([wall for wall, _ in project])
    baseline_wall = bl.median([wall for wall, _ in baseline])
    ratio = project_wall / baseline_wall
    return [
        Row(
            "imports",
            f'python -c "{IMPORT_PROJECT}" (median of {args.imports}; import only '
            f"{bl.median([i for _, i in project]):.2f} s)",
            round(project_wall, 4),
            "s",
            f"{project_wall:.2f} s",
            samples=[round(w, 4) for w, _ in project],
        ),
        Row(
            "imports",
            f'python -c "{IMPORT_BASELINE}" (import only '
            f"{bl.median([i for _, i in baseline]):.2f} s)",
            round(baseline_wall, 4),
            "s",
            f"{baseline_wall:.2f} s",
            samples=[round(w, 4) for w, _ in baseline],
        ),
        Row(
            "imports",
            "ratio",
            round(ratio, 3),
            "x",
            f"{ratio:.2f}",
            "<= 1.3",
            ratio <= 1.3,
        ),
    ]


def trivial_job():
    """Two no-op assets, b depending on a: Dagster's own cost of an asset run."""
    import dagster as dg

    @dg.asset
    def noop_a() -> None:
        return None

    @dg.asset(deps=[noop_a])
    def noop_b() -> None:
        return None

    job = dg.define_asset_job("noop_job", selection=[noop_a, noop_b])
    return dg.Definitions(assets=[noop_a, noop_b], jobs=[job]).resolve_job_def("noop_job")


def section_runs(ctx: Context) -> list[Row]:
    import dagster as dg

    from dw_pipelines.definitions import build_definitions
    from dw_pipelines.services import build_service, dispose
    from dw_pipelines.settings import Settings

    args = ctx.args
    selection = [dg.AssetKey(["staging", "events"]), dg.AssetKey(["storage", "events"])]
    rows: list[Row] = []
    with (
        bl.scratch_database(args.server_url, keep=args.keep_db) as url,
        bl.empty_database(args.server_url, keep=args.keep_db) as dagster_url,
    ):
        settings = Settings.from_env(ctx.use_database(url))
        service = build_service(settings)
        ingestion = build_definitions(settings).resolve_job_def("dw_ingestion_job")
        noop = trivial_job()
        # Both jobs on the same instance: the embedded SQLite one a laptop gets (what
        # `dg.instance_for_test()` makes), then one on Postgres, as dagster.yaml and the Helm
        # chart configure for production.
        instances = {
            "SQLite": None,
            "Postgres": {"storage": {"postgres": {"postgres_url": dagster_url}}},
        }
        service_seconds: list[float] = []
        for label, overrides in instances.items():
            with (
                quiet(ctx.workdir / "dagster.log"),
                dg.instance_for_test(overrides=overrides) as instance,
            ):

                def ingestion_run(instance=instance) -> float:
                    job = service.queue.enqueue(commands(ctx, 1)[0]).job
                    seconds = timed(
                        lambda: ingestion.execute_in_process(
                            instance=instance,
                            partition_key=bl.BUSINESS_DATE,
                            tags={"dw/job_id": job.job_id},
                            asset_selection=selection,
                        )
                    )
                    done = service.queue.get(job.job_id)
                    if (done.status, done.rows_loaded) != ("COMPLETED", SMALL_FILE_ROWS):
                        raise SystemExit(f"FAILED: job {job.job_id} ended {done.status}")
                    return seconds

                def noop_run(instance=instance) -> float:
                    return timed(lambda: noop.execute_in_process(instance=instance))

                def service_steps() -> float:
                    # The same job through the service alone: what the run's fixed cost owes
                    # to this project's own steps (outbox transitions, DDL, COPY, promotion)
                    # rather than to Dagster's run machinery.
                    job = service.queue.enqueue(commands(ctx, 1)[0]).job
                    run_id = f"bench-{uuid.uuid4().hex}"

                    def steps() -> None:
                        service.stage(service.start(job.job_id, run_id), run_id)
                        service.promote(job.job_id, run_id)

                    return timed(steps)

                ingestion_run(), noop_run(), service_steps()  # warm-up: imports, tables
                ingest_seconds, noop_seconds = [], []
                for _ in range(args.runs):
                    ingest_seconds.append(ingestion_run())
                    noop_seconds.append(noop_run())
                    service_seconds.append(service_steps())
            ingest, trivial = bl.median(ingest_seconds), bl.median(noop_seconds)
            ratio = ingest / trivial
            rows += [
                Row(
                    "runs",
                    f"{label} instance: dw_ingestion_job, {SMALL_FILE_ROWS}-row file "
                    f"(median of {args.runs})",
                    round(ingest, 4),
                    "s",
                    f"{ingest:.3f} s",
                    samples=[round(s, 4) for s in ingest_seconds],
                ),
                Row(
                    "runs",
                    f"{label} instance: trivial job, 2 no-op assets",
                    round(trivial, 4),
                    "s",
                    f"{trivial:.3f} s",
                    samples=[round(s, 4) for s in noop_seconds],
                ),
                Row(
                    "runs",
                    f"{label} instance: ratio",
                    round(ratio, 3),
                    "x",
                    f"{ratio:.2f}",
                    "<= 1.3",
                    ratio <= 1.3,
                ),
            ]
        dispose(service)
    steps = bl.median(service_seconds)
    rows.append(
        Row(
            "runs",
            "the same job through the service alone (start, stage, promote; no Dagster)",
            round(steps, 4),
            "s",
            f"{steps:.3f} s",
            samples=[round(s, 4) for s in service_seconds],
        )
    )
    return rows


# ------------------------------------------------------------------ same-shape (opt-in)

SHAPE_DATASET = "events"


def same_shape_job(settings, ingestion_defs):
    """A no-op job of the same shape as a dw_ingestion_job run of SHAPE_DATASET.

    Two one-asset multi_assets, `bench_noop/staging/<dataset>` -> `bench_noop/storage/<dataset>`,
    with the real assets' partitions definition and a copy of each load check spec of the real
    assets (the checks an ingestion run plans: `load_check_keys`), `blocking` and partitioning
    included, so the no-op stays in step when the real definitions change. The bodies yield the
    materialization and a passed `AssetCheckResult` per check, Dagster's documented way. (The
    real steps build their check evaluations themselves with one event-log lookup per step,
    where each `AssetCheckResult` makes Dagster look the target materialization up: the no-op
    pays up to two lookups per step more than the real job, which favours the real job's
    ratio by a few milliseconds.)
    """
    import dagster as dg

    with warnings.catch_warnings():
        # Partitioned check specs are "preview" in Dagster; the real assets use them too.
        warnings.simplefilter("ignore", dg.PreviewWarning)
        return _same_shape_job(settings, ingestion_defs)


def _same_shape_job(settings, ingestion_defs):
    import dagster as dg

    from dw_pipelines.defs.assets import load_check_keys, staging_key, storage_key
    from dw_pipelines.services import load_contracts
    from dw_pipelines.settings import INGESTION_JOB_NAME

    contract = load_contracts(settings).get(SHAPE_DATASET)
    wanted = set(load_check_keys(contract))
    real_job = ingestion_defs.resolve_job_def(INGESTION_JOB_NAME)
    assets, copied, previous = [], 0, None
    partitions_def = None
    for real_key in (staging_key(SHAPE_DATASET), storage_key(SHAPE_DATASET)):
        real = ingestion_defs.resolve_assets_def(real_key)
        partitions_def = real.partitions_def
        key = dg.AssetKey(["bench_noop", *real_key.path])
        checks = [
            dg.AssetCheckSpec(
                spec.name,
                asset=key,
                description=spec.description,
                blocking=spec.blocking,
                partitions_def=spec.partitions_def,
            )
            for spec in real.check_specs
            if spec.key in wanted
        ]
        copied += len(checks)
        assets.append(_noop_multi_asset(key, previous, checks, partitions_def))
        previous = key
    if copied != len(wanted) or not wanted:
        raise SystemExit(f"FAILED: copied {copied} check specs, the real run plans {len(wanted)}")
    job = dg.define_asset_job(  # partitioned like its assets (Dagster infers it)
        "bench_same_shape_job",
        selection=assets,
        executor_def=dg.in_process_executor,
        tags=dict(real_job.tags),
    )
    return dg.Definitions(assets=assets, jobs=[job]).resolve_job_def("bench_same_shape_job")


def _noop_multi_asset(key, upstream, checks, partitions_def):
    import dagster as dg

    @dg.multi_asset(
        name="bench_noop__" + "__".join(key.path[1:]),
        specs=[dg.AssetSpec(key, deps=[upstream] if upstream else [], skippable=True)],
        check_specs=checks,
        partitions_def=partitions_def,
        can_subset=True,
    )
    def noop(context: dg.AssetExecutionContext):
        yield dg.MaterializeResult(asset_key=key)
        for spec in checks:
            yield dg.AssetCheckResult(asset_key=key, check_name=spec.name, passed=True)

    return noop


class OwnCodeSampler:
    """Time-weighted stack sampling of one thread: how much of it is this project's own code.

    Every `interval` a helper thread reads the sampled thread's stack
    (`sys._current_frames()`) and charges the time since its previous sample to whoever the
    innermost frame of `dw_pipelines` or of Dagster (dagster, dagster_shared, dagster_postgres,
    dagster_pipes) belongs to: "ours" when it is a `dw_pipelines` frame (and everything it
    calls that is not Dagster: SQLAlchemy, psycopg, pyarrow, the database round trips),
    "dagster" when it is Dagster's (including Dagster calls our code makes, such as
    `context.log` or the event-log lookup of a step's materialization, and the libraries
    Dagster calls: event writes), "other" otherwise. Time-weighted, so the GIL hand-over
    delays (a CPU-bound thread lets the sampler in every `sys.getswitchinterval()`) do not
    bias the shares. The sampler slows the run a little, so it is used on runs that are not
    timed for the ratio.
    """

    def __init__(self, interval: float = 0.0005):
        import dagster
        import dagster_pipes
        import dagster_postgres
        import dagster_shared

        import dw_pipelines

        def folder(module) -> str:
            return str(Path(module.__file__).resolve().parent) + os.sep

        self.ours = folder(dw_pipelines)
        self.dagster = tuple(
            folder(m) for m in (dagster, dagster_shared, dagster_postgres, dagster_pipes)
        )
        self.interval = interval
        self.totals = {"ours": 0.0, "dagster": 0.0, "other": 0.0}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._target = 0

    def _owner(self, frame) -> str:
        while frame is not None:
            filename = frame.f_code.co_filename
            if filename.startswith(self.ours):
                return "ours"
            if filename.startswith(self.dagster):
                return "dagster"
            frame = frame.f_back
        return "other"

    def _run(self) -> None:
        last = time.perf_counter()
        while not self._stop.wait(self.interval):
            frame = sys._current_frames().get(self._target)
            now = time.perf_counter()
            self.totals[self._owner(frame)] += now - last
            last = now

    def __enter__(self) -> "OwnCodeSampler":
        self._target = threading.get_ident()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    @property
    def share(self) -> float:
        total = sum(self.totals.values())
        return self.totals["ours"] / total if total else 0.0


def section_same_shape(ctx: Context) -> list[Row]:
    import dagster as dg

    from dw_pipelines.definitions import build_definitions
    from dw_pipelines.defs.assets import staging_key, storage_key
    from dw_pipelines.defs.sensors import run_tags
    from dw_pipelines.services import build_service, dispose
    from dw_pipelines.settings import INGESTION_JOB_NAME, TAG_JOB_ID, Settings

    args = ctx.args
    selection = [staging_key(SHAPE_DATASET), storage_key(SHAPE_DATASET)]
    rows: list[Row] = []
    with (
        bl.scratch_database(args.server_url, keep=args.keep_db) as url,
        bl.empty_database(args.server_url, keep=args.keep_db) as dagster_url,
    ):
        settings = Settings.from_env(ctx.use_database(url))
        service = build_service(settings)
        ingestion_defs = build_definitions(settings)
        ingestion = ingestion_defs.resolve_job_def(INGESTION_JOB_NAME)
        noop = same_shape_job(settings, ingestion_defs)
        noop_selection = list(noop.asset_layer.executable_asset_keys)
        # Both jobs run with the tags the outbox sensor gives a job's run (job, dataset, tenant,
        # pod and run policy); the no-op's name a job id that is not in the outbox.
        shape_tags = run_tags(service.queue.enqueue(commands(ctx, 1)[0]).job, settings)
        postgres = "Postgres" + (f" ({args.dagster_pg_options})" if args.dagster_pg_options else "")
        instances = {
            "SQLite": None,
            postgres: {
                "storage": {"postgres": {"postgres_url": dagster_pg_url(dagster_url, args)}}
            },
        }
        for label, overrides in instances.items():
            with (
                quiet(ctx.workdir / "dagster.log"),
                dg.instance_for_test(overrides=overrides) as instance,
            ):

                def ingestion_run(sampler=None, instance=instance) -> float:
                    job = service.queue.enqueue(commands(ctx, 1)[0]).job

                    def run() -> None:
                        ingestion.execute_in_process(
                            instance=instance,
                            partition_key=bl.BUSINESS_DATE,
                            tags=run_tags(job, settings),
                            asset_selection=selection,
                        )

                    if sampler is None:
                        seconds = timed(run)
                    else:
                        with sampler:
                            seconds = timed(run)
                    done = service.queue.get(job.job_id)
                    if (done.status, done.rows_loaded) != ("COMPLETED", SMALL_FILE_ROWS):
                        raise SystemExit(f"FAILED: job {job.job_id} ended {done.status}")
                    return seconds

                def noop_run(instance=instance) -> float:
                    def run() -> None:
                        result = noop.execute_in_process(
                            instance=instance,
                            partition_key=bl.BUSINESS_DATE,
                            tags={**shape_tags, TAG_JOB_ID: f"bench-noop-{uuid.uuid4().hex}"},
                            asset_selection=noop_selection,
                        )
                        checks = result.get_asset_check_evaluations()
                        if len(checks) != 6 or not all(c.passed for c in checks):
                            raise SystemExit(f"FAILED: no-op job evaluated {len(checks)} checks")

                    return timed(run)

                ingestion_run(), noop_run(), service_steps(ctx, service)  # warm-up
                ingest_seconds, noop_seconds, service_seconds = [], [], []
                for _ in range(args.runs):
                    ingest_seconds.append(ingestion_run())
                    noop_seconds.append(noop_run())
                    service_seconds.append(service_steps(ctx, service))
                # Separate, untimed runs under the sampler (it slows the run a little).
                samplers = [OwnCodeSampler() for _ in range(max(3, args.runs // 2))]
                sampled_seconds = [ingestion_run(sampler) for sampler in samplers]
            ingest, trivial = bl.median(ingest_seconds), bl.median(noop_seconds)
            steps = bl.median(service_seconds)
            ratio = ingest / trivial
            totals = {k: sum(s.totals[k] for s in samplers) for k in ("ours", "dagster", "other")}
            share = totals["ours"] / sum(totals.values())
            rows += [
                Row(
                    "same-shape",
                    f"{label} instance: dw_ingestion_job, {SMALL_FILE_ROWS}-row file "
                    f"(median of {args.runs})",
                    round(ingest, 4),
                    "s",
                    f"{ingest:.3f} s",
                    samples=[round(s, 4) for s in ingest_seconds],
                ),
                Row(
                    "same-shape",
                    f"{label} instance: no-op job of the same shape (2 partitioned assets, "
                    f"{len(noop_checks(noop))} checks, blocking as the real ones)",
                    round(trivial, 4),
                    "s",
                    f"{trivial:.3f} s",
                    samples=[round(s, 4) for s in noop_seconds],
                ),
                Row(
                    "same-shape",
                    f"{label} instance: ratio",
                    round(ratio, 3),
                    "x",
                    f"{ratio:.2f}",
                    "<= 1.3",
                    ratio <= 1.3,
                ),
                Row(
                    "same-shape",
                    f"{label} instance: our steps share (sampled in {len(samplers)} untimed runs "
                    f"of {bl.median(sampled_seconds):.3f} s: dw_pipelines frames and what they "
                    f"call outside Dagster; Dagster {totals['dagster'] / sum(totals.values()):.0%}"
                    f"; for reference the service alone, start+stage+promote, {steps:.3f} s = "
                    f"{steps / ingest:.0%} of the run)",
                    round(share, 4),
                    "share",
                    f"{share:.1%}",
                    "<= 10%",
                    share <= 0.10,
                    samples=[round(s.share, 4) for s in samplers],
                ),
            ]
        dispose(service)
    return rows


def noop_checks(job) -> list:
    return [key for key in job.asset_layer.asset_graph.asset_check_keys]


def service_steps(ctx: Context, service, dataset: str = "events") -> float:
    """One 10-row job through the service alone (start + stage + promote; no Dagster): the
    part of a run's cost that is this project's own steps (outbox transitions, DDL, COPY,
    promotion), as section_runs measures it."""
    cmd = {**commands(ctx, 1)[0], "dataset": dataset}
    job = service.queue.enqueue(cmd).job
    run_id = f"bench-{uuid.uuid4().hex}"

    def steps() -> None:
        service.stage(service.start(job.job_id, run_id), run_id)
        service.promote(job.job_id, run_id)

    return timed(steps)


def dagster_pg_url(url: str, args: argparse.Namespace) -> str:
    """Dagster's instance database URL, with `--dagster-pg-options` as libpq `options`."""
    if not args.dagster_pg_options:
        return url
    from urllib.parse import quote

    separator = "&" if "?" in url else "?"
    return f"{url}{separator}options={quote(args.dagster_pg_options)}"


# ------------------------------------------------------------------ throughput (opt-in)

REPO = Path(__file__).resolve().parents[1]
HELM_VALUES = REPO / "helm-values.yaml"
THROUGHPUT_LOCATION = Path(__file__).resolve().parent / "throughput_location.py"
NOOP_JOB_NAME = "bench_noop_job"  # throughput_location.NOOP_JOB_NAME (not imported: it loads
# dw_pipelines.definitions, which only the daemon's processes need)


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def shipped_daemon_config() -> tuple[dict, dict]:
    """(run_coordinator config, sensors config) of helm-values.yaml, in dagster.yaml's words.

    The chart renders `dagsterDaemon.runCoordinator.config.queuedRunCoordinator` into the
    instance's `run_coordinator.config` key by key (maxConcurrentRuns -> max_concurrent_runs,
    tagConcurrencyLimits -> tag_concurrency_limits, whose entries have the same form in both
    files), and `dagsterDaemon.sensors` into `sensors`.
    """
    import yaml

    daemon = yaml.safe_load(HELM_VALUES.read_text())["dagsterDaemon"]
    queued = daemon["runCoordinator"]["config"]["queuedRunCoordinator"]
    coordinator = {_snake(k): v for k, v in queued.items() if v is not None}
    sensors = {_snake(k): v for k, v in (daemon.get("sensors") or {}).items()}
    return coordinator, sensors


def throughput_datasets(workdir: Path, count: int) -> tuple[Path, list[str]]:
    folder = workdir / "throughput_datasets"
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"events_t{i + 1}" for i in range(count)]
    for name in names:
        (folder / f"{name}.yaml").write_text(bl.contract_yaml(name, "append"))
    return folder, names


def _stop_process_tree(process: subprocess.Popen) -> None:
    """Stop the daemon and every process it started (code server, run workers), by pid."""
    import psutil

    if process.poll() is not None:
        return
    try:
        family = psutil.Process(process.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        family = []
    try:
        os.killpg(process.pid, signal.SIGTERM)  # its own session: start_new_session=True
        process.wait(timeout=30)
    except (subprocess.TimeoutExpired, ProcessLookupError):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
    for child in family:  # any that left the session
        with contextlib.suppress(psutil.NoSuchProcess):
            child.kill()


def _sensor_ticks(dagster_url: str, sensor_name: str) -> int:
    """Ticks the daemon has recorded for the sensor (schedule storage's job_ticks table)."""
    rows = bl.sql(
        dagster_url,
        f"SELECT count(*) FROM job_ticks WHERE tick_body LIKE '%\"{sensor_name}\"%'",
    )
    return rows[0][0]


def _wait(condition: Callable[[], bool], daemon: subprocess.Popen, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not condition():
        if daemon.poll() is not None:
            raise SystemExit(f"FAILED: dagster-daemon exited ({daemon.returncode}) {what}")
        if time.monotonic() > deadline:
            raise SystemExit(f"FAILED: timed out after {timeout:.0f} s {what}")
        time.sleep(0.5)


def _utc_timestamp(value) -> float:
    import datetime as dt

    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return value.timestamp()


def run_breakdown(instance, run_id: str) -> dict[str, float]:
    """Where one run's wall time went, from its event log (seconds; `events` is a count)."""
    import dagster as dg

    T = dg.DagsterEventType
    entries = instance.all_logs(run_id)
    first: dict = {}
    last: dict = {}
    for entry in entries:
        if entry.dagster_event is None:
            continue
        kind = entry.dagster_event.event_type
        first.setdefault(kind, entry.timestamp)
        last[kind] = entry.timestamp
    return {
        "enqueued": first[T.RUN_ENQUEUED],
        "queue_wait": first[T.RUN_STARTING] - first[T.RUN_ENQUEUED],
        "process_start": first[T.RUN_START] - first[T.RUN_STARTING],
        "steps": last[T.STEP_SUCCESS] - first[T.STEP_START],
        "after_steps": first[T.RUN_SUCCESS] - last[T.STEP_SUCCESS],
        "run_wall": first[T.RUN_SUCCESS] - first[T.RUN_ENQUEUED],
        "launched_wall": first[T.RUN_SUCCESS] - first[T.RUN_STARTING],
        "events": len(entries),
        "dagster_events": sum(1 for e in entries if e.dagster_event is not None),
    }


BREAKDOWN_ROWS = (
    ("queue_wait", "queue wait (RUN_ENQUEUED -> RUN_STARTING)", "s"),
    ("process_start", "process start + code-location import (RUN_STARTING -> RUN_START)", "s"),
    ("steps", "step execution (first STEP_START -> last STEP_SUCCESS)", "s"),
    ("after_steps", "after the steps (last STEP_SUCCESS -> RUN_SUCCESS)", "s"),
    ("launched_wall", "launched run (RUN_STARTING -> RUN_SUCCESS)", "s"),
    ("events", "event log entries written per run", "events"),
)


def section_throughput(ctx: Context) -> list[Row]:
    import dagster as dg
    from dagster._core.definitions.selector import JobSubsetSelector
    from dagster._core.workspace.context import WorkspaceProcessContext
    from dagster._core.workspace.load_target import WorkspaceFileTarget

    from dw_pipelines.core.commands import DEFAULT_TENANT
    from dw_pipelines.services import build_service, dispose
    from dw_pipelines.settings import (
        CODE_LOCATION_NAME,
        SENSOR_NAME,
        TAG_DATASET,
        TAG_JOB_ID,
        TAG_TENANT,
        Settings,
    )

    args = ctx.args
    jobs = args.throughput_jobs
    coordinator, sensors = shipped_daemon_config()
    if args.dequeue_interval is not None:
        coordinator["dequeue_interval_seconds"] = args.dequeue_interval
    datasets_path, datasets = throughput_datasets(ctx.workdir, args.throughput_datasets)
    saved_environ = dict(os.environ)
    dagster_home = Path(tempfile.mkdtemp(prefix="dw_bench_dagster_home_"))
    daemon = None
    try:
        with (
            bl.scratch_database(args.server_url, keep=args.keep_db) as url,
            bl.empty_database(args.server_url, keep=args.keep_db) as dagster_url,
        ):
            env = {
                **ctx.use_database(url),
                "DW_DATASETS_PATH": str(datasets_path),
                "DW_SENSOR_INTERVAL_SECONDS": str(args.throughput_sensor_interval),
                # Settings' default, stated: the sensor must tick without `dagster sensor start`.
                "DW_SENSOR_DEFAULT_STATUS": "RUNNING",
                "DAGSTER_HOME": str(dagster_home),
            }
            os.environ.update(env)
            settings = Settings.from_env(env)
            instance_config = {
                "storage": {"postgres": {"postgres_url": dagster_pg_url(dagster_url, args)}},
                "run_coordinator": {
                    "module": "dagster._core.run_coordinator",
                    "class": "QueuedRunCoordinator",
                    "config": coordinator,
                },
                "sensors": sensors,
                "telemetry": {"enabled": False},
            }
            # JSON is YAML: dagster.yaml without a YAML writer. No run_launcher: the
            # DefaultRunLauncher, a process per run started by the code server.
            (dagster_home / "dagster.yaml").write_text(json.dumps(instance_config, indent=2))
            workspace = dagster_home / "workspace.yaml"
            workspace.write_text(
                json.dumps(
                    {
                        "load_from": [
                            {
                                "python_file": {
                                    "relative_path": str(THROUGHPUT_LOCATION),
                                    "working_directory": str(REPO),
                                    "location_name": CODE_LOCATION_NAME,
                                }
                            }
                        ]
                    }
                )
            )
            # The project's own steps for the same 10-row job (before the daemon runs, so the
            # sensor cannot claim these jobs): one warm-up, then medians.
            service = build_service(settings)
            service_steps(ctx, service, datasets[0])
            own = [service_steps(ctx, service, datasets[i % len(datasets)]) for i in range(5)]
            queue = service.queue
            tenant = DEFAULT_TENANT  # one tenant: its limit (4) binds with the dataset's
            tags_of = [
                {TAG_DATASET: datasets[i % len(datasets)], TAG_TENANT: tenant} for i in range(jobs)
            ]
            instance = dg.DagsterInstance.from_config(str(dagster_home))
            log_path = ctx.workdir / "daemon.log"
            daemon_bin = Path(sys.executable).parent / "dagster-daemon"
            with open(log_path, "ab") as log:
                daemon = subprocess.Popen(
                    [str(daemon_bin), "run", "-w", str(workspace)],
                    env={**os.environ, **env},
                    cwd=REPO,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            bl.log(f"  daemon {daemon.pid} starting (DAGSTER_HOME={dagster_home})")
            _wait(
                lambda: _sensor_ticks(dagster_url, SENSOR_NAME) > 0,
                daemon,
                180,
                f"waiting for the first {SENSOR_NAME} tick (is the sensor on?)",
            )

            # --- ingestion: enqueue -> sensor -> queue -> run process -> COMPLETED
            before = queue.count_by_status()
            cmds = [
                {
                    **cmd,
                    "dataset": tags[TAG_DATASET],
                    "tenant_id": tags[TAG_TENANT],
                }
                for cmd, tags in zip(commands(ctx, jobs), tags_of, strict=True)
            ]
            bl.log(f"  enqueueing {jobs} jobs over {len(datasets)} datasets")
            started = time.time()
            job_ids = [
                result.job.job_id
                for start in range(0, jobs, 500)
                for result in queue.enqueue_many(cmds[start : start + 500])
            ]
            settled_before = before.get("COMPLETED", 0) + before.get("FAILED", 0)

            def settled() -> bool:
                counts = queue.count_by_status()
                return counts.get("COMPLETED", 0) + counts.get("FAILED", 0) >= settled_before + jobs

            _wait(settled, daemon, args.throughput_timeout, f"for {jobs} outbox jobs to settle")
            done = [queue.get(job_id) for job_id in job_ids]
            bad = [j for j in done if (j.status, j.rows_loaded) != ("COMPLETED", SMALL_FILE_ROWS)]
            if len(done) != jobs or bad:
                raise SystemExit(
                    f"FAILED: {len(done)} of {jobs} jobs found; not COMPLETED with "
                    f"{SMALL_FILE_ROWS} rows: {[(j.job_id, j.status, j.last_error) for j in bad]}"
                )
            ingest_seconds = max(_utc_timestamp(j.updated_at) for j in done) - started
            ingest_rate = jobs * 60 / ingest_seconds

            # --- reference: the trivial job of the same code location, same tags
            bl.log(f"  submitting {jobs} runs of the trivial job")
            with (
                # Its code server inherits stdout: keep `--json` output to one document.
                quiet(ctx.workdir / "dagster.log", fds=(1, 2)),
                WorkspaceProcessContext(instance, WorkspaceFileTarget([str(workspace)])) as pc,
            ):
                request = pc.create_request_context()
                location = request.get_code_location(CODE_LOCATION_NAME)
                (repository,) = location.get_repositories().values()
                remote_job = location.get_job(
                    JobSubsetSelector(
                        location_name=location.name,
                        repository_name=repository.name,
                        job_name=NOOP_JOB_NAME,
                        op_selection=None,
                    )
                )
                plan = location.get_execution_plan(
                    remote_job, {}, step_keys_to_execute=None, known_state=None, instance=instance
                )
                run_ids = []
                started_ref = time.time()
                for tags in tags_of:  # created and submitted inside the clock, as the sensor
                    run = instance.create_run(
                        job_name=NOOP_JOB_NAME,
                        run_id=None,
                        run_config={},
                        resolved_op_selection=remote_job.resolved_op_selection,
                        step_keys_to_execute=plan.execution_plan_snapshot.step_keys_to_execute,
                        status=None,
                        op_selection=None,
                        root_run_id=None,
                        parent_run_id=None,
                        tags={**(remote_job.run_tags or {}), **tags},
                        job_snapshot=remote_job.job_snapshot,
                        execution_plan_snapshot=plan.execution_plan_snapshot,
                        parent_job_snapshot=remote_job.parent_job_snapshot,
                        remote_job_origin=remote_job.get_remote_origin(),
                        job_code_origin=remote_job.get_python_origin(),
                        asset_selection=None,
                        asset_check_selection=None,
                        asset_graph=repository.asset_graph,
                    )
                    instance.submit_run(run.run_id, request)
                    run_ids.append(run.run_id)
            finished = [
                dg.DagsterRunStatus.SUCCESS,
                dg.DagsterRunStatus.FAILURE,
                dg.DagsterRunStatus.CANCELED,
            ]

            def reference_done() -> bool:
                count = instance.get_runs_count(
                    filters=dg.RunsFilter(run_ids=run_ids, statuses=finished)
                )
                return count >= len(run_ids)

            _wait(reference_done, daemon, args.throughput_timeout, f"for {jobs} trivial runs")
            records = instance.get_run_records(filters=dg.RunsFilter(run_ids=run_ids))
            failed = [
                r.dagster_run.run_id for r in records if r.dagster_run.status.value != "SUCCESS"
            ]
            if len(records) != jobs or failed:
                raise SystemExit(f"FAILED: trivial runs not SUCCESS: {failed}")
            ref_seconds = max(r.end_time for r in records) - started_ref
            ref_rate = jobs * 60 / ref_seconds
            _stop_process_tree(daemon)

            # --- where a run's wall time goes
            ingestion_runs = instance.get_run_records(
                filters=dg.RunsFilter(tags={TAG_JOB_ID: [j.job_id for j in done]})
            )
            ingest_parts = [run_breakdown(instance, r.dagster_run.run_id) for r in ingestion_runs]
            ref_parts = [run_breakdown(instance, run_id) for run_id in run_ids]
            created = {j.job_id: _utc_timestamp(j.created_at) for j in done}
            dispatch = [
                part["enqueued"] - created[r.dagster_run.tags[TAG_JOB_ID]]
                for part, r in zip(ingest_parts, ingestion_runs, strict=True)
            ]
            instance.dispose()
            dispose(service)
    except BaseException:
        daemon_log = ctx.workdir / "daemon.log"
        if daemon_log.exists():
            bl.log("daemon log (last 40 lines):")
            bl.log("\n".join(daemon_log.read_text(errors="replace").splitlines()[-40:]))
        raise
    finally:
        if daemon is not None:
            _stop_process_tree(daemon)
        os.environ.clear()
        os.environ.update(saved_environ)
        shutil.rmtree(dagster_home, ignore_errors=True)

    ratio = ingest_rate / ref_rate
    setup_note = (
        f"{len(datasets)} datasets, max_concurrent_runs {coordinator.get('max_concurrent_runs')}"
        f", dequeue every {coordinator.get('dequeue_interval_seconds', 5)} s"
        + (f", Dagster PG options {args.dagster_pg_options!r}" if args.dagster_pg_options else "")
    )
    rows = [
        Row(
            "throughput",
            f"ingestion: {jobs} ten-row jobs, first enqueue -> last COMPLETED ({setup_note}; "
            f"sensor every {args.throughput_sensor_interval} s, batch "
            f"{settings.sensor_batch_size}; {ingest_seconds:.1f} s)",
            round(ingest_rate, 2),
            "jobs/min",
            f"{ingest_rate:.1f} jobs/min",
        ),
        Row(
            "throughput",
            f"reference: {jobs} runs of {NOOP_JOB_NAME} (same code location and tags), first "
            f"submit -> last SUCCESS ({ref_seconds:.1f} s)",
            round(ref_rate, 2),
            "runs/min",
            f"{ref_rate:.1f} runs/min",
        ),
        Row(
            "throughput",
            "ratio ingestion / reference",
            round(ratio, 3),
            "x",
            f"{ratio:.2f}",
            ">= 0.8",
            ratio >= 0.8,
        ),
        Row(
            "throughput",
            "ingestion: enqueue -> RUN_ENQUEUED (sensor tick; median per run)",
            round(bl.median(dispatch), 4),
            "s",
            f"{bl.median(dispatch):.2f} s",
        ),
    ]
    for key, label, unit in BREAKDOWN_ROWS:
        for who, parts in (("ingestion", ingest_parts), ("reference", ref_parts)):
            value = bl.median([p[key] for p in parts])
            rows.append(
                Row(
                    "throughput",
                    f"{who}: {label} (median per run)",
                    round(value, 4) if unit == "s" else value,
                    unit,
                    f"{value:.2f} s" if unit == "s" else f"{value:.0f}",
                )
            )
    steps = bl.median(own)
    rows.append(
        Row(
            "throughput",
            "ingestion: our steps (the service alone, start+stage+promote, as same-shape "
            f"measures it; median of {len(own)})",
            round(steps, 4),
            "s",
            f"{steps:.3f} s",
            samples=[round(s, 4) for s in own],
        )
    )
    return rows


SECTION_FUNCTIONS = {
    "enqueue": section_enqueue,
    "sensor": section_sensor,
    "imports": section_imports,
    "runs": section_runs,
    "same-shape": section_same_shape,
    "throughput": section_throughput,
}


# ---------------------------------------------------------------------------------- main


def render(document: dict) -> str:
    machine = document["machine"]
    lines = [
        "dw_pipelines dispatch benchmark",
        f"machine: {machine['cpus']} CPUs, Python {machine['python']}, PostgreSQL "
        f"{machine['postgres']}, load average {machine['load_average_1m']} at start",
        "",
    ]
    rows = []
    previous = None
    for row in document["results"]:
        ok = "" if row["ok"] is None else ("yes" if row["ok"] else "NO")
        section = row["section"] if row["section"] != previous else ""
        rows.append([section, row["measurement"], row["display"], row["target"], ok])
        previous = row["section"]
    lines.append(bl.render_table(["section", "measurement", "value", "target", "met"], rows))
    missed = [r for r in document["results"] if r["ok"] is False]
    lines += ["", f"targets missed: {len(missed)}" if missed else "all targets met"]
    return "\n".join(lines)


def setup(workdir: Path) -> tuple[dict[str, str], Path]:
    landing = workdir / "landing"
    small = bl.generate_files(SMALL_FILE_ROWS, 1, "csv", landing)[0]
    env = {
        "DW_LANDING_ROOT": str(landing),
        "DW_DATASETS_PATH": str(bl.write_contracts(workdir / "datasets")),
        "DW_HOME": str(workdir / "home"),
        "DW_SENSOR_BATCH_SIZE": "100",
    }
    return env, small


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--sections",
        default=",".join(SECTIONS),
        help=f"comma-separated; default {','.join(SECTIONS)}; opt-in "
        f"{','.join(OPT_IN_SECTIONS)}; or all",
    )
    parser.add_argument("--single", type=int, default=2_000, help="jobs enqueued one at a time")
    parser.add_argument("--batched", type=int, default=20_000, help="jobs enqueued in batches")
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=3, help="enqueue repetitions (median)")
    parser.add_argument("--pending", type=int, default=10_000, help="PENDING rows for the sensor")
    parser.add_argument("--ticks", type=int, default=5, help="sensor evaluations (median)")
    parser.add_argument("--imports", type=int, default=7, help="fresh interpreters per import")
    parser.add_argument("--runs", type=int, default=7, help="runs per job (median)")
    parser.add_argument("--throughput-jobs", type=int, default=200, help="jobs (throughput)")
    parser.add_argument(
        "--throughput-datasets", type=int, default=4, help="datasets the jobs are spread over"
    )
    parser.add_argument(
        "--throughput-sensor-interval",
        type=int,
        default=5,
        help="DW_SENSOR_INTERVAL_SECONDS of the throughput daemon (production default 15)",
    )
    parser.add_argument(
        "--dequeue-interval",
        type=int,
        default=None,
        help="run queue dequeue_interval_seconds (default: as helm-values.yaml, i.e. Dagster's 5)",
    )
    parser.add_argument(
        "--throughput-timeout", type=float, default=1800, help="seconds to wait for each phase"
    )
    parser.add_argument(
        "--dagster-pg-options",
        default=None,
        help="libpq `options` on the Dagster instance database URL (same-shape's Postgres "
        "instance and throughput), e.g. '-c synchronous_commit=off'",
    )
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke test")
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    parser.add_argument("--keep-db", action="store_true", help="do not drop the databases")
    parser.add_argument("--server-url", default=os.environ.get("DW_BENCH_SERVER_URL"))
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    args = parser.parse_args(argv)
    args.server_url = args.server_url or bl.DEFAULT_SERVER_URL
    if args.quick:
        args.single, args.batched, args.repeat = 200, 1_000, 1
        args.pending, args.ticks, args.imports, args.runs = 1_000, 3, 3, 3
        if args.throughput_jobs == parser.get_default("throughput_jobs"):
            args.throughput_jobs = 10
    args.sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    if args.sections == ["all"]:
        args.sections = [*SECTIONS, *OPT_IN_SECTIONS]
    known = (*SECTIONS, *OPT_IN_SECTIONS)
    unknown = [s for s in args.sections if s not in known]
    if unknown:
        parser.error(f"unknown section(s) {unknown}; choose from {', '.join(known)} or all")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="dw_bench_"))
    try:
        env, small_file = setup(workdir)
        ctx = Context(args, workdir, env, small_file)
        machine = bl.machine_info(args.server_url)
        results = []
        for section in args.sections:
            bl.log(f"{section} ...")
            try:
                rows = SECTION_FUNCTIONS[section](ctx)
            except BaseException:
                log = workdir / "dagster.log"
                if log.exists():
                    bl.log("\n".join(log.read_text(errors="replace").splitlines()[-40:]))
                raise
            for row in rows:
                bl.log(f"  {row.measurement}: {row.display}")
            results += rows
        document = {
            "benchmark": "dispatch",
            "config": {k: v for k, v in vars(args).items() if k not in ("json", "server_url")},
            "machine": machine,
            "results": [asdict(r) for r in results],
        }
        print(bl.dump_json(document) if args.json else render(document))
        missed = any(r.ok is False for r in results)
        return 1 if args.check and missed else 0
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
