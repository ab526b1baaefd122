"""Per dataset, two assets: `staging/<dataset>` and `storage/<dataset>`.

Which outbox jobs a run loads:

* a run tagged `dw/job_id` (the sensor, `dw-pipelines outbox retry`, UI re-executions, which
  inherit tags) loads that job;
* an untagged run of a partition (a UI backfill or "Materialize" of a business date) re-loads
  every settled (COMPLETED or FAILED) job of that dataset and date, in enqueue order; jobs still
  in flight belong to their own runs. Its storage step promotes the jobs its staging step took.

The asset bodies only call `core.ingestion`; `_guarded` keeps the outbox row in step with the run:

* permanent error: FAILED at once, no retry;
* transient error: `RETRY_SCHEDULED` and a Dagster retry after a capped, jittered exponential
  delay (`core.retry`); when the budget is used up: FAILED, audited `DEAD_LETTERED`.
"""

import datetime as dt
from collections.abc import Callable, Iterator
from typing import TypeVar

import dagster as dg
from dagster._core.definitions.asset_checks.asset_check_evaluation import (
    AssetCheckEvaluationTargetMaterializationData,
)

from dw_pipelines.core import quality
from dw_pipelines.core.contracts import ColumnSpec, DatasetContract
from dw_pipelines.core.db import utcnow
from dw_pipelines.core.errors import DwError, is_permanent
from dw_pipelines.core.ingestion import PromoteResult, StageResult
from dw_pipelines.core.logs import log_extra, log_fields
from dw_pipelines.core.outbox import OutboxJob
from dw_pipelines.core.retry import RetryPolicy
from dw_pipelines.defs.resources import DwResource
from dw_pipelines.settings import TAG_DATASET, TAG_JOB_ID

T = TypeVar("T")
# What the asset bodies yield: the materialization, then their checks' outputs and verdicts.
StepEvent = dg.MaterializeResult | dg.Output | dg.AssetCheckEvaluation | dg.AssetCheckResult
SETTLED_STATUSES = ("COMPLETED", "FAILED")


def staging_key(dataset: str) -> dg.AssetKey:
    return dg.AssetKey(["staging", dataset])


def storage_key(dataset: str) -> dg.AssetKey:
    return dg.AssetKey(["storage", dataset])


def load_check_keys(contract: DatasetContract) -> list[dg.AssetCheckKey]:
    """The checks an ingestion run evaluates: the load checks of both assets, not freshness.
    Freshness is not partitioned, and Dagster leaves an unpartitioned check planned in a
    partitioned run as a stray "skipped" execution; the health sensor evaluates it instead."""
    return [
        dg.AssetCheckKey(key(contract.name), name)
        for key in (staging_key, storage_key)
        for name in quality.check_names(contract)
    ]


def describe(exc: BaseException) -> str:
    """One line for `last_error`: our messages as they are, others with their type."""
    if isinstance(exc, DwError):
        return str(exc)
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".strip()


def _guarded(
    context: dg.AssetExecutionContext,
    dw: DwResource,
    job_id: str,
    policy: RetryPolicy,
    action: Callable[[], T],
) -> T:
    """Run one job's step; turn its errors into outbox state and a Dagster retry decision."""
    run_id = context.run_id
    try:
        return action()
    except dg.Failure:
        raise
    except Exception as exc:
        error = dw.service.redact(describe(exc))
        if is_permanent(exc):
            _record(context, lambda: dw.service.fail(job_id, run_id, error))
            context.log.error(
                f"{log_fields(job_id, None, None, run_id)} job FAILED: {error}",
                extra=log_extra("job_failed", job_id=job_id, run_id=run_id),
            )
            raise dg.Failure(
                description=error,
                metadata={"job_id": job_id, "error_type": type(exc).__name__},
                allow_retries=False,
            ) from exc
        retry_number = context.retry_number
        if retry_number < policy.max_retries:
            delay = policy.delay(retry_number)
            _record(
                context,
                lambda: dw.queue.schedule_retry(job_id, run_id, error, delay, retry_number + 1),
            )
            context.log.warning(
                f"{log_fields(job_id, None, None, run_id)} transient error, "
                f"retry {retry_number + 1} of {policy.max_retries} in {delay:.1f}s: {error}",
                extra=log_extra("retry_scheduled", job_id=job_id, run_id=run_id),
            )
            raise dg.RetryRequested(max_retries=policy.max_retries, seconds_to_wait=delay) from exc
        attempts = retry_number + 1
        _record(context, lambda: dw.queue.dead_letter(job_id, run_id, error, attempts))
        raise dg.Failure(
            description=f"retries exhausted after {attempts} attempts: {error}",
            metadata={"job_id": job_id, "attempts": attempts},
            allow_retries=False,
        ) from exc


