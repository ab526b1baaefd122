"""The one place that reads the environment.

Every `DW_*` variable the worker understands is read here, once, into a frozen `Settings`. Nothing
else in the package calls `os.environ`: code receives a `Settings` (or values taken from it), so
tests build settings explicitly and no module changes behaviour at import time.

With nothing set, everything defaults to files under `DW_HOME` (default `./.dw`): the *embedded
default*, SQLite for the outbox, the audit trail and the warehouse.
"""

import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from dw_pipelines.core.errors import ConfigurationError
from dw_pipelines.core.logs import LOG_FORMATS
from dw_pipelines.core.objectstore import S3Options, split_endpoint
from dw_pipelines.core.retry import RetryPolicy

PACKAGE_DIR = Path(__file__).resolve().parent
SHIPPED_DATASETS_DIR = PACKAGE_DIR / "datasets"
SAMPLES_DIR = PACKAGE_DIR / "samples"

# Names other parts (Helm values, docs, dedup scope) rely on; never rename them.
CODE_LOCATION_NAME = "dw_pipelines"
SENSOR_NAME = "dw_outbox_sensor"
INGESTION_JOB_NAME = "dw_ingestion_job"
TAG_JOB_ID = "dw/job_id"
TAG_DATASET = "dw/dataset"
TAG_TENANT = "dw/tenant"
# Read by Dagster 1.13.27's daemons from each run's tags (they replace the instance settings
# run_monitoring.max_runtime_seconds / run_retries.retry_on_asset_or_op_failure for that run):
# dagster/_daemon/monitoring/run_monitoring.py `check_run_timeout` (float seconds; the run is
# canceled, then marked FAILURE) and dagster/_core/execution/retries.py
# `auto_reexecution_should_retry_run` (boolean text). Tags, because the official Helm chart
# renders neither instance setting into its dagster.yaml.
TAG_MAX_RUNTIME = "dagster/max_runtime"
TAG_RETRY_ON_ASSET_OR_OP_FAILURE = "dagster/retry_on_asset_or_op_failure"

_SENSOR_STATUSES = ("RUNNING", "STOPPED")


