# ruff: noqa: T201
"""Concurrency benchmark: N ingestion jobs of N datasets at once, against one job alone.

Target: 4 jobs of 4 different datasets at once (as the shipped run-coordinator limits allow)
load at a total rate of at least 1x a single job's rows/s (no collapse from contention on two
cores), and nothing waits on a lock for more than a second.

One scratch database `dw_bench_<random>`, contracts for the append datasets events_a, events_b,
... (the benchmark events columns, in a temporary DW_DATASETS_PATH) and one generated CSV file of
`--rows` rows that every job loads. Each repeat measures two phases:

    single      one job (events_a) alone, in a fresh worker process
    concurrent  `--jobs` fresh worker processes, one job of its own dataset each

Every worker imports, builds its definitions / service and connects first, then waits at a start
barrier (a byte on its stdin); the parent releases all of them together, so process start and
imports are not timed. A worker times its load from the release to the end of its run (a full
in-process Dagster run of dw_ingestion_job on a `dg.instance_for_test()` instance, with the tags
and partition key the sensor gives the job; `--mode service`: start + stage + promote). Total
rows/s = jobs x rows / (last finish - first start). Afterwards each target table must hold
exactly the rows of the file (count and sum(user_id)) and each outbox job must be COMPLETED with
rows_loaded = rows.

Before each phase the dataset schemas are dropped and each dataset's tables are created as an
operator's `dw-pipelines datasets migrate` would (`--new-tables`: the jobs create them, as on the
first load of a new dataset). A sampler thread in the parent polls `pg_locks` every 50 ms during
both phases and records every lock wait with its longest observed duration, and counts the wait
events of the workers' active sessions in `pg_stat_activity`.

    .venv/bin/python benchmarks/concurrency.py                       # 1M rows, 4 jobs, dagster
    .venv/bin/python benchmarks/concurrency.py --rows 20000 --mode service
    .venv/bin/python benchmarks/concurrency.py --repeat 3 --json > result.json
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import benchlib as bl

HELM_VALUES = Path(__file__).resolve().parent.parent / "helm-values.yaml"
SCHEMAS = ("dw_staging", "dw_storage")
STORAGE_SCHEMA = "dw_storage"
APP_PREFIX = "dw_bench:"  # application_name of the workers' sessions (PGAPPNAME)
SAMPLE_INTERVAL_S = 0.05
LIST_WAITS_FROM_S = 0.1
LOCK_WAIT_TARGET_S = 1.0
THROUGHPUT_TARGET = 1.0  # concurrent total rows/s >= this x the single job's
READY_TIMEOUT_S = 600
MAX_JOBS = 26


def clock() -> float:
    """CLOCK_MONOTONIC: one system-wide clock on Linux, comparable between the processes."""
    return time.clock_gettime(time.CLOCK_MONOTONIC)


def dataset_names(jobs: int) -> list[str]:
    return [f"events_{chr(ord('a') + index)}" for index in range(jobs)]


# ================================================================================== worker
# `concurrency.py --_worker CONFIG.json`: set up, write the ready file, wait for the release
# byte on stdin, load one job, write the result file.


def peak_rss_mb() -> float | None:
    """This process image's own high-water mark (VmHWM; see ingest.py)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _prepare_dagster(config: dict, stack: ExitStack):
    import dagster as dg

    from dw_pipelines.definitions import build_definitions
    from dw_pipelines.defs.sensors import run_tags
    from dw_pipelines.services import build_service, dispose
    from dw_pipelines.settings import INGESTION_JOB_NAME, Settings

    settings = Settings.from_env()  # the run's resources read DW_* from the environment too
    job_def = build_definitions(settings).resolve_job_def(INGESTION_JOB_NAME)
    service = build_service(settings)
    stack.callback(dispose, service)
    instance = stack.enter_context(dg.instance_for_test())
    job = service.queue.get(config["job_id"])
    selection = [dg.AssetKey(["staging", job.dataset]), dg.AssetKey(["storage", job.dataset])]
    tags = run_tags(job, settings)  # as the sensor's run request: dw/job_id, dw/dataset, ...

    def load() -> dict:
        result = job_def.execute_in_process(
            instance=instance,
            partition_key=job.business_date.isoformat(),
            tags=tags,
            asset_selection=selection,
        )
        return {"run_id": result.run_id, "success": result.success}

    return load


