"""Columns named as real exports name them, end to end on PostgreSQL and SQLite.

A contract whose file columns are headers nobody would choose for SQL (`Order`, `select`,
`User Name`, `Growth %`, `1960`, an empty header, Korean) loads into warehouse columns named by
the convention, through every promotion path (append; merge in place, by changed keys and by
rewrite on PostgreSQL), and shows both names where an operator looks: the column schema in
Dagster and a refusal's message.
"""

from pathlib import Path

import dagster as dg
import pytest
import sqlalchemy as sa
import yaml

from dw_pipelines.definitions import build_definitions
from dw_pipelines.services import build_service, dispose
from dw_pipelines_tests.conftest import make_settings

HEADER = ["", "Order", "select", "User Name", "Growth %", "1960", "주문일"]
COLUMNS = ["row_name", "order", "select", "user_name", "growth_percent", "_1960", "jumunil"]
QUOTED = ", ".join('"' + c + '"' for c in COLUMNS)


def contract(mode: str) -> dict:
    return {
        "name": "awkward",
        "write_mode": mode,
        "primary_key": ["Order"],
        "columns": [
            {"name": "", "column": "row_name", "type": "string"},
            {"name": "Order", "type": "int64", "nullable": False},
            {"name": "select", "type": "string"},
            {"name": "User Name", "type": "string"},
            {"name": "Growth %", "type": "float64"},
            {"name": "1960", "type": "decimal(8,2)"},
            {"name": "주문일", "type": "date"},
        ],
        "csv": {"null_values": ["", "NA"], "date_format": "%d.%m.%Y"},
    }


def csv_file(path: Path, rows: list[list[str]]) -> Path:
    lines = [",".join(f'"{h}"' for h in HEADER)] + [",".join(r) for r in rows]
    path.write_text("\r\n".join(lines) + "\r\n", encoding="utf-8")
    return path


FIRST = [
    ["a", "1", "x", "ana", "1.5", "10.25", "31.12.2025"],
    ["b", "2", "NA", '"bo, jr"', "NA", "NA", "01.01.2026"],
    ["c", "3", "z", "cy", "12.0", "3", "NA"],
]
SECOND = [
    ["a", "1", "x", "ana", "1.5", "10.25", "31.12.2025"],  # unchanged
    ["b2", "2", "y", "bo", "2", "1", "02.01.2026"],  # changed
    ["d", "4", "w", "di", "0", "0", "03.01.2026"],  # new
]


def service_for(url: str, tmp: Path, landing: Path, mode: str, **env):
    folder = tmp / "contracts"
    folder.mkdir(exist_ok=True)
    (folder / "awkward.yaml").write_text(yaml.safe_dump(contract(mode), allow_unicode=True))
    settings = make_settings(url, tmp / "home", landing, DW_DATASETS_PATH=folder, **env)
    return settings, build_service(settings)


def load(service, source: Path, run_id: str):
    job = service.queue.enqueue(
        {"dataset": "awkward", "source_uri": str(source), "business_date": "2026-11-24"}
    ).job
    service.stage(service.start(job.job_id, run_id), run_id)
    return job, service.promote(job.job_id, run_id)


def stored(service) -> tuple[list[str], list[tuple]]:
    with service.warehouse.engine.connect() as conn:
        result = conn.execute(sa.text(f"SELECT {QUOTED} FROM dw_storage.awkward"))
        rows = sorted(tuple(r) for r in result.all())
    with service.warehouse.engine.connect() as conn:
        columns = [c["name"] for c in sa.inspect(conn).get_columns("awkward", "dw_storage")]
    return [c for c in columns if not c.startswith("_dw_")], rows


def plain(rows: list[tuple]) -> list[tuple]:
    """Decimals and dates as text (`10.25`, `2025-12-31`): the same on both databases."""
    return [
        tuple(v if v is None or isinstance(v, (str, int, float)) else str(v) for v in row)
        for row in rows
    ]


