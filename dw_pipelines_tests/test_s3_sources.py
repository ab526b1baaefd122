"""Sources in object storage: `s3://` jobs run as real `dw_ingestion_job` runs against a real
S3-protocol server (moto's standalone server, a subprocess on loopback) and PostgreSQL.

The worker reaches the server through `FaultProxy` (a forwarding HTTP proxy on loopback) with an
IAM user's key in the standard `AWS_*` variables; its policy is the documented least-privilege
policy (`deploy/aws/landing-read-policy.json`) plus one `Deny` on `in/restricted/*`, so an
access-denied object is a real 403 decided by the server's IAM evaluation. The proxy injects the
transient faults (503 SlowDown answers, a response that stalls past the request timeout) and
records every request, so the tests can check that objects are read with ranged GETs.

Failures follow the bad-input rules of `test_bad_inputs.py`: FAILED on the first attempt with a
`last_error` naming the bucket and key, nothing in staging or storage, and the next good job
still loads.
"""

import gzip
import io
import json
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date as dt_date
from pathlib import Path

import dagster as dg
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa

from dw_pipelines.core.errors import CommandError, SourceUnavailable
from dw_pipelines.core.faults import reset_fault_counters
from dw_pipelines.definitions import build_definitions
from dw_pipelines.services import build_service, dispose
from dw_pipelines.settings import SAMPLES_DIR
from dw_pipelines_tests.s3_support import (
    REGION,
    Fault,
    FaultProxy,
    MotoS3,
    landing_policy,
    start_moto_server,
)
from dw_pipelines_tests.test_bad_inputs import (
    Worker,
    assert_failed_cleanly,
    worker_for,
)

ORDERS_CSV = SAMPLES_DIR / "orders_2026-11-24.csv"
ORDERS_JSONL = SAMPLES_DIR / "orders_2026-11-25.jsonl"
CUSTOMERS_PARQUET = SAMPLES_DIR / "customers_2026-11-25.parquet"
ORDERS_BAD = SAMPLES_DIR / "orders_bad.csv"
LINEAGE = ("_dw_job_id", "_dw_tenant_id", "_dw_loaded_at")
PREFIX = "in"


@pytest.fixture(scope="session")
def moto_s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoS3]:
    """moto's S3 server with IAM enforced: an admin for the tests, a reader for the worker."""
    server = start_moto_server(tmp_path_factory.mktemp("moto") / "moto.log")
    try:
        everything = {"Effect": "Allow", "Action": "*", "Resource": "*"}
        server.create_user("dw-test-admin", {"Version": "2012-10-17", "Statement": [everything]})
        # The documented policy, for every test bucket (dw-landing-*), minus one sub-prefix.
        policy = landing_policy("dw-landing-*", PREFIX)
        policy["Statement"].append(
            {
                "Sid": "TestDenyRestricted",
                "Effect": "Deny",
                "Action": "s3:GetObject",
                "Resource": f"arn:aws:s3:::dw-landing-*/{PREFIX}/restricted/*",
            }
        )
        server.create_user("dw-worker", policy)
        server.enforce_iam()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def proxy(moto_s3: MotoS3) -> Iterator[FaultProxy]:
    proxy = FaultProxy(moto_s3.endpoint)
    try:
        yield proxy
    finally:
        proxy.close()


class Bucket:
    """A fresh landing bucket; objects are written by the admin straight to the server."""

    def __init__(self, server: MotoS3, name: str):
        self.name = name
        self.admin = server.client(server.users["dw-test-admin"])
        self.admin.create_bucket(Bucket=name)

    def put(self, key: str, body: bytes | Path) -> str:
        data = body.read_bytes() if isinstance(body, Path) else body
        self.admin.put_object(Bucket=self.name, Key=key, Body=data)
        return f"s3://{self.name}/{key}"

    def delete(self, key: str) -> None:
        self.admin.delete_object(Bucket=self.name, Key=key)

    def etag(self, key: str) -> str:
        return self.admin.head_object(Bucket=self.name, Key=key)["ETag"]


@pytest.fixture
def bucket(moto_s3: MotoS3, proxy: FaultProxy) -> Bucket:
    proxy.clear()
    return Bucket(moto_s3, f"dw-landing-{secrets.token_hex(4)}")


