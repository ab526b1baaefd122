"""`deploy/sql/roles.sql` against the real server: the least-privilege role `dw_worker`.

The shipped file itself is run with the real `psql` binary, as an administrator would run it. The
role is cluster-wide and may be left over from an earlier session (or another engineer's run):
the script is idempotent, so every test simply applies it again with a fresh random password.
Trust authentication on the test server does not check that password; what matters here is that
it gets through psql's quoting and is stored. Each test database is cleaned with
`DROP OWNED BY dw_worker` before the session drops it; the role itself is left in place.
"""

import datetime as dt
import secrets
import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import psycopg
import pytest
import sqlalchemy as sa

from dw_pipelines.core.warehouse.promote_attach import load_month
from dw_pipelines.definitions import build_definitions
from dw_pipelines.services import build_service, dispose
from dw_pipelines.settings import SAMPLES_DIR, TAG_JOB_ID
from dw_pipelines_tests.conftest import SESSION_PREFIX, create_database, database_url
from dw_pipelines_tests.test_contract_evolution import BASE, DATASET, Evolving, edited, first_load

ROLE = "dw_worker"
ROLES_SQL = Path(__file__).resolve().parents[1] / "deploy" / "sql" / "roles.sql"
INSUFFICIENT_PRIVILEGE = "42501"
ROLE_SETTINGS = ("statement_timeout", "lock_timeout", "idle_in_transaction_session_timeout")


def psql_binary() -> str:
    """`psql` from PATH (postgresql-client), else the one bundled with the dev extra pgserver."""
    found = shutil.which("psql")
    if found:
        return found
    try:
        import pgserver
    except ImportError:  # pragma: no cover - the dev extra installs it
        pgserver = None
    if pgserver is not None:
        bundled = Path(pgserver.__file__).parent / "pginstall" / "bin" / "psql"
        if bundled.is_file():
            return str(bundled)
    pytest.fail("these tests run deploy/sql/roles.sql with psql: install postgresql-client")


def new_password() -> str:
    # Quote, semicolon, comment marker and space: psql's :'var' must quote all of them.
    return f"pw '{secrets.token_urlsafe(12)}'; -- x"


def libpq_url(url: str) -> str:
    """The SQLAlchemy URL of a database as a libpq connection URI for psql."""
    return sa.make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def worker_url(admin_url: str, password: str) -> str:
    """The same database, logged in as dw_worker."""
    url = sa.make_url(admin_url).set(username=ROLE, password=password)
    return url.render_as_string(hide_password=False)


def run_roles_sql(admin_url: str, password: str | None):
    """Run the shipped script with psql; returns the CompletedProcess (never raises)."""
    command = [psql_binary(), "-X", "-q", "-v", "ON_ERROR_STOP=1"]
    if password is not None:
        command += ["-v", f"dw_worker_password={password}"]
    command += ["-f", str(ROLES_SQL), libpq_url(admin_url)]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)


def apply_roles(admin_url: str, password: str) -> None:
    result = run_roles_sql(admin_url, password)
    assert result.returncode == 0, f"psql exited {result.returncode}:\n{result.stderr}"


def sqlstate(exc: sa.exc.DBAPIError) -> str | None:
    return getattr(exc.orig, "sqlstate", None)


@dataclass(frozen=True)
class WorkerDb:
    admin_url: str  # the superuser, connected to this test's database
    url: str  # dw_worker, same database
    password: str


@pytest.fixture
def engines() -> Iterator[Callable[..., sa.Engine]]:
    """Creates engines (AUTOCOMMIT unless told otherwise) and disposes them after the test."""
    made: list[sa.Engine] = []

    def make(url: str, **kwargs) -> sa.Engine:
        kwargs.setdefault("isolation_level", "AUTOCOMMIT")
        engine = sa.create_engine(url, **kwargs)
        made.append(engine)
        return engine

    yield make
    for engine in made:
        engine.dispose()


