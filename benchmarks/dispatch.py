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

    .venv/bin/python benchmarks/dispatch.py
    .venv/bin/python benchmarks/dispatch.py --quick            # small sizes, a smoke test
    .venv/bin/python benchmarks/dispatch.py --sections sensor,runs --json
    .venv/bin/python benchmarks/dispatch.py --check            # exit 1 when a target is missed
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import benchlib as bl

SECTIONS = ("enqueue", "sensor", "imports", "runs")
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
def quiet(log_path: Path) -> Iterator[None]:
    """Send file descriptor 2 (Dagster's console logs) to `log_path` for the block."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(log_path, "ab") as log_file:
        os.dup2(log_file.fileno(), 2)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


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


SECTION_FUNCTIONS = {
    "enqueue": section_enqueue,
    "sensor": section_sensor,
    "imports": section_imports,
    "runs": section_runs,
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
    parser.add_argument("--sections", default=",".join(SECTIONS), help="comma-separated subset")
    parser.add_argument("--single", type=int, default=2_000, help="jobs enqueued one at a time")
    parser.add_argument("--batched", type=int, default=20_000, help="jobs enqueued in batches")
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=3, help="enqueue repetitions (median)")
    parser.add_argument("--pending", type=int, default=10_000, help="PENDING rows for the sensor")
    parser.add_argument("--ticks", type=int, default=5, help="sensor evaluations (median)")
    parser.add_argument("--imports", type=int, default=7, help="fresh interpreters per import")
    parser.add_argument("--runs", type=int, default=7, help="runs per job (median)")
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
    args.sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = [s for s in args.sections if s not in SECTIONS]
    if unknown:
        parser.error(f"unknown section(s) {unknown}; choose from {', '.join(SECTIONS)}")
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
