"""Business-date partitions shared by every ingestion asset.

Daily and bounded (see DESIGN.md: no dynamic partition per job). `end_offset=1` makes today's
date a partition, so a job for today's business date can run today; a UI backfill of a date
re-processes that date's jobs.
"""

import dagster as dg

from dw_pipelines.core.commands import FIRST_BUSINESS_DATE

business_date_partitions = dg.DailyPartitionsDefinition(
    start_date=FIRST_BUSINESS_DATE.isoformat(), end_offset=1, timezone="UTC"
)