def _record(context: dg.AssetExecutionContext, write: Callable[[], object]) -> None:
    try:
        write()
    except Exception as exc:  # the original error matters more; the reconciler repairs the row
        context.log.error(f"could not record the failure in the outbox: {describe(exc)}")


def _tagged_job(context: dg.AssetExecutionContext) -> str | None:
    return context.run.tags.get(TAG_JOB_ID) or None


def _job_is_for(
    context: dg.AssetExecutionContext, dw: DwResource, job_id: str, dataset: str
) -> bool:
    """Whether the tagged job loads `dataset` (the run's dw/dataset tag, else the outbox row)."""
    tagged_dataset = context.run.tags.get(TAG_DATASET)
    if tagged_dataset:
        return tagged_dataset == dataset
    return dw.queue.get(job_id).dataset == dataset


def _partition_date(context: dg.AssetExecutionContext) -> dt.date:
    return dt.date.fromisoformat(context.partition_key)


def _owners(contract: DatasetContract) -> list[str]:
    owner = contract.owner or ""
    return [owner] if "@" in owner or owner.startswith("team:") else []


def _column_description(column: ColumnSpec) -> str | None:
    """The contract's description, led by the file's name for the column where it differs."""
    if not column.renamed:
        return column.description
    source = f"Source column: `{column.source}`."
    return f"{source} {column.description}" if column.description else source


def column_schema(contract: DatasetContract, lineage: bool) -> dg.TableSchema:
    """The contract's columns as Dagster shows them (plus the lineage columns in storage)."""
    columns = [
        dg.TableColumn(
            c.name,
            str(c.type),
            description=_column_description(c),
            constraints=dg.TableColumnConstraints(
                nullable=c.nullable,
                # Merge keys are unique per tenant, append keys within a job's file.
                other=["primary key"] if c.name in contract.primary_key else None,
            ),
        )
        for c in contract.columns
    ]
    if lineage:
        columns += [
            dg.TableColumn(
                "_dw_job_id", "string", "Outbox job that last wrote the row",
                dg.TableColumnConstraints(nullable=False),
            ),
            dg.TableColumn(
                "_dw_tenant_id", "string", "Tenant the row belongs to",
                dg.TableColumnConstraints(nullable=False),
            ),
            dg.TableColumn(
                "_dw_loaded_at", "timestamp", "When that job was promoted",
                dg.TableColumnConstraints(nullable=False),
            ),
        ]  # fmt: skip
    return dg.TableSchema(columns=columns)


def _check_specs(
    contract: DatasetContract,
    asset_key: dg.AssetKey,
    blocking: bool,
    partitions_def: dg.PartitionsDefinition,
) -> list[dg.AssetCheckSpec]:
    """Load checks are partitioned like their asset (a verdict per business date); freshness
    judges the whole dataset, so it is not."""
    what = "staged" if blocking else "stored"
    descriptions = {
        quality.ROWS_MATCH_SOURCE: f"Rows {what} for each job = rows read from its source file.",
        quality.PRIMARY_KEY_UNIQUE: (
            f"Primary key ({', '.join(contract.primary_key)}) unique among the {what} rows"
            + (" of each tenant." if contract.write_mode == "merge" and not blocking else ".")
        ),
        quality.REQUIRED_NOT_NULL: (
            f"No NULL in the required columns ({', '.join(contract.required_columns)})."
        ),
    }
    if blocking:
        descriptions = {k: v + " Blocks promotion to storage." for k, v in descriptions.items()}
    specs = [
        dg.AssetCheckSpec(
            name,
            asset=asset_key,
            description=descriptions[name],
            blocking=blocking,
            partitions_def=partitions_def,
        )
        for name in quality.check_names(contract)
    ]
    if not blocking and contract.freshness_max_age_hours:
        specs.append(
            dg.AssetCheckSpec(
                quality.FRESHNESS,
                asset=asset_key,
                description=(
                    f"A {contract.name} job was promoted within the last "
                    f"{contract.freshness_max_age_hours:g} hours (contract `freshness`). "
                    "Evaluated by the dw_outbox_health sensor, and on demand."
                ),
            )
        )
    return specs