@pytest.fixture
def roles_db(pg_url: str, engines) -> Iterator[str]:
    """A fresh migrated database (admin URL) that is cleaned of dw_worker's objects afterwards."""
    yield pg_url
    with engines(pg_url).connect() as conn:
        # Drops the worker's tables and revokes its grants here, so nothing in this database
        # refers to the (kept) cluster-wide role when the session drops the database.
        conn.execute(sa.text(f"DROP OWNED BY {ROLE}"))


@pytest.fixture
def worker_db(roles_db: str) -> WorkerDb:
    """The test database with roles.sql applied once (the plain script)."""
    password = new_password()
    apply_roles(roles_db, password)
    return WorkerDb(admin_url=roles_db, url=worker_url(roles_db, password), password=password)


def scalar(engine: sa.Engine, sql: str, **params):
    with engine.connect() as conn:
        return conn.execute(sa.text(sql), params).scalar_one()


# ------------------------------------------------------------------------------- the script


def test_script_applies_twice_and_grants_exactly_the_listed_privileges(roles_db, engines):
    first = run_roles_sql(roles_db, new_password())
    second = run_roles_sql(roles_db, new_password())
    assert first.returncode == 0, first.stderr
    assert second.returncode == 0, second.stderr

    admin = engines(roles_db)

    def privileges(kind: str, obj: str, candidates: list[str], role: str = ROLE) -> set[str]:
        return {
            p
            for p in candidates
            if scalar(
                admin, f"SELECT has_{kind}_privilege(:role, :obj, :p)", role=role, obj=obj, p=p
            )
        }

    table_privileges = ["SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER"]
    assert privileges("table", "public.dw_ingestion_outbox", table_privileges) == {
        "SELECT",
        "INSERT",
        "UPDATE",
        "DELETE",
    }
    assert privileges("table", "public.dw_ingestion_audit", table_privileges) == {
        "SELECT",
        "INSERT",
    }
    assert privileges("table", "public.dw_pipelines_alembic_version", table_privileges) == set()
    audit_sequence = scalar(admin, "SELECT pg_get_serial_sequence('dw_ingestion_audit', 'id')")
    assert privileges("sequence", audit_sequence, ["USAGE", "SELECT", "UPDATE"]) == {"USAGE"}
    assert privileges("schema", "public", ["USAGE", "CREATE"]) == {"USAGE"}
    assert privileges("schema", "public", ["CREATE"], role="public") == set()
    for schema in ("dw_staging", "dw_storage"):
        assert privileges("schema", schema, ["USAGE", "CREATE"]) == {"USAGE", "CREATE"}
        owner = scalar(
            admin, "SELECT nspowner::regrole::text FROM pg_namespace WHERE nspname = :s", s=schema
        )
        assert owner == scalar(admin, "SELECT current_user")  # the administrator, not the worker
    database = sa.make_url(roles_db).database
    assert privileges("database", database, ["CONNECT", "CREATE"]) == {"CONNECT"}
    assert privileges("database", database, ["CONNECT"], role="public") == set()


def test_script_refuses_to_run_without_a_password_and_changes_nothing(roles_db, engines):
    admin = engines(roles_db)
    acl_before = scalar(
        admin, "SELECT datacl::text FROM pg_database WHERE datname = current_database()"
    )

    missing = run_roles_sql(roles_db, None)
    empty = run_roles_sql(roles_db, "")

    assert missing.returncode != 0 and "dw_worker_password" in missing.stderr
    assert empty.returncode != 0 and "dw_worker_password is empty" in empty.stderr
    acl_after = scalar(
        admin, "SELECT datacl::text FROM pg_database WHERE datname = current_database()"
    )
    assert acl_after == acl_before  # stopped before its transaction did anything
    assert scalar(admin, "SELECT to_regnamespace('dw_staging') IS NULL")