def _prepare_service(config: dict, stack: ExitStack):
    from dw_pipelines.services import build_service, dispose
    from dw_pipelines.settings import Settings

    service = build_service(Settings.from_env())
    stack.callback(dispose, service)
    job_id = config["job_id"]
    service.queue.get(job_id)  # connect before the release

    def load() -> dict:
        run_id = f"bench-{uuid.uuid4().hex}"
        service.stage(service.start(job_id, run_id), run_id)
        service.promote(job_id, run_id)
        return {"run_id": run_id, "success": True}

    return load


def worker_main(config_path: str) -> None:
    config = json.loads(Path(config_path).read_text())
    os.environ.update(config["env"])
    with ExitStack() as stack:
        prepare = _prepare_dagster if config["mode"] == "dagster" else _prepare_service
        load = prepare(config, stack)
        Path(config["ready_path"]).write_text(str(os.getpid()))
        if sys.stdin.buffer.read(1) != b"g":  # the parent gave up (stdin closed)
            sys.exit(3)
        started = clock()
        outcome = load()
        finished = clock()
    outcome.update(
        {
            "dataset": config["dataset"],
            "job_id": config["job_id"],
            "started": started,
            "finished": finished,
            "seconds": finished - started,
            "peak_rss_mb": peak_rss_mb(),
        }
    )
    Path(config["result_path"]).write_text(json.dumps(outcome))


# ================================================================================= sampler


LOCKS_SQL = """
SELECT l.pid, l.locktype, l.mode, l.relation::regclass::text, l.transactionid::text,
       l.classid, l.objid, l.objsubid, a.application_name, left(a.query, 300),
       extract(epoch FROM clock_timestamp() - l.waitstart)::float8,
       (SELECT string_agg(b.pid || ': ' || left(b.query, 120), ' | ')
          FROM pg_stat_activity b WHERE b.pid = ANY (pg_blocking_pids(l.pid)))
FROM pg_locks l JOIN pg_stat_activity a USING (pid)
WHERE NOT l.granted AND a.datname = current_database()
"""
ACTIVITY_SQL = f"""
SELECT coalesce(wait_event_type, 'CPU'), coalesce(wait_event, 'running')
FROM pg_stat_activity
WHERE datname = current_database() AND pid <> pg_backend_pid() AND state = 'active'
  AND application_name LIKE '{APP_PREFIX}%'
"""


@dataclass
class PhaseSamples:
    waits: list[dict] = field(default_factory=list)
    wait_events: Counter = field(default_factory=Counter)
    ticks: int = 0
    load_ticks: int = 0
    started: float = 0.0
    ended: float = 0.0
    errors: list[str] = field(default_factory=list)


class Sampler(threading.Thread):
    """Polls pg_locks (ungranted locks) and the workers' wait events every `interval` s.

    A wait is one episode of a (pid, locktype, object) seen not granted in consecutive polls;
    its duration is the longest of `clock_timestamp() - waitstart` and the time it was seen.
    Wait events are counted only between the release and the end of the phase (the load).
    """

    def __init__(self, url: str, interval: float = SAMPLE_INTERVAL_S) -> None:
        super().__init__(name="pg-lock-sampler", daemon=True)
        self.url = url
        self.interval = interval
        self.phases: dict[str, PhaseSamples] = {}
        self._phase: str | None = None
        self._released = False
        self._open: dict[tuple, dict] = {}
        self._lock = threading.Lock()
        self._halt = threading.Event()
        self._ready = threading.Event()
        self.failure: str | None = None

    # -- control, from the main thread
    def begin(self, phase: str) -> None:
        with self._lock:
            self._phase, self._released, self._open = phase, False, {}
            self.phases[phase] = PhaseSamples(started=clock())

    def released(self) -> None:
        with self._lock:
            self._released = True

    def end(self) -> PhaseSamples:
        with self._lock:  # waits for a poll in progress
            samples = self.phases[self._phase]
            samples.ended = clock()
            self._phase, self._open = None, {}
            return samples

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=5)

    def start_and_wait(self) -> None:
        self.start()
        self._ready.wait(timeout=30)
        if self.failure:
            raise SystemExit(f"FAILED: lock sampler: {self.failure}")

    # -- the thread
    def run(self) -> None:
        import psycopg

        try:
            conn = psycopg.connect(
                bl.libpq_url(self.url), autocommit=True, application_name="dw_bench_sampler"
            )
        except Exception as exc:  # reported by start_and_wait
            self.failure = str(exc)
            self._ready.set()
            return
        self._ready.set()
        with conn:
            while not self._halt.is_set():
                tick = clock()
                with self._lock:
                    if self._phase is not None:
                        self._poll(conn, self.phases[self._phase])
                self._halt.wait(max(0.0, self.interval - (clock() - tick)))

    def _poll(self, conn, samples: PhaseSamples) -> None:
        try:
            now = clock()
            locks = conn.execute(LOCKS_SQL).fetchall()
            events = conn.execute(ACTIVITY_SQL).fetchall() if self._released else []
        except Exception as exc:  # a failed poll must not end the run
            samples.errors.append(str(exc))
            return
        samples.ticks += 1
        seen = set()
        for (
            pid,
            locktype,
            mode,
            relation,
            xid,
            classid,
            objid,
            objsubid,
            app,
            query,
            waited,
            by,
        ) in locks:
            target = relation or (f"xid {xid}" if xid else None)
            if target is None and objid is not None:
                target = f"{classid}/{objid}/{objsubid}"
            key = (pid, locktype, target or "")
            seen.add(key)
            wait = self._open.get(key)
            if wait is None:
                wait = {
                    "pid": pid,
                    "locktype": locktype,
                    "mode": mode,
                    "object": target,
                    "session": app,
                    "query": query,
                    "blocked_by": by,
                    "first_seen": now,
                    "waited_s": 0.0,
                    "polls": 0,
                }
                self._open[key] = wait
                samples.waits.append(wait)
            wait["polls"] += 1
            wait["blocked_by"] = wait["blocked_by"] or by
            wait["waited_s"] = max(wait["waited_s"], waited or 0.0, now - wait["first_seen"])
        for key in list(self._open):
            if key not in seen:
                del self._open[key]
        if self._released:
            samples.load_ticks += 1
            samples.wait_events.update(f"{kind}:{name}" for kind, name in events)