@pytest.mark.parametrize("mode", ["append", "merge"])
def test_awkward_headers_load_on_both_databases(db_url: str, tmp_path: Path, mode: str) -> None:
    landing = tmp_path / "landing"
    landing.mkdir()
    _, service = service_for(db_url, tmp_path, landing, mode)
    try:
        load(service, csv_file(landing / "first.csv", FIRST), "run-1")
        columns, rows = stored(service)
        assert columns == COLUMNS
        assert plain(rows) == [
            ("a", 1, "x", "ana", 1.5, "10.25", "2025-12-31"),
            ("b", 2, None, "bo, jr", None, None, "2026-01-01"),
            ("c", 3, "z", "cy", 12.0, "3.00", None),
        ]
        _, result = load(service, csv_file(landing / "second.csv", SECOND), "run-2")
        _, rows = stored(service)
        if mode == "merge":
            assert (result.inserted, result.deleted) == (2, 1)
            assert plain(rows) == [
                ("a", 1, "x", "ana", 1.5, "10.25", "2025-12-31"),
                ("b2", 2, "y", "bo", 2.0, "1.00", "2026-01-02"),
                ("c", 3, "z", "cy", 12.0, "3.00", None),
                ("d", 4, "w", "di", 0.0, "0.00", "2026-01-03"),
            ]
        else:
            assert len(rows) == 6
    finally:
        dispose(service)


@pytest.mark.parametrize(
    "env",
    [
        {"DW_MERGE_REWRITE_SHARE": "0", "DW_MERGE_REWRITE_MIN_ROWS": "1"},  # rewrite
        {"DW_MERGE_REWRITE_SHARE": "off", "DW_MERGE_REWRITE_MIN_ROWS": "1"},  # changed keys
    ],
    ids=["rewrite", "changed-keys"],
)
def test_large_merge_paths_handle_keyword_columns(
    pg_url: str, tmp_path: Path, env: dict[str, str]
) -> None:
    landing = tmp_path / "landing"
    landing.mkdir()
    _, service = service_for(pg_url, tmp_path, landing, "merge", **env)
    try:
        load(service, csv_file(landing / "first.csv", FIRST), "run-1")
        _, result = load(service, csv_file(landing / "second.csv", SECOND), "run-2")
        assert result.strategy == (
            "rewrite" if env["DW_MERGE_REWRITE_SHARE"] == "0" else "in-place"
        )
        _, rows = stored(service)
        assert [r[:2] for r in plain(rows)] == [("a", 1), ("b2", 2), ("c", 3), ("d", 4)]
    finally:
        dispose(service)


def test_a_refusal_and_the_column_schema_name_both_names(
    pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    landing = tmp_path / "landing"
    landing.mkdir()
    settings, service = service_for(pg_url, tmp_path, landing, "append")
    try:
        bad = csv_file(landing / "bad.csv", [FIRST[0], ["b", "2", "y", "bo", "lots", "1", "NA"]])
        job = service.queue.enqueue(
            {"dataset": "awkward", "source_uri": str(bad), "business_date": "2026-11-24"}
        ).job
        with pytest.raises(Exception) as caught:
            service.stage(service.start(job.job_id, "run-1"), "run-1")
        assert str(caught.value) == (
            "bad.csv, line 3, row 2, column 'Growth %' (warehouse column growth_percent): "
            "value 'lots' is not a valid float64"
        )
    finally:
        dispose(service)
    for key, value in {
        "DW_HOME": str(settings.home),
        "DW_DATABASE_URL": pg_url,
        "DW_DATASETS_PATH": str(settings.datasets_path),
    }.items():
        monkeypatch.setenv(key, value)
    graph = build_definitions(settings).resolve_asset_graph()
    schema = graph.get(dg.AssetKey(["storage", "awkward"])).metadata["dagster/column_schema"]
    described = {c.name: c.description for c in schema.columns}
    assert described["growth_percent"] == "Source column: `Growth %`."
    assert described["row_name"] == "Source column: ``."
    assert described["select"] is None  # the same name in file and warehouse
    assert [c.name for c in schema.columns][: len(COLUMNS)] == COLUMNS