def test_script_refuses_a_database_that_was_not_migrated(empty_pg_url, engines):
    result = run_roles_sql(empty_pg_url, new_password())
    assert result.returncode != 0
    assert "dw-pipelines db upgrade" in result.stderr


def test_role_attributes_and_role_level_timeouts(worker_db, engines):
    admin = engines(worker_db.admin_url)
    with admin.connect() as conn:
        role = (
            conn.execute(
                sa.text(
                    "SELECT rolsuper, rolcreatedb, rolcreaterole, rolinherit, rolreplication,"
                    " rolbypassrls, rolcanlogin, rolpassword FROM pg_authid WHERE rolname = :r"
                ),
                {"r": ROLE},
            )
            .mappings()
            .one()
        )
        settings = conn.execute(
            sa.text(
                "SELECT unnest(setconfig) FROM pg_db_role_setting"
                " WHERE setrole = CAST(:r AS regrole) AND setdatabase = 0"
            ),
            {"r": ROLE},
        ).scalars()
        configured = dict(s.split("=", 1) for s in settings)
        memberships = conn.execute(
            sa.text("SELECT count(*) FROM pg_auth_members WHERE member = CAST(:r AS regrole)"),
            {"r": ROLE},
        ).scalar_one()

    assert not role["rolsuper"] and not role["rolcreatedb"] and not role["rolcreaterole"]
    assert not role["rolinherit"] and not role["rolreplication"] and not role["rolbypassrls"]
    assert role["rolcanlogin"]
    assert role["rolpassword"].startswith("SCRAM-SHA-256$")  # set, and stored hashed
    assert memberships == 0
    assert set(ROLE_SETTINGS) <= set(configured)
    # A dw_worker session starts with exactly those values.
    with engines(worker_db.url).connect() as conn:
        assert conn.execute(sa.text("SELECT current_user")).scalar_one() == ROLE
        shown = {name: conn.execute(sa.text(f"SHOW {name}")).scalar_one() for name in ROLE_SETTINGS}
    assert shown == {name: configured[name] for name in ROLE_SETTINGS}
    assert all(value != "0" for value in shown.values())


# ---------------------------------------------------------------------------- what it may do


def enqueue(service, dataset: str, source: Path, tenant_id: str = "acme"):
    command = {
        "dataset": dataset,
        "source_uri": str(source),
        "business_date": "2026-11-24",
        "tenant_id": tenant_id,
        "idempotency_key": f"{dataset}-{secrets.token_hex(6)}",
    }
    job = service.queue.enqueue(command).job
    assert service.queue.enqueue(command).created is False  # idempotent: nothing inserted
    claimed = service.queue.claim_due(100)  # as the sensor: PENDING -> SENT
    assert job.job_id in {j.job_id for j in claimed}
    return job


def run(job_def, instance, outbox_job) -> dg.ExecuteInProcessResult:
    dataset = outbox_job.dataset
    return job_def.execute_in_process(
        instance=instance,
        partition_key=outbox_job.business_date.isoformat(),
        tags={TAG_JOB_ID: outbox_job.job_id},
        asset_selection=[dg.AssetKey(["staging", dataset]), dg.AssetKey(["storage", dataset])],
        raise_on_error=False,
    )


@pytest.fixture
def as_worker(worker_db: WorkerDb, dw_env):
    """The worker's service, ingestion job and a Dagster instance, connecting as dw_worker."""
    settings = dw_env(worker_db.url, DW_RETRY_MAX_RETRIES=0)
    assert sa.make_url(settings.database_url).username == ROLE
    assert sa.make_url(settings.warehouse_url).username == ROLE
    service = build_service(settings)
    job_def = build_definitions(settings).resolve_job_def("dw_ingestion_job")
    with dg.instance_for_test() as instance:
        yield service, job_def, instance
    dispose(service)