# ========================================================================== run coordinator


def coordinator_limits(path: Path) -> dict:
    import yaml

    values = yaml.safe_load(path.read_text())
    coordinator = values["dagsterDaemon"]["runCoordinator"]
    config = (coordinator.get("config") or {}).get("queuedRunCoordinator") or {}
    return {
        "file": str(path),
        "enabled": coordinator.get("enabled", True),
        "type": coordinator.get("type"),
        "max_concurrent_runs": config.get("maxConcurrentRuns"),
        "tag_concurrency_limits": config.get("tagConcurrencyLimits") or [],
    }


def _limit_allows(limit: dict, tags: dict, running: list[dict]) -> bool:
    """Dagster's tagConcurrencyLimits rule: with `value.applyLimitPerUniqueValue` the limit counts
    each value of the key separately; without a value it counts every run with the key; with a
    plain value only runs carrying that value."""
    key, value, cap = limit["key"], limit.get("value"), limit["limit"]
    if key not in tags:
        return True
    if isinstance(value, dict) and value.get("applyLimitPerUniqueValue"):
        holding = [r for r in running if r.get(key) == tags[key]]
    elif value is None:
        holding = [r for r in running if key in r]
    elif tags[key] == value:
        holding = [r for r in running if r.get(key) == value]
    else:
        return True
    return len(holding) < cap


def admitted_at_once(limits: dict, runs: list[dict]) -> int:
    """How many of these queued runs (their tags) the QueuedRunCoordinator starts together: it
    dequeues oldest first and skips a run while one of its limits is full."""
    cap = limits["max_concurrent_runs"]
    if not limits["enabled"]:
        return len(runs)
    running: list[dict] = []
    for tags in runs:
        if cap is not None and cap >= 0 and len(running) >= cap:
            break
        if all(_limit_allows(limit, tags, running) for limit in limits["tag_concurrency_limits"]):
            running.append(tags)
    return len(running)


def describe_limits(limits: dict, tags: dict) -> str:
    parts = [f"maxConcurrentRuns {limits['max_concurrent_runs']}"]
    for limit in limits["tag_concurrency_limits"]:
        value = limit.get("value")
        if isinstance(value, dict) and value.get("applyLimitPerUniqueValue"):
            scope = "per value"
        elif value is None:
            scope = "in total"
        else:
            scope = f"for value {value!r}"
        unused = "" if limit["key"] in tags else " (not on these runs)"
        parts.append(f"{limit['key']} <= {limit['limit']} {scope}{unused}")
    return "; ".join(parts)


# =================================================================================== parent


@dataclass
class Bench:
    args: argparse.Namespace
    workdir: Path
    url: str
    env: dict
    csv_path: Path
    checksum: int
    datasets: list[str]
    sampler: Sampler
    processes: list[subprocess.Popen] = field(default_factory=list)
    coordinator: dict | None = None


