"""Sources in S3-compatible object storage (AWS S3, MinIO, Ceph RGW): names, confinement, access.

On Kubernetes a run pod cannot see the gateway's disk, so uploads live in a bucket and a command's
`source_uri` names `s3://bucket/key`. This module decides whether such a name is acceptable and
reads the object through `pyarrow.fs.S3FileSystem` (the AWS SDK for C++):

* Names are checked, not normalised: S3 keys are literal strings, so `in/../x`, `in//x` and
  `in/./x` are *other* objects than `x` or `in/x`, and some S3-compatible stores and proxies
  collapse them while others do not. A key in anything but normal form is refused, as is a
  query string (`?versionId=`, a presigned signature), a fragment, a backslash, a control
  character and a bucket carrying credentials (`s3://key:secret@bucket`, never echoed back).
* Confinement compares bucket and key prefix by path segment (`in/` does not admit `in2/x`).
* Access streams: one HEAD for size and ETag, then ranged GETs for every read (text formats a
  block at a time, Parquet its footer and column chunks), never a whole download.
* Credentials come from the AWS SDK's default chain (AWS_* variables, a profile, web identity
  / IRSA, ECS or EC2 instance roles); nothing here ever holds a secret, so none can leak into a
  message, an audit row or a log line.
* Errors name the bucket and key and say whether retrying can help: a missing object, a denied
  access or a missing bucket is permanent; throttling, timeouts, connection trouble and server
  errors (5xx) are transient (`SourceUnavailable`) and go to the retry policy.
"""

import re
import threading
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

from dw_pipelines.core.errors import ConfigurationError, DwError, SourceError, SourceUnavailable

S3_SCHEME = "s3://"
# AWS bucket naming rules (also what MinIO and Ceph accept): 3-63 lower-case letters, digits,
# dots and hyphens, starting and ending with a letter or digit.
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_MAX_KEY_BYTES = 1024

# AWS SDK error names (as pyarrow prints them: "AWS Error NAME during OP operation") that no
# retry can fix. Everything else the SDK reports is left to the retry policy.
_PERMANENT_AWS_ERRORS = {
    "ACCESS_DENIED": "access denied",
    "NO_SUCH_BUCKET": "no such bucket",
    "NO_SUCH_KEY": "no such object",
    "RESOURCE_NOT_FOUND": "no such object",
    "INVALID_ACCESS_KEY_ID": "the access key is not known to the store",
    "SIGNATURE_DOES_NOT_MATCH": "the request signature does not match (wrong secret key)",
    "INVALID_SIGNATURE": "the request signature is invalid",
    "INVALID_CLIENT_TOKEN_ID": "the security token is not valid",
    "UNRECOGNIZED_CLIENT": "the security token is not valid",
    "MISSING_AUTHENTICATION_TOKEN": "the request carried no credentials",
    "INVALID_OBJECT_STATE": "the object is archived (restore it first)",
    "OBJECT_NOT_IN_ACTIVE_TIER": "the object is archived (restore it first)",
    "VALIDATION": "the request was refused as invalid",
}
_TRANSIENT_AWS_ERRORS = {
    "SLOW_DOWN": "throttled by the store (SlowDown)",
    "THROTTLING": "throttled by the store",
    "REQUEST_TIMEOUT": "the request timed out",
    "SERVICE_UNAVAILABLE": "the store is unavailable",
    "NETWORK_CONNECTION": "network trouble",
    "INTERNAL_FAILURE": "the read failed",
    "REQUEST_TIME_TOO_SKEWED": "the clock is skewed",
    "EXPIRED_TOKEN": "the session token expired (it is refreshed on the next attempt)",
}
# Statuses the SDK reports as "UNKNOWN (HTTP status N)" when the answer had no body (HEAD).
_PERMANENT_STATUSES = {
    "301": "the bucket is in another region (set DW_S3_REGION)",
    "400": "the request was refused as invalid",
    "403": "access denied",
    "404": "no such object",
    "405": "the request was refused",
    "416": "the requested range is not satisfiable",
}
_AWS_ERROR = re.compile(r"AWS Error (?P<name>[A-Z_]+)(?: \(HTTP status (?P<status>\d{3})\))?")
_CURL_TIMEOUT = "curlCode: 28"