def test_sensor_side_of_the_queue_works_as_dw_worker(as_worker):
    service, _, _ = as_worker
    job = enqueue(service, "orders", SAMPLES_DIR / "orders_2026-11-24.csv")

    row = service.queue.get(job.job_id)
    assert row.status == "SENT"
    assert [e.event for e in service.queue.audit_trail(job.job_id)] == ["ENQUEUED", "DISPATCHED"]
    assert service.queue.count_by_status() == {"SENT": 1}


def _assert_job_loaded(service, jobs: dict[str, object], storage_rows: dict[str, int]) -> None:
    for dataset, job in jobs.items():
        row = service.queue.get(job.job_id)
        assert (row.status, row.last_error) == ("COMPLETED", None), row.last_error
        assert row.rows_loaded == storage_rows[dataset]
        contract = service.contracts.get(dataset)
        assert service.warehouse.storage_rows(contract, job.job_id) == storage_rows[dataset]
        assert service.warehouse.staged_rows(contract, job.job_id) == 0
        events = [e.event for e in service.queue.audit_trail(job.job_id)]
        assert events[0] == "ENQUEUED" and events[-1] == "COMPLETED"


def test_worker_runs_an_ingestion_job_end_to_end_as_dw_worker(as_worker):
    """Least privilege as shipped: the role must be enough for the whole run."""
    service, job_def, instance = as_worker
    job = enqueue(service, "orders", SAMPLES_DIR / "orders_2026-11-24.csv")

    result = run(job_def, instance, job)

    row = service.queue.get(job.job_id)
    assert result.success, row.last_error
    _assert_job_loaded(service, {"orders": job}, {"orders": 6})


def test_append_merge_upsert_and_prune_as_dw_worker_who_owns_its_tables(worker_db, dw_env, engines):
    """Everything the worker does (COPY, append and merge promotion, upsert, audit, prune) is
    covered by the plain script, with no CREATE on the database; the warehouse tables it creates
    are its own. Re-running the script takes back a CREATE on the database granted by hand."""
    admin = engines(worker_db.admin_url)
    database = sa.make_url(worker_db.admin_url).database

    def can_create_in_database() -> bool:
        return scalar(admin, "SELECT has_database_privilege(:r, :d, 'CREATE')", r=ROLE, d=database)

    assert not can_create_in_database()
    # Every merge takes the rewrite path (TRUNCATE, primary key dropped and rebuilt), which
    # needs the table's ownership and a temporary table.
    settings = dw_env(
        worker_db.url,
        DW_RETRY_MAX_RETRIES=0,
        DW_MERGE_REWRITE_SHARE=0,
        DW_MERGE_REWRITE_MIN_ROWS=1,
    )
    service = build_service(settings)
    job_def = build_definitions(settings).resolve_job_def("dw_ingestion_job")
    try:
        with dg.instance_for_test() as instance:
            jobs = {
                "orders": enqueue(service, "orders", SAMPLES_DIR / "orders_2026-11-24.csv"),
                "customers": enqueue(service, "customers", SAMPLES_DIR / "customers.csv"),
            }
            results = {dataset: run(job_def, instance, job) for dataset, job in jobs.items()}
            assert all(r.success for r in results.values()), {
                d: service.queue.get(j.job_id).last_error for d, j in jobs.items()
            }
            _assert_job_loaded(service, jobs, {"orders": 6, "customers": 5})

            # Merge again, over existing rows.
            update = enqueue(
                service, "customers", SAMPLES_DIR / "customers_2026-11-25.parquet", tenant_id="acme"
            )
            assert run(job_def, instance, update).success, service.queue.get(update.job_id)
            promoted = [
                e for e in service.queue.audit_trail(update.job_id) if e.event == "PROMOTED"
            ]
            assert promoted[-1].details["strategy"] == "rewrite"

        _assert_job_loaded(service, {"customers": update}, {"customers": 3})
        customers = service.contracts.get("customers")
        assert service.warehouse.storage_rows(customers) == 6  # 2 updated, 1 inserted

        # The outbox DELETE grant: the prune command removes COMPLETED rows, audit stays.
        pruned = service.queue.prune_completed(service.queue.clock() + dt.timedelta(days=1))
        assert pruned == 3
        assert service.queue.count_by_status() == {}
        assert service.queue.audit_trail(update.job_id)[-1].event == "COMPLETED"
    finally:
        dispose(service)

    with admin.connect() as conn:
        owners = dict(
            conn.execute(
                sa.text(
                    "SELECT schemaname || '.' || tablename, tableowner FROM pg_tables"
                    " WHERE schemaname IN ('dw_staging', 'dw_storage')"
                )
            ).all()
        )
        month, _, end = load_month(
            conn.execute(
                sa.text("SELECT loaded_at FROM dw_storage._dw_loads WHERE dataset = 'orders'")
            ).scalar_one()
        )
    following = load_month(end)[0]
    # Per-dataset tables, the load history and the schema versions; the jobs' staging
    # partitions are gone. The append table's partitions (its DEFAULT, the load month and the
    # next, each with its small loads) are the worker's too.
    assert owners == {
        f"dw_storage.orders__{suffix}": ROLE
        for m in (month, following)
        for suffix in ("default", f"p{m}", f"p{m}_small")
    } | {
        **{
            f"{schema}.{dataset}": ROLE
            for schema in ("dw_staging", "dw_storage")
            for dataset in ("orders", "customers")
        },
        "dw_storage._dw_loads": ROLE,
        "dw_storage._dw_schema_versions": ROLE,
    }
    assert not can_create_in_database()

    # An administrator grants CREATE on the database by hand: the next run takes it back.
    with admin.connect() as conn:
        conn.execute(sa.text(f'GRANT CREATE ON DATABASE "{database}" TO {ROLE}'))
    assert can_create_in_database()
    apply_roles(worker_db.admin_url, worker_db.password)
    assert not can_create_in_database()