@pytest.fixture
def s3_env(moto_s3: MotoS3, proxy: FaultProxy, bucket: Bucket, landing_dir: Path, monkeypatch):
    """DW_* and AWS_* for a worker whose landing roots hold the test bucket's `in/` prefix."""
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE"):
        monkeypatch.delenv(name, raising=False)
    worker = moto_s3.users["dw-worker"]
    return {
        "DW_LANDING_ROOT": f"{landing_dir}:{SAMPLES_DIR}:s3://{bucket.name}/{PREFIX}",
        "DW_S3_ENDPOINT_URL": proxy.endpoint,
        "DW_S3_REGION": REGION,
        # The standard credential chain: the SDK reads these; the worker never sees them.
        "AWS_ACCESS_KEY_ID": worker.access_key_id,
        "AWS_SECRET_ACCESS_KEY": worker.secret_access_key,
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_CONFIG_FILE": str(landing_dir / "no-aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(landing_dir / "no-aws-credentials"),
    }


@pytest.fixture(autouse=True)
def _fresh_fault_counters():
    reset_fault_counters()
    yield
    reset_fault_counters()


@pytest.fixture
def worker(pg_url: str, dw_env, landing_dir: Path, s3_env: dict) -> Iterator[Worker]:
    with worker_for(pg_url, dw_env, landing_dir, **s3_env) as w:
        yield w


@contextmanager
def retrying_worker(pg_url: str, dw_env, landing: Path, **env: object) -> Iterator[Worker]:
    """`worker_for` with 3 retries of transient errors, 0.1 s apart (doubling)."""
    settings = dw_env(pg_url, DW_RETRY_MAX_RETRIES=3, DW_RETRY_BASE_DELAY_SECONDS=0.1, **env)
    service = build_service(settings)
    job_def = build_definitions(settings).resolve_job_def("dw_ingestion_job")
    try:
        with dg.instance_for_test() as instance:
            yield Worker(service, job_def, instance, landing)
    finally:
        dispose(service)


def stored(worker: Worker, dataset: str, job_id: str, order_by: str) -> list[dict]:
    """The job's storage rows without lineage columns."""
    with worker.service.warehouse.engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                f"SELECT * FROM dw_storage.{dataset} WHERE _dw_job_id = :job ORDER BY {order_by}"
            ),
            {"job": job_id},
        ).mappings()
        return [{k: v for k, v in r.items() if k not in LINEAGE} for r in rows]


def staged_event(worker: Worker, job_id: str, index: int = -1):
    return [e for e in worker.service.queue.audit_trail(job_id) if e.event == "STAGED"][index]


def completed(worker: Worker, job, result: dg.ExecuteInProcessResult, rows: int):
    row = worker.service.queue.get(job.job_id)
    assert result.success, f"status={row.status} last_error={row.last_error!r}"
    assert (row.status, row.rows_loaded) == ("COMPLETED", rows)
    return row


def assert_only_ranged_gets(proxy: FaultProxy, key: str) -> list:
    gets = [s for s in proxy.requests_for(key) if s.method == "GET"]
    assert gets, f"no GET for {key}"
    assert all(s.range and s.range.startswith("bytes=") for s in gets), gets
    return gets


# ------------------------------------------------------------------------------- good objects


@pytest.mark.parametrize(
    ("dataset", "sample", "key", "rows", "order_by"),
    [
        ("orders", ORDERS_CSV, "orders_2026-11-24.csv", 6, "order_id"),
        ("orders", ORDERS_JSONL, "2026/11/orders_2026-11-25.jsonl", 4, "order_id"),
        ("customers", CUSTOMERS_PARQUET, "customers_2026-11-25.parquet", 3, "customer_id"),
    ],
    ids=["csv", "jsonl", "parquet"],
)
def test_an_object_loads_exactly_the_rows_of_the_same_local_file(
    worker: Worker, bucket: Bucket, proxy: FaultProxy, dataset, sample, key, rows, order_by
) -> None:
    uri = bucket.put(f"{PREFIX}/{key}", sample)
    date = "2026-11-25" if "11-25" in key else "2026-11-24"

    remote, remote_result = worker.load(uri, dataset=dataset, business_date=date, tenant_id="s3")
    local, local_result = worker.load(sample, dataset=dataset, business_date=date, tenant_id="fs")

    completed(worker, remote, remote_result, rows)
    completed(worker, local, local_result, rows)
    from_s3 = stored(worker, dataset, remote.job_id, order_by)
    assert len(from_s3) == rows
    assert from_s3 == stored(worker, dataset, local.job_id, order_by)
    # The audit trail carries the object's fingerprint: size and the server's ETag.
    details = staged_event(worker, remote.job_id).details
    assert details["source_uri"] == uri
    assert details["fingerprint"]["size_bytes"] == sample.stat().st_size
    assert details["fingerprint"]["etag"] == bucket.etag(f"{PREFIX}/{key}")
    assert "last_modified" in details["fingerprint"]
    assert "source_changed" not in details  # a first load
    local_details = staged_event(worker, local.job_id).details
    assert set(local_details["fingerprint"]) == {"size_bytes", "mtime"}
    # Streamed: every read of the object was a ranged GET (Parquet: footer, then column chunks).
    assert_only_ranged_gets(proxy, f"/{PREFIX}/{key}")


