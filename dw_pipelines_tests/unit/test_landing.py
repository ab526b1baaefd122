"""Unit tier: `LandingZone` path confinement on a temporary file system.

Pure: no database, no Dagster.
"""

import os
from pathlib import Path

import pytest

from dw_pipelines.core.errors import CommandError, SourceError
from dw_pipelines.core.landing import LandingZone


@pytest.fixture
def layout(tmp_path: Path) -> dict[str, Path]:
    root = tmp_path / "landing"
    other = tmp_path / "landing2"  # shares a name prefix with the root, but is not inside it
    for directory in (root, root / "sub", other):
        directory.mkdir()
    files = {
        "root": root,
        "inside": root / "orders.csv",
        "nested": root / "sub" / "orders.csv",
        "secret": tmp_path / "secret.csv",
        "sibling": other / "orders.csv",
    }
    for name in ("inside", "nested", "secret", "sibling"):
        files[name].write_text("a,b\n1,2\n", encoding="utf-8")
    os.symlink(files["secret"], root / "escape.csv")
    os.symlink(files["inside"], root / "alias.csv")
    return files


@pytest.fixture
def zone(layout: dict[str, Path]) -> LandingZone:
    return LandingZone([layout["root"]])


# --- accepted ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make_uri",
    [
        pytest.param(lambda root: str(root / "orders.csv"), id="plain-path"),
        pytest.param(lambda root: f"file://{root}/orders.csv", id="file-uri"),
        pytest.param(lambda root: f"file://localhost{root}/orders.csv", id="file-localhost"),
        pytest.param(lambda root: str(root / "sub" / ".." / "orders.csv"), id="dotdot-inside"),
        pytest.param(lambda root: str(root / "alias.csv"), id="symlink-inside"),
    ],
)
def test_resolve_accepts_file_inside_root(
    zone: LandingZone, layout: dict[str, Path], make_uri
) -> None:
    resolved = zone.resolve(make_uri(layout["root"]))
    assert resolved == layout["inside"]
    assert resolved.is_absolute()
    assert zone.check_command_source(make_uri(layout["root"])) == layout["inside"]


def test_resolve_accepts_nested_file_and_percent_encoding(
    tmp_path: Path, layout: dict[str, Path]
) -> None:
    spaced = layout["root"] / "with space.csv"
    spaced.write_text("x\n", encoding="utf-8")
    zone = LandingZone([layout["root"]])
    assert zone.resolve(str(layout["nested"])) == layout["nested"]
    assert zone.resolve(f"file://{layout['root']}/with%20space.csv") == spaced


def test_any_of_several_roots_is_accepted(tmp_path: Path, layout: dict[str, Path]) -> None:
    zone = LandingZone([str(layout["root"]), layout["sibling"].parent])
    assert zone.resolve(str(layout["sibling"])) == layout["sibling"]
    assert zone.roots == (layout["root"], layout["sibling"].parent)


def test_roots_are_resolved_at_construction(tmp_path: Path, layout: dict[str, Path]) -> None:
    link = tmp_path / "root-link"
    os.symlink(layout["root"], link)
    zone = LandingZone([link / "sub" / ".."])
    assert zone.roots == (layout["root"],)
    assert zone.resolve(str(link / "orders.csv")) == layout["inside"]


# --- refused -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make_uri", "detail"),
    [
        pytest.param(lambda f: str(f["secret"]), "outside the landing roots", id="outside"),
        pytest.param(lambda f: str(f["sibling"]), "outside the landing roots", id="prefix-sibling"),
        pytest.param(
            lambda f: f"{f['root']}/../secret.csv", "outside the landing roots", id="dotdot-escape"
        ),
        pytest.param(
            lambda f: f"file://{f['root']}/%2e%2e/secret.csv",
            "outside the landing roots",
            id="encoded-dotdot",
        ),
        pytest.param(
            lambda f: str(f["root"] / "escape.csv"),
            "outside the landing roots",
            id="symlink-escape",
        ),
        pytest.param(lambda f: str(f["root"] / "missing.csv"), "does not exist", id="missing"),
        pytest.param(lambda f: str(f["root"] / "sub"), "is not a regular file", id="directory"),
        pytest.param(lambda f: str(f["root"]), "is not a regular file", id="root-itself"),
        pytest.param(
            lambda f: "s3://bucket/orders.csv", "outside the landing roots", id="s3-no-s3-root"
        ),
        pytest.param(lambda f: "gs://bucket/orders.csv", "scheme 'gs'", id="gs"),
        pytest.param(lambda f: "http://example.com/orders.csv", "scheme 'http'", id="http"),
        pytest.param(
            lambda f: f"file://fileserver{f['inside']}", "must not name a host", id="file-host"
        ),
    ],
)
def test_resolve_refuses(zone: LandingZone, layout: dict[str, Path], make_uri, detail: str) -> None:
    source_uri = make_uri(layout)
    with pytest.raises(SourceError) as caught:
        zone.resolve(source_uri)
    message = str(caught.value)
    assert f"source_uri '{source_uri}'" in message
    assert detail in message
    assert caught.value.permanent is True

    with pytest.raises(CommandError) as as_command:
        zone.check_command_source(source_uri)
    assert as_command.value.field == "source_uri"
    assert detail in as_command.value.reason
    assert str(as_command.value).startswith("source_uri: ")


def test_symlink_escape_names_the_real_target(zone: LandingZone, layout: dict[str, Path]) -> None:
    with pytest.raises(SourceError) as caught:
        zone.resolve(str(layout["root"] / "escape.csv"))
    assert f"resolves to {layout['secret']}" in str(caught.value)
    assert str(layout["root"]) in str(caught.value)


def test_no_roots_refuses_everything(layout: dict[str, Path]) -> None:
    with pytest.raises(SourceError, match=r"\(none configured\)"):
        LandingZone([]).resolve(str(layout["inside"]))


@pytest.mark.parametrize("root", ["file:///tmp/landing", "gs://b", "https://h/landing"])
def test_other_remote_roots_are_refused_at_construction(root: str) -> None:
    with pytest.raises(SourceError) as caught:
        LandingZone(["/tmp", root])
    assert f"DW_LANDING_ROOT entry '{root}'" in str(caught.value)
    assert "only local directories and s3://bucket/prefix roots" in str(caught.value)


def test_s3_roots_sit_beside_local_roots(layout: dict[str, Path]) -> None:
    zone = LandingZone([layout["root"], "s3://dw-landing/in/", "s3://other-bucket"])
    assert zone.roots == (layout["root"],)
    assert [r.uri for r in zone.object_roots] == ["s3://dw-landing/in/", "s3://other-bucket/"]
    assert zone.object_store is not None
    # Local sources resolve as before, with no object store involved.
    assert zone.resolve(str(layout["inside"])) == layout["inside"]
    assert LandingZone([layout["root"]]).object_store is None
