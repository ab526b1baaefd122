"""Unit tier: `s3://` landing roots and sources, checked without any network.

Names, confinement and error classification are decided before a request is sent, so these
tests need no server: every source here is refused (or accepted as a name) on its own. The
behaviour against a real S3-protocol server is in `test_s3_sources.py`.
"""

import pytest

from dw_pipelines.core.errors import (
    CommandError,
    ConfigurationError,
    SourceError,
    SourceUnavailable,
    is_permanent,
)
from dw_pipelines.core.landing import LandingZone
from dw_pipelines.core.objectstore import (
    ObjectLocation,
    ObjectStore,
    classify_aws_error,
    parse_location,
    parse_root,
    split_endpoint,
)
from dw_pipelines.settings import Settings, split_landing_roots

ROOTS = ["/tmp/dw-landing-unit", "s3://dw-landing/in", "s3://whole-bucket"]


@pytest.fixture
def zone() -> LandingZone:
    return LandingZone(ROOTS)


# --- names -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("uri", "bucket", "key"),
    [
        ("s3://dw-landing/in/orders.csv", "dw-landing", "in/orders.csv"),
        ("s3://dw-landing/in/2026/11/orders.csv.gz", "dw-landing", "in/2026/11/orders.csv.gz"),
        ("s3://a.b-c/x y/ünï.jsonl", "a.b-c", "x y/ünï.jsonl"),
        ("s3://dw-landing/in/..hidden/x..y.csv", "dw-landing", "in/..hidden/x..y.csv"),
    ],
)
def test_parse_location_accepts_keys_in_normal_form(uri: str, bucket: str, key: str) -> None:
    location = parse_location(uri)
    assert location == ObjectLocation(bucket, key)
    assert location.uri == uri
    assert location.fs_path == f"{bucket}/{key}"


@pytest.mark.parametrize(
    ("uri", "detail"),
    [
        ("s3://dw-landing/in/../secret.csv", "has a '..' segment"),
        ("s3://dw-landing/in/%2e%2e/secret.csv", "has a '%2e%2e' segment"),
        ("s3://dw-landing/in/./orders.csv", "has a '.' segment"),
        ("s3://dw-landing/in//orders.csv", "empty path segment"),
        ("s3://dw-landing//in/orders.csv", "empty path segment"),
        ("s3://dw-landing/in/", "empty path segment"),
        ("s3://dw-landing", "no object key"),
        ("s3://dw-landing/", "no object key"),
        ("s3://dw-landing/in/orders.csv?versionId=3", "no query strings"),
        ("s3://dw-landing/in/orders.csv#x", "no query strings"),
        ("s3://dw-landing/in\\..\\secret.csv", "backslashes"),
        ("s3://dw-landing/in/a\x00.csv", "control characters"),
        ("s3://DW-Landing/in/orders.csv", "not a valid bucket name"),
        ("s3://dw-landing:9000/in/orders.csv", "not a valid bucket name"),
        ("s3:///in/orders.csv", "not a valid bucket name"),
        ("s3://dw-landing/" + "k" * 1025, "longer than 1024 bytes"),
    ],
)
def test_parse_location_refuses_tricks_naming_the_uri(uri: str, detail: str) -> None:
    with pytest.raises(SourceError) as caught:
        parse_location(uri)
    assert str(caught.value).startswith(f"source_uri '{uri}': ")
    assert detail in str(caught.value)
    assert caught.value.permanent


def test_credentials_in_a_uri_are_refused_and_never_repeated() -> None:
    uri = "s3://AKIAEXAMPLE:TopSecretKey123@dw-landing/in/orders.csv"
    with pytest.raises(SourceError) as caught:
        parse_location(uri)
    assert "must not carry credentials" in str(caught.value)
    assert "TopSecretKey123" not in str(caught.value)
    assert "AKIAEXAMPLE" not in str(caught.value)
    assert "s3://***@dw-landing/in/orders.csv" in str(caught.value)


