"""Unit tier: `Settings.from_env` on explicit mappings (pure, no database, no Dagster)."""

import os
from pathlib import Path

import pytest

from dw_pipelines.core.errors import ConfigurationError
from dw_pipelines.settings import (
    SAMPLES_DIR,
    SHIPPED_DATASETS_DIR,
    Settings,
    normalize_database_url,
    sqlite_url,
)


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run with tmp_path as the working directory, so the relative default `.dw` lands there."""
    monkeypatch.chdir(tmp_path)
    return tmp_path.resolve()


def test_shipped_directories_exist() -> None:
    assert (SHIPPED_DATASETS_DIR / "orders.yaml").is_file()
    assert SAMPLES_DIR.is_dir()
    assert SAMPLES_DIR.is_absolute()


def test_embedded_defaults(in_tmp: Path) -> None:
    settings = Settings.from_env({})
    home = in_tmp / ".dw"
    assert settings.home == home
    assert settings.home.is_absolute()
    assert settings.database_url == f"sqlite:///{home / 'dw.db'}"
    assert settings.database_url.startswith("sqlite:////")  # absolute path: four slashes
    assert settings.warehouse_url == settings.database_url
    assert settings.landing_roots == (str(home / "landing"), str(SAMPLES_DIR))
    assert settings.datasets_path is None
    assert settings.database_url_from_env is False
    assert settings.warehouse_url_from_env is False
    assert settings.sensor_batch_size == 100
    assert settings.sensor_interval_seconds == 15
    assert settings.sensor_default_status == "RUNNING"
    assert settings.sensor_redispatch_after_seconds == 120
    assert settings.retry_max_retries == 5
    assert settings.retry_base_delay_seconds == 10.0
    assert settings.retry_max_delay_seconds == 3600.0
    assert settings.read_batch_rows == 65_536


def test_empty_strings_count_as_unset(in_tmp: Path) -> None:
    env = {name: "" for name in ("DW_HOME", "DW_DATABASE_URL", "DW_LANDING_ROOT")}
    env["DW_SENSOR_BATCH_SIZE"] = ""
    settings = Settings.from_env(env)
    assert settings.home == in_tmp / ".dw"
    assert settings.database_url == sqlite_url(in_tmp / ".dw" / "dw.db")
    assert settings.sensor_batch_size == 100
    assert settings.database_url_from_env is False


def test_relative_dw_home_is_resolved(in_tmp: Path) -> None:
    settings = Settings.from_env({"DW_HOME": "state/dw"})
    assert settings.home == in_tmp / "state" / "dw"
    assert settings.database_url == f"sqlite:///{in_tmp / 'state' / 'dw' / 'dw.db'}"
    assert settings.landing_roots[0] == str(in_tmp / "state" / "dw" / "landing")


def test_datasets_path_is_resolved(in_tmp: Path) -> None:
    settings = Settings.from_env({"DW_DATASETS_PATH": "contracts"})
    assert settings.datasets_path == in_tmp / "contracts"


@pytest.mark.parametrize(
    ("url", "normalized"),
    [
        ("postgresql://u:p@db:5432/dw", "postgresql+psycopg://u:p@db:5432/dw"),
        ("postgres://u@db/dw", "postgresql+psycopg://u@db/dw"),
        ("postgresql+psycopg2://db/dw", "postgresql+psycopg://db/dw"),
        ("postgresql+psycopg://db/dw", "postgresql+psycopg://db/dw"),
        ("sqlite:////tmp/x.db", "sqlite:////tmp/x.db"),
    ],
)
def test_database_urls_are_normalized(in_tmp: Path, url: str, normalized: str) -> None:
    assert normalize_database_url(url) == normalized
    settings = Settings.from_env({"DW_DATABASE_URL": url})
    assert settings.database_url == normalized
    assert settings.warehouse_url == normalized  # follows the database by default
    assert settings.database_url_from_env is True
    assert settings.warehouse_url_from_env is False


def test_separate_warehouse_url(in_tmp: Path) -> None:
    settings = Settings.from_env(
        {"DW_DATABASE_URL": "postgres://db/outbox", "DW_WAREHOUSE_URL": "postgresql://wh/dw"}
    )
    assert settings.database_url == "postgresql+psycopg://db/outbox"
    assert settings.warehouse_url == "postgresql+psycopg://wh/dw"
    assert settings.warehouse_url_from_env is True


def test_warehouse_url_without_database_url(in_tmp: Path) -> None:
    settings = Settings.from_env({"DW_WAREHOUSE_URL": "postgres://wh/dw"})
    assert settings.database_url.startswith("sqlite:///")
    assert settings.warehouse_url == "postgresql+psycopg://wh/dw"


@pytest.mark.parametrize(
    ("raw", "roots"),
    [
        ("/a", ("/a",)),
        (os.pathsep.join(["/a", "/b/c"]), ("/a", "/b/c")),
        (os.pathsep.join(["/a", "", "/b", " "]), ("/a", "/b")),
    ],
)
def test_landing_roots_split_on_pathsep(in_tmp: Path, raw: str, roots: tuple[str, ...]) -> None:
    assert Settings.from_env({"DW_LANDING_ROOT": raw}).landing_roots == roots


@pytest.mark.parametrize(
    ("name", "attribute", "raw", "value"),
    [
        ("DW_SENSOR_BATCH_SIZE", "sensor_batch_size", "7", 7),
        ("DW_SENSOR_INTERVAL_SECONDS", "sensor_interval_seconds", "1", 1),
        ("DW_SENSOR_REDISPATCH_AFTER_SECONDS", "sensor_redispatch_after_seconds", "0", 0),
        ("DW_RETRY_MAX_RETRIES", "retry_max_retries", "0", 0),
        ("DW_READ_BATCH_ROWS", "read_batch_rows", " 1000 ", 1000),
        ("DW_RETRY_BASE_DELAY_SECONDS", "retry_base_delay_seconds", "0.5", 0.5),
        ("DW_RETRY_MAX_DELAY_SECONDS", "retry_max_delay_seconds", "60", 60.0),
        ("DW_MERGE_REWRITE_SHARE", "merge_rewrite_share", "0.25", 0.25),
        ("DW_MERGE_REWRITE_SHARE", "merge_rewrite_share", "OFF", None),
        ("DW_MERGE_REWRITE_SHARE", "merge_rewrite_share", "", 0.5),
        ("DW_MERGE_REWRITE_MIN_ROWS", "merge_rewrite_min_rows", "1", 1),
        ("DW_ATTACH_MIN_ROWS", "attach_min_rows", "", 1_000_000),
        ("DW_ATTACH_MIN_ROWS", "attach_min_rows", "500", 500),
        ("DW_ATTACH_MIN_ROWS", "attach_min_rows", " Off ", None),
    ],
)
def test_numbers_are_read(in_tmp: Path, name: str, attribute: str, raw: str, value: float) -> None:
    assert getattr(Settings.from_env({name: raw}), attribute) == value


@pytest.mark.parametrize(
    ("name", "raw", "detail"),
    [
        ("DW_SENSOR_BATCH_SIZE", "abc", "must be an integer, got 'abc'"),
        ("DW_SENSOR_BATCH_SIZE", "0", "must be >= 1, got 0"),
        ("DW_SENSOR_BATCH_SIZE", "2.5", "must be an integer"),
        ("DW_SENSOR_INTERVAL_SECONDS", "-1", "must be >= 1"),
        ("DW_SENSOR_REDISPATCH_AFTER_SECONDS", "-5", "must be >= 0, got -5"),
        ("DW_RETRY_MAX_RETRIES", "many", "must be an integer"),
        ("DW_READ_BATCH_ROWS", "0", "must be >= 1"),
        ("DW_ATTACH_MIN_ROWS", "0", "must be >= 1, got 0"),
        ("DW_ATTACH_MIN_ROWS", "lots", "must be an integer"),
        ("DW_RETRY_BASE_DELAY_SECONDS", "soon", "must be a number, got 'soon'"),
        ("DW_RETRY_MAX_DELAY_SECONDS", "-1", "must be a finite number >= 0"),
        ("DW_MERGE_REWRITE_SHARE", "1.5", "must be a share between 0 and 1, or off, got '1.5'"),
        ("DW_MERGE_REWRITE_SHARE", "half", "must be a number, got 'half'"),
        ("DW_MERGE_REWRITE_MIN_ROWS", "0", "must be >= 1"),
    ],
)
def test_bad_numbers_name_the_variable(in_tmp: Path, name: str, raw: str, detail: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        Settings.from_env({name: raw})
    assert str(caught.value).startswith(f"{name} ")
    assert detail in str(caught.value)


@pytest.mark.parametrize(
    ("raw", "status"),
    [("stopped", "STOPPED"), ("STOPPED", "STOPPED"), ("running", "RUNNING"), ("", "RUNNING")],
)
def test_sensor_default_status(in_tmp: Path, raw: str, status: str) -> None:
    assert Settings.from_env({"DW_SENSOR_DEFAULT_STATUS": raw}).sensor_default_status == status


@pytest.mark.parametrize("raw", ["maybe", "on", "paused"])
def test_sensor_default_status_refused(in_tmp: Path, raw: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        Settings.from_env({"DW_SENSOR_DEFAULT_STATUS": raw})
    assert "DW_SENSOR_DEFAULT_STATUS" in str(caught.value)
    assert "RUNNING, STOPPED" in str(caught.value)
    assert repr(raw.upper()) in str(caught.value)


def test_from_env_without_mapping_reads_os_environ(
    in_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DW_HOME", str(in_tmp / "from-os"))
    monkeypatch.setenv("DW_SENSOR_BATCH_SIZE", "3")
    settings = Settings.from_env()
    assert settings.home == in_tmp / "from-os"
    assert settings.sensor_batch_size == 3


def test_settings_are_frozen(in_tmp: Path) -> None:
    settings = Settings.from_env({})
    with pytest.raises(AttributeError):
        settings.sensor_batch_size = 1  # type: ignore[misc]
