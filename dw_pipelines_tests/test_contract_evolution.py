"""Contract evolution on real PostgreSQL and SQLite: storage follows a changed contract.

Every case loads a first file under the base contract, changes the contract as an engineer would
(a new YAML file), and loads a second file. Safe changes are applied by that next job, with the
rows already stored intact; unsafe ones fail the job at once with the plan's changes and the
command to run, and leave storage as it was until `dw-pipelines datasets migrate
--allow-destructive` (the real CLI) applies them; the failed job then completes when requeued.
"""

import copy
import datetime as dt
import json
import os
import signal
import subprocess
import sys
import threading
import time
from decimal import Decimal
from pathlib import Path

import dagster as dg
import pytest
import sqlalchemy as sa
import yaml
from click.testing import CliRunner

from dw_pipelines.cli import main as cli
from dw_pipelines.core.contracts import parse_contract
from dw_pipelines.core.errors import SchemaChangeRequired
from dw_pipelines.core.faults import reset_fault_counters
from dw_pipelines.core.tables import define_tables
from dw_pipelines.definitions import build_definitions
from dw_pipelines.services import build_service, dispose
from dw_pipelines_tests.test_ingestion_runs import run

REPO_ROOT = Path(__file__).resolve().parent.parent
DATASET = "events"
BASE = {
    "name": DATASET,
    "write_mode": "merge",
    "primary_key": ["id"],
    "columns": [
        {"name": "id", "type": "int64", "nullable": False},
        {"name": "qty", "type": "int64"},
        {"name": "price", "type": "decimal(8,2)"},
        {"name": "day", "type": "date"},
        {"name": "label", "type": "string", "nullable": False},
        {"name": "note", "type": "string"},
    ],
}
FIRST_FILE = "id,qty,price,day,label,note\n1,5,1.25,2026-01-02,a,x\n2,,,,b,y\n"
# The first file's rows as stored, by warehouse column.
ROW_1 = {"id": 1, "qty": 5, "price": Decimal("1.25"), "day": "2026-01-02", "label": "a",
         "note": "x"}  # fmt: skip
ROW_2 = {"id": 2, "qty": None, "price": None, "day": None, "label": "b", "note": "y"}


def plain(value):
    """Values compared across databases: dates and times as ISO text in UTC, decimals exact."""
    if isinstance(value, dt.datetime):
        if value.tzinfo is not None:
            value = value.astimezone(dt.UTC).replace(tzinfo=None)
        return value.isoformat()
    if isinstance(value, dt.date):
        return value.isoformat()
    return value


class Evolving:
    """One dataset whose contract changes during the test, on one database."""

    def __init__(self, url: str, tmp: Path, dw_env):
        self.url = url
        self.folder = tmp / "contracts"
        self.folder.mkdir()
        self.landing = tmp / "landing"
        self.landing.mkdir(exist_ok=True)
        self.dw_env = dw_env
        self.services: list = []
        self.files = 0

    def use(self, contract: dict):
        """Write the contract and start a service as a new run process would (nothing cached)."""
        (self.folder / f"{DATASET}.yaml").write_text(yaml.safe_dump(contract, sort_keys=False))
        self.settings = self.dw_env(
            self.url, DW_DATASETS_PATH=self.folder, DW_LANDING_ROOT=self.landing
        )
        service = build_service(self.settings)
        self.services.append(service)
        return service

    def enqueue(self, service, text: str):
        self.files += 1
        path = self.landing / f"file_{self.files}.csv"
        path.write_text(text)
        command = {"dataset": DATASET, "source_uri": str(path), "business_date": "2026-11-24"}
        return service.queue.enqueue(command).job

    def load(self, service, text: str, run_id: str):
        job = self.enqueue(service, text)
        self.run_job(service, job.job_id, run_id)
        return job

    @staticmethod
    def run_job(service, job_id: str, run_id: str):
        try:
            service.stage(service.start(job_id, run_id), run_id)
            return service.promote(job_id, run_id)
        except Exception as exc:
            service.fail(job_id, run_id, str(exc))
            raise

    def rows(self, service, as_of: dict | None = None) -> list[dict]:
        """Stored rows, read through the table definition of the service's contract (or of the
        contract `as_of`): values come back typed on both databases (SQLite keeps decimals and
        dates as text)."""
        if as_of is None:
            storage = service.warehouse.tables(service.contracts.get(DATASET)).storage
        else:
            dialect = service.warehouse.dialect
            storage = define_tables(sa.MetaData(), parse_contract(as_of), dialect).storage
        with service.warehouse.engine.connect() as conn:
            result = conn.execute(sa.select(storage).order_by(storage.c.id))
            return [
                {k: plain(v) for k, v in r.items() if not k.startswith("_dw_")}
                for r in result.mappings()
            ]

    def columns(self, service, schema: str = "dw_storage") -> list[str]:
        with service.warehouse.engine.connect() as conn:
            found = sa.inspect(conn).get_columns(DATASET, schema)
        return sorted(c["name"] for c in found if not c["name"].startswith("_dw_"))

    def versions(self, service) -> list[dict]:
        return service.warehouse.evolution.history(DATASET)

    def loaded_versions(self, service) -> dict[str, int | None]:
        with service.warehouse.engine.connect() as conn:
            rows = conn.execute(
                sa.text("SELECT job_id, schema_version FROM dw_storage._dw_loads")
            ).all()
        return dict(rows)

    def cli(self, *args: str, input: str | None = None):
        return CliRunner().invoke(cli, list(args), input=input, catch_exceptions=False)

    def close(self):
        for service in self.services:
            dispose(service)