def test_a_large_merge_without_temporary_tables_merges_in_place(worker_db, dw_env, engines):
    """roles.sql leaves TEMPORARY to PUBLIC's default; where an administrator revoked it, the
    rewrite of a large merge (which copies the kept rows to a temporary table) is not tried."""
    admin = engines(worker_db.admin_url)
    database = sa.make_url(worker_db.admin_url).database
    with admin.connect() as conn:
        conn.execute(sa.text(f'REVOKE TEMPORARY ON DATABASE "{database}" FROM PUBLIC'))
    assert not scalar(
        admin, "SELECT has_database_privilege(:r, :d, 'TEMPORARY')", r=ROLE, d=database
    )
    settings = dw_env(
        worker_db.url, DW_RETRY_MAX_RETRIES=0, DW_MERGE_REWRITE_SHARE=0, DW_MERGE_REWRITE_MIN_ROWS=1
    )
    service = build_service(settings)
    job_def = build_definitions(settings).resolve_job_def("dw_ingestion_job")
    try:
        with dg.instance_for_test() as instance:
            first = enqueue(service, "customers", SAMPLES_DIR / "customers.csv")
            update = enqueue(service, "customers", SAMPLES_DIR / "customers_2026-11-25.parquet")
            for job in (first, update):
                assert run(job_def, instance, job).success, service.queue.get(job.job_id)
        _assert_job_loaded(service, {"customers": update}, {"customers": 3})
        promoted = [e for e in service.queue.audit_trail(update.job_id) if e.event == "PROMOTED"]
        assert promoted[-1].details["strategy"] == "in-place"
        assert service.warehouse.storage_rows(service.contracts.get("customers")) == 6
    finally:
        dispose(service)