def settings_of(bench: Bench):
    from dw_pipelines.settings import Settings

    return Settings.from_env(bench.env)


def reset(bench: Bench) -> None:
    """Drop the dataset schemas; unless --new-tables, create each dataset's tables as
    `dw-pipelines datasets migrate DATASET` does; then a CHECKPOINT."""
    from dw_pipelines.services import build_service, dispose

    bl.sql(bench.url, *[f"DROP SCHEMA IF EXISTS {schema} CASCADE" for schema in SCHEMAS])
    if not bench.args.new_tables:
        service = build_service(settings_of(bench))  # fresh: nothing cached about the tables
        try:
            for dataset in bench.datasets:
                service.warehouse.migrate(
                    service.contracts.get(dataset),
                    applied_by="benchmark (datasets migrate)",
                    allow_destructive=False,
                )
        finally:
            dispose(service)
    bl.sql(bench.url, "CHECKPOINT")


def enqueue(bench: Bench, datasets: list[str]) -> list:
    from dw_pipelines.services import build_queue

    queue = build_queue(settings_of(bench))
    try:
        return [
            queue.enqueue(
                {
                    "dataset": dataset,
                    "source_uri": str(bench.csv_path),
                    "business_date": bl.BUSINESS_DATE,
                    "idempotency_key": f"bench-{uuid.uuid4().hex}",
                }
            ).job
            for dataset in datasets
        ]
    finally:
        queue.engine.dispose()


def check_coordinator(bench: Bench, jobs: list) -> None:
    """Which of the phase's runs the shipped QueuedRunCoordinator limits start together."""
    from dw_pipelines.defs.sensors import run_tags

    settings = settings_of(bench)
    tags = [run_tags(job, settings) for job in jobs]
    limits = coordinator_limits(bench.args.helm_values)
    allowed = admitted_at_once(limits, tags)
    tenants = sorted({job.tenant_id for job in jobs})
    bench.coordinator = {
        **limits,
        "runs": len(jobs),
        "datasets": len({job.dataset for job in jobs}),
        "tenants": tenants,
        "allowed_at_once": allowed,
        "all_at_once": allowed == len(jobs),
        "summary": describe_limits(limits, tags[0]),
    }
    verdict = "allowed" if allowed == len(jobs) else f"NOT allowed (only {allowed} at once)"
    bl.log(
        f"run coordinator ({bench.args.helm_values.name}): {bench.coordinator['summary']} -> "
        f"{len(jobs)} runs of {bench.coordinator['datasets']} datasets of tenant(s) "
        f"{', '.join(tenants)} at once: {verdict}"
    )


def _tail(path: Path, lines: int = 40) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def run_phase(bench: Bench, phase: str, datasets: list[str]) -> dict:
    """Reset, enqueue, start one worker per dataset, release them together, verify."""
    reset(bench)
    jobs = enqueue(bench, datasets)
    if phase.startswith("concurrent") and bench.coordinator is None:
        check_coordinator(bench, jobs)
    tag = f"{phase}-{uuid.uuid4().hex[:6]}"
    workers = []
    bench.sampler.begin(phase)
    try:
        for job in jobs:
            name = f"{tag}-{job.dataset}"
            config = {
                "mode": bench.args.mode,
                "dataset": job.dataset,
                "job_id": job.job_id,
                "env": bench.env,
                "ready_path": str(bench.workdir / f"{name}.ready"),
                "result_path": str(bench.workdir / f"{name}.result.json"),
            }
            config_path = bench.workdir / f"{name}.json"
            config_path.write_text(json.dumps(config))
            log_path = bench.workdir / f"{name}.log"
            with open(log_path, "wb") as log_file:
                process = subprocess.Popen(
                    [sys.executable, __file__, "--_worker", str(config_path)],
                    stdin=subprocess.PIPE,
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    env={**os.environ, "PGAPPNAME": f"{APP_PREFIX}{job.dataset}"},
                )
            bench.processes.append(process)
            workers.append((process, config, log_path))
        _wait_ready(workers)
        bench.sampler.released()
        released = clock()
        for process, _, _ in workers:  # the start barrier: one byte each, microseconds apart
            try:
                process.stdin.write(b"g")
                process.stdin.flush()
            except BrokenPipeError:
                pass  # it died after its ready file: reported with its log below
        for process, _, _ in workers:
            try:
                process.stdin.close()
            except BrokenPipeError:
                pass
        for process, config, log_path in workers:
            if process.wait() != 0:
                raise SystemExit(
                    f"FAILED: worker {config['dataset']} ({phase}) exited {process.returncode}:\n"
                    + _tail(log_path)
                )
        exited = clock()
    finally:
        samples = bench.sampler.end()
    results = [json.loads(Path(c["result_path"]).read_text()) for _, c, _ in workers]
    verify(bench, phase, jobs)
    for process, _, _ in workers:
        bench.processes.remove(process)
    first_start = min(r["started"] for r in results)
    last_finish = max(r["finished"] for r in results)
    wall = last_finish - first_start
    rows = bench.args.rows * len(jobs)
    summary = {
        "phase": phase,
        "jobs": len(jobs),
        "datasets": datasets,
        "rows": rows,
        "seconds": wall,
        "rows_per_second": rows / wall,
        "job_seconds": [r["seconds"] for r in results],
        "start_spread_s": max(r["started"] for r in results) - first_start,
        "release_to_first_start_s": first_start - released,
        "release_to_exit_s": exited - released,
        "peak_rss_mb": [r["peak_rss_mb"] for r in results],
        "lock_polls": samples.ticks,
        "poll_interval_s": (samples.ended - samples.started) / max(samples.ticks, 1),
        "lock_waits": [_wait_record(w, phase) for w in samples.waits],
        "wait_events": dict(samples.wait_events),
        "active_session_samples": sum(samples.wait_events.values()),
        "load_polls": samples.load_ticks,
        "poll_errors": samples.errors[:5],
    }
    waits = summary["lock_waits"]
    longest = max((w["waited_s"] for w in waits), default=0.0)
    bl.log(
        f"  {phase}: {len(jobs)} job(s), {wall:.2f} s, {rows / wall:,.0f} rows/s; "
        f"{len(waits)} lock wait(s), longest {longest * 1000:.0f} ms"
    )
    return summary


