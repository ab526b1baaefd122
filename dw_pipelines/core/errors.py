"""Domain errors, split by what the worker should do about them.

`permanent` errors (bad command, contract violation, unreadable source) fail a job at once: retrying
cannot help. Everything else (a lost database connection, a lock timeout) is treated as transient
and left to the retry policy. Every message names the field, file, line or column at fault.
"""


class DwError(Exception):
    """Base class of every error the worker raises on purpose."""

    permanent: bool = True


class ConfigurationError(DwError):
    """The worker's own configuration (environment, dataset contract files) is wrong."""


class CommandError(DwError, ValueError):
    """An ingestion command was refused; `field` names the offending field."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.reason = message


class SourceError(DwError):
    """The source file is missing, unreadable, outside the landing roots, or badly encoded."""


class ContractViolation(DwError):
    """The source file does not satisfy its dataset contract.

    Attributes locate the problem: `source` (file name), `row` (1-based data row), `line` (1-based
    line in the file, when the format has lines), `column` (as the file names it) and
    `warehouse_column` (the column that stores it, shown when it differs from the file's name).
    """

    def __init__(
        self,
        message: str,
        *,
        source: str,
        row: int | None = None,
        line: int | None = None,
        column: str | None = None,
        warehouse_column: str | None = None,
    ):
        where = [source]
        if line is not None:
            where.append(f"line {line}")
        if row is not None:
            where.append(f"row {row}")
        if column is not None:
            where.append(f"column '{column}'")
            if warehouse_column is not None and warehouse_column != column:
                where[-1] += f" (warehouse column {warehouse_column})"
        super().__init__(f"{', '.join(where)}: {message}")
        self.source = source
        self.row = row
        self.line = line
        self.column = column
        self.warehouse_column = warehouse_column


class JobNotFound(DwError):
    def __init__(self, job_id: str):
        super().__init__(f"job_id: no outbox job '{job_id}'")
        self.job_id = job_id


class InvalidTransition(DwError):
    """A status change that the outbox state machine does not allow (e.g. a stale run)."""


class SchemaNotReady(DwError):
    """The outbox tables do not exist yet."""

    def __init__(self, detail: str):
        super().__init__(
            f"the outbox tables are missing or outdated ({detail}); run `dw-pipelines db upgrade`"
        )


class SchemaChangeRequired(ConfigurationError):
    """A dataset's storage needs a change that is never applied on its own (a drop, a rename, a
    narrowing, a new key): every job of the dataset fails at once until an operator applies it.

    Attributes:
        dataset: the dataset.
        plan: the `core.evolution.Plan` with the changes and the DDL.
    """

    def __init__(self, dataset: str, plan: object, message: str):
        super().__init__(message)
        self.dataset = dataset
        self.plan = plan


class TransientError(DwError):
    """Worth retrying: the same operation may succeed later."""

    permanent = False


class SourceUnavailable(TransientError):
    """The source's store did not answer in time, asked us to slow down or failed (5xx)."""


def is_permanent(exc: BaseException) -> bool:
    """Whether retrying `exc` is pointless.

    Our own errors say so themselves. Data the database refuses (bad value, constraint) and
    malformed payloads are permanent; lost connections, lock and statement timeouts and other I/O
    trouble are transient. Object-store errors follow the S3 error name: a missing object or
    bucket and a denied access are permanent, throttling, timeouts and 5xx answers transient.
    Anything unknown is retried: a retry is cheap, a lost job is not.
    """
    if isinstance(exc, DwError):
        return exc.permanent
    if isinstance(exc, OSError):
        # An object-store error that escaped the readers' mapping: the SDK's error name says
        # whether it can heal (throttling, timeouts) or not (access denied, no such key).
        from dw_pipelines.core.objectstore import classify_aws_error

        verdict = classify_aws_error(str(exc))
        if verdict is not None:
            return verdict[0]
    import pydantic
    import sqlalchemy.exc

    if isinstance(exc, (sqlalchemy.exc.DataError, sqlalchemy.exc.IntegrityError)):
        return True
    if isinstance(exc, pydantic.ValidationError):
        return True
    try:
        import psycopg
    except ImportError:  # pragma: no cover - psycopg is a dependency
        return False
    return isinstance(exc, (psycopg.DataError, psycopg.IntegrityError))