@pytest.fixture
def evolving(db_url: str, tmp_path: Path, dw_env):
    env = Evolving(db_url, tmp_path, dw_env)
    yield env
    env.close()


def first_load(env: Evolving):
    service = env.use(BASE)
    job = env.load(service, FIRST_FILE, "run-1")
    assert env.rows(service) == [ROW_1, ROW_2]
    return job


def edited(**changes) -> dict:
    """BASE with columns replaced (`column=dict`), removed (`column=None`) or added (`+name`)."""
    contract = copy.deepcopy(BASE)
    for key, value in changes.items():
        if key in ("write_mode", "primary_key", "description", "owner"):
            contract[key] = value
            continue
        if key.startswith("add_"):
            contract["columns"].append(value)
            continue
        index = next(i for i, c in enumerate(contract["columns"]) if c["name"] == key)
        if value is None:
            del contract["columns"][index]
        else:
            contract["columns"][index] = {**contract["columns"][index], **value}
    return contract


# ------------------------------------------------------------------------------- safe changes

# name: (contract edit, second file, (change kind, column), stored rows after the second job)
SAFE = {
    "new nullable column": (
        {"add_extra": {"name": "Extra Field", "type": "string"}},
        "id,qty,price,day,label,note,Extra Field\n3,7,2.5,2026-01-03,c,z,e\n",
        ("add_column", "extra_field"),
        [
            {**ROW_1, "extra_field": None},
            {**ROW_2, "extra_field": None},
            {"id": 3, "qty": 7, "price": Decimal("2.5"), "day": "2026-01-03", "label": "c",
             "note": "z", "extra_field": "e"},
        ],
    ),
    "new non-nullable column with a default": (
        {"add_score": {"name": "score", "type": "int64", "nullable": False, "default": 7}},
        "id,qty,price,day,label,note,score\n3,7,2.5,2026-01-03,c,z,9\n",
        ("add_column", "score"),
        [
            {**ROW_1, "score": 7},
            {**ROW_2, "score": 7},
            {"id": 3, "qty": 7, "price": Decimal("2.5"), "day": "2026-01-03", "label": "c",
             "note": "z", "score": 9},
        ],
    ),
    "int64 to float64": (
        {"qty": {"type": "float64"}},
        "id,qty,price,day,label,note\n3,1.5,2.5,2026-01-03,c,z\n",
        ("change_type", "qty"),
        [
            {**ROW_1, "qty": 5.0},
            ROW_2,
            {"id": 3, "qty": 1.5, "price": Decimal("2.5"), "day": "2026-01-03", "label": "c",
             "note": "z"},
        ],
    ),
    "int64 to a decimal with 19 integer digits": (
        {"qty": {"type": "decimal(21,2)"}},
        "id,qty,price,day,label,note\n3,9223372036854775807.25,2.5,2026-01-03,c,z\n",
        ("change_type", "qty"),
        [
            {**ROW_1, "qty": Decimal("5")},
            ROW_2,
            {"id": 3, "qty": Decimal("9223372036854775807.25"), "price": Decimal("2.5"),
             "day": "2026-01-03", "label": "c", "note": "z"},
        ],
    ),
    "a wider decimal": (
        {"price": {"type": "decimal(12,4)"}},
        "id,qty,price,day,label,note\n3,7,12345678.1234,2026-01-03,c,z\n",
        ("change_type", "price"),
        [
            ROW_1,
            ROW_2,
            {"id": 3, "qty": 7, "price": Decimal("12345678.1234"), "day": "2026-01-03",
             "label": "c", "note": "z"},
        ],
    ),
    "date to timestamp": (
        {"day": {"type": "timestamp"}},
        "id,qty,price,day,label,note\n3,7,2.5,2026-01-03T04:05:06+02:00,c,z\n",
        ("change_type", "day"),
        [
            {**ROW_1, "day": "2026-01-02T00:00:00"},
            ROW_2,
            {"id": 3, "qty": 7, "price": Decimal("2.5"), "day": "2026-01-03T02:05:06",
             "label": "c", "note": "z"},
        ],
    ),
    "a column made nullable": (
        {"label": {"nullable": True}},
        "id,qty,price,day,label,note\n3,7,2.5,2026-01-03,,z\n",
        ("drop_not_null", "label"),
        [
            ROW_1,
            ROW_2,
            {"id": 3, "qty": 7, "price": Decimal("2.5"), "day": "2026-01-03", "label": None,
             "note": "z"},
        ],
    ),
    "description and owner": (
        {"description": "Events, now described", "owner": "data@example.com"},
        "id,qty,price,day,label,note\n3,7,2.5,2026-01-03,c,z\n",
        ("change_metadata", None),
        [
            ROW_1,
            ROW_2,
            {"id": 3, "qty": 7, "price": Decimal("2.5"), "day": "2026-01-03", "label": "c",
             "note": "z"},
        ],
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", list(SAFE))
def test_a_safe_change_is_applied_by_the_next_job(evolving: Evolving, case: str) -> None:
    edit, second_file, (kind, column), expected = SAFE[case]
    first = first_load(evolving)
    service = evolving.use(edited(**edit))

    planned = service.warehouse.plan(service.contracts.get(DATASET))
    assert planned.status == "safe"
    assert [(c.kind, c.column) for c in planned.changes] == [(kind, column)]
    second = evolving.load(service, second_file, "run-2")

    assert evolving.rows(service) == expected
    versions = evolving.versions(service)
    assert [v["version"] for v in versions] == [1, 2]
    assert versions[1]["applied_by"] == f"job {second.job_id}"
    assert versions[1]["destructive"] is False or versions[1]["destructive"] == 0
    assert [c["kind"] for c in versions[1]["changes"]] == [kind]
    assert (versions[1]["ddl"] == "") == (kind == "change_metadata")
    assert evolving.loaded_versions(service) == {first.job_id: 1, second.job_id: 2}
    promoted = [e for e in service.queue.audit_trail(second.job_id) if e.event == "PROMOTED"]
    assert promoted[0].details["schema_version"] == 2
    # Staging follows: the next process finds nothing left to do, and staging has the columns.
    again = evolving.use(edited(**edit))
    assert again.warehouse.plan(again.contracts.get(DATASET)).status == "up_to_date"
    assert evolving.columns(again, "dw_staging") == evolving.columns(again)


# ----------------------------------------------------------------------------- unsafe changes

# name: (contract edit, second file, (change kind, words of the refusal), rows after migrate)
UNSAFE = {
    "drop a column": (
        {"note": None},
        "id,qty,price,day,label\n3,7,2.5,2026-01-03,c\n",
        ("drop_column", "drop column note"),
        [
            {k: v for k, v in ROW_1.items() if k != "note"},
            {k: v for k, v in ROW_2.items() if k != "note"},
            {"id": 3, "qty": 7, "price": Decimal("2.5"), "day": "2026-01-03", "label": "c"},
        ],
    ),
    "rename a column (renamed_from keeps its data)": (
        {"note": {"name": "Remark", "renamed_from": "note"}},
        "id,qty,price,day,label,Remark\n3,7,2.5,2026-01-03,c,z\n",
        ("rename_column", "rename column remark from note to remark"),
        [
            {**{k: v for k, v in ROW_1.items() if k != "note"}, "remark": "x"},
            {**{k: v for k, v in ROW_2.items() if k != "note"}, "remark": "y"},
            {"id": 3, "qty": 7, "price": Decimal("2.5"), "day": "2026-01-03", "label": "c",
             "remark": "z"},
        ],
    ),
    "narrow a type": (
        {"price": {"type": "decimal(6,2)"}},
        "id,qty,price,day,label,note\n3,7,2.5,2026-01-03,c,z\n",
        ("change_type", "change type price from decimal(8,2) to decimal(6,2)"),
        [
            ROW_1,
            ROW_2,
            {"id": 3, "qty": 7, "price": Decimal("2.5"), "day": "2026-01-03", "label": "c",
             "note": "z"},
        ],
    ),
    "make a column non-nullable": (
        {"note": {"nullable": False}},
        "id,qty,price,day,label,note\n3,7,2.5,2026-01-03,c,z\n",
        ("set_not_null", "set not null note"),
        [
            ROW_1,
            ROW_2,
            {"id": 3, "qty": 7, "price": Decimal("2.5"), "day": "2026-01-03", "label": "c",
             "note": "z"},
        ],
    ),
    "change the primary key": (
        {"primary_key": ["id", "label"]},
        "id,qty,price,day,label,note\n1,6,1.25,2026-01-02,other,w\n",
        ("change_primary_key", "change primary key from id to id, label"),
        [
            ROW_1,
            {"id": 1, "qty": 6, "price": Decimal("1.25"), "day": "2026-01-02", "label": "other",
             "note": "w"},
            ROW_2,
        ],
    ),
    "change the write mode": (
        {"write_mode": "append", "primary_key": []},
        "id,qty,price,day,label,note\n1,6,1.25,2026-01-02,a,x\n",
        ("change_write_mode", "change write mode from merge to append"),
        [
            ROW_1,
            {**ROW_1, "qty": 6},
            ROW_2,
        ],
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", list(UNSAFE))
def test_an_unsafe_change_fails_jobs_until_an_operator_migrates(
    evolving: Evolving, case: str
) -> None:
    edit, second_file, (kind, words), expected = UNSAFE[case]
    first_load(evolving)
    service = evolving.use(edited(**edit))
    columns_before = evolving.columns(service)

    job = evolving.enqueue(service, second_file)
    with pytest.raises(SchemaChangeRequired) as refused:
        evolving.run_job(service, job.job_id, "run-2")
    message = str(refused.value)
    assert words in message
    assert f"dw-pipelines datasets migrate {DATASET} --allow-destructive" in message
    assert service.queue.get(job.job_id).status == "FAILED"
    assert evolving.rows(service, as_of=BASE) == [ROW_1, ROW_2]  # storage exactly as it was
    assert evolving.columns(service) == columns_before
    assert [v["version"] for v in evolving.versions(service)] == [1]

    plan_out = evolving.cli("datasets", "plan", DATASET, "--json")
    assert plan_out.exit_code == 0, plan_out.output
    [shown] = json.loads(plan_out.output)
    assert shown["status"] == "unsafe" and shown["next_version"] == 2
    assert kind in [c["kind"] for c in shown["changes"] if not c["safe"]]
    assert shown["command"] == f"dw-pipelines datasets migrate {DATASET} --allow-destructive"

    refused_cli = evolving.cli("datasets", "migrate", DATASET, "--yes")
    assert refused_cli.exit_code == 1
    assert "--allow-destructive" in refused_cli.output
    declined = evolving.cli("datasets", "migrate", DATASET, "--allow-destructive", input="n\n")
    assert declined.exit_code == 1  # asked, said no: nothing applied
    assert evolving.columns(service) == columns_before

    migrated = evolving.cli(
        "datasets", "migrate", DATASET, "--allow-destructive", "--operator", "alice",
        input="y\n",
    )  # fmt: skip
    assert migrated.exit_code == 0, migrated.output
    assert "UNSAFE" in migrated.output and "schema version 2" in migrated.output
    [_, version] = evolving.versions(service)
    assert version["applied_by"] == "alice (datasets migrate)"
    assert bool(version["destructive"]) is True
    assert kind in [c["kind"] for c in version["changes"]]

    # The failed job completes once requeued, under the new schema.
    retried = evolving.use(edited(**edit))
    retried.queue.requeue(job.job_id, "run-3", "alice")
    evolving.run_job(retried, job.job_id, "run-3")
    assert retried.queue.get(job.job_id).status == "COMPLETED"
    rows = evolving.rows(retried)
    assert sorted(rows, key=lambda r: (r["id"], str(r.get("label")), str(r["qty"]))) == sorted(
        expected, key=lambda r: (r["id"], str(r.get("label")), str(r["qty"]))
    )
    assert evolving.loaded_versions(retried)[job.job_id] == 2
    history = evolving.cli("datasets", "history", DATASET)
    assert history.exit_code == 0 and "alice" in history.output


def test_a_lossy_narrowing_is_refused_even_when_allowed(evolving: Evolving) -> None:
    """Destructive means "may drop what the contract no longer has", never "silently rounds"."""
    first_load(evolving)
    service = evolving.use(edited(price={"type": "decimal(8,1)"}, qty={"type": "string"}))

    refused = evolving.cli("datasets", "migrate", DATASET, "--allow-destructive", "--yes")

    assert refused.exit_code == 1
    assert "1 stored value(s) of column price would change" in refused.output
    assert "'1.25'" in refused.output and "nothing was applied" in refused.output
    assert evolving.rows(service, as_of=BASE) == [ROW_1, ROW_2]
    assert [v["version"] for v in evolving.versions(service)] == [1]


def test_a_new_required_column_without_default_cannot_be_added_to_stored_rows(
    evolving: Evolving,
) -> None:
    first_load(evolving)
    service = evolving.use(edited(add_code={"name": "code", "type": "string", "nullable": False}))
    planned = service.warehouse.plan(service.contracts.get(DATASET))
    [change] = planned.changes
    assert (change.kind, change.safe) == ("add_column", False)
    assert "declare `default:`" in change.reason

    failed = evolving.cli("datasets", "migrate", DATASET, "--allow-destructive", "--yes")

    assert failed.exit_code == 1
    assert evolving.rows(service, as_of=BASE) == [ROW_1, ROW_2]
    assert "code" not in evolving.columns(service)


# -------------------------------------------------------------------------- the plan, exactly


def test_plan_json_lists_one_change_of_each_kind_exactly(pg_url: str, tmp_path: Path, dw_env):
    env = Evolving(pg_url, tmp_path, dw_env)
    try:
        base = copy.deepcopy(BASE)
        base["columns"] += [{"name": "code", "type": "string"}, {"name": "gone", "type": "string"}]
        service = env.use(base)
        env.load(service, "id,qty,price,day,label,note,code,gone\n1,5,1.25,,a,x,c,g\n", "run-1")
        changed = copy.deepcopy(base)
        changed.update(write_mode="append", primary_key=[], description="now described")
        changed["columns"] = [
            {"name": "id", "type": "int64", "nullable": False},
            {"name": "qty", "type": "float64"},
            {"name": "price", "type": "decimal(6,2)"},
            {"name": "day", "type": "timestamp"},
            {"name": "label", "type": "string"},
            {"name": "Remark", "type": "string", "renamed_from": "note"},
            {"name": "code", "type": "string", "nullable": False},
            {"name": "extra", "type": "string"},
            {"name": "score", "type": "int64", "nullable": False, "default": 7},
        ]
        env.use(changed)

        result = env.cli("datasets", "plan", DATASET, "--json")

        assert result.exit_code == 0, result.output
        assert json.loads(result.output) == [
            {
                "dataset": "events",
                "status": "unsafe",
                "current_version": 1,
                "next_version": 2,
                "command": "dw-pipelines datasets migrate events --allow-destructive",
                "changes": [
                    {"kind": "rename_column", "column": "remark", "from": "note", "to": "remark",
                     "safe": False,
                     "reason": "declared by renamed_from; readers of the old name break"},
                    {"kind": "change_type", "column": "qty", "from": "int64", "to": "float64",
                     "safe": True,
                     "reason": "widening; integers beyond 2^53 are stored to double precision"},
                    {"kind": "change_type", "column": "price", "from": "decimal(8,2)",
                     "to": "decimal(6,2)", "safe": False,
                     "reason": "narrowing: decimal(8,2) to decimal(6,2) keeps 4 of 6 integer "
                               "digits and 2 of 2 decimal places"},
                    {"kind": "change_type", "column": "day", "from": "date", "to": "timestamp",
                     "safe": True, "reason": "widening; stored dates become midnight UTC"},
                    {"kind": "drop_not_null", "column": "label", "from": "not null",
                     "to": "nullable", "safe": True, "reason": "relaxing"},
                    {"kind": "set_not_null", "column": "code", "from": "nullable",
                     "to": "not null", "safe": False,
                     "reason": "fails if a stored row holds NULL"},
                    {"kind": "add_column", "column": "extra", "from": None, "to": "string",
                     "safe": True, "reason": "stored rows get NULL"},
                    {"kind": "add_column", "column": "score", "from": None, "to": "int64",
                     "safe": True, "reason": "stored rows get the default 7"},
                    {"kind": "drop_column", "column": "gone", "from": "string", "to": None,
                     "safe": False,
                     "reason": "its stored values are deleted; declare renamed_from on the new "
                               "column if this is a rename"},
                    {"kind": "change_write_mode", "column": None, "from": "merge",
                     "to": "append", "safe": False,
                     "reason": "stored rows are no longer unique by key"},
                    {"kind": "change_metadata", "column": None, "from": None, "to": None,
                     "safe": True, "reason": "metadata only (description); no DDL"},
                ],
                "ddl": [
                    "ALTER TABLE dw_storage.events RENAME COLUMN note TO remark",
                    "ALTER TABLE dw_storage.events\n"
                    "  DROP CONSTRAINT pk_events,\n"
                    "  ALTER COLUMN qty TYPE DOUBLE PRECISION USING qty::DOUBLE PRECISION,\n"
                    "  ALTER COLUMN price TYPE NUMERIC(6, 2) USING price::NUMERIC(6, 2),\n"
                    "  ALTER COLUMN day TYPE TIMESTAMP WITH TIME ZONE"
                    " USING (day::timestamp AT TIME ZONE 'UTC'),\n"
                    "  ALTER COLUMN label DROP NOT NULL,\n"
                    "  ALTER COLUMN code SET NOT NULL,\n"
                    "  ADD COLUMN extra TEXT,\n"
                    "  ADD COLUMN score BIGINT DEFAULT 7 NOT NULL,\n"
                    "  DROP COLUMN gone",
                    "CREATE INDEX IF NOT EXISTS ix_sto_events_loaded_at ON dw_storage.events"
                    " USING brin (_dw_loaded_at)",
                    "ALTER TABLE dw_staging.events RENAME COLUMN note TO remark",
                    "ALTER TABLE dw_staging.events\n"
                    "  ALTER COLUMN qty TYPE DOUBLE PRECISION USING qty::DOUBLE PRECISION,\n"
                    "  ALTER COLUMN price TYPE NUMERIC(6, 2) USING price::NUMERIC(6, 2),\n"
                    "  ALTER COLUMN day TYPE TIMESTAMP WITH TIME ZONE"
                    " USING (day::timestamp AT TIME ZONE 'UTC'),\n"
                    "  ALTER COLUMN label DROP NOT NULL,\n"
                    "  ALTER COLUMN code SET NOT NULL,\n"
                    "  ADD COLUMN extra TEXT,\n"
                    "  ADD COLUMN score BIGINT DEFAULT 7 NOT NULL,\n"
                    "  DROP COLUMN gone",
                ],
            }
        ]  # fmt: skip
        text = env.cli("datasets", "plan", DATASET)
        assert "UNSAFE: jobs fail until `dw-pipelines datasets migrate events" in text.output
        assert "UNSAFE rename_column remark: note -> remark" in text.output
    finally:
        env.close()


# ------------------------------------------------------------------ concurrency and crashes


def test_two_jobs_that_find_the_same_change_migrate_once(db_url: str, tmp_path: Path, dw_env):
    env = Evolving(db_url, tmp_path, dw_env)
    try:
        first_load(env)
        contract = edited(add_extra={"name": "extra", "type": "string"})
        services = [env.use(contract), env.use(contract)]
        blocker = services[0].warehouse.engine.connect()
        blocker_tx = blocker.begin()
        postgres = blocker.dialect.name == "postgresql"
        # Hold the warehouse's DDL lock, as a migration in progress would.
        if postgres:
            blocker.execute(sa.text("SELECT pg_advisory_xact_lock(hashtext('dw_pipelines.ddl'))"))
        else:  # the engine's transactions begin IMMEDIATE: one writer at a time
            blocker.execute(sa.text("DELETE FROM dw_storage._dw_loads WHERE 1 = 0"))
        errors: list[BaseException] = []

        def ensure(service) -> None:
            try:
                service.warehouse.ensure_tables(service.contracts.get(DATASET), "job concurrent")
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=ensure, args=(s,)) for s in services]
        for thread in threads:
            thread.start()
        if postgres:
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                waiting = services[0].warehouse.engine.connect()
                with waiting:
                    count = waiting.execute(
                        sa.text(
                            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"
                            " AND NOT granted"
                        )
                    ).scalar_one()
                if count == 2:
                    break
                time.sleep(0.05)
            assert count == 2  # both found the change needed and wait for the lock
        else:
            time.sleep(1.0)
        blocker_tx.commit()
        blocker.close()
        for thread in threads:
            thread.join(timeout=60)

        assert errors == []
        versions = env.versions(services[0])
        assert [v["version"] for v in versions] == [1, 2]
        assert "extra" in env.columns(services[0])
        assert all(s.warehouse.schema_version(s.contracts.get(DATASET)) == 2 for s in services)
    finally:
        env.close()


KILLED_RUN_SCRIPT = """
import sys
import dagster as dg
from dw_pipelines.definitions import defs

job_id = sys.argv[1]
job = defs.resolve_job_def("dw_ingestion_job")
with dg.DagsterInstance.get() as instance:
    job.execute_in_process(
        instance=instance,
        partition_key="2026-11-24",
        tags={"dw/job_id": job_id},
        asset_selection=[dg.AssetKey(["staging", "events"]), dg.AssetKey(["storage", "events"])],
    )
sys.exit(3)  # not reached: the fault kills the process mid-migration
"""


@pytest.mark.slow
def test_a_run_killed_mid_migration_leaves_the_old_schema_and_retry_completes(
    pg_url: str, tmp_path: Path, dw_env, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dw_pipelines_tests.daemon_support import SYNC_INSTANCE_YAML
    from dw_pipelines_tests.test_reliability import reconcile

    reset_fault_counters()
    env = Evolving(pg_url, tmp_path, dw_env)
    try:
        first_load(env)
        contract = edited(qty={"type": "float64"}, add_extra={"name": "extra", "type": "string"})
        service = env.use(contract)
        service.warehouse.engine.dispose()
        settings = env.dw_env(
            pg_url,
            DW_DATASETS_PATH=env.folder,
            DW_LANDING_ROOT=env.landing,
            DW_RETRY_MAX_RETRIES=0,
            DW_HEARTBEAT_SECONDS=0.2,
            DW_RECONCILE_AFTER_SECONDS=1,
        )
        dagster_home = tmp_path / "dagster-home"
        dagster_home.mkdir()
        (dagster_home / "dagster.yaml").write_text(SYNC_INSTANCE_YAML)
        monkeypatch.setenv("DAGSTER_HOME", str(dagster_home))
        job = env.enqueue(service, "id,qty,price,day,label,note,extra\n3,1.5,2,,c,z,e\n")
        service.queue.claim_due(10)

        killed = subprocess.run(
            [sys.executable, "-c", KILLED_RUN_SCRIPT, job.job_id],
            env={**os.environ, "DW_FAULT_INJECTION": "schema.migrate=kill"},
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=180,
        )

        assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
        # The DDL ran and was rolled back with its transaction: the old schema, the old rows.
        assert env.columns(service) == ["day", "id", "label", "note", "price", "qty"]
        assert env.columns(service, "dw_staging") == env.columns(service)
        assert env.rows(service, as_of=BASE) == [ROW_1, ROW_2]
        assert [v["version"] for v in env.versions(service)] == [1]
        time.sleep(1.5)
        with dg.DagsterInstance.get() as instance:
            reconciler = build_definitions(settings).resolve_sensor_def("dw_outbox_reconciler")
            reconcile(reconciler, instance)
        assert service.queue.get(job.job_id).status == "FAILED"

        retried = subprocess.run(
            [sys.executable, "-m", "dw_pipelines.cli", "outbox", "retry", job.job_id,
             "--operator", "alice", "--json"],
            env={k: v for k, v in os.environ.items() if k != "DW_FAULT_INJECTION"},
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=180,
        )  # fmt: skip

        assert retried.returncode == 0, retried.stdout + retried.stderr
        assert service.queue.get(job.job_id).status == "COMPLETED"
        assert [v["version"] for v in env.versions(service)] == [1, 2]
        assert env.rows(service)[-1] == {
            "id": 3, "qty": 1.5, "price": Decimal("2"), "day": None, "label": "c", "note": "z",
            "extra": "e",
        }  # fmt: skip
        assert env.rows(service)[0] == {**ROW_1, "qty": 5.0, "extra": None}
    finally:
        env.close()


def test_a_process_killed_mid_migration_on_sqlite_leaves_the_old_schema(
    sqlite_url: str, tmp_path: Path, dw_env
) -> None:
    env = Evolving(sqlite_url, tmp_path, dw_env)
    try:
        first_load(env)
        service = env.use(edited(qty={"type": "float64"}, label={"nullable": True}))
        killed = subprocess.run(
            [sys.executable, "-m", "dw_pipelines.cli", "datasets", "migrate", DATASET, "--yes"],
            env={**os.environ, "DW_FAULT_INJECTION": "schema.migrate=kill"},
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
        assert [v["version"] for v in env.versions(service)] == [1]
        planned = service.warehouse.plan(service.contracts.get(DATASET))
        assert [c.kind for c in planned.changes] == ["change_type", "drop_not_null"]
        assert env.rows(service, as_of=BASE) == [ROW_1, ROW_2]

        env.load(service, "id,qty,price,day,label,note\n3,1.5,2,,,z\n", "run-2")

        assert [v["version"] for v in env.versions(service)] == [1, 2]
        assert env.rows(service) == [
            {**ROW_1, "qty": 5.0},
            ROW_2,
            {"id": 3, "qty": 1.5, "price": Decimal("2"), "day": None, "label": None, "note": "z"},
        ]
    finally:
        env.close()


# ---------------------------------------------------------------------------- in the Dagster UI


def test_the_storage_materialization_carries_the_schema_version_and_columns(
    pg_url: str, tmp_path: Path, dw_env
) -> None:
    env = Evolving(pg_url, tmp_path, dw_env)
    try:
        first_load(env)
        service = env.use(edited(add_extra={"name": "Extra Field", "type": "string"}))
        job = env.enqueue(service, "id,qty,price,day,label,note,Extra Field\n3,7,2,,c,z,e\n")
        service.queue.claim_due(10)
        job_def = build_definitions(env.settings).resolve_job_def("dw_ingestion_job")
        with dg.instance_for_test() as instance:
            result = run(job_def, instance, job)
            assert result.success
            [materialization] = result.asset_materializations_for_node("storage__events")
        metadata = materialization.metadata
        assert metadata["schema_version"].value == 2
        columns = {c.name: c for c in metadata["dagster/column_schema"].schema.columns}
        assert "extra_field" in columns and "Extra Field" in (columns["extra_field"].description)
    finally:
        env.close()
