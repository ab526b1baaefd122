"""Log lines a cluster can parse: `DW_LOG_FORMAT=json` makes each worker log line one JSON object.

Every line the worker writes about a job carries the job's fields (`job_id`, `dataset`, `tenant`,
`run_id`) and a short `event` name, so that Loki, CloudWatch or Elasticsearch filter by job without
regexes. In the text format (the default, for a terminal) the same fields lead the message as
`key=value` pairs. The fields travel on the log record (`extra=log_extra(...)`), so one call
serves both formats and the Dagster UI, which shows the message.

Nothing secret is written: database URLs and any `scheme://user:password@` credentials in a
message are masked before the line is formatted (`redact`), whatever the format.
"""

import json
import logging
import re
import sys
from datetime import UTC, datetime
from typing import Any

LOG_FORMATS = ("text", "json")
# Record attributes that carry the structured part (set through `extra`).
FIELDS_ATTR = "dw_fields"
EVENT_ATTR = "dw_event"
JOB_FIELDS = ("job_id", "dataset", "tenant", "run_id")
# `scheme://user:password@host` and `scheme://token@host`: the part before `@` goes.
_URL_CREDENTIALS = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)[^/@\s'\"]+@")
# libpq keyword strings: password=... up to the next blank.
_PASSWORD_KEYWORD = re.compile(r"(?i)(password\s*=\s*)('[^']*'|\S+)")


def redact(text: str) -> str:
    """`text` without URL credentials or `password=` values."""
    text = _URL_CREDENTIALS.sub(r"\g<scheme>***@", text)
    return _PASSWORD_KEYWORD.sub(r"\1***", text)


def job_fields(
    job_id: str | None = None,
    dataset: str | None = None,
    tenant: str | None = None,
    run_id: str | None = None,
) -> dict[str, str]:
    """The known job fields (unknown ones are left out)."""
    found = {"job_id": job_id, "dataset": dataset, "tenant": tenant, "run_id": run_id}
    return {k: v for k, v in found.items() if v}


def log_fields(
    job_id: str | None, dataset: str | None, tenant: str | None, run_id: str | None
) -> str:
    """The `key=value` prefix of a text line about a job."""
    return " ".join(f"{k}={v}" for k, v in job_fields(job_id, dataset, tenant, run_id).items())


def log_extra(event: str, **fields: str | None) -> dict[str, Any]:
    """`extra=` for a logging call: the event name and the job's fields, for the JSON format."""
    return {EVENT_ATTR: event, FIELDS_ATTR: job_fields(**fields)}


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ts, level, logger, event, message and the job's fields.

    Dagster's log records also carry `dagster_meta` (the run id, step key): a run's lines get
    their `run_id` and `step` from it when the call did not name them.
    """

    def format(self, record: logging.LogRecord) -> str:
        fields = dict(getattr(record, FIELDS_ATTR, None) or {})
        meta = getattr(record, "dagster_meta", None) or {}
        if meta.get("run_id") and "run_id" not in fields:
            fields["run_id"] = meta["run_id"]
        dagster_event = getattr(record, "dagster_event", None)
        event = getattr(record, EVENT_ATTR, None) or (
            dagster_event.event_type_value.lower() if dagster_event is not None else "log"
        )
        document: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": event,
            **{k: fields.get(k) for k in JOB_FIELDS},
            "message": redact(_plain_message(record, meta)),
        }
        if meta.get("step_key"):
            document["step"] = meta["step_key"]
        if record.exc_info:
            document["error"] = redact(self.formatException(record.exc_info))
        return json.dumps(document, ensure_ascii=False, default=str)


def _plain_message(record: logging.LogRecord, meta: dict[str, Any]) -> str:
    # Dagster hands its loggers the message it has prefixed with the job and step names; the
    # original one is kept in dagster_meta.
    original = meta.get("orig_message")
    return str(original) if original else record.getMessage()


def configure(log_format: str, logger_name: str = "dw_pipelines") -> None:
    """With the JSON format, send the worker's own loggers (`dw_pipelines.*`) to stderr as JSON
    lines. The text format leaves logging as Python and Dagster set it up. Idempotent: a second
    call replaces (or, for text, removes) the handler the first one installed."""
    logger = logging.getLogger(logger_name)
    for handler in list(logger.handlers):
        if getattr(handler, "_dw_handler", False):
            logger.removeHandler(handler)
    if log_format != "json":
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    handler._dw_handler = True  # type: ignore[attr-defined]
    logger.addHandler(handler)
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.INFO)