def test_warehouse_tables_of_the_administrator_get_full_dml_only(worker_db, engines):
    admin = engines(worker_db.admin_url)
    with admin.connect() as conn:
        # Existing before the script runs (again): covered by GRANT ... ON ALL TABLES.
        conn.execute(sa.text("CREATE TABLE dw_staging.before_script (id int PRIMARY KEY, v text)"))
    apply_roles(worker_db.admin_url, worker_db.password)
    with admin.connect() as conn:
        # Created after the script: covered by ALTER DEFAULT PRIVILEGES.
        conn.execute(
            sa.text("CREATE TABLE dw_storage.after_script (id bigserial PRIMARY KEY, v text)")
        )

    worker = engines(worker_db.url)
    with worker.connect() as conn:
        for table in ("dw_staging.before_script", "dw_storage.after_script"):
            conn.execute(sa.text(f"INSERT INTO {table} (id, v) VALUES (1, 'a')"))
            conn.execute(sa.text(f"UPDATE {table} SET v = 'b' WHERE id = 1"))
            conn.execute(
                sa.text(
                    f"INSERT INTO {table} (id, v) VALUES (1, 'c')"
                    " ON CONFLICT (id) DO UPDATE SET v = excluded.v"
                )
            )
            assert conn.execute(sa.text(f"SELECT v FROM {table}")).scalar_one() == "c"
            conn.execute(sa.text(f"DELETE FROM {table}"))
        conn.execute(sa.text("INSERT INTO dw_storage.after_script (v) VALUES ('nextval')"))
        # And it creates (and owns) tables of its own there.
        conn.execute(sa.text("CREATE TABLE dw_staging.worker_made (a int)"))
        for statement in (
            "TRUNCATE dw_staging.before_script",
            "DROP TABLE dw_storage.after_script",
            "ALTER TABLE dw_staging.before_script ADD COLUMN x int",
        ):
            with pytest.raises(sa.exc.ProgrammingError) as info:
                conn.execute(sa.text(statement))
            assert sqlstate(info.value) == INSUFFICIENT_PRIVILEGE, statement
    owner = scalar(admin, "SELECT tableowner FROM pg_tables WHERE tablename = 'worker_made'")
    assert owner == ROLE


# ------------------------------------------------------------------------- what it may not do

FORBIDDEN = {
    "create-in-public": "CREATE TABLE public.x (a int)",
    "create-in-public-unqualified": "CREATE TABLE x (a int)",
    "drop-outbox": "DROP TABLE dw_ingestion_outbox",
    "alter-outbox": "ALTER TABLE dw_ingestion_outbox ADD COLUMN x int",
    "truncate-outbox": "TRUNCATE dw_ingestion_outbox",
    "truncate-audit": "TRUNCATE dw_ingestion_audit",
    "update-audit": "UPDATE dw_ingestion_audit SET event = 'X'",
    "delete-audit": "DELETE FROM dw_ingestion_audit",
    "alter-audit": "ALTER TABLE dw_ingestion_audit DROP COLUMN details",
    "drop-alembic-version": "DROP TABLE dw_pipelines_alembic_version",
    "read-alembic-version": "SELECT * FROM dw_pipelines_alembic_version",
    "write-alembic-version": "UPDATE dw_pipelines_alembic_version SET version_num = 'x'",
    "read-public-secrets": "SELECT * FROM public.secrets",
    "read-other-schema": "SELECT * FROM other.payroll",
    "write-other-schema": "INSERT INTO other.payroll VALUES ('mallory', 1000000)",
    "create-schema": "CREATE SCHEMA mine",
    "drop-warehouse-schema": "DROP SCHEMA dw_storage CASCADE",
    "create-database": "CREATE DATABASE {prefix}_by_worker",
    "create-role": "CREATE ROLE {prefix}_by_worker",
    "set-role-to-the-administrator": 'SET ROLE "{admin}"',
}