def test_a_gzip_object_is_decompressed_while_streaming(worker: Worker, bucket: Bucket) -> None:
    uri = bucket.put(f"{PREFIX}/orders.csv.gz", gzip.compress(ORDERS_CSV.read_bytes()))
    job, result = worker.load(uri)
    completed(worker, job, result, 6)
    assert [r["order_id"] for r in stored(worker, "orders", job.job_id, "order_id")] == [
        1001, 1002, 1003, 1004, 1005, 1006,
    ]  # fmt: skip


def big_orders(rows: int) -> pa.Table:
    return pa.table(
        {
            "order_id": pa.array(range(1, rows + 1), pa.int64()),
            "customer_id": pa.array([i % 97 for i in range(rows)], pa.int64()),
            "order_date": ["2026-11-24"] * rows,
            "amount": [f"{i % 1000}.{i % 100:02d}" for i in range(rows)],
            "currency": ["EUR"] * rows,
            "status": ["paid"] * rows,
            "is_gift": [i % 2 == 0 for i in range(rows)],
            "created_at": ["2026-11-24T08:00:00Z"] * rows,
            "note": [f"note {i} " + "x" * 40 for i in range(rows)],
        }
    )


def test_large_objects_are_read_in_ranges_never_whole(worker: Worker, bucket: Bucket, proxy):
    rows = 60_000
    table = big_orders(rows)
    text = io.BytesIO()
    pacsv.write_csv(table, text)
    csv_bytes = text.getvalue()
    assert len(csv_bytes) > 5 * 2**20  # more than two 2 MiB read blocks
    parquet = io.BytesIO()
    pq.write_table(table, parquet, row_group_size=10_000)
    csv_uri = bucket.put(f"{PREFIX}/big.csv", csv_bytes)
    parquet_uri = bucket.put(f"{PREFIX}/big.parquet", parquet.getvalue())

    for uri, key, size in (
        (csv_uri, "big.csv", len(csv_bytes)),
        (parquet_uri, "big.parquet", parquet.getbuffer().nbytes),
    ):
        job, result = worker.load(uri)
        completed(worker, job, result, rows)
        with worker.service.warehouse.engine.connect() as conn:
            total = conn.execute(
                sa.text("SELECT sum(order_id) FROM dw_storage.orders WHERE _dw_job_id = :j"),
                {"j": job.job_id},
            ).scalar_one()
        assert total == rows * (rows + 1) // 2
        gets = assert_only_ranged_gets(proxy, f"/{PREFIX}/{key}")
        lengths = [_range_length(s.range) for s in gets]
        assert len(gets) >= 3, lengths
        assert max(lengths) < size, f"{key}: one GET fetched the whole object: {lengths}"


def _range_length(header: str) -> int:
    start, _, end = header.removeprefix("bytes=").partition("-")
    return int(end) - int(start) + 1


# -------------------------------------------------------------------------------- refusals


def _missing(bucket: Bucket) -> str:
    return f"s3://{bucket.name}/{PREFIX}/missing.csv"


def _other_bucket(bucket: Bucket) -> str:
    other = Bucket.__new__(Bucket)
    other.admin, other.name = bucket.admin, f"{bucket.name}-other"
    other.admin.create_bucket(Bucket=other.name)
    return other.put(f"{PREFIX}/orders.csv", ORDERS_CSV)


def _dotdot(bucket: Bucket) -> str:
    # The object exists under its literal key, and "in/.." would escape the prefix.
    bucket.put("secret/orders.csv", ORDERS_CSV)
    return f"s3://{bucket.name}/{PREFIX}/../secret/orders.csv"


def _denied(bucket: Bucket) -> str:
    return bucket.put(f"{PREFIX}/restricted/orders.csv", ORDERS_CSV)