@dataclass(frozen=True)
class Settings:
    """Runtime configuration. Build with `Settings.from_env()`; tests pass values directly."""

    home: Path
    database_url: str
    warehouse_url: str
    landing_roots: tuple[str, ...]
    datasets_path: Path | None = None
    sensor_batch_size: int = 100
    sensor_interval_seconds: int = 15
    sensor_default_status: str = "RUNNING"
    # A SENT row whose run never appeared (daemon died mid-tick) is re-requested after this long;
    # the run_key makes the re-request harmless when the run does exist.
    sensor_redispatch_after_seconds: int = 120
    retry_max_retries: int = 5
    retry_base_delay_seconds: float = 10.0
    retry_max_delay_seconds: float = 3600.0
    read_batch_rows: int = 65_536
    max_value_bytes: int = 1 << 20
    pg_load_method: str = "auto"
    # A large merge rewrites its storage table (see `Warehouse.promote`) when at least this share
    # of the stored rows changes; None ("off") always merges in place.
    merge_rewrite_share: float | None = 0.5
    merge_rewrite_min_rows: int = 100_000  # smaller jobs always merge in place
    # An append job of at least this many rows becomes a partition of its (partitioned) storage
    # table instead of being copied into it (`core/warehouse/promote_attach.py`); None ("off"):
    # every job is copied. It also bounds the partition count: one per job this large.
    attach_min_rows: int | None = 1_000_000
    # Object storage (s3:// landing roots). Credentials are not settings: the AWS SDK reads them
    # from its standard places (AWS_* variables, web identity / IRSA, instance roles), so no
    # secret passes through this object, its repr or Dagster's config.
    s3_endpoint_url: str | None = None
    s3_region: str | None = None
    s3_connect_timeout_seconds: float = 10.0
    s3_request_timeout_seconds: float = 30.0
    s3_max_attempts: int = 3
    # A run refreshes its PROCESSING rows' heartbeat this often ...
    heartbeat_seconds: float = 30.0
    # ... and the reconciler calls a run dead when its beat is older than this.
    reconcile_after_seconds: int = 300
    reconcile_interval_seconds: int = 60
    # The outbox health sensor records the queue's state (and dataset freshness) this often.
    health_interval_seconds: int = 300
    fault_injection: str = ""
    # Hard cap on a run's wall time, enforced by Dagster's run monitoring daemon (0: no cap). It
    # must exceed a load plus the worker's own retry waits (~5 min with the defaults, any one
    # capped at DW_RETRY_MAX_DELAY_SECONDS).
    run_max_runtime_seconds: int = 7200
    # Whether a run whose steps failed is re-executed by Dagster's run retries (when a run opts
    # in with dagster/max_retries): no, the steps' own retries are spent by then.
    run_retry_on_asset_or_op_failure: bool = False
    # "text" for a terminal, "json" for a cluster's log pipeline (core/logs.py).
    log_format: str = "text"
    # `metrics serve`: each scrape reads the outbox in one read-only transaction bounded by this
    # statement timeout (PostgreSQL only); connects and `/readyz` give up after the connect timeout.
    metrics_statement_timeout_ms: int = 5000
    metrics_connect_timeout_seconds: int = 3
    database_url_from_env: bool = False
    warehouse_url_from_env: bool = False

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "Settings":
        """Read `DW_*` variables; unset ones fall back to the embedded default under `DW_HOME`."""
        env = os.environ if environ is None else environ
        home = Path(env.get("DW_HOME") or ".dw").expanduser().resolve()
        database_url_raw = env.get("DW_DATABASE_URL")
        database_url = normalize_database_url(database_url_raw or sqlite_url(home / "dw.db"))
        warehouse_url_raw = env.get("DW_WAREHOUSE_URL")
        warehouse_url = (
            normalize_database_url(warehouse_url_raw) if warehouse_url_raw else database_url
        )
        roots_raw = env.get("DW_LANDING_ROOT")
        if roots_raw:
            landing_roots = split_landing_roots(roots_raw)
        else:
            # Embedded default: a landing folder in DW_HOME plus the shipped sample files.
            landing_roots = (str(home / "landing"), str(SAMPLES_DIR))
        datasets_raw = env.get("DW_DATASETS_PATH")
        status = (env.get("DW_SENSOR_DEFAULT_STATUS") or "RUNNING").upper()
        if status not in _SENSOR_STATUSES:
            raise ConfigurationError(
                f"DW_SENSOR_DEFAULT_STATUS must be one of {', '.join(_SENSOR_STATUSES)}, "
                f"got {status!r}"
            )
        return cls(
            home=home,
            database_url=database_url,
            warehouse_url=warehouse_url,
            landing_roots=landing_roots,
            datasets_path=Path(datasets_raw).expanduser().resolve() if datasets_raw else None,
            sensor_batch_size=_int(env, "DW_SENSOR_BATCH_SIZE", 100, minimum=1),
            sensor_interval_seconds=_int(env, "DW_SENSOR_INTERVAL_SECONDS", 15, minimum=1),
            sensor_default_status=status,
            sensor_redispatch_after_seconds=_int(
                env, "DW_SENSOR_REDISPATCH_AFTER_SECONDS", 120, minimum=0
            ),
            retry_max_retries=_int(env, "DW_RETRY_MAX_RETRIES", 5, minimum=0),
            retry_base_delay_seconds=_float(env, "DW_RETRY_BASE_DELAY_SECONDS", 10.0),
            retry_max_delay_seconds=_float(env, "DW_RETRY_MAX_DELAY_SECONDS", 3600.0),
            read_batch_rows=_int(env, "DW_READ_BATCH_ROWS", 65_536, minimum=1),
            max_value_bytes=_int(env, "DW_MAX_VALUE_BYTES", 1 << 20, minimum=1),
            pg_load_method=env.get("DW_PG_LOAD_METHOD") or "auto",
            merge_rewrite_share=_share_or_off(env, "DW_MERGE_REWRITE_SHARE", 0.5),
            merge_rewrite_min_rows=_int(env, "DW_MERGE_REWRITE_MIN_ROWS", 100_000, minimum=1),
            attach_min_rows=_int_or_off(env, "DW_ATTACH_MIN_ROWS", 1_000_000, minimum=1),
            s3_endpoint_url=_endpoint(env.get("DW_S3_ENDPOINT_URL")),
            s3_region=env.get("DW_S3_REGION") or None,
            s3_connect_timeout_seconds=_float(env, "DW_S3_CONNECT_TIMEOUT_SECONDS", 10.0),
            s3_request_timeout_seconds=_float(env, "DW_S3_REQUEST_TIMEOUT_SECONDS", 30.0),
            s3_max_attempts=_int(env, "DW_S3_MAX_ATTEMPTS", 3, minimum=1),
            heartbeat_seconds=_float(env, "DW_HEARTBEAT_SECONDS", 30.0),
            reconcile_after_seconds=_int(env, "DW_RECONCILE_AFTER_SECONDS", 300, minimum=1),
            reconcile_interval_seconds=_int(env, "DW_RECONCILE_INTERVAL_SECONDS", 60, minimum=1),
            health_interval_seconds=_int(env, "DW_HEALTH_INTERVAL_SECONDS", 300, minimum=1),
            run_max_runtime_seconds=_int(env, "DW_RUN_MAX_RUNTIME_SECONDS", 7200, minimum=0),
            run_retry_on_asset_or_op_failure=_bool(
                env, "DW_RUN_RETRY_ON_ASSET_OR_OP_FAILURE", False
            ),
            log_format=_choice(env, "DW_LOG_FORMAT", "text", LOG_FORMATS),
            fault_injection=env.get("DW_FAULT_INJECTION", ""),
            metrics_statement_timeout_ms=_int(
                env, "DW_METRICS_STATEMENT_TIMEOUT_MS", 5000, minimum=1
            ),
            metrics_connect_timeout_seconds=_int(
                env, "DW_METRICS_CONNECT_TIMEOUT_SECONDS", 3, minimum=1
            ),
            database_url_from_env=bool(database_url_raw),
            warehouse_url_from_env=bool(warehouse_url_raw),
        )

    @property
    def retry_policy(self) -> RetryPolicy:
        return RetryPolicy(
            max_retries=self.retry_max_retries,
            base_delay_seconds=self.retry_base_delay_seconds,
            max_delay_seconds=self.retry_max_delay_seconds,
        )

    @property
    def run_policy_tags(self) -> dict[str, str]:
        """The run tags that carry the run cap and the retry rule (see TAG_MAX_RUNTIME)."""
        tags = {
            TAG_RETRY_ON_ASSET_OR_OP_FAILURE: str(self.run_retry_on_asset_or_op_failure).lower()
        }
        if self.run_max_runtime_seconds:
            tags[TAG_MAX_RUNTIME] = str(self.run_max_runtime_seconds)
        return tags

    @property
    def s3_options(self) -> S3Options:
        return S3Options(
            endpoint_url=self.s3_endpoint_url,
            region=self.s3_region,
            connect_timeout_seconds=self.s3_connect_timeout_seconds,
            request_timeout_seconds=self.s3_request_timeout_seconds,
            max_attempts=self.s3_max_attempts,
        )