@pytest.mark.parametrize("statement", list(FORBIDDEN.values()), ids=list(FORBIDDEN))
def test_worker_is_refused(statement: str, worker_db, engines, pg_admin):
    admin = engines(worker_db.admin_url)
    with admin.connect() as conn:
        conn.execute(sa.text("CREATE TABLE public.secrets (token text)"))
        conn.execute(sa.text("INSERT INTO public.secrets VALUES ('s3cr3t')"))
        conn.execute(sa.text("CREATE SCHEMA other"))
        conn.execute(sa.text("CREATE TABLE other.payroll (name text, salary int)"))
        # Even a schema whose USAGE is open to everyone keeps its tables closed.
        conn.execute(sa.text("GRANT USAGE ON SCHEMA other TO PUBLIC"))
    name = f"{SESSION_PREFIX}_{secrets.token_hex(3)}"
    sql = statement.format(prefix=name, admin=sa.make_url(worker_db.admin_url).username)

    try:
        with (
            engines(worker_db.url).connect() as conn,
            pytest.raises(sa.exc.ProgrammingError) as info,
        ):
            conn.execute(sa.text(sql))
    finally:  # should the statement ever succeed, leave nothing cluster-wide behind
        with pg_admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}_by_worker"'))
            conn.execute(sa.text(f'DROP ROLE IF EXISTS "{name}_by_worker"'))

    assert isinstance(info.value.orig, psycopg.errors.InsufficientPrivilege), info.value
    assert sqlstate(info.value) == INSUFFICIENT_PRIVILEGE


def test_worker_cannot_connect_to_another_database(worker_db, engines, pg_admin, pg_server_url):
    name = f"{SESSION_PREFIX}_other_{secrets.token_hex(3)}"
    create_database(pg_admin, name)
    try:
        other = database_url(pg_server_url, name)
        with engines(other).connect() as conn:
            # A new database lets PUBLIC connect; roles.sql closes only the database it runs in,
            # so this one is closed the same way (or by pg_hba.conf, see the script's header).
            conn.execute(sa.text(f'REVOKE CONNECT ON DATABASE "{name}" FROM PUBLIC'))
        with pytest.raises(sa.exc.OperationalError) as info:
            with engines(worker_url(other, worker_db.password)).connect():
                pass
        assert "permission denied for database" in str(info.value)
        # Its own database stays open to it.
        assert scalar(engines(worker_db.url), "SELECT current_user") == ROLE
    finally:
        with pg_admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


# ------------------------------------------------- contract evolution: migrations and grants

TABLES = (
    "dw_storage.events",
    "dw_staging.events",
    "dw_storage._dw_loads",
    "dw_storage._dw_schema_versions",
    "public.dw_ingestion_outbox",
    "public.dw_ingestion_audit",
)
PRIVILEGES = ("SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER")


def role_privileges(admin: sa.Engine, roles: list[str]) -> dict:
    """Every table privilege of the roles on the tables a migration could touch, and owners."""
    found = {}
    with admin.connect() as conn:
        for role in roles:
            for table in TABLES:
                for privilege in PRIVILEGES:
                    found[(role, table, privilege)] = conn.execute(
                        sa.text("SELECT has_table_privilege(:r, :t, :p)"),
                        {"r": role, "t": table, "p": privilege},
                    ).scalar_one()
        for schema, table, owner in conn.execute(
            sa.text(
                "SELECT schemaname, tablename, tableowner FROM pg_tables"
                " WHERE schemaname IN ('dw_storage', 'dw_staging')"
            )
        ):
            found[("owner", f"{schema}.{table}")] = owner
    return found


@pytest.fixture
def reader_role(worker_db, engines):
    """A BI reader: USAGE on dw_storage, SELECT granted on a dataset by its owner."""
    import secrets

    name = f"dw_reader_{secrets.token_hex(4)}"
    admin = engines(worker_db.admin_url)
    with admin.connect() as conn:
        conn.execute(sa.text(f"CREATE ROLE {name} NOLOGIN"))
        conn.execute(sa.text(f"GRANT USAGE ON SCHEMA dw_storage TO {name}"))
    yield name
    with admin.connect() as conn:
        conn.execute(sa.text(f"DROP OWNED BY {name}"))
        conn.execute(sa.text(f"DROP ROLE {name}"))