def _wait_record(wait: dict, phase: str) -> dict:
    record = {k: v for k, v in wait.items() if k not in ("first_seen",)}
    record["phase"] = phase
    record["waited_s"] = round(wait["waited_s"], 4)
    return record


def _wait_ready(workers: list) -> None:
    deadline = clock() + READY_TIMEOUT_S
    pending = list(workers)
    while pending:
        for worker in list(pending):
            process, config, log_path = worker
            if Path(config["ready_path"]).exists():
                pending.remove(worker)
            elif process.poll() is not None:
                raise SystemExit(
                    f"FAILED: worker {config['dataset']} exited {process.returncode} before the "
                    "start barrier:\n" + _tail(log_path)
                )
        if clock() > deadline:
            raise SystemExit(f"FAILED: workers not ready after {READY_TIMEOUT_S} s")
        if pending:
            time.sleep(0.02)


def verify(bench: Bench, phase: str, jobs: list) -> None:
    """Each target table holds exactly the file's rows; each outbox job is COMPLETED with them."""
    from dw_pipelines.services import build_queue

    rows = bench.args.rows
    problems = []
    queue = build_queue(settings_of(bench))
    try:
        for job in jobs:
            table = f"{STORAGE_SCHEMA}.{job.dataset}"
            found, checksum = bl.sql(bench.url, f"SELECT count(*), sum(user_id) FROM {table}")[0]
            if found != rows:
                problems.append(f"{table} holds {found:,} rows, expected {rows:,}")
            if checksum != bench.checksum:
                problems.append(f"{table}: sum(user_id) is {checksum}, expected {bench.checksum}")
            done = queue.get(job.job_id)
            if (done.status, done.rows_loaded) != ("COMPLETED", rows):
                problems.append(
                    f"outbox job {job.job_id} ({job.dataset}) is {done.status} with rows_loaded "
                    f"{done.rows_loaded}, expected COMPLETED with {rows:,}"
                )
    finally:
        queue.engine.dispose()
    if problems:
        raise SystemExit(f"FAILED verification ({phase}): " + "; ".join(problems))


def prepare(args: argparse.Namespace, workdir: Path, datasets: list[str]) -> tuple[Path, int, Path]:
    import pyarrow.compute as pc

    bl.log(f"generating {args.rows:,} rows as CSV ...")
    table = bl.generate_events(args.rows)
    landing = workdir / "landing"
    landing.mkdir(parents=True)
    csv_path = landing / "events.csv"
    bl.write_csv(table, csv_path)
    checksum = pc.sum(table.column("user_id")).as_py()
    del table
    contracts = workdir / "datasets"
    contracts.mkdir()
    for dataset in datasets:
        (contracts / f"{dataset}.yaml").write_text(bl.contract_yaml(dataset, "append"))
    return csv_path, checksum, contracts