def freshness_result(dw: DwResource, contract: DatasetContract) -> dg.AssetCheckResult:
    outcome = dw.quality.freshness(contract, utcnow())
    return dg.AssetCheckResult(
        asset_key=storage_key(contract.name),
        check_name=outcome.name,
        passed=outcome.passed,
        # Stale data is worth a look, but it blocks nothing and may be a quiet upstream day.
        severity=dg.AssetCheckSeverity.WARN,
        description=outcome.description,
        metadata={"result": outcome.description, **outcome.metadata},
    )


def _check_results(
    asset_key: dg.AssetKey, outcomes: list[quality.CheckOutcome]
) -> list[dg.AssetCheckResult]:
    return [
        dg.AssetCheckResult(
            asset_key=asset_key,
            check_name=o.name,
            passed=o.passed,
            description=o.description,
            metadata={"result": o.description, **o.metadata},
        )
        for o in outcomes
    ]


def _target_materialization(
    context: dg.AssetExecutionContext, asset_key: dg.AssetKey
) -> AssetCheckEvaluationTargetMaterializationData | None:
    """The materialization of `asset_key` this step has just recorded for its partition: the
    same event-log lookup Dagster makes for each `AssetCheckResult`, made once per step."""
    records = context.instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=asset_key, asset_partitions=[context.partition_key]),
        limit=1,
    ).records
    if not records:
        return None
    return AssetCheckEvaluationTargetMaterializationData(
        run_id=records[0].run_id, storage_id=records[0].storage_id, timestamp=records[0].timestamp
    )


def _check_evaluations(
    context: dg.AssetExecutionContext,
    asset_key: dg.AssetKey,
    outcomes: list[quality.CheckOutcome],
) -> Iterator[StepEvent]:
    """The load checks' verdicts on the materialization the step has just yielded.

    The events Dagster makes of an `AssetCheckResult` (the check's output, then its
    evaluation), built here to spare a run's fixed cost: for a partitioned step Dagster looks
    up the target materialization in the event log for every check result, twice when the
    results ride in a `MaterializeResult` (12 queries per run of six checks); one lookup here
    serves all of the step's checks. The evaluation is the one Dagster would build (partition,
    blocking, severity, target materialization), so it settles the check execution planned for
    the run and the UI shows the same per-partition verdicts; a failed blocking evaluation
    still fails the step once it has yielded everything. The lookup must come after the
    asset's `MaterializeResult` has been yielded (Dagster records it in between).
    """
    if not outcomes:
        return
    if not context.has_partition_key:  # not an ingestion run: let Dagster resolve the target
        yield from _check_results(asset_key, outcomes)
        return
    assets_def = context.assets_def
    output_names = {spec.key: name for name, spec in assets_def.check_specs_by_output_name.items()}
    target = _target_materialization(context, asset_key)
    for o in outcomes:
        key = dg.AssetCheckKey(asset_key, o.name)
        spec = assets_def.get_spec_for_check_key(key)
        if key in output_names:  # selected (else Dagster, too, lets the verdict through)
            yield dg.Output(None, output_name=output_names[key])
        yield dg.AssetCheckEvaluation(
            asset_key=asset_key,
            check_name=o.name,
            passed=o.passed,
            metadata={"result": o.description, **o.metadata},
            target_materialization_data=target,
            severity=dg.AssetCheckSeverity.ERROR,
            description=o.description,
            blocking=spec.blocking,
            partition=context.partition_key if spec.partitions_def is not None else None,
        )


def _outbox_link(job_ids: list[str]) -> dict[str, object]:
    """How to get from the materialization to the outbox rows (and back: runs carry dw/job_id)."""
    if len(job_ids) != 1:
        return {}
    return {"outbox_job": dg.MetadataValue.text(f"dw-pipelines outbox show {job_ids[0]}")}