REFUSALS = {
    "missing-key": (_missing, "no such object"),
    "wrong-bucket": (_other_bucket, "outside the landing roots"),
    "dotdot-key": (_dotdot, "has a '..' segment"),
    "access-denied": (_denied, "access denied (HTTP 403)"),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_refused_objects_are_refused_at_enqueue_and_fail_cleanly_at_run_time(
    worker: Worker, bucket: Bucket, case: str
) -> None:
    make, reason = REFUSALS[case]
    uri = make(bucket)
    object_bucket, _, key = uri.removeprefix("s3://").partition("/")
    names = (f"bucket '{object_bucket}'", f"key '{key}'")

    with pytest.raises(CommandError) as refused:
        worker.enqueue(uri)
    assert refused.value.field == "source_uri"
    assert reason in refused.value.reason
    assert all(name in refused.value.reason for name in names), refused.value.reason
    assert worker.outbox_rows() == 0

    # Written straight into the outbox (a gateway that skips enqueue): the run checks again.
    payload = {
        "job_id": f"s3-{case}",
        "idempotency_key": f"s3-{case}",
        "tenant_id": "default",
        "dataset": "orders",
        "source_uri": uri,
        "format": "csv",
        "business_date": "2026-11-24",
        "requested_at": "2026-11-24T08:00:00Z",
    }
    job = worker.insert_directly(payload)
    result = worker.run(job)
    assert_failed_cleanly(worker, job, result, reason, *names)


def test_an_object_deleted_after_enqueue_fails_at_run_time(worker: Worker, bucket: Bucket):
    uri = bucket.put(f"{PREFIX}/gone.csv", ORDERS_CSV)
    job = worker.enqueue(uri)
    bucket.delete(f"{PREFIX}/gone.csv")
    result = worker.run(job)
    assert_failed_cleanly(
        worker, job, result, "no such object", f"bucket '{bucket.name}'", f"key '{PREFIX}/gone.csv'"
    )


def test_a_corrupt_parquet_object_fails_permanently_naming_it(worker: Worker, bucket: Bucket):
    data = CUSTOMERS_PARQUET.read_bytes()
    uri = bucket.put(f"{PREFIX}/truncated.parquet", data[: len(data) // 2])
    job, _ = worker.load(uri, dataset="customers", business_date="2026-11-25")
    row = worker.service.queue.get(job.job_id)
    assert (row.status, row.attempts) == ("FAILED", 1), row.last_error
    assert row.last_error.startswith(f"{uri}: not a readable Parquet file")
    assert (
        worker.service.warehouse.storage_rows(worker.service.contracts.get("customers"), job.job_id)
        == 0
    )


def test_a_bad_value_in_an_object_is_located_like_in_a_local_file(worker: Worker, bucket: Bucket):
    uri = bucket.put(f"{PREFIX}/orders_bad.csv", ORDERS_BAD)
    job, result = worker.load(uri)
    assert_failed_cleanly(
        worker,
        job,
        result,
        f"{uri}, line 3, row 2, column 'amount': value 'twelve' is not a valid decimal(12,2)",
    )


# ------------------------------------------------------------------------- transient faults


def test_throttling_is_retried_by_the_sdk_and_then_by_the_job(
    pg_url, dw_env, landing_dir, s3_env, bucket: Bucket, proxy: FaultProxy
) -> None:
    with retrying_worker(pg_url, dw_env, landing_dir, **s3_env) as worker:
        uri = bucket.put(f"{PREFIX}/orders.csv", ORDERS_CSV)
        job = worker.enqueue(uri)
        # Four SlowDown answers: the SDK's 3 attempts use up three (attempt 1 fails, transient);
        # the job's retry meets the fourth, which the SDK retries, and then reads the object.
        fault = proxy.add(Fault(f"/{PREFIX}/orders.csv", "slowdown", times=4, method="HEAD"))
        result = worker.run(job)

    row = worker.service.queue.get(job.job_id)
    assert result.success, row.last_error
    assert (row.status, row.rows_loaded, row.attempts) == ("COMPLETED", 6, 2)
    assert fault.hits == 4
    assert [s.status for s in proxy.requests_for(f"/{PREFIX}/orders.csv")].count(503) == 4
    trail = worker.service.queue.audit_trail(job.job_id)
    assert [e.event for e in trail] == [
        "ENQUEUED", "DISPATCHED", "STARTED", "RETRY_SCHEDULED", "STAGED", "PROMOTED", "COMPLETED",
    ]  # fmt: skip
    error = trail[3].details["error"]
    assert "HTTP 503" in error and f"bucket '{bucket.name}', key '{PREFIX}/orders.csv'" in error
    assert len(stored(worker, "orders", job.job_id, "order_id")) == 6


def test_a_request_timeout_is_transient_and_retried(
    pg_url, dw_env, landing_dir, s3_env, bucket: Bucket, proxy: FaultProxy
) -> None:
    env = {
        **s3_env,
        "DW_S3_REQUEST_TIMEOUT_SECONDS": 1,
        "DW_S3_MAX_ATTEMPTS": 1,  # no SDK retry: the job-level retry is what is shown
    }
    with retrying_worker(pg_url, dw_env, landing_dir, **env) as worker:
        uri = bucket.put(f"{PREFIX}/slow.jsonl", ORDERS_JSONL)
        job = worker.enqueue(uri, business_date="2026-11-25")
        # The first GET of the object gets no answer for 5 s (past the 1 s request timeout).
        fault = proxy.add(Fault(f"/{PREFIX}/slow.jsonl", "stall", 1, method="GET", seconds=5))
        result = worker.run(job)

    row = worker.service.queue.get(job.job_id)
    assert result.success, row.last_error
    assert (row.status, row.rows_loaded, row.attempts) == ("COMPLETED", 4, 2)
    assert fault.hits == 1
    retry = [
        e for e in worker.service.queue.audit_trail(job.job_id) if e.event == "RETRY_SCHEDULED"
    ]
    assert len(retry) == 1
    assert "the request timed out" in retry[0].details["error"]
    assert f"key '{PREFIX}/slow.jsonl'" in retry[0].details["error"]


def test_an_unreachable_store_is_transient_at_enqueue_not_a_refusal(
    pg_url, dw_env, landing_dir, s3_env, bucket: Bucket
) -> None:
    env = {**s3_env, "DW_S3_ENDPOINT_URL": "http://127.0.0.1:9", "DW_S3_MAX_ATTEMPTS": 1}
    with worker_for(pg_url, dw_env, landing_dir, **env) as worker:
        with pytest.raises(SourceUnavailable) as caught:
            worker.enqueue(f"s3://{bucket.name}/{PREFIX}/orders.csv")
    assert f"bucket '{bucket.name}', key '{PREFIX}/orders.csv'" in str(caught.value)
    assert "network trouble" in str(caught.value)
    assert worker.outbox_rows() == 0


# ------------------------------------------------------------------------ fingerprint, secrets


def test_a_rerun_tells_whether_the_object_changed(worker: Worker, bucket: Bucket) -> None:
    key = f"{PREFIX}/orders.csv"
    uri = bucket.put(key, ORDERS_CSV)
    job, first = worker.load(uri)
    completed(worker, job, first, 6)
    same = worker.run(job)
    completed(worker, job, same, 6)
    lines = ORDERS_CSV.read_text(encoding="utf-8").splitlines(keepends=True)
    bucket.put(key, "".join(lines[:-1]).encode())  # the last order removed
    changed = worker.run(job)
    completed(worker, job, changed, 5)

    events = [
        e.details for e in worker.service.queue.audit_trail(job.job_id) if e.event == "STAGED"
    ]
    assert [d.get("source_changed") for d in events] == [None, False, True]
    assert events[0]["fingerprint"] == events[1]["fingerprint"]
    assert events[2]["fingerprint"]["etag"] == bucket.etag(key) != events[0]["fingerprint"]["etag"]
    assert len(stored(worker, "orders", job.job_id, "order_id")) == 5


def test_credentials_appear_in_no_audit_row_error_or_log(
    worker: Worker, bucket: Bucket, proxy: FaultProxy, s3_env: dict, capfd
) -> None:
    secret = s3_env["AWS_SECRET_ACCESS_KEY"]
    _, good_result = worker.load(bucket.put(f"{PREFIX}/orders.csv", ORDERS_CSV))
    denied_uri = _denied(bucket)
    # The access-denied object, once past enqueue (the object was readable then).
    job = worker.insert_directly(
        {
            "job_id": "denied",
            "idempotency_key": "denied",
            "tenant_id": "default",
            "dataset": "orders",
            "source_uri": denied_uri,
            "format": "csv",
            "business_date": "2026-11-24",
            "requested_at": "2026-11-24T08:00:00Z",
        }
    )
    denied_result = worker.run(job)
    assert good_result.success and not denied_result.success

    with worker.service.queue.engine.connect() as conn:
        tables = [
            str(list(conn.execute(sa.text(f"SELECT * FROM {table}"))))
            for table in ("dw_ingestion_outbox", "dw_ingestion_audit")
        ]
    logs = [
        str(record)
        for result in (good_result, denied_result)
        for record in worker.instance.all_logs(result.run_id)
    ]
    runs = [
        str((run.tags, run.run_config))
        for run in (worker.instance.get_run_by_id(r.run_id) for r in (good_result, denied_result))
    ]
    output = capfd.readouterr()
    everything = "\n".join([*tables, *logs, *runs, output.out, output.err])
    assert "access denied" in everything  # the failure was recorded ...
    assert secret not in everything  # ... without the secret key anywhere
    assert secret not in repr(worker.service.landing.object_store.options)


# ------------------------------------------------------------------- drafting from an object


CARS = [
    {"Name": "chevrolet chevelle", "Miles_per_Gallon": 18, "Year": "1970-01-01"},
    {"Name": "vw, beetle", "Miles_per_Gallon": None, "Year": "1971-01-01"},
    {"Name": "ford [torino]", "Miles_per_Gallon": 25.5, "Year": "1972-01-01"},
]


def test_a_contract_drafted_from_an_object_loads_that_json_array(
    pg_url: str, dw_env, bucket: Bucket, proxy: FaultProxy, s3_env: dict, tmp_path: Path
) -> None:
    """`datasets infer s3://...` reads the object (ranged GETs), its draft passes
    `datasets check`, and a job of that JSON array object loads every row."""
    import json

    from click.testing import CliRunner

    from dw_pipelines.cli import main

    uri = bucket.put(f"{PREFIX}/exports/cars.json", json.dumps(CARS, indent=2).encode())
    contracts = tmp_path / "contracts"
    contracts.mkdir()
    env = {**s3_env, "DW_DATABASE_URL": pg_url, "DW_DATASETS_PATH": str(contracts)}
    runner = CliRunner()
    drafted = runner.invoke(
        main, ["datasets", "infer", uri, "-o", str(contracts / "cars.yaml")], env=env
    )
    assert drafted.exit_code == 0, drafted.output
    assert_only_ranged_gets(proxy, f"/{PREFIX}/exports/cars.json")
    checked = runner.invoke(main, ["datasets", "check", str(contracts / "cars.yaml")], env=env)
    assert checked.exit_code == 0, checked.output
    text = (contracts / "cars.yaml").read_text()
    assert '{name: "Miles_per_Gallon", type: float64, nullable: true}' in text
    with worker_for(pg_url, dw_env, tmp_path, **env) as worker:
        job, result = worker.load(uri, dataset="cars")
        completed(worker, job, result, 3)
        assert stored(worker, "cars", job.job_id, "name") == [
            {"name": "chevrolet chevelle", "miles_per_gallon": 18.0, "year": dt_date(1970, 1, 1)},
            {"name": "ford [torino]", "miles_per_gallon": 25.5, "year": dt_date(1972, 1, 1)},
            {"name": "vw, beetle", "miles_per_gallon": None, "year": dt_date(1971, 1, 1)},
        ]


def test_the_object_size_from_the_enqueue_head_chooses_the_run_pod(
    worker: Worker, bucket: Bucket, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sensor cannot stat an object: the size comes from the HEAD made at enqueue, kept on
    the outbox row, so a large object gets the large pod (here: a threshold below its size)."""
    from dw_pipelines.defs import k8s
    from dw_pipelines.defs.sensors import run_tags
    from dw_pipelines.settings import Settings

    data = ORDERS_CSV.read_bytes()
    uri = bucket.put(f"{PREFIX}/sized.csv", data)
    job = worker.enqueue(uri)
    row = worker.service.queue.get(job.job_id)
    assert row.source_size_bytes == len(data)
    assert row.to_dict()["source_size_bytes"] == len(data)

    def pod(threshold: int) -> dict:
        monkeypatch.setattr(k8s, "LARGE_SOURCE_BYTES", threshold)
        tags = run_tags(row, Settings.from_env())
        return json.loads(tags[k8s.K8S_CONFIG_TAG])["container_config"]["resources"]

    assert pod(len(data)) == k8s.RESOURCES["large"]
    assert pod(len(data) + 1) == k8s.RESOURCES["small"]