# ---------------------------------------------------------------------------------- report


def summarize(args: argparse.Namespace, samples: dict[str, list[dict]]) -> dict:
    single, concurrent = samples["single"], samples["concurrent"]
    single_s = bl.median([s["seconds"] for s in single])
    concurrent_s = bl.median([s["seconds"] for s in concurrent])
    single_rps = args.rows / single_s
    concurrent_rps = args.rows * args.jobs / concurrent_s
    waits = [w for phase in (single, concurrent) for s in phase for w in s["lock_waits"]]
    longest = max((w["waited_s"] for w in waits), default=0.0)

    def phase_row(label: str, runs: list[dict], seconds: float, rps: float) -> dict:
        jobs = [t for s in runs for t in s["job_seconds"]]
        phase_waits = [w for s in runs for w in s["lock_waits"]]
        return {
            "phase": label,
            "jobs": runs[0]["jobs"],
            "rows": runs[0]["rows"],
            "seconds": round(seconds, 4),
            "seconds_all": [round(s["seconds"], 4) for s in runs],
            "rows_per_second": round(rps),
            "job_seconds_min": round(min(jobs), 4),
            "job_seconds_max": round(max(jobs), 4),
            "start_spread_ms": round(max(s["start_spread_s"] for s in runs) * 1000, 1),
            "lock_waits": len(phase_waits),
            "longest_wait_ms": round(max((w["waited_s"] for w in phase_waits), default=0) * 1000),
            "peak_rss_mb_max": round(
                max((m for s in runs for m in s["peak_rss_mb"] if m), default=0), 1
            ),
        }

    ratio = concurrent_rps / single_rps
    return {
        "phases": [
            phase_row("single", single, single_s, single_rps),
            phase_row("concurrent", concurrent, concurrent_s, concurrent_rps),
        ],
        "ratio": round(ratio, 3),
        "lock_waits": len(waits),
        "longest_wait_s": round(longest, 4),
        "waits_listed": sorted(
            (w for w in waits if w["waited_s"] >= LIST_WAITS_FROM_S),
            key=lambda w: -w["waited_s"],
        ),
        "wait_events": {phase: _event_shares(samples[phase]) for phase in ("single", "concurrent")},
        "poll_errors": {
            phase: [e for s in samples[phase] for e in s["poll_errors"]]
            for phase in ("single", "concurrent")
        },
    }


def _event_shares(runs: list[dict]) -> dict:
    counts: Counter = Counter()
    for run in runs:
        counts.update(run["wait_events"])
    total = sum(counts.values())
    return {
        "active_session_samples": total,
        "load_polls": sum(r["load_polls"] for r in runs),
        "shares": {k: round(v / total, 4) for k, v in counts.most_common()} if total else {},
        "counts": dict(counts.most_common()),
    }


def targets(args: argparse.Namespace, summary: dict, coordinator: dict) -> list[dict]:
    return [
        {
            "target": f"run coordinator starts {args.jobs} runs of {args.jobs} datasets together",
            "measured": f"{coordinator['allowed_at_once']} of {coordinator['runs']} at once",
            "met": coordinator["all_at_once"],
        },
        {
            "target": f"total rows/s >= {THROUGHPUT_TARGET:.1f}x a single job's",
            "measured": f"{summary['ratio']:.2f}x ({summary['phases'][1]['rows_per_second']:,} vs "
            f"{summary['phases'][0]['rows_per_second']:,} rows/s)",
            "met": summary["ratio"] >= THROUGHPUT_TARGET,
        },
        {
            "target": f"longest lock wait < {LOCK_WAIT_TARGET_S:.0f} s",
            "measured": f"{summary['longest_wait_s'] * 1000:.0f} ms "
            f"({summary['lock_waits']} wait(s) seen)",
            "met": summary["longest_wait_s"] < LOCK_WAIT_TARGET_S,
        },
    ]


