"""`dw-pipelines`: a thin command line over the core.

Every command reads its configuration from the `DW_*` environment (see README). `--json` prints one
JSON document on stdout; errors print one line on stderr and exit with status 1 (2 for usage).
"""

import getpass
import json
import sys
from collections.abc import Callable
from datetime import timedelta
from functools import wraps
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from dw_pipelines.core.db import OUTBOX_STATUSES, create_db_engine
from dw_pipelines.core.errors import DwError
from dw_pipelines.settings import Settings

if TYPE_CHECKING:
    from dw_pipelines.core.contracts import ContractRegistry

ENV_HELP = (
    "Configuration comes from the environment: DW_DATABASE_URL, DW_WAREHOUSE_URL, "
    "DW_LANDING_ROOT, DW_DATASETS_PATH, DW_HOME (default ./.dw, the embedded SQLite default)."
)


def _errors_to_exit_code(func: Callable[..., Any]) -> Callable[..., Any]:
    """The one error path: a message on stderr and exit status 1."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except click.ClickException:
            raise  # usage errors: click prints them and exits 2
        except DwError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(1)
        except Exception as exc:  # database down, permissions...: say what, not a traceback
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            click.echo(f"error: {type(exc).__name__}: {first_line}", err=True)
            sys.exit(1)

    return wrapper


def _settings() -> Settings:
    return Settings.from_env()


def _print_json(document: Any) -> None:
    click.echo(json.dumps(document, indent=2, sort_keys=True, default=str))


@click.group(help=f"DW ingestion worker: outbox, datasets and a local demo.\n\n{ENV_HELP}")
def main() -> None:
    pass


@main.group(help="Outbox and audit database schema.")
def db() -> None:
    pass


@db.command("upgrade", help="Create or upgrade the outbox and audit tables (Alembic, to head).")
@_errors_to_exit_code
def db_upgrade() -> None:
    from dw_pipelines.core.migrations import current_revision, upgrade

    settings = _settings()
    engine = create_db_engine(settings.database_url)
    try:
        upgrade(engine)
        revision = current_revision(engine)
    finally:
        engine.dispose()
    click.echo(f"outbox schema at revision {revision} ({engine.url.render_as_string()})")


@main.command(help="Enqueue an ingestion command (inserts a PENDING outbox row).")
@click.option(
    "--dataset", required=True, help="Dataset name (a contract in dw_pipelines/datasets)."
)
@click.option(
    "--source",
    "source_uri",
    required=True,
    help="Source: a local path, a file:// URI or s3://bucket/key (inside DW_LANDING_ROOT).",
)
@click.option("--tenant", "tenant_id", default=None, help="Tenant id [default: default].")
@click.option("--job-id", default=None, help="Job id [default: a new UUID].")
@click.option("--idempotency-key", default=None, help="Dedup key [default: the job id].")
@click.option("--business-date", default=None, help="YYYY-MM-DD [default: today, UTC].")
@click.option(
    "--format", "fmt", default=None, help="csv, parquet, jsonl or json [default: extension]."
)
@click.option("--requested-by", default=None, help="Who asks (kept in the audit trail).")
@click.option("--json", "as_json", is_flag=True, help="Print the job as JSON.")
@_errors_to_exit_code
def enqueue(
    dataset: str,
    source_uri: str,
    tenant_id: str | None,
    job_id: str | None,
    idempotency_key: str | None,
    business_date: str | None,
    fmt: str | None,
    requested_by: str | None,
    as_json: bool,
) -> None:
    from dw_pipelines.services import build_queue

    queue = build_queue(_settings())
    try:
        result = queue.enqueue(
            {
                "dataset": dataset,
                "source_uri": source_uri,
                "tenant_id": tenant_id,
                "job_id": job_id,
                "idempotency_key": idempotency_key,
                "business_date": business_date,
                "format": fmt,
                "requested_by": requested_by,
            }
        )
    finally:
        queue.engine.dispose()
    if as_json:
        _print_json({"created": result.created, **result.job.to_dict()})
    elif result.created:
        click.echo(f"enqueued {result.job.job_id} ({result.job.dataset}, {result.job.status})")
    else:
        click.echo(
            f"already enqueued as {result.job.job_id} (same idempotency key; "
            f"status {result.job.status}); nothing inserted"
        )


@main.group(help="Inspect outbox jobs.")
def outbox() -> None:
    pass


@outbox.command("list", help="List jobs, newest first.")
@click.option(
    "--status",
    type=click.Choice(OUTBOX_STATUSES, case_sensitive=False),
    default=None,
    help="Only jobs in this status.",
)
@click.option("--limit", type=click.IntRange(1, 10_000), default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the jobs as a JSON list.")
@_errors_to_exit_code
def outbox_list(status: str | None, limit: int, as_json: bool) -> None:
    from dw_pipelines.services import build_queue

    queue = build_queue(_settings())
    try:
        jobs = queue.list_jobs(status=status, limit=limit)
    finally:
        queue.engine.dispose()
    if as_json:
        _print_json([job.to_dict() for job in jobs])
        return
    click.echo(
        format_table(
            ["job_id", "dataset", "tenant", "date", "status", "attempts", "rows", "error"],
            [
                [
                    j.job_id,
                    j.dataset,
                    j.tenant_id,
                    j.business_date.isoformat(),
                    j.status,
                    j.attempts,
                    "" if j.rows_loaded is None else j.rows_loaded,
                    (j.last_error or "")[:80],
                ]
                for j in jobs
            ],
        )
    )


@outbox.command("show", help="Show one job and its audit trail.")
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True, help="Print job and audit trail as JSON.")
@_errors_to_exit_code
def outbox_show(job_id: str, as_json: bool) -> None:
    from dw_pipelines.services import build_queue

    queue = build_queue(_settings())
    try:
        job = queue.get(job_id)
        trail = queue.audit_trail(job_id)
    finally:
        queue.engine.dispose()
    contract = _dataset_columns(queue.contracts, job.dataset)
    if as_json:
        _print_json({**job.to_dict(), **contract, "audit": [event.to_dict() for event in trail]})
        return
    for key, value in job.to_dict().items():
        if key != "payload":
            click.echo(f"{key:>16}: {'' if value is None else value}")
    click.echo(f"{'command':>16}: {json.dumps(job.payload, sort_keys=True)}")
    if contract.get("contract_error"):
        click.echo(f"{'contract':>16}: {contract['contract_error']}")
    for index, column in enumerate(contract.get("renamed_columns", [])):
        label = "columns" if index == 0 else ""
        click.echo(f"{label:>16}: '{column['name']}' -> {column['column']}")
    click.echo("")
    click.echo(
        format_table(
            ["at", "event", "from", "to", "attempt", "run_id", "details"],
            [
                [
                    e.at.isoformat(timespec="seconds"),
                    e.event,
                    e.from_status or "",
                    e.to_status or "",
                    e.attempt,
                    (e.run_id or "")[:8],
                    json.dumps(e.details, sort_keys=True)[:100] if e.details else "",
                ]
                for e in trail
            ],
        )
    )


def _dataset_columns(contracts: "ContractRegistry", dataset: str) -> dict[str, Any]:
    """What `outbox show` says of the job's dataset: the columns the warehouse names other than
    the file does (file name -> warehouse column), or why its contract cannot be used."""
    try:
        contract = contracts.get(dataset)
    except DwError as exc:
        return {"contract_error": str(exc)}
    return {
        "renamed_columns": [{"name": c.source, "column": c.name} for c in contract.renamed_columns]
    }


@outbox.command(
    "retry",
    help=(
        "Reprocess a FAILED job: reset its bookkeeping (audited REQUEUED with the operator) and "
        "launch a new dw_ingestion_job run for it through the Dagster instance in DAGSTER_HOME. "
        "The sensor cannot do this: a job's run key stays used even by a failed run. Storage "
        "is never duplicated (append replaces the job's rows, merge upserts)."
    ),
)
@click.argument("job_id")
@click.option(
    "--operator",
    default=lambda: getpass.getuser(),
    show_default="the login name",
    help="Who asks (kept in the audit trail and the run's tags).",
)
@click.option("--allow-completed", is_flag=True, help="Reprocess a COMPLETED job too.")
@click.option(
    "-w",
    "--workspace",
    "workspace_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Dagster workspace.yaml to load the code location from [default: the installed module].",
)
@click.option("--json", "as_json", is_flag=True, help="Print the job and run as JSON.")
@_errors_to_exit_code
def outbox_retry(
    job_id: str, operator: str, allow_completed: bool, workspace_file: Path | None, as_json: bool
) -> None:
    from dw_pipelines.launch import (
        TAG_REQUEUED_BY,
        instance_from_environment,
        launch_job_run,
        new_run_id,
    )
    from dw_pipelines.services import build_queue

    settings = _settings()
    queue = build_queue(settings)
    try:
        queue.get(job_id)
        instance = instance_from_environment()
        run_id = new_run_id()
        job = queue.requeue(job_id, run_id, operator, allow_completed=allow_completed)
        try:
            run = launch_job_run(
                instance,
                job,
                run_id,
                settings,
                workspace_file,
                extra_tags={TAG_REQUEUED_BY: operator},
            )
        except Exception as exc:
            queue.reconcile(job_id, run_id, "FAILED", f"could not launch run {run_id}: {exc}")
            raise
        job = queue.get(job_id)
    finally:
        queue.engine.dispose()
    if as_json:
        _print_json({**job.to_dict(), "run_id": run.run_id, "run_status": run.status.value})
    else:
        click.echo(
            f"requeued {job_id} by {operator}: run {run.run_id} submitted ({run.status.value}); "
            f"job is {job.status}"
        )


@outbox.command(
    "launch-command",
    help=(
        "Print the `dagster job launch` line that runs a PENDING job by hand, and take the job "
        "out of the sensor's reach (SENT, audited with the operator). The run id is derived from "
        "the job id: running the line twice cannot start a second run."
    ),
)
@click.argument("job_id")
@click.option(
    "--operator",
    default=lambda: getpass.getuser(),
    show_default="the login name",
    help="Who asks (kept in the audit trail).",
)
@click.option(
    "-w", "--workspace", default="workspace.yaml", show_default=True, help="Workspace file."
)
@_errors_to_exit_code
def outbox_launch_command(job_id: str, operator: str, workspace: str) -> None:
    from dw_pipelines.launch import launch_command, launch_run_id
    from dw_pipelines.services import build_queue

    settings = _settings()
    queue = build_queue(settings)
    try:
        job = queue.claim_for_launch(job_id, launch_run_id(job_id), operator)
    finally:
        queue.engine.dispose()
    click.echo(launch_command(job, settings, workspace))


@outbox.command(
    "prune",
    help="Delete COMPLETED jobs older than N days. FAILED jobs and the audit trail are kept.",
)
@click.option("--older-than-days", type=click.IntRange(min=0), default=30, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the count as JSON.")
@_errors_to_exit_code
def outbox_prune(older_than_days: int, as_json: bool) -> None:
    from dw_pipelines.core.db import utcnow
    from dw_pipelines.services import build_queue

    queue = build_queue(_settings())
    cutoff = utcnow() - timedelta(days=older_than_days)
    try:
        deleted = queue.prune_completed(cutoff)
    finally:
        queue.engine.dispose()
    if as_json:
        _print_json({"deleted": deleted, "cutoff": cutoff.isoformat()})
    else:
        click.echo(f"deleted {deleted} COMPLETED job(s) last updated before {cutoff.isoformat()}")


@main.group(help="Dataset contracts: check them, list them, draft one from a file.")
def datasets() -> None:
    pass


def _contract_report(files: tuple[Path, ...]) -> tuple[list[dict[str, Any]], list[str]]:
    """Per contract file: its dataset, whether it can be used and its errors; plus the missing
    contract folders. Without `files`: the shipped folder and DW_DATASETS_PATH."""
    from dw_pipelines.core.contracts import ContractFileError, ContractRegistry, load_contract_file
    from dw_pipelines.services import load_contracts

    if files:
        contracts, problems = [], []
        for path in files:
            try:
                contracts.append(load_contract_file(path))
            except ContractFileError as exc:
                problems.append(exc)
        registry = ContractRegistry(contracts, problems)
    else:
        registry = load_contracts(_settings())
    report = [
        {"file": str(c.path), "dataset": c.name, "valid": True, "errors": []} for c in registry
    ]
    report += [{**p.to_dict(), "valid": False} for p in registry.problems]
    report.sort(key=lambda r: (r["dataset"] or "", r["file"] or ""))
    return report, [str(d) for d in registry.missing_directories]


@datasets.command(
    "check",
    help=(
        "Check every dataset contract file (the shipped ones and DW_DATASETS_PATH), or the "
        "FILEs given: each error with its file, field and reason. Exit status 1 when any "
        "file cannot be used."
    ),
)
@click.argument("files", nargs=-1, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@_errors_to_exit_code
def datasets_check(files: tuple[Path, ...], as_json: bool) -> None:
    report, missing = _contract_report(files)
    ok = not missing and all(entry["valid"] for entry in report)
    if as_json:
        _print_json({"ok": ok, "files": report, "missing_directories": missing})
    else:
        for entry in report:
            if entry["valid"]:
                click.echo(f"ok     {entry['dataset']:<24} {entry['file']}")
                continue
            for error in entry["errors"]:
                where = f"{error['field']}: " if error["field"] else ""
                click.echo(
                    f"error  {entry['dataset'] or '?':<24} {entry['file']}: {where}"
                    f"{error['reason']}"
                )
        for folder in missing:
            click.echo(f"error  {'(folder)':<24} {folder}: does not exist")
        broken = sum(1 for entry in report if not entry["valid"])
        click.echo(
            f"{len(report) - broken} valid, {broken} refused"
            + (f", {len(missing)} missing folder(s)" if missing else "")
        )
    if not ok:
        sys.exit(1)


@datasets.command(
    "list", help="List the datasets: columns (file name -> warehouse column), key, status."
)
@click.option("--json", "as_json", is_flag=True, help="Print the datasets as a JSON list.")
@_errors_to_exit_code
def datasets_list(as_json: bool) -> None:
    from dw_pipelines.services import load_contracts

    registry = load_contracts(_settings())
    entries: list[dict[str, Any]] = []
    for contract in registry:
        entries.append(
            {
                "dataset": contract.name,
                "file": str(contract.path),
                "status": "ok",
                "write_mode": contract.write_mode,
                "match": contract.match,
                "primary_key": list(contract.primary_key),
                "columns": [
                    {
                        "name": c.source,
                        "column": c.name,
                        "type": str(c.type),
                        "nullable": c.nullable,
                    }
                    for c in contract.columns
                ],
            }
        )
    for problem in registry.problems:
        entries.append({**problem.to_dict(), "status": "invalid"})
    entries.sort(key=lambda e: (e["dataset"] or "", e["file"] or ""))
    if as_json:
        _print_json(entries)
        return
    rows = []
    for entry in entries:
        if entry["status"] != "ok":
            first = entry["errors"][0] if entry["errors"] else {"field": "", "reason": ""}
            detail = f"{first['field']}: {first['reason']}" if first["field"] else first["reason"]
            rows.append([entry["dataset"], "INVALID", "", "", detail[:90]])
            continue
        columns = ", ".join(
            c["column"] if c["name"] == c["column"] else f"{c['name']} -> {c['column']}"
            for c in entry["columns"]
        )
        rows.append(
            [
                entry["dataset"],
                "ok",
                entry["write_mode"],
                ", ".join(entry["primary_key"]),
                columns[:90] + ("..." if len(columns) > 90 else ""),
            ]
        )
    click.echo(format_table(["dataset", "status", "mode", "key", "columns"], rows))


def _plan_lines(plan_document: dict[str, Any]) -> list[str]:
    """A plan as an operator reads it: one line per change, then the DDL."""
    status = plan_document["status"]
    current = plan_document["current_version"]
    head = f"{plan_document['dataset']}: "
    if status == "up_to_date":
        return [head + f"up to date (schema version {current})"]
    verdicts = {
        "new": "new tables, created by the first job",
        "safe": "safe: the next job applies it",
        "unsafe": f"UNSAFE: jobs fail until `{plan_document['command']}`",
    }
    versions = f"version {current or '-'} -> {plan_document['next_version'] or current}"
    lines = [head + f"{versions}, {verdicts[status]}"]
    for change in plan_document["changes"]:
        mark = "ok    " if change["safe"] else "UNSAFE"
        what = change["kind"] + (f" {change['column']}" if change["column"] else "")
        if change["from"] is not None and change["to"] is not None:
            what += f": {change['from']} -> {change['to']}"
        elif change["to"] is not None:
            what += f" ({change['to']})"
        lines.append(f"  {mark} {what}: {change['reason']}")
    if plan_document["ddl"]:
        lines.append("  DDL:")
        for statement in plan_document["ddl"]:
            lines += [f"    {line}" for line in statement.splitlines()]
    return lines


@datasets.command(
    "plan",
    help=(
        "Show what each dataset's storage needs to match its contract (or DATASET's only): "
        "every change, whether jobs apply it themselves (safe) or an operator must "
        "(`datasets migrate --allow-destructive`), and the DDL. Changes nothing."
    ),
)
@click.argument("dataset", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print the plans as a JSON list.")
@_errors_to_exit_code
def datasets_plan(dataset: str | None, as_json: bool) -> None:
    from dw_pipelines.services import build_service, dispose

    service = build_service(_settings())
    try:
        contracts = [service.contracts.get(dataset)] if dataset else list(service.contracts)
        plans = [service.warehouse.plan(c).to_dict() for c in contracts]
    finally:
        dispose(service)
    if as_json:
        _print_json(plans)
        return
    for plan_document in plans:
        click.echo("\n".join(_plan_lines(plan_document)))


@datasets.command(
    "migrate",
    help=(
        "Apply DATASET's plan now: show it, ask, then apply it in one transaction under the "
        "warehouse's DDL lock and record the new schema version with the operator. An unsafe "
        "plan (drop, rename, narrowing, new key or write mode) needs --allow-destructive."
    ),
)
@click.argument("dataset")
@click.option(
    "--allow-destructive",
    is_flag=True,
    help="Apply changes that can lose data or break readers (they are shown first).",
)
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.option(
    "--operator",
    default=lambda: getpass.getuser(),
    show_default="the current user",
    help="Who applies the change (recorded with the schema version).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the plan and the outcome as JSON.")
@_errors_to_exit_code
def datasets_migrate(
    dataset: str, allow_destructive: bool, yes: bool, operator: str, as_json: bool
) -> None:
    from dw_pipelines.core.errors import ConfigurationError
    from dw_pipelines.services import build_service, dispose

    service = build_service(_settings())
    try:
        contract = service.contracts.get(dataset)
        shown = service.warehouse.plan(contract)
        document = shown.to_dict()
        if not as_json:
            click.echo("\n".join(_plan_lines(document)))
        if shown.up_to_date:
            if as_json:
                _print_json(
                    {"plan": document, "applied": False, "version": document["current_version"]}
                )
            return
        if not shown.safe and not allow_destructive:
            raise ConfigurationError(
                f"dataset '{dataset}': the plan has unsafe changes (marked UNSAFE); nothing was "
                "applied. Re-run with --allow-destructive to apply them"
            )
        if not yes:
            click.confirm(f"Apply this plan to dataset '{dataset}'?", abort=True, err=True)
        _, version = service.warehouse.migrate(
            contract,
            applied_by=f"{operator} (datasets migrate)",
            allow_destructive=allow_destructive,
            expected=shown,
        )
    finally:
        dispose(service)
    if as_json:
        _print_json({"plan": document, "applied": True, "version": version})
    else:
        click.echo(f"applied: dataset '{dataset}' is at schema version {version}")


@datasets.command(
    "history", help="List DATASET's schema versions: when, by whom, what changed, the DDL."
)
@click.argument("dataset")
@click.option("--json", "as_json", is_flag=True, help="Print the versions as a JSON list.")
@_errors_to_exit_code
def datasets_history(dataset: str, as_json: bool) -> None:
    from dw_pipelines.services import build_service, dispose

    service = build_service(_settings())
    try:
        service.contracts.get(dataset)
        versions = service.warehouse.evolution.history(dataset)
    finally:
        dispose(service)
    if as_json:
        _print_json(versions)
        return
    rows = [
        [
            v["version"],
            str(v["applied_at"])[:19],
            v["applied_by"],
            "yes" if v["destructive"] else "",
            "; ".join(c["kind"] + (f" {c['column']}" if c["column"] else "") for c in v["changes"])[
                :80
            ],
        ]
        for v in versions
    ]
    click.echo(format_table(["version", "applied at", "by", "destructive", "changes"], rows))


@datasets.command(
    "infer",
    help=(
        "Draft a contract from FILE (CSV, JSON Lines, JSON array or Parquet; a local path or "
        "s3://bucket/key): columns as the file names them, warehouse names by the naming "
        "convention, types from the first 10,000 rows (or 16 MiB), the CSV dialect. Prints "
        "YAML, or writes it with -o; review it, then `datasets check` it."
    ),
)
@click.argument("file")
@click.option("--name", default=None, help="Dataset name [default: from -o, else the file].")
@click.option(
    "--primary-key",
    "primary_key",
    multiple=True,
    help="A key column, as the file names it (repeat, or separate with commas).",
)
@click.option(
    "--write-mode",
    type=click.Choice(["append", "merge"]),
    default="append",
    show_default=True,
    help="merge needs --primary-key.",
)
@click.option(
    "--format", "fmt", default=None, help="csv, parquet, jsonl or json [default: extension]."
)
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write the draft to this file (refused if it exists) instead of printing it.",
)
@click.option("--sample-rows", type=click.IntRange(min=1), default=10_000, show_default=True)
@_errors_to_exit_code
def datasets_infer(
    file: str,
    name: str | None,
    primary_key: tuple[str, ...],
    write_mode: str,
    fmt: str | None,
    output: Path | None,
    sample_rows: int,
) -> None:
    from dw_pipelines.core.commands import infer_format
    from dw_pipelines.core.infer import infer_contract
    from dw_pipelines.core.objectstore import (
        ObjectSource,
        ObjectStore,
        is_object_uri,
        parse_location,
    )
    from dw_pipelines.core.readers import open_source

    fmt = fmt or infer_format(file)
    if fmt is None:
        raise click.UsageError(f"cannot tell the format of {file} from its name; pass --format")
    if output is not None and output.exists():
        raise click.UsageError(f"{output} exists; remove it or choose another -o")
    if is_object_uri(file):
        store = ObjectStore(_settings().s3_options)
        location = parse_location(file)
        source = open_source(ObjectSource(location, store.stat(location), store), fmt)
    else:
        source = open_source(Path(file).expanduser().resolve(), fmt)
    if output is not None:
        # A contract file is named after its dataset (`datasets check` insists).
        from dw_pipelines.core.contracts import IDENTIFIER_PATTERN

        if name is not None and output.stem != name:
            raise click.UsageError(f"-o {output}: the contract of dataset {name} is {name}.yaml")
        if not IDENTIFIER_PATTERN.fullmatch(output.stem):
            raise click.UsageError(
                f"-o {output}: a contract file is named after its dataset, and "
                f"'{output.stem}' is not a dataset name (lower-case letters, digits, _)"
            )
        name = output.stem
    keys = [k.strip() for entry in primary_key for k in entry.split(",") if k.strip()]
    draft = infer_contract(
        source, name=name, primary_key=keys, write_mode=write_mode, sample_rows=sample_rows
    )
    text = draft.to_yaml()
    if output is None:
        click.echo(text, nl=False)
        return
    output.write_text(text, encoding="utf-8")
    click.echo(
        f"wrote {output}: dataset {draft.document['name']}, {len(draft.document['columns'])} "
        f"columns from {draft.rows_sampled} row(s)"
        + (f"; {len(draft.notes)} note(s) at its top" if draft.notes else ""),
        err=True,
    )


@main.group(help="Prometheus metrics of the outbox and audit trail.")
def metrics() -> None:
    pass


@metrics.command(
    "serve",
    help=(
        "Serve Prometheus metrics read from the outbox at scrape time on /metrics, with /healthz "
        "and /readyz (database reachable). Stops on SIGTERM or SIGINT."
    ),
)
@click.option("--port", type=click.IntRange(0, 65535), default=9464, show_default=True)
@click.option("--host", default="0.0.0.0", show_default=True, help="Address to listen on.")
@_errors_to_exit_code
def metrics_serve(port: int, host: str) -> None:
    import logging

    from dw_pipelines.metrics import serve

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    serve(_settings(), host, port)


@main.command(help="Run the whole worker locally on the embedded default and show the result.")
@click.option("--timeout", type=int, default=300, show_default=True, help="Seconds to wait.")
@_errors_to_exit_code
def demo(timeout: int) -> None:
    from dw_pipelines.demo import run_demo

    sys.exit(run_demo(_settings(), timeout_seconds=timeout))


def format_table(headers: list[str], rows: list[list[Any]]) -> str:
    cells = [[str(h) for h in headers], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


if __name__ == "__main__":
    main()