def split_landing_roots(raw: str) -> tuple[str, ...]:
    """`DW_LANDING_ROOT` entries, separated by `os.pathsep`; on POSIX the ':' of a URI scheme
    (`s3://bucket/prefix`) is not a separator."""
    if os.pathsep == ":":
        entries = re.split(r":(?!//)", raw)
    else:
        entries = raw.split(os.pathsep)
    return tuple(entry.strip() for entry in entries if entry.strip())


def _endpoint(raw: str | None) -> str | None:
    if not raw:
        return None
    split_endpoint(raw)  # refuses a malformed URL (or one with credentials) at start-up
    return raw.rstrip("/")


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{path}"


def normalize_database_url(url: str) -> str:
    """Pin PostgreSQL URLs to the psycopg 3 driver, which the COPY path needs."""
    for prefix in ("postgresql://", "postgres://", "postgresql+psycopg2://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def _int(env: Mapping[str, str], name: str, default: int, minimum: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigurationError(f"{name} must be an integer, got {raw!r}") from None
    if value < minimum:
        raise ConfigurationError(f"{name} must be >= {minimum}, got {value}")
    return value


def _int_or_off(env: Mapping[str, str], name: str, default: int, minimum: int) -> int | None:
    if (env.get(name) or "").strip().lower() == "off":
        return None
    return _int(env, name, default, minimum)


def _choice(env: Mapping[str, str], name: str, default: str, choices: tuple[str, ...]) -> str:
    raw = (env.get(name) or default).strip().lower()
    if raw not in choices:
        raise ConfigurationError(f"{name} must be one of {', '.join(choices)}, got {raw!r}")
    return raw


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = (env.get(name) or "").strip().lower()
    if not raw:
        return default
    if raw in ("true", "1", "yes"):
        return True
    if raw in ("false", "0", "no"):
        return False
    raise ConfigurationError(f"{name} must be true or false, got {env.get(name)!r}")


def _share_or_off(env: Mapping[str, str], name: str, default: float) -> float | None:
    raw = (env.get(name) or "").strip()
    if raw.lower() == "off":
        return None
    value = _float(env, name, default)
    if value > 1:
        raise ConfigurationError(f"{name} must be a share between 0 and 1, or off, got {raw!r}")
    return value


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigurationError(f"{name} must be a number, got {raw!r}") from None
    if not math.isfinite(value) or value < 0:
        raise ConfigurationError(f"{name} must be a finite number >= 0, got {raw!r}")
    return value