def notes(args: argparse.Namespace, coordinator: dict, summary: dict) -> list[str]:
    run = (
        "a full in-process Dagster run of dw_ingestion_job (execute_in_process on its own "
        "dg.instance_for_test() instance, SQLite run storage; the sensor's tags and partition key)"
        if args.mode == "dagster"
        else "service.start + stage + promote (no Dagster)"
    )
    tenants = ", ".join(coordinator["tenants"])
    found = [
        f"each job: {run}, in a fresh worker process released at a start barrier after its "
        "imports and setup; wall s = first start to last finish (median of --repeat); "
        f"rows/s = jobs x {args.rows:,} / wall s",
        f"run coordinator ({Path(coordinator['file']).name}, dagsterDaemon.runCoordinator): "
        f"{coordinator['summary']} -> {coordinator['runs']} runs of {coordinator['datasets']} "
        f"datasets of tenant {tenants} "
        + (
            "are allowed at once"
            if coordinator["all_at_once"]
            else f"are NOT all allowed at once (only {coordinator['allowed_at_once']})"
        ),
        "tables: "
        + (
            "each job creates its dataset's tables (--new-tables: DDL under the warehouse's "
            "advisory DDL lock)"
            if args.new_tables
            else "created before each phase as `dw-pipelines datasets migrate` does (a deployed "
            "dataset); the jobs load into empty tables"
        )
        + "; schemas dropped and a CHECKPOINT before each phase",
        "verification: count(*) and sum(user_id) of each dw_storage table = the file's, and each "
        "outbox job COMPLETED with rows_loaded = rows",
        f"lock waits: ungranted pg_locks rows of this database polled every "
        f"{SAMPLE_INTERVAL_S * 1000:.0f} ms from worker start to exit (waits shorter than a poll "
        "can be missed); duration = the longest clock_timestamp() - waitstart seen",
    ]
    for phase in ("single", "concurrent"):
        events = summary["wait_events"][phase]
        if events["active_session_samples"]:
            top = ", ".join(
                f"{name} {share * 100:.0f} %" for name, share in list(events["shares"].items())[:6]
            )
            found.append(
                f"wait events, {phase}: {top} ({events['active_session_samples']} samples of "
                f"active worker sessions in {events['load_polls']} polls from release to exit)"
            )
    found.append(
        "wait events are pg_stat_activity's wait_event_type:wait_event of the workers' active "
        "sessions (application_name dw_bench:<dataset>): CPU:running = no wait (the server "
        "works), Client:ClientRead = the server waits for the worker (e.g. for COPY data while "
        "the worker parses), IO:* = disk, LWLock:WAL* = WAL contention, Lock:* = heavyweight "
        "locks (those also appear as pg_locks waits)"
    )
    errors = [e for phase in summary["poll_errors"].values() for e in phase]
    if errors:
        found.append(f"{len(errors)} lock poll(s) failed (first: {errors[0]})")
    if not coordinator["all_at_once"]:
        found.append(
            f"the coordinator would queue {coordinator['runs'] - coordinator['allowed_at_once']} "
            "of these runs; this benchmark still starts all of them together"
        )
    return found