def test_migrations_keep_every_privilege_of_the_worker_and_reader_roles(
    worker_db,
    reader_role: str,
    engines,
    dw_env,
    tmp_path: Path,
) -> None:
    """As shipped (roles.sql), the worker owns the tables it created and migrates them itself:
    a safe change by its next job, an unsafe one by `datasets migrate`. Neither changes what
    dw_worker or a reader may do."""
    admin = engines(worker_db.admin_url)
    env = Evolving(worker_db.url, tmp_path, dw_env)
    try:
        first_load(env)
        with engines(worker_db.url).connect() as conn:  # the owner grants its readers
            conn.execute(sa.text(f"GRANT SELECT ON dw_storage.events TO {reader_role}"))
        before = role_privileges(admin, [ROLE, reader_role])
        assert before[(reader_role, "dw_storage.events", "SELECT")] is True
        assert before[("owner", "dw_storage.events")] == ROLE

        extra = {"name": "extra", "type": "string"}
        service = env.use(edited(add_extra=extra))
        env.load(service, "id,qty,price,day,label,note,extra\n3,7,2,,c,z,e\n", "run-2")
        env.use(edited(add_extra=extra, note=None, qty={"type": "float64"}))
        migrated = env.cli("datasets", "migrate", DATASET, "--allow-destructive", "--yes")
        assert migrated.exit_code == 0, migrated.output

        assert [v["version"] for v in env.versions(service)] == [1, 2, 3]
        assert role_privileges(admin, [ROLE, reader_role]) == before
        with admin.connect() as conn:
            reads_new_column = conn.execute(
                sa.text("SELECT has_column_privilege(:r, 'dw_storage.events', 'extra', 'SELECT')"),
                {"r": reader_role},
            ).scalar_one()
        assert reads_new_column is True
    finally:
        env.close()


def test_tables_the_worker_does_not_own_are_migrated_by_their_owner(
    worker_db,
    engines,
    dw_env,
    tmp_path: Path,
) -> None:
    """A storage table an administrator created (restored from a backup, say): the worker loads
    into it, but its job cannot change it and says who must."""
    (tmp_path / "admin").mkdir()
    admin_env = Evolving(worker_db.admin_url, tmp_path / "admin", dw_env)
    try:
        first_load(admin_env)  # storage created, and owned, by the administrator
    finally:
        admin_env.close()
    with engines(worker_db.admin_url).connect() as conn:
        conn.execute(sa.text("DROP TABLE dw_staging.events"))  # the worker makes its own
    env = Evolving(worker_db.url, tmp_path, dw_env)
    try:
        env.load(env.use(BASE), "id,qty,price,day,label,note\n3,7,2,,c,z\n", "run-2")
        contract = edited(add_extra={"name": "extra", "type": "string"})
        service = env.use(contract)
        job = env.enqueue(service, "id,qty,price,day,label,note,extra\n4,7,2,,c,z,e\n")
        with pytest.raises(Exception) as refused:
            env.run_job(service, job.job_id, "run-3")
        assert "only a table's owner may" in str(refused.value)
        assert "dw-pipelines datasets migrate events" in str(refused.value)
        assert service.queue.get(job.job_id).status == "FAILED"
        assert "extra" not in env.columns(service)

        admin_env.use(contract)  # the administrator applies it
        applied = admin_env.cli("datasets", "migrate", DATASET, "--yes")
        assert applied.exit_code == 0, applied.output

        worker = env.use(contract)
        worker.queue.requeue(job.job_id, "run-4", "alice")
        env.run_job(worker, job.job_id, "run-4")
        assert worker.queue.get(job.job_id).status == "COMPLETED"
        assert env.rows(worker)[-1]["extra"] == "e"
    finally:
        env.close()