def dataset_assets(
    contract: DatasetContract,
    partitions_def: dg.PartitionsDefinition,
    policy: RetryPolicy,
    warehouse_kind: str,
) -> list[dg.AssetsDefinition]:
    """The staging and storage assets of one dataset."""
    dataset = contract.name
    spec_common = {"group_name": dataset, "owners": _owners(contract), "skippable": True}
    # One-asset multi_assets with can_subset: every output (the asset and its inline checks) is
    # optional, because a run launched for the whole job (e.g. `dagster job launch`) materializes
    # only the tagged job's dataset and the other datasets' steps yield nothing.
    op_common = {"partitions_def": partitions_def, "can_subset": True}

    def stage_jobs(
        context: dg.AssetExecutionContext, dw: DwResource
    ) -> tuple[list[tuple[OutboxJob, StageResult]], list[str]] | None:
        """Stage the run's jobs: the tagged one, or every settled job of the partition.
        None when a whole-job launch has nothing for this dataset."""
        tagged = _tagged_job(context)
        if tagged and not _job_is_for(context, dw, tagged, dataset):
            return None
        if tagged:
            job_ids = [tagged]
        else:
            settled = dw.queue.jobs_for_partition(
                dataset, _partition_date(context), SETTLED_STATUSES
            )
            job_ids = [job.job_id for job in settled]
            context.log.info(
                f"partition {context.partition_key}: re-loading {len(job_ids)} settled "
                f"{dataset} job(s): {', '.join(job_ids) or 'none'}"
            )
        results, failures = [], []
        for job_id in job_ids:

            def stage(job_id: str = job_id):
                job = dw.service.start(job_id, context.run_id, dataset=dataset)
                fields = {"dataset": dataset, "tenant": job.tenant_id, "run_id": context.run_id}
                context.log.info(
                    f"{log_fields(job_id, dataset, job.tenant_id, context.run_id)} "
                    f"attempt={job.attempts}: staging {job.command.source_uri}",
                    extra=log_extra("staging", job_id=job_id, **fields),
                )
                staged = dw.service.stage(job, context.run_id)
                context.log.info(
                    f"{log_fields(job_id, dataset, job.tenant_id, context.run_id)} "
                    f"staged {staged.rows} rows in {staged.seconds:.2f}s",
                    extra=log_extra("staged", job_id=job_id, **fields),
                )
                return job, staged

            try:
                results.append(_guarded(context, dw, job_id, policy, stage))
            except dg.Failure as failure:
                if tagged:
                    raise
                failures.append(f"{job_id}: {failure.description}")
        if failures:
            raise dg.Failure(
                description=f"{len(failures)} job(s) failed: " + "; ".join(failures),
                allow_retries=False,
            )
        return results, job_ids

    def check_staged(
        context: dg.AssetExecutionContext,
        dw: DwResource,
        results: list[tuple[OutboxJob, StageResult]],
    ) -> list[quality.CheckOutcome]:
        """The staging checks; a failed one fails its jobs (permanently: a re-load would stage
        the same rows) before the step is failed and promotion is blocked."""
        outcomes = dw.quality.check_staging(
            contract, [quality.JobRows(job.job_id, job.tenant_id, r.rows) for job, r in results]
        )
        failed = [o for o in outcomes if not o.passed]
        if failed:
            error = "; ".join(f"staging check {o.name} failed: {o.description}" for o in failed)
            for job, _ in results:
                _record(context, lambda job=job: dw.service.fail(job.job_id, context.run_id, error))
                context.log.error(
                    f"{log_fields(job.job_id, dataset, job.tenant_id, context.run_id)} {error}",
                    extra=log_extra(
                        "staging_check_failed",
                        job_id=job.job_id,
                        dataset=dataset,
                        tenant=job.tenant_id,
                        run_id=context.run_id,
                    ),
                )
        return outcomes

    @dg.multi_asset(
        name=f"staging__{dataset}",
        specs=[
            dg.AssetSpec(
                staging_key(dataset),
                description=(
                    f"Validated rows of `{dataset}` jobs, loaded with COPY into "
                    f"dw_staging.{dataset} (one partition per job). {contract.description or ''}"
                ).strip(),
                kinds={warehouse_kind, "csv", "parquet", "jsonl", "json"},
                metadata={
                    "dagster/column_schema": column_schema(contract, lineage=False),
                    "dagster/table_name": f"dw_staging.{dataset}",
                    "contract": str(contract.path or dataset),
                    "write_mode": contract.write_mode,
                },
                **spec_common,
            )
        ],
        check_specs=_check_specs(contract, staging_key(dataset), True, partitions_def),
        **op_common,
    )
    def staging_asset(context: dg.AssetExecutionContext, dw: DwResource) -> Iterator[StepEvent]:
        if staging_key(dataset) not in context.selected_asset_keys:
            return  # only checks selected: they judge a load, so they run with one
        staged = stage_jobs(context, dw)
        if staged is None:
            return  # a whole-job launch: this dataset has nothing to do (storage is skipped)
        results, _ = staged
        outcomes = check_staged(context, dw, results)
        preview = None
        if results:
            first = results[0][1].preview
            preview = quality.markdown_table(
                contract.column_names, [[row[c] for c in contract.column_names] for row in first]
            )
        yield dg.MaterializeResult(
            asset_key=staging_key(dataset), metadata=_staging_metadata(results, preview)
        )
        yield from _check_evaluations(context, staging_key(dataset), outcomes)

    @dg.multi_asset(
        name=f"storage__{dataset}",
        specs=[
            dg.AssetSpec(
                storage_key(dataset),
                deps=[staging_key(dataset)],
                description=(
                    f"dw_storage.{dataset}: promoted atomically from staging "
                    f"({contract.write_mode}; lineage in _dw_job_id, _dw_tenant_id, "
                    "_dw_loaded_at). Materializing a partition re-loads every settled job of "
                    "that business date."
                ),
                kinds={warehouse_kind, "table"},
                metadata={
                    "dagster/column_schema": column_schema(contract, lineage=True),
                    "dagster/table_name": f"dw_storage.{dataset}",
                    "contract": str(contract.path or dataset),
                    "write_mode": contract.write_mode,
                    **(
                        {"freshness_max_age_hours": contract.freshness_max_age_hours}
                        if contract.freshness_max_age_hours
                        else {}
                    ),
                },
                **spec_common,
            )
        ],
        check_specs=_check_specs(contract, storage_key(dataset), False, partitions_def),
        **op_common,
    )
    def storage_asset(context: dg.AssetExecutionContext, dw: DwResource) -> Iterator[StepEvent]:
        freshness_key = dg.AssetCheckKey(storage_key(dataset), quality.FRESHNESS)
        if storage_key(dataset) not in context.selected_asset_keys:
            # Only checks selected (an operator's "Execute" in the UI): freshness can run alone;
            # the other checks judge a load, so they run with one.
            if freshness_key in context.selected_asset_check_keys:
                yield freshness_result(dw, contract)
            return
        tagged = _tagged_job(context)
        if tagged and not _job_is_for(context, dw, tagged, dataset):
            return
        gate: list[quality.CheckOutcome] = []
        if tagged:
            job_ids = [tagged]
        elif staging_key(dataset) not in (context.run.asset_selection or {staging_key(dataset)}):
            # A backfill of storage alone: stage the partition's jobs here, gated by the same
            # checks the staging step would run.
            staged = stage_jobs(context, dw)
            if staged is None:
                return
            results, job_ids = staged
            gate = check_staged(context, dw, results)
            failed = [o for o in gate if not o.passed]
            if failed:
                raise dg.Failure(
                    description="; ".join(
                        f"staging check {o.name}: {o.description}" for o in failed
                    ),
                    allow_retries=False,
                )
        else:
            # The jobs this run's staging step took (or its parent's, when re-executed).
            holders = [context.run_id]
            parent = context.run.tags.get("dagster/parent_run_id")
            if parent:
                holders.append(parent)
            job_ids = [job.job_id for job in dw.queue.jobs_held_by(holders, dataset)]
        results = []
        for job_id in job_ids:

            def promote(job_id: str = job_id):
                return dw.service.promote(
                    job_id, context.run_id, dataset=dataset, keep_staging=True
                )

            result = _guarded(context, dw, job_id, policy, promote)
            context.log.info(
                f"{log_fields(job_id, dataset, result.tenant_id, context.run_id)} "
                f"promoted {result.rows} rows ({result.write_mode}); job COMPLETED",
                extra=log_extra(
                    "promoted",
                    job_id=job_id,
                    dataset=dataset,
                    tenant=result.tenant_id,
                    run_id=context.run_id,
                ),
            )
            results.append(result)
        outcomes = _storage_checks(context, dw, results)
        yield dg.MaterializeResult(
            asset_key=storage_key(dataset),
            metadata={
                "jobs": dg.MetadataValue.int(len(results)),
                "job_id": ", ".join(r.job_id for r in results),
                "tenant": ", ".join(sorted({r.tenant_id for r in results})),
                "rows": dg.MetadataValue.int(sum(r.rows for r in results)),
                "write_mode": contract.write_mode,
                "inserted": dg.MetadataValue.int(sum(r.inserted for r in results)),
                "deleted": dg.MetadataValue.int(sum(r.deleted for r in results)),
                # merge: rows whose key a job enqueued later had already written (kept)
                **(
                    {"kept_newer": dg.MetadataValue.int(kept)}
                    if (kept := sum(r.kept_newer for r in results))
                    else {}
                ),
                # merge: "rewrite" when a job replaced most of the table (readers waited on it)
                "strategy": ", ".join(sorted({r.strategy for r in results})),
                # The contract version storage had; the column schema with it, so that the
                # UI's column-schema history shows what each version changed.
                "schema_version": dg.MetadataValue.int(
                    max((r.schema_version or 0 for r in results), default=0)
                ),
                "dagster/column_schema": column_schema(contract, lineage=True),
                "duration_seconds": dg.MetadataValue.float(
                    float(round(sum(r.seconds for r in results), 3))
                ),
                **_outbox_link([r.job_id for r in results]),
                **({"staging_checks": "; ".join(o.description for o in gate)} if gate else {}),
            },
        )
        yield from _check_evaluations(context, storage_key(dataset), outcomes)
        if freshness_key in context.selected_asset_check_keys:
            yield freshness_result(dw, contract)

    def _storage_checks(
        context: dg.AssetExecutionContext, dw: DwResource, results: list[PromoteResult]
    ) -> list[quality.CheckOutcome]:
        """Storage checks, then the staged rows are dropped. The jobs are COMPLETED by now: a
        failed check flags the data in the UI; it does not undo the load."""
        jobs = [quality.JobRows(r.job_id, r.tenant_id, r.rows, r.loaded_at) for r in results]
        try:
            return dw.quality.check_storage(contract, jobs)
        except Exception as exc:  # a check that cannot run is a failed check, not a failed load
            error = dw.service.redact(describe(exc))
            return [
                quality.CheckOutcome(name, passed=False, description=f"could not run: {error}")
                for name in quality.check_names(contract)
            ]
        finally:
            for r in results:
                try:
                    dw.service.discard_staging(r.job_id, dataset)
                except Exception as exc:  # leftover scratch: the job's next staging replaces it
                    context.log.warning(f"could not drop staging of job {r.job_id}: {exc}")

    return [staging_asset, storage_asset]