def classify_aws_error(text: str) -> tuple[bool, str] | None:
    """(permanent, what happened) for an AWS SDK error message, or None if it is not one."""
    match = _AWS_ERROR.search(text)
    if match is None:
        return None
    name, status = match["name"], match["status"]
    if name in _PERMANENT_AWS_ERRORS:
        return True, _PERMANENT_AWS_ERRORS[name]
    if name in _TRANSIENT_AWS_ERRORS:
        if _CURL_TIMEOUT in text:
            return False, "the request timed out"
        return False, _TRANSIENT_AWS_ERRORS[name]
    if status in _PERMANENT_STATUSES:
        return True, _PERMANENT_STATUSES[status]
    if status == "503":
        return False, "the store is unavailable or throttling (HTTP 503)"
    if status is not None and status.startswith("5"):
        return False, f"the store failed (HTTP {status})"
    return False, "the store reported an error"


# ------------------------------------------------------------------------------------- names


@dataclass(frozen=True)
class ObjectLocation:
    """One object: `bucket` and a `key` in normal form."""

    bucket: str
    key: str

    @property
    def uri(self) -> str:
        return f"{S3_SCHEME}{self.bucket}/{self.key}"

    @property
    def fs_path(self) -> str:
        """The path `pyarrow.fs.S3FileSystem` expects."""
        return f"{self.bucket}/{self.key}"

    @property
    def name(self) -> str:
        return self.key.rsplit("/", 1)[-1]

    def describe(self) -> str:
        return f"bucket '{self.bucket}', key '{self.key}'"


@dataclass(frozen=True)
class ObjectPrefix:
    """A landing root in object storage: a bucket and a key prefix ('' or ending in '/')."""

    bucket: str
    prefix: str

    @property
    def uri(self) -> str:
        return f"{S3_SCHEME}{self.bucket}/{self.prefix}"

    def contains(self, location: ObjectLocation) -> bool:
        return (
            location.bucket == self.bucket
            and location.key.startswith(self.prefix)
            and len(location.key) > len(self.prefix)
        )


def is_object_uri(text: str) -> bool:
    return text.startswith(S3_SCHEME)


def _split(uri: str) -> tuple[str, str]:
    """(bucket, rest) of an s3:// URI, refusing what cannot be a plain bucket name."""
    bucket, _, rest = uri[len(S3_SCHEME) :].partition("/")
    if "@" in bucket:
        # Never repeat what came before the '@': it may be a secret key.
        raise ValueError(
            "must not carry credentials (s3://…@bucket); credentials come from the "
            "worker's environment"
        )
    if not _BUCKET.fullmatch(bucket):
        raise ValueError(
            f"'{bucket}' is not a valid bucket name (3-63 lower-case letters, digits, '.', '-')"
        )
    return bucket, rest


def _check_key(key: str, what: str) -> None:
    """Refuse a key (or prefix) that is not in normal form; see the module docstring."""
    if "?" in key or "#" in key:
        raise ValueError(f"the {what} must not hold '?' or '#' (no query strings or versions)")
    if "\\" in key or _CONTROL.search(key):
        raise ValueError(f"the {what} must not hold backslashes or control characters")
    if len(key.encode("utf-8")) > _MAX_KEY_BYTES:
        raise ValueError(f"the {what} is longer than {_MAX_KEY_BYTES} bytes")
    for segment in key.split("/"):
        if segment == "":
            raise ValueError(
                f"the {what} '{key}' has an empty path segment ('//', or a leading or trailing "
                "'/'); S3 keys are literal, so it would name another object"
            )
        if unquote(segment) in (".", ".."):
            raise ValueError(
                f"the {what} '{key}' has a '{segment}' segment; S3 keys are literal, so it would "
                "name another object than the normalised path"
            )


