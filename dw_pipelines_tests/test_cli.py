"""Integration tier: the real `dw-pipelines` command line, as a subprocess, on real databases.

Each call starts a fresh interpreter with only the `DW_*` variables the test sets, so the CLI
reads its configuration exactly as in production. The subprocess imports the same checkout as
the tests (PYTHONPATH), never an older installed copy.
"""

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.script import ScriptDirectory

import dw_pipelines
from dw_pipelines.core.db import create_db_engine, outbox
from dw_pipelines.core.migrations import alembic_config, current_revision
from dw_pipelines.core.outbox import DwIngestionJobQueue
from dw_pipelines.services import build_queue
from dw_pipelines.settings import SAMPLES_DIR
from dw_pipelines_tests.conftest import make_settings

ORDERS_CSV = SAMPLES_DIR / "orders_2026-11-24.csv"
SOURCE_ROOT = Path(dw_pipelines.__file__).resolve().parent.parent
CONSOLE_SCRIPT = Path(sys.executable).parent / "dw-pipelines"
DEAD_URL = "postgresql://postgres:s3cret@127.0.0.1:1/x"
T0 = datetime(2026, 11, 25, 8, 0, tzinfo=UTC)


class Cli:
    """Runs `python -m dw_pipelines.cli ARGS` with a controlled environment."""

    def __init__(self, url: str | None, home: Path, landing_dir: Path, cwd: Path) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("DW_")}
        env["DW_HOME"] = str(home)
        env["DW_LANDING_ROOT"] = os.pathsep.join([str(landing_dir), str(SAMPLES_DIR)])
        if url is not None:
            env["DW_DATABASE_URL"] = url
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in [str(SOURCE_ROOT), os.environ.get("PYTHONPATH", "")] if p
        )
        self.env = env
        self.cwd = cwd

    def __call__(self, *args: str, script: bool = False) -> subprocess.CompletedProcess[str]:
        program = [str(CONSOLE_SCRIPT)] if script else [sys.executable, "-m", "dw_pipelines.cli"]
        return subprocess.run(
            [*program, *args],
            env=self.env,
            cwd=self.cwd,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    """The CLI's error contract: exit 1, nothing on stdout, one `error:` line on stderr."""
    assert result.returncode == 1, result
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


def head_revision() -> str:
    engine = sa.create_engine("sqlite://")
    try:
        return ScriptDirectory.from_config(alembic_config(engine)).get_current_head()
    finally:
        engine.dispose()


def outbox_job_ids(url: str) -> list[str]:
    engine = create_db_engine(url)
    try:
        with engine.connect() as conn:
            return list(
                conn.execute(sa.select(outbox.c.job_id).order_by(outbox.c.job_id)).scalars()
            )
    finally:
        engine.dispose()


@pytest.fixture
def cwd(tmp_path: Path) -> Path:
    path = tmp_path / "cwd"  # nothing the CLI writes may land in the checkout
    path.mkdir()
    return path


@pytest.fixture
def pg_cli(pg_url: str, tmp_path: Path, landing_dir: Path, cwd: Path) -> Cli:
    """The CLI on a fresh, migrated PostgreSQL database."""
    return Cli(pg_url, tmp_path / "dw-home", landing_dir, cwd)


@pytest.fixture
def pg_queue(pg_url: str, tmp_path: Path, landing_dir: Path) -> Iterator[DwIngestionJobQueue]:
    q = build_queue(make_settings(pg_url, tmp_path / "dw-home", landing_dir))
    yield q
    q.engine.dispose()


def enqueue_args(*extra: str, source: Path = ORDERS_CSV) -> list[str]:
    return [
        "enqueue",
        "--dataset",
        "orders",
        "--source",
        str(source),
        "--business-date",
        "2026-11-24",
        *extra,
    ]


# --- db upgrade ----------------------------------------------------------------------------------


def test_db_upgrade_on_empty_postgres_creates_the_tables_and_hides_the_password(
    empty_pg_url: str, tmp_path: Path, landing_dir: Path, cwd: Path
) -> None:
    # Trust auth ignores the password; it is there to check that it is never printed.
    url = (
        sa.make_url(empty_pg_url)
        .set(drivername="postgresql", password="s3cret")
        .render_as_string(hide_password=False)
    )
    assert "s3cret" in url

    result = Cli(url, tmp_path / "dw-home", landing_dir, cwd)("db", "upgrade")

    assert result.returncode == 0, result.stderr
    assert f"outbox schema at revision {head_revision()}" in result.stdout
    assert sa.make_url(empty_pg_url).database in result.stdout
    assert "s3cret" not in result.stdout + result.stderr
    engine = create_db_engine(empty_pg_url)
    try:
        names = set(sa.inspect(engine).get_table_names())
        assert {"dw_ingestion_outbox", "dw_ingestion_audit"} <= names
        assert current_revision(engine) == head_revision()
    finally:
        engine.dispose()


def test_db_upgrade_on_a_new_sqlite_file_via_the_console_script_twice(
    tmp_path: Path, landing_dir: Path, cwd: Path
) -> None:
    db_file = tmp_path / "cli-sqlite" / "outbox.db"
    cli = Cli(f"sqlite:///{db_file}", tmp_path / "dw-home", landing_dir, cwd)
    assert CONSOLE_SCRIPT.is_file(), f"{CONSOLE_SCRIPT} is not installed"

    first = cli("db", "upgrade", script=True)
    second = cli("db", "upgrade", script=True)

    for result in (first, second):
        assert result.returncode == 0, result.stderr
        assert f"outbox schema at revision {head_revision()}" in result.stdout
        assert str(db_file) in result.stdout
    assert db_file.is_file()
    engine = create_db_engine(f"sqlite:///{db_file}")
    try:
        assert {"dw_ingestion_outbox", "dw_ingestion_audit", "dw_pipelines_alembic_version"} == set(
            sa.inspect(engine).get_table_names()
        )
        assert current_revision(engine) == head_revision()
    finally:
        engine.dispose()


def test_db_upgrade_defaults_to_sqlite_under_dw_home(
    tmp_path: Path, landing_dir: Path, cwd: Path
) -> None:
    home = tmp_path / "embedded-home"
    result = Cli(None, home, landing_dir, cwd)("db", "upgrade")

    assert result.returncode == 0, result.stderr
    assert (home / "dw.db").is_file()
    assert str(home / "dw.db") in result.stdout
    assert not (cwd / ".dw").exists()


# --- enqueue -------------------------------------------------------------------------------------


def test_enqueue_json_prints_one_document_for_a_new_pending_job(
    pg_cli: Cli, pg_queue: DwIngestionJobQueue
) -> None:
    result = pg_cli(*enqueue_args("--json", "--tenant", "acme", "--requested-by", "cli-test"))

    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    document = json.loads(result.stdout)  # raises on anything but exactly one JSON document
    assert isinstance(document, dict)
    assert document["created"] is True
    assert document["status"] == "PENDING"
    assert document["attempts"] == 0
    assert document["dataset"] == "orders"
    assert document["tenant_id"] == "acme"
    assert document["business_date"] == "2026-11-24"
    assert document["payload"]["source_uri"] == str(ORDERS_CSV)
    assert document["payload"]["format"] == "csv"
    assert document["payload"]["requested_by"] == "cli-test"
    assert document["idempotency_key"] == document["job_id"]

    job = pg_queue.get(document["job_id"])
    assert job.status == "PENDING"
    assert job.tenant_id == "acme"
    assert [e.event for e in pg_queue.audit_trail(job.job_id)] == ["ENQUEUED"]


def test_enqueue_with_the_same_idempotency_key_twice_returns_the_first_job(
    pg_cli: Cli, pg_url: str
) -> None:
    first = pg_cli(*enqueue_args("--idempotency-key", "K", "--json"))
    second = pg_cli(*enqueue_args("--idempotency-key", "K", "--json"))
    third = pg_cli(*enqueue_args("--idempotency-key", "K"))  # human-readable output

    assert first.returncode == second.returncode == third.returncode == 0
    first_doc, second_doc = json.loads(first.stdout), json.loads(second.stdout)
    assert first_doc["created"] is True
    assert second_doc["created"] is False
    assert second_doc["job_id"] == first_doc["job_id"]
    assert second_doc["idempotency_key"] == "K"
    assert f"already enqueued as {first_doc['job_id']}" in third.stdout
    assert outbox_job_ids(pg_url) == [first_doc["job_id"]]


@pytest.mark.parametrize(
    ("case", "field"),
    [
        ("unknown dataset", "dataset"),
        ("bad date", "business_date"),
        ("missing file", "source_uri"),
        ("unknown format", "format"),
        ("outside landing roots", "source_uri"),
        ("future date", "business_date"),
    ],
)
def test_refused_enqueue_names_the_field_on_stderr_and_inserts_nothing(
    pg_cli: Cli, pg_url: str, landing_dir: Path, tmp_path: Path, case: str, field: str
) -> None:
    outside = tmp_path / "elsewhere" / "orders.csv"
    outside.parent.mkdir()
    outside.write_bytes(ORDERS_CSV.read_bytes())
    future = (datetime.now(UTC).date() + timedelta(days=2)).isoformat()
    args = {
        "unknown dataset": ["enqueue", "--dataset", "invoices", "--source", str(ORDERS_CSV)],
        "bad date": [*enqueue_args()[:-1], "2026-02-30"],
        "missing file": enqueue_args(source=landing_dir / "missing.csv"),
        "unknown format": enqueue_args("--format", "xml"),
        "outside landing roots": enqueue_args(source=outside),
        "future date": [*enqueue_args()[:-1], future],
    }[case]

    result = pg_cli(*args, "--json")

    line = one_error_line(result)
    assert line.startswith(f"error: {field}: "), line
    assert outbox_job_ids(pg_url) == []


def test_enqueue_without_a_required_option_is_a_usage_error(pg_cli: Cli, pg_url: str) -> None:
    result = pg_cli("enqueue", "--source", str(ORDERS_CSV), "--json")

    assert result.returncode == 2
    assert result.stdout == ""
    assert "--dataset" in result.stderr
    assert outbox_job_ids(pg_url) == []


# --- outbox list / show --------------------------------------------------------------------------


@pytest.fixture
def three_jobs(pg_queue: DwIngestionJobQueue) -> list[str]:
    """job-a, job-b, job-c enqueued a minute apart (job-c newest); job-a then claimed (SENT)."""
    clock = {"now": T0}
    pg_queue.clock = lambda: clock["now"]
    for job_id in ("job-a", "job-b", "job-c"):
        pg_queue.enqueue(
            {
                "dataset": "orders",
                "source_uri": str(ORDERS_CSV),
                "business_date": "2026-11-24",
                "job_id": job_id,
            }
        )
        clock["now"] += timedelta(minutes=1)
    assert [j.job_id for j in pg_queue.claim_due(1)] == ["job-a"]
    return ["job-a", "job-b", "job-c"]


def test_outbox_list_json_is_newest_first_and_filters_by_status(
    pg_cli: Cli, three_jobs: list[str]
) -> None:
    everything = pg_cli("outbox", "list", "--json")
    pending = pg_cli("outbox", "list", "--status", "PENDING", "--json")
    sent = pg_cli("outbox", "list", "--status", "sent", "--json")
    limited = pg_cli("outbox", "list", "--limit", "1", "--json")

    for result in (everything, pending, sent, limited):
        assert result.returncode == 0, result.stderr
    jobs = json.loads(everything.stdout)
    assert isinstance(jobs, list)
    assert [j["job_id"] for j in jobs] == ["job-c", "job-b", "job-a"]
    assert [j["status"] for j in jobs] == ["PENDING", "PENDING", "SENT"]
    assert {"job_id", "status", "dataset", "attempts", "business_date", "payload"} <= set(jobs[0])
    assert [j["job_id"] for j in json.loads(pending.stdout)] == ["job-c", "job-b"]
    assert [j["job_id"] for j in json.loads(sent.stdout)] == ["job-a"]
    assert [j["job_id"] for j in json.loads(limited.stdout)] == ["job-c"]


def test_outbox_list_json_on_an_empty_outbox_is_an_empty_list(pg_cli: Cli) -> None:
    result = pg_cli("outbox", "list", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == []


def test_outbox_list_prints_a_table(pg_cli: Cli, three_jobs: list[str]) -> None:
    result = pg_cli("outbox", "list")

    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    header = lines[0].split()
    assert "job_id" in header
    assert "status" in header
    assert set(lines[1].replace(" ", "")) == {"-"}
    rows = [line.split() for line in lines[2:]]
    status_column = header.index("status")
    assert [(r[0], r[status_column]) for r in rows] == [
        ("job-c", "PENDING"),
        ("job-b", "PENDING"),
        ("job-a", "SENT"),
    ]


def test_outbox_show_json_has_the_job_and_its_audit_trail(
    pg_cli: Cli, three_jobs: list[str]
) -> None:
    result = pg_cli("outbox", "show", "job-a", "--json")

    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["job_id"] == "job-a"
    assert document["status"] == "SENT"
    assert document["dataset"] == "orders"
    assert document["attempts"] == 0
    assert document["payload"]["job_id"] == "job-a"
    audit = document["audit"]
    assert isinstance(audit, list)
    assert [(e["event"], e["from_status"], e["to_status"]) for e in audit] == [
        ("ENQUEUED", None, "PENDING"),
        ("DISPATCHED", "PENDING", "SENT"),
    ]
    assert all(e["job_id"] == "job-a" for e in audit)


def test_outbox_show_text(pg_cli: Cli, three_jobs: list[str]) -> None:
    result = pg_cli("outbox", "show", "job-b")

    assert result.returncode == 0, result.stderr
    assert "job-b" in result.stdout
    assert "ENQUEUED" in result.stdout
    assert "DISPATCHED" not in result.stdout


def test_outbox_show_unknown_job_is_an_error(pg_cli: Cli, three_jobs: list[str]) -> None:
    line = one_error_line(pg_cli("outbox", "show", "unknown"))
    assert "unknown" in line
    assert line.startswith("error: job_id: ")


# --- unreachable or un-migrated database ---------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["outbox", "list"],
        ["outbox", "list", "--json"],
        ["outbox", "show", "job-1", "--json"],
        enqueue_args("--json"),
        ["db", "upgrade"],
    ],
    ids=["list", "list-json", "show", "enqueue", "db-upgrade"],
)
def test_dead_database_is_a_one_line_error_without_the_password(
    tmp_path: Path, landing_dir: Path, cwd: Path, args: list[str]
) -> None:
    result = Cli(DEAD_URL, tmp_path / "dw-home", landing_dir, cwd)(*args)

    line = one_error_line(result)
    assert "s3cret" not in result.stderr
    assert "OperationalError" in line or "connect" in line.lower(), line


@pytest.fixture(params=["postgresql", "sqlite"])
def unmigrated_cli(
    request: pytest.FixtureRequest, tmp_path: Path, landing_dir: Path, cwd: Path
) -> Cli:
    if request.param == "postgresql":
        url = request.getfixturevalue("empty_pg_url")
    else:
        url = f"sqlite:///{tmp_path / 'never-migrated' / 'dw.db'}"
    return Cli(url, tmp_path / "dw-home", landing_dir, cwd)


@pytest.mark.parametrize(
    "args", [["outbox", "list"], enqueue_args("--json")], ids=["list", "enqueue"]
)
def test_unmigrated_database_tells_to_run_db_upgrade(unmigrated_cli: Cli, args: list[str]) -> None:
    line = one_error_line(unmigrated_cli(*args))
    assert "dw-pipelines db upgrade" in line


def test_unmigrated_database_outbox_show_tells_to_run_db_upgrade(unmigrated_cli: Cli) -> None:
    line = one_error_line(unmigrated_cli("outbox", "show", "job-1"))
    assert "dw-pipelines db upgrade" in line
