"""Benchmark-only code location: the real `dw_pipelines` definitions plus a trivial job.

`dispatch.py --sections throughput` points the daemon's workspace.yaml at this file, so the
ingestion runs and the reference runs of `bench_noop_job` come from the same code location:
every run process imports exactly the same modules (dagster, dw_pipelines and its contracts), and
the difference between the two kinds of run is what a `dw_ingestion_job` run does beyond
Dagster's own per-run machinery. Not part of the package; never deployed.
"""

import dagster as dg

# The module, not its `defs`: one Definitions object at module level (the merged one below),
# so Dagster finds it unambiguously.
import dw_pipelines.definitions as dw_definitions

NOOP_JOB_NAME = "bench_noop_job"


@dg.asset
def bench_noop_a() -> None:
    return None


@dg.asset(deps=[bench_noop_a])
def bench_noop_b() -> None:
    return None


# The in-process executor, as dw_ingestion_job: a process per step would cost the reference
# seconds per run that the ingestion runs do not pay.
bench_noop_job = dg.define_asset_job(
    NOOP_JOB_NAME, selection=[bench_noop_a, bench_noop_b], executor_def=dg.in_process_executor
)

defs = dg.Definitions.merge(
    dw_definitions.defs,
    dg.Definitions(assets=[bench_noop_a, bench_noop_b], jobs=[bench_noop_job]),
)