def _staging_metadata(
    results: list[tuple[OutboxJob, StageResult]], preview: str | None
) -> dict[str, object]:
    jobs = [job for job, _ in results]
    staged = [result for _, result in results]
    metadata: dict[str, object] = {
        "jobs": dg.MetadataValue.int(len(staged)),
        "job_id": ", ".join(job.job_id for job in jobs),
        "tenant": ", ".join(sorted({job.tenant_id for job in jobs})),
        "rows": dg.MetadataValue.int(sum(r.rows for r in staged)),
        "source": ", ".join(r.source_uri for r in staged),
        "format": ", ".join(sorted({r.format for r in staged})),
        "bytes": dg.MetadataValue.int(sum(r.size_bytes for r in staged)),
        "duration_seconds": dg.MetadataValue.float(float(round(sum(r.seconds for r in staged), 3))),
        **_outbox_link([job.job_id for job in jobs]),
    }
    # What the contract's column policies did, over the jobs, each column once.
    ignored = dict.fromkeys(c for r in staged for c in r.ignored_columns)
    if ignored:
        metadata["ignored_columns"] = ", ".join(ignored)
    missing = dict.fromkeys(c for r in staged for c in r.missing_columns)
    if missing:
        metadata["missing_columns"] = ", ".join(missing)
    if preview is not None:
        metadata["preview"] = dg.MetadataValue.md(preview)
    return metadata