def parse_location(source_uri: str) -> ObjectLocation:
    """The object an `s3://bucket/key` source names; `SourceError` (permanent) says why not."""
    try:
        bucket, key = _split(source_uri)
        if not key:
            raise ValueError(f"names bucket '{bucket}' but no object key")
        try:
            _check_key(key, "key")
        except ValueError as exc:
            raise ValueError(f"{ObjectLocation(bucket, key).describe()}: {exc}") from None
    except ValueError as exc:
        raise SourceError(f"source_uri '{_safe(source_uri)}': {exc}") from None
    return ObjectLocation(bucket, key)


def parse_root(root: str) -> ObjectPrefix:
    """A `DW_LANDING_ROOT` entry `s3://bucket[/prefix]`; `ConfigurationError` says why not."""
    try:
        bucket, prefix = _split(root)
        prefix = prefix.rstrip("/")
        if prefix:
            _check_key(prefix, "prefix")
    except ValueError as exc:
        raise ConfigurationError(f"DW_LANDING_ROOT entry '{_safe(root)}': {exc}") from None
    return ObjectPrefix(bucket, f"{prefix}/" if prefix else "")


def _safe(uri: str) -> str:
    """`uri` with anything before an '@' in its authority replaced (it may be a secret)."""
    if not is_object_uri(uri):
        return uri
    authority, sep, rest = uri[len(S3_SCHEME) :].partition("/")
    if "@" in authority:
        authority = "***@" + authority.rsplit("@", 1)[1]
    return f"{S3_SCHEME}{authority}{sep}{rest}"


# ------------------------------------------------------------------------------------ access


@dataclass(frozen=True)
class S3Options:
    """How to reach the store. Credentials are deliberately absent: the AWS SDK finds them.

    Args:
        endpoint_url: an S3-compatible endpoint (`http://minio:9000`); None for AWS S3.
        region: the bucket's region; None lets the SDK decide (AWS_REGION, profile, default).
        connect_timeout_seconds: give up connecting after this long (transient).
        request_timeout_seconds: give up a request that receives nothing for this long.
        max_attempts: attempts per request inside the SDK (throttling and network errors are
            retried there with backoff) before the job-level retry policy takes over.
    """

    endpoint_url: str | None = None
    region: str | None = None
    connect_timeout_seconds: float = 10.0
    request_timeout_seconds: float = 30.0
    max_attempts: int = 3