@pytest.mark.parametrize(
    ("root", "uri"),
    [
        ("s3://dw-landing/in", "s3://dw-landing/in/"),
        ("s3://dw-landing/in/", "s3://dw-landing/in/"),
        ("s3://dw-landing/in/sub///", "s3://dw-landing/in/sub/"),
        ("s3://dw-landing", "s3://dw-landing/"),
        ("s3://dw-landing/", "s3://dw-landing/"),
    ],
)
def test_parse_root_normalises_the_trailing_slash(root: str, uri: str) -> None:
    assert parse_root(root).uri == uri


@pytest.mark.parametrize(
    "root", ["s3://dw-landing/in/../x", "s3://Bad_Bucket/in", "s3://k:s@b/in", "s3://b//in"]
)
def test_parse_root_refuses_bad_roots(root: str) -> None:
    with pytest.raises(ConfigurationError, match="DW_LANDING_ROOT entry") as caught:
        parse_root(root)
    assert "k:s@" not in str(caught.value)


# --- confinement (refused before any request: the zone's store is never used) -----------------


@pytest.mark.parametrize(
    "uri",
    [
        pytest.param("s3://other-bucket/in/orders.csv", id="other-bucket"),
        pytest.param("s3://dw-landing/in2/orders.csv", id="prefix-sibling"),
        pytest.param("s3://dw-landing/orders.csv", id="above-the-prefix"),
        pytest.param("s3://dw-landing/inorders.csv", id="name-prefix-only"),
        pytest.param("s3://dw-landing2/in/orders.csv", id="bucket-name-prefix"),
    ],
)
def test_objects_outside_the_s3_roots_are_refused_naming_bucket_and_key(
    zone: LandingZone, uri: str
) -> None:
    location = parse_location(uri)
    with pytest.raises(SourceError) as caught:
        zone.resolve(uri)
    message = str(caught.value)
    assert f"bucket '{location.bucket}', key '{location.key}'" in message
    assert "outside the landing roots" in message
    assert "s3://dw-landing/in/, s3://whole-bucket/" in message

    with pytest.raises(CommandError) as refused:
        zone.check_command_source(uri)
    assert refused.value.field == "source_uri"
    assert refused.value.reason.startswith(f"bucket '{location.bucket}', key '{location.key}'")


def test_a_dotdot_key_is_refused_before_the_root_check(zone: LandingZone) -> None:
    # "in/../in/x" is inside "in/" as a string; it is refused as a trick all the same.
    with pytest.raises(CommandError, match=r"has a '\.\.' segment"):
        zone.check_command_source("s3://dw-landing/in/../in/orders.csv")


def test_the_store_is_created_lazily_and_holds_no_secret() -> None:
    zone = LandingZone(["s3://dw-landing/in"])
    assert zone.object_store is not None and zone.object_store._filesystem is None
    assert "secret" not in repr(zone.object_store.options).lower()


# --- configuration -----------------------------------------------------------------------------


def test_landing_roots_split_keeps_uri_schemes() -> None:
    raw = "/srv/landing:s3://dw-landing/in:/opt/samples::s3://b2"
    assert split_landing_roots(raw) == (
        "/srv/landing",
        "s3://dw-landing/in",
        "/opt/samples",
        "s3://b2",
    )


def test_settings_read_the_s3_variables() -> None:
    settings = Settings.from_env(
        {
            "DW_LANDING_ROOT": "s3://dw-landing/in:/srv/landing",
            "DW_S3_ENDPOINT_URL": "http://minio.storage:9000/",
            "DW_S3_REGION": "eu-central-1",
            "DW_S3_CONNECT_TIMEOUT_SECONDS": "2",
            "DW_S3_REQUEST_TIMEOUT_SECONDS": "7.5",
            "DW_S3_MAX_ATTEMPTS": "5",
        }
    )
    assert settings.landing_roots == ("s3://dw-landing/in", "/srv/landing")
    options = settings.s3_options
    assert options.endpoint_url == "http://minio.storage:9000"
    assert (options.region, options.max_attempts) == ("eu-central-1", 5)
    assert (options.connect_timeout_seconds, options.request_timeout_seconds) == (2.0, 7.5)
    defaults = Settings.from_env({}).s3_options
    assert defaults.endpoint_url is None and defaults.region is None
    assert (defaults.connect_timeout_seconds, defaults.request_timeout_seconds) == (10.0, 30.0)