def render(document: dict) -> str:
    config, machine, summary = document["config"], document["machine"], document["summary"]
    header = [
        f"dw_pipelines concurrency benchmark: {config['jobs']} jobs of {config['jobs']} datasets "
        f"x {config['rows']:,} rows (CSV, {document['data']['bytes'] / 1e6:.1f} MB), mode "
        f"{config['mode']}, repeat {config['repeat']} (median)",
        f"machine: {machine['cpus']} CPUs, Python {machine['python']}, PostgreSQL "
        f"{machine['postgres']}, load average {machine['load_average_1m']} at start",
        f"database: {document['database']} ({'kept' if config['keep_db'] else 'dropped'})",
        "",
    ]
    phases = bl.render_table(
        [
            "phase",
            "jobs",
            "rows",
            "wall s",
            "rows/s",
            "job s min",
            "job s max",
            "start spread ms",
            "lock waits",
            "longest wait ms",
            "peak RSS MB",
        ],
        [
            [
                p["phase"],
                p["jobs"],
                f"{p['rows']:,}",
                f"{p['seconds']:.2f}",
                f"{p['rows_per_second']:,}",
                f"{p['job_seconds_min']:.2f}",
                f"{p['job_seconds_max']:.2f}",
                f"{p['start_spread_ms']:.1f}",
                p["lock_waits"],
                p["longest_wait_ms"],
                f"{p['peak_rss_mb_max']:.0f}",
            ]
            for p in summary["phases"]
        ],
    )
    goals = bl.render_table(
        ["target", "measured", "met"],
        [[t["target"], t["measured"], "yes" if t["met"] else "no"] for t in document["targets"]],
    )
    lines = [*header, phases, "", goals, ""]
    listed = summary["waits_listed"]
    if listed:
        lines.append(f"lock waits >= {LIST_WAITS_FROM_S * 1000:.0f} ms:")
        for w in listed:
            lines.append(
                f"  {w['waited_s'] * 1000:.0f} ms  {w['phase']}  {w['session']}  {w['locktype']} "
                f"{w['mode']} on {w['object']}: {' '.join((w['query'] or '').split())[:120]}"
                + (f"  [blocked by {w['blocked_by'][:120]}]" if w["blocked_by"] else "")
            )
        lines.append("")
    else:
        lines.append(f"no lock wait >= {LIST_WAITS_FROM_S * 1000:.0f} ms")
        lines.append("")
    lines += [f"- {n}" for n in document["notes"]]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------ main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows per job (one file)")
    parser.add_argument("--jobs", type=int, default=4, help="concurrent jobs, one per dataset")
    parser.add_argument(
        "--mode",
        choices=("dagster", "service"),
        default="dagster",
        help="a full in-process Dagster run per job, or service start/stage/promote",
    )
    parser.add_argument("--repeat", type=int, default=1, help="measurements per phase (median)")
    parser.add_argument(
        "--new-tables",
        action="store_true",
        help="let the jobs create their tables (first load of a new dataset) instead of "
        "creating them before each phase",
    )
    parser.add_argument(
        "--helm-values", type=Path, default=HELM_VALUES, help="where the run-coordinator limits are"
    )
    parser.add_argument("--keep-db", action="store_true", help="keep the scratch database")
    parser.add_argument("--server-url", default=os.environ.get("DW_BENCH_SERVER_URL"))
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args(argv)
    args.server_url = args.server_url or bl.DEFAULT_SERVER_URL
    if args.rows < 1 or args.repeat < 1:
        parser.error("--rows and --repeat must be >= 1")
    if not 1 <= args.jobs <= MAX_JOBS:
        parser.error(f"--jobs must be from 1 to {MAX_JOBS}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    datasets = dataset_names(args.jobs)
    workdir = Path(tempfile.mkdtemp(prefix="dw_bench_"))
    try:
        csv_path, checksum, contracts = prepare(args, workdir, datasets)
        machine = bl.machine_info(args.server_url)
        with bl.scratch_database(args.server_url, keep=args.keep_db) as url:
            sampler = Sampler(url)
            bench = Bench(
                args=args,
                workdir=workdir,
                url=url,
                env={
                    "DW_DATABASE_URL": bl.sqlalchemy_url(url),
                    "DW_LANDING_ROOT": str(csv_path.parent),
                    "DW_DATASETS_PATH": str(contracts),
                    "DW_HOME": str(workdir / "home"),
                },
                csv_path=csv_path,
                checksum=checksum,
                datasets=datasets,
                sampler=sampler,
            )
            try:
                sampler.start_and_wait()
                bl.log(f"database {url.rsplit('/', 1)[1]}; {args.rows:,} rows per job")
                samples = measure(bench)
            finally:  # before the database is dropped
                for process in bench.processes:
                    if process.poll() is None:
                        process.kill()
                        process.wait()
                sampler.stop()
        summary = summarize(args, samples)
        document = {
            "benchmark": "concurrency",
            "config": {
                "rows": args.rows,
                "jobs": args.jobs,
                "datasets": datasets,
                "mode": args.mode,
                "repeat": args.repeat,
                "new_tables": args.new_tables,
                "keep_db": args.keep_db,
                "sample_interval_s": SAMPLE_INTERVAL_S,
            },
            "machine": machine,
            "database": url.rsplit("/", 1)[1],
            "data": {"rows": args.rows, "bytes": csv_path.stat().st_size, "checksum": checksum},
            "coordinator": bench.coordinator,
            "summary": summary,
            "targets": targets(args, summary, bench.coordinator),
            "notes": notes(args, bench.coordinator, summary),
            "samples": samples,
        }
        print(bl.dump_json(document) if args.json else render(document))
        missed = [t for t in document["targets"] if not t["met"]]
        return 1 if args.check and missed else 0
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def measure(bench: Bench) -> dict[str, list[dict]]:
    """Per repeat: one job alone, then --jobs jobs at once."""
    args, datasets = bench.args, bench.datasets
    samples: dict[str, list[dict]] = {"single": [], "concurrent": []}
    for index in range(args.repeat):
        bl.log(f"repeat {index + 1}/{args.repeat}: one job alone, then {args.jobs} at once ...")
        samples["single"].append(run_phase(bench, "single", datasets[:1]))
        samples["concurrent"].append(run_phase(bench, "concurrent", datasets))
    return samples


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--_worker":
        worker_main(sys.argv[2])
    else:
        sys.exit(main())