def split_endpoint(endpoint_url: str) -> tuple[str, str]:
    """(scheme, host[:port]) of `DW_S3_ENDPOINT_URL`; `ConfigurationError` says what is wrong."""
    parts = urlsplit(endpoint_url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigurationError(
            "DW_S3_ENDPOINT_URL must be an http:// or https:// URL such as http://minio:9000"
        )
    if parts.username or parts.password:
        raise ConfigurationError(
            "DW_S3_ENDPOINT_URL must not carry credentials; set AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY (or use web identity) instead"
        )
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ConfigurationError(
            f"DW_S3_ENDPOINT_URL '{parts.scheme}://{parts.netloc}{parts.path}' must name only a "
            "scheme, host and port (buckets are addressed by path)"
        )
    return parts.scheme, parts.netloc


@dataclass(frozen=True)
class ObjectInfo:
    """What one HEAD request says about an object: enough to tell a changed object."""

    size_bytes: int
    etag: str | None
    last_modified: str | None
    version_id: str | None

    def fingerprint(self) -> dict[str, Any]:
        found = {
            "size_bytes": self.size_bytes,
            "etag": self.etag,
            "last_modified": self.last_modified,
            "version_id": self.version_id,
        }
        return {k: v for k, v in found.items() if v is not None}


class ObjectStore:
    """The S3 file system, created on first use (no SDK start-up for local-only workers)."""

    def __init__(self, options: S3Options | None = None):
        self.options = options or S3Options()
        self._filesystem = None
        self._lock = threading.Lock()

    @property
    def filesystem(self):
        with self._lock:
            if self._filesystem is None:
                self._filesystem = self._create()
            return self._filesystem

    def _create(self):
        import pyarrow.fs as pafs

        options = self.options
        kwargs: dict[str, Any] = {
            "connect_timeout": options.connect_timeout_seconds,
            "request_timeout": options.request_timeout_seconds,
            "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=options.max_attempts),
        }
        if options.region:
            kwargs["region"] = options.region
        if options.endpoint_url:
            scheme, host = split_endpoint(options.endpoint_url)
            kwargs.update(endpoint_override=host, scheme=scheme)
        return pafs.S3FileSystem(**kwargs)

    def stat(self, location: ObjectLocation) -> ObjectInfo:
        """HEAD the object. Raises `SourceError` (permanent) or `SourceUnavailable`."""
        try:
            handle = self.filesystem.open_input_file(location.fs_path)
            try:
                metadata = handle.metadata()
                size = handle.size()
            finally:
                handle.close()
        except OSError as exc:
            raise self.error(location, exc) from None

        def text(name: str) -> str | None:
            value = metadata.get(name) or metadata.get(name.lower())
            return value.decode() if isinstance(value, bytes) else value

        return ObjectInfo(size, text("ETag"), text("Last-Modified"), text("VersionId"))

    def open_file(self, location: ObjectLocation):
        """A random-access file: every read is a ranged GET (Parquet footers, column chunks)."""
        return self.filesystem.open_input_file(location.fs_path)

    def open_stream(self, location: ObjectLocation, buffer_size: int | None = None):
        """A sequential stream, decompressed by the key's extension (`.gz`, `.zst` ...)."""
        return self.filesystem.open_input_stream(
            location.fs_path, compression="detect", buffer_size=buffer_size
        )

    def error(self, location: ObjectLocation, exc: BaseException) -> DwError:
        """A domain error for a failed access to `location`, naming its bucket and key."""
        if isinstance(exc, FileNotFoundError):
            return SourceError(f"{location.uri}: no such object ({location.describe()})")
        verdict = classify_aws_error(str(exc))
        detail = _first_line(str(exc))
        if verdict is None:
            # Not an SDK error (e.g. a truncated read): say what pyarrow said; retry it.
            return SourceUnavailable(
                f"{location.uri}: cannot read ({location.describe()}): {detail}"
            )
        permanent, what = verdict
        if not permanent:
            return SourceUnavailable(f"{location.uri}: {what} ({location.describe()}): {detail}")
        if what == "access denied":
            what = (
                "access denied (HTTP 403): the worker's credentials may not read this object "
                "(s3:GetObject); a role without s3:ListBucket also gets 403 for a missing object"
            )
        elif what == "no such bucket":
            what = f"bucket '{location.bucket}' does not exist"
        return SourceError(f"{location.uri}: {what} ({location.describe()})")


def _first_line(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[0] if lines else ""


@dataclass(frozen=True)
class ObjectSource:
    """A confined, existing object, as `LandingZone.resolve` hands it to the readers."""

    location: ObjectLocation
    info: ObjectInfo
    store: ObjectStore = field(compare=False, repr=False)

    @property
    def uri(self) -> str:
        return self.location.uri

    @property
    def name(self) -> str:
        return self.location.name

    def open_file(self):
        return self.store.open_file(self.location)

    def open_stream(self, buffer_size: int | None = None):
        return self.store.open_stream(self.location, buffer_size)

    def error(self, exc: BaseException) -> DwError:
        return self.store.error(self.location, exc)

    def check_unchanged(self) -> None:
        """Raise `SourceUnavailable` if the object was replaced while it was read.

        Ranged GETs do not pin a version: an upload in the middle of a read would mix two files.
        A retry reads the new object from its start.
        """
        now = self.store.stat(self.location)
        if (now.etag, now.size_bytes) != (self.info.etag, self.info.size_bytes):
            raise SourceUnavailable(
                f"{self.uri}: the object changed while it was read (ETag {self.info.etag} -> "
                f"{now.etag}, {self.info.size_bytes} -> {now.size_bytes} bytes); reading it again"
            )