@pytest.mark.parametrize(
    ("value", "detail"),
    [
        ("minio:9000", "http:// or https://"),
        ("ftp://minio", "http:// or https://"),
        ("http://admin:hunter2@minio:9000", "must not carry credentials"),
        ("http://minio:9000/bucket", "only a scheme, host and port"),
    ],
)
def test_a_bad_endpoint_is_refused_at_start_up(value: str, detail: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        Settings.from_env({"DW_S3_ENDPOINT_URL": value})
    assert detail in str(caught.value)
    assert "hunter2" not in str(caught.value)


def test_split_endpoint() -> None:
    assert split_endpoint("https://s3.example.com") == ("https", "s3.example.com")
    assert split_endpoint("http://127.0.0.1:9000/") == ("http", "127.0.0.1:9000")


# --- error classification ----------------------------------------------------------------------

HEAD = "When reading information for key 'in/a.csv' in bucket 'dw-landing': "


@pytest.mark.parametrize(
    ("message", "permanent", "what"),
    [
        (HEAD + "AWS Error ACCESS_DENIED during HeadObject operation: No response body.", True,
         "access denied"),
        ("AWS Error NO_SUCH_KEY during GetObject operation: The key does not exist", True,
         "no such object"),
        ("AWS Error NO_SUCH_BUCKET during GetObject operation: ...", True, "no such bucket"),
        (HEAD + "AWS Error UNKNOWN (HTTP status 404) during HeadObject operation", True,
         "no such object"),
        (HEAD + "AWS Error UNKNOWN (HTTP status 403) during HeadObject operation", True,
         "access denied"),
        (HEAD + "AWS Error UNKNOWN (HTTP status 301) during HeadObject operation", True,
         "another region"),
        ("AWS Error SLOW_DOWN during GetObject operation: Please reduce your request rate.",
         False, "throttled"),
        (HEAD + "AWS Error UNKNOWN (HTTP status 503) during HeadObject operation: No response "
         "body.", False, "HTTP 503"),
        (HEAD + "AWS Error UNKNOWN (HTTP status 500) during HeadObject operation", False,
         "HTTP 500"),
        ("AWS Error NETWORK_CONNECTION during GetObject operation: curlCode: 28, Timeout was "
         "reached", False, "timed out"),
        (HEAD + "AWS Error NETWORK_CONNECTION during HeadObject operation: curlCode: 7, Could "
         "not connect to server", False, "network trouble"),
        ("AWS Error INTERNAL_FAILURE during GetObject operation: Failed to flush response "
         "stream", False, "the read failed"),
        ("AWS Error SOMETHING_NEW during GetObject operation", False, "reported an error"),
    ],
)  # fmt: skip
def test_aws_errors_are_classified(message: str, permanent: bool, what: str) -> None:
    verdict = classify_aws_error(message)
    assert verdict is not None
    assert verdict[0] is permanent
    assert what in verdict[1]
    # A raw pyarrow OSError that escaped the mapping is classified the same way.
    assert is_permanent(OSError(message)) is permanent


def test_non_aws_errors_are_not_classified_here() -> None:
    assert classify_aws_error("[Errno 5] Input/output error") is None
    assert is_permanent(OSError("[Errno 5] Input/output error")) is False


def test_store_errors_name_bucket_and_key_and_keep_their_class() -> None:
    store = ObjectStore()
    location = ObjectLocation("dw-landing", "in/orders.csv")

    missing = store.error(location, FileNotFoundError("Path does not exist"))
    denied = store.error(
        location, OSError(HEAD + "AWS Error ACCESS_DENIED during HeadObject operation")
    )
    throttled = store.error(
        location, OSError("AWS Error SLOW_DOWN during GetObject operation: Please reduce")
    )
    for error in (missing, denied, throttled):
        assert str(error).startswith("s3://dw-landing/in/orders.csv: ")
        assert "bucket 'dw-landing', key 'in/orders.csv'" in str(error)
    assert isinstance(missing, SourceError) and "no such object" in str(missing)
    assert isinstance(denied, SourceError) and "access denied (HTTP 403)" in str(denied)
    assert isinstance(throttled, SourceUnavailable) and not is_permanent(throttled)
    assert is_permanent(missing) and is_permanent(denied)
