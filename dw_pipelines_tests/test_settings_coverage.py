"""Every setting in helm-values.yaml and dagster.yaml is one that is actually used.

A schema check (test_helm_values.py) proves that the chart accepts a key, not that it does anything
with it: the chart's schema leaves blocks such as `dagsterDaemon.runMonitoring` open, and a key
no template reads is dropped silently when Helm renders the chart. So:

- helm-values.yaml: each leaf key path (lists as `[]`) must be one the chart's templates read, or
  sit below a value they pass through whole. The list of those keys, made by reading the
  templates, is deploy/helm/chart-keys.yaml (its header says how, and when to update it).
- dagster.yaml: validated against Dagster's own instance schema (unknown keys fail), and the
  `config:` of each module/class entry (the run coordinator) against that class's config schema,
  which the instance schema leaves permissive.
"""

import copy
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import pytest
import yaml
from dagster._config import process_config, validate_config
from dagster._core.errors import DagsterInvalidConfigError
from dagster._core.instance.config import dagster_instance_config, dagster_instance_config_schema
from dagster._core.run_coordinator import QueuedRunCoordinator
from dagster._serdes import ConfigurableClass, class_from_code_pointer

from dw_pipelines_tests import test_helm_values as helm

REPO_ROOT = Path(__file__).resolve().parents[1]
CHART_KEYS_PATH = REPO_ROOT / "deploy" / "helm" / "chart-keys.yaml"
DAGSTER_YAML_PATH = REPO_ROOT / "dagster.yaml"

# The commits of configmap-instance.yaml that shared/dagster-helm/README.md says were read.
INSTANCE_TEMPLATE = "helm/dagster/templates/configmap-instance.yaml"
INSTANCE_TEMPLATE_COMMITS = {
    "835892b45aaa0917bc97102968fe062155b64e19",
    "01e0e7efa4223b1dd5dcf68dfd99acc22894cc28",
}
K8S_RUN_LAUNCHER = ("runLauncher", "config", "k8sRunLauncher")
NOT_RENDERED = "validates but is never rendered by the chart"

LIST_ITEM = "[]"
KeyPath = tuple[str, ...]
COMMIT = re.compile(r"^[0-9a-f]{40}$")
PATH_TEXT = re.compile(r"^[A-Za-z][\w-]*(\[\])?(\.[A-Za-z][\w-]*(\[\])?)*$")

# `chart` (the chart's values and schemas from shared/dagster-helm/, skipped without them).
chart = helm.chart


# --- key paths --------------------------------------------------------------------------------


def parse_path(text: str) -> KeyPath:
    """'a.b[].c' -> ('a', 'b', '[]', 'c')."""
    return tuple(text.replace(LIST_ITEM, "." + LIST_ITEM).split("."))


def format_path(path: Sequence[str]) -> str:
    return ".".join(path).replace("." + LIST_ITEM, LIST_ITEM)


def leaf_paths(value: Any, path: KeyPath = ()) -> Iterator[KeyPath]:
    """The key path of every leaf: a scalar, an empty map or list, or a list of scalars (which
    the chart can only take whole). The items of a list of maps share the path `list[]`."""
    if isinstance(value, Mapping) and value:
        for key, child in value.items():
            yield from leaf_paths(child, (*path, str(key)))
    elif isinstance(value, list) and any(isinstance(item, Mapping) for item in value):
        for item in value:
            yield from leaf_paths(item, (*path, LIST_ITEM))
    else:
        yield path


class ChartKeys(NamedTuple):
    rendered: frozenset[KeyPath]
    free_form: frozenset[KeyPath]

    def covers(self, path: KeyPath) -> bool:
        """The chart reads this key, or passes a value above it through whole."""
        return path in self.rendered or any(
            path[:end] in self.free_form for end in range(1, len(path) + 1)
        )


def load_chart_keys_file() -> dict[str, Any]:
    return yaml.safe_load(CHART_KEYS_PATH.read_text())


def chart_keys_from(document: Mapping[str, Any]) -> ChartKeys:
    groups = document["templates"]
    return ChartKeys(
        rendered=frozenset(parse_path(p) for g in groups for p in g.get("rendered", [])),
        free_form=frozenset(parse_path(p) for g in groups for p in g.get("free_form", [])),
    )


def unrendered_keys(values: Mapping[str, Any], keys: ChartKeys) -> list[str]:
    """The leaf key paths of `values` that no chart template reads, sorted, each once."""
    return sorted({format_path(path) for path in leaf_paths(values) if not keys.covers(path)})


def unrendered_message(paths: Sequence[str]) -> str:
    return "\n".join(
        [
            f"{len(paths)} key(s) of helm-values.yaml that no template of the chart reads "
            "(deploy/helm/chart-keys.yaml); Helm drops them without a word:",
            *(f"  {path} {NOT_RENDERED}" for path in paths),
        ]
    )


@pytest.fixture(scope="module")
def chart_keys() -> ChartKeys:
    return chart_keys_from(load_chart_keys_file())


@pytest.fixture
def values() -> dict[str, Any]:
    return helm.load_helm_values()


def set_path(values: dict[str, Any], path: Sequence[str | int], value: Any) -> None:
    node: Any = values
    for part in path[:-1]:
        node = node.setdefault(part, {}) if isinstance(part, str) else node[part]
    node[path[-1]] = value


# Keys that validate against the chart schema (it leaves these blocks open) but that neither
# version of configmap-instance.yaml reads: run tags (dagster/max_runtime,
# dagster/retry_on_asset_or_op_failure) do this per run instead.
DROPPED_DAEMON_KEYS = [
    (("dagsterDaemon", "runMonitoring", "maxRuntimeSeconds"), 7200),
    (("dagsterDaemon", "runRetries", "retryOnAssetOrOpFailure"), False),
]


def with_dropped_daemon_keys(values: Mapping[str, Any]) -> dict[str, Any]:
    broken = copy.deepcopy(dict(values))
    for path, value in DROPPED_DAEMON_KEYS:
        set_path(broken, path, value)
    return broken


# --- the list of chart keys -------------------------------------------------------------------


def test_chart_keys_file_names_its_sources_and_well_formed_paths():
    document = load_chart_keys_file()
    assert document["repository"] == "dagster-io/dagster"
    read: dict[str, set[str]] = {}
    seen: dict[str, set[str]] = {"rendered": set(), "free_form": set()}
    for group in document["templates"]:
        assert isinstance(group.get("group"), str), group
        assert group["read"], f"{group['group']}: no template file named"
        for file, commits in group["read"].items():
            assert file.startswith("helm/dagster/"), file
            assert commits and all(COMMIT.match(c) for c in commits), (file, commits)
            read.setdefault(file, set()).update(commits)
        if group.get("unverified"):
            assert "NOT READ IN A TEMPLATE" in group["note"], group["group"]
        assert group.get("rendered") or group.get("free_form"), group["group"]
        for kind in ("rendered", "free_form"):
            for text in group.get(kind, []):
                assert PATH_TEXT.match(text), f"{group['group']}: bad key path {text!r}"
                seen[kind].add(text)
    assert read[INSTANCE_TEMPLATE] == INSTANCE_TEMPLATE_COMMITS
    both = seen["rendered"] & seen["free_form"]
    assert not both, f"listed as both rendered and free-form: {sorted(both)}"


def test_the_instance_template_keys_of_run_monitoring_and_retries_are_exact(chart_keys):
    """The chart schema leaves these two blocks open, so this list is their only check."""
    for block, expected in [
        (
            ("dagsterDaemon", "runMonitoring"),
            {
                "enabled",
                "startTimeoutSeconds",
                "cancelTimeoutSeconds",
                "maxResumeRunAttempts",
                "pollIntervalSeconds",
                "freeSlotsAfterRunEndSeconds",
            },
        ),
        (("dagsterDaemon", "runRetries"), {"enabled", "maxRetries"}),
    ]:
        listed = {p[len(block)] for p in chart_keys.rendered if p[: len(block)] == block}
        assert listed == expected, block
        assert not any(
            p[: len(block)] == block or block[: len(p)] == p for p in chart_keys.free_form
        ), block


# --- helm-values.yaml: every key is rendered --------------------------------------------------


def test_every_helm_value_is_rendered_by_the_chart(values, chart_keys):
    unrendered = unrendered_keys(values, chart_keys)
    assert not unrendered, unrendered_message(unrendered)


def test_coverage_check_reports_keys_the_chart_never_renders(values, chart_keys):
    broken = with_dropped_daemon_keys(values)
    unrendered = unrendered_keys(broken, chart_keys)
    assert unrendered == [
        "dagsterDaemon.runMonitoring.maxRuntimeSeconds",
        "dagsterDaemon.runRetries.retryOnAssetOrOpFailure",
    ]
    assert unrendered_message(unrendered) == (
        "2 key(s) of helm-values.yaml that no template of the chart reads "
        "(deploy/helm/chart-keys.yaml); Helm drops them without a word:\n"
        "  dagsterDaemon.runMonitoring.maxRuntimeSeconds "
        "validates but is never rendered by the chart\n"
        "  dagsterDaemon.runRetries.retryOnAssetOrOpFailure "
        "validates but is never rendered by the chart"
    )


def test_the_schema_checks_accept_those_keys(chart, values):
    """Why the coverage check exists: both keys pass the schema and the key-name check."""
    broken = with_dropped_daemon_keys(values)
    assert helm.schema_errors(chart.schema, helm.deep_merge(chart.values, broken)) == []
    assert helm.unknown_keys(broken, chart.schema, chart.values) == []


def test_free_form_values_accept_anything_below_them(chart_keys):
    section = {
        "extraManifests": [
            {"kind": "ConfigMap", "metadata": {"annotations": {"example.com/owner": "dw"}}}
        ],
        "runLauncher": {
            "config": {
                "k8sRunLauncher": {
                    "runK8sConfig": {"podSpecConfig": {"nodeSelector": {"pool": "loads"}}},
                    "resources": {"limits": {"memory": "1Gi"}},
                    "envVars": ["A=1"],
                }
            }
        },
        "dagsterDaemon": {"env": [{"name": "X", "valueFrom": {"secretKeyRef": {"name": "s"}}}]},
    }
    assert unrendered_keys(section, chart_keys) == []
    # ...but not next to them.
    section["runLauncher"]["config"]["k8sRunLauncher"]["runK8sConfig"]["podSpec"] = {}
    assert unrendered_keys(section, chart_keys) == [
        "runLauncher.config.k8sRunLauncher.runK8sConfig.podSpec"
    ]


# --- helm-values.yaml: the run launcher block -------------------------------------------------


def k8s_run_launcher_only(values: Mapping[str, Any]) -> dict[str, Any]:
    block: Any = values
    for part in K8S_RUN_LAUNCHER:
        block = block[part]
    return {"runLauncher": {"config": {"k8sRunLauncher": copy.deepcopy(block)}}}


def test_every_k8s_run_launcher_key_is_rendered(values, chart_keys):
    section = k8s_run_launcher_only(values)
    assert any(len(path) > len(K8S_RUN_LAUNCHER) for path in leaf_paths(section))
    unrendered = unrendered_keys(section, chart_keys)
    assert not unrendered, unrendered_message(unrendered)


def test_k8s_run_launcher_check_reports_keys_the_launcher_template_drops(chart, values, chart_keys):
    """Of each envSecrets item the chart writes only `name`, of `image` only repository and tag:
    `optional` and `pullPolicy` pass the schema and are lost."""
    broken = copy.deepcopy(values)
    launcher = broken["runLauncher"]["config"]["k8sRunLauncher"]
    launcher["envSecrets"][0]["optional"] = True
    launcher["image"] = {
        "repository": "registry.example.com/x",
        "tag": "v1",
        "pullPolicy": "Always",
    }
    assert helm.schema_errors(chart.schema, helm.deep_merge(chart.values, broken)) == []
    assert unrendered_keys(k8s_run_launcher_only(broken), chart_keys) == [
        "runLauncher.config.k8sRunLauncher.envSecrets[].optional",
        "runLauncher.config.k8sRunLauncher.image.pullPolicy",
    ]


# --- dagster.yaml against Dagster's own schemas -----------------------------------------------


def load_dagster_yaml() -> dict[str, Any]:
    return yaml.safe_load(DAGSTER_YAML_PATH.read_text())


def instance_schema_errors(data: Mapping[str, Any]) -> list[str]:
    result = validate_config(dagster_instance_config_schema(), data)
    return [] if result.success else [error.message for error in result.errors]


def configurable_class_errors(data: Mapping[str, Any]) -> list[str]:
    """Errors of each `{module, class, config}` entry's config against the class's own schema
    (the instance schema accepts any `config:` there)."""
    errors = []
    for section, entry in data.items():
        if not (isinstance(entry, Mapping) and "module" in entry and "class" in entry):
            continue
        klass = class_from_code_pointer(entry["module"], entry["class"])
        assert issubclass(klass, ConfigurableClass), f"{section}: {klass} is not configurable"
        result = process_config(klass.config_type(), entry.get("config") or {})
        if not result.success:
            errors += [f"{section}.config: {error.message}" for error in result.errors]
    return errors


def test_dagster_yaml_matches_the_instance_schema():
    assert instance_schema_errors(load_dagster_yaml()) == []
    # Dagster's own loader too (it adds checks of its own, e.g. storage vs run_storage).
    config, custom_instance_class = dagster_instance_config(str(REPO_ROOT))
    assert custom_instance_class is None
    assert config["run_coordinator"]["class"] == "QueuedRunCoordinator"


def test_dagster_yaml_run_coordinator_config_matches_its_class():
    data = load_dagster_yaml()
    coordinator = data["run_coordinator"]
    klass = class_from_code_pointer(coordinator["module"], coordinator["class"])
    assert klass is QueuedRunCoordinator
    result = process_config(QueuedRunCoordinator.config_type(), coordinator["config"])
    assert result.success, [error.message for error in result.errors]
    assert configurable_class_errors(data) == []


def test_instance_check_reports_an_unknown_key(tmp_path):
    broken = load_dagster_yaml()
    broken.setdefault("run_monitoring", {})["maxRuntimeSeconds"] = 5
    expected = 'Received unexpected config entry "maxRuntimeSeconds" at path root:run_monitoring'
    errors = instance_schema_errors(broken)
    assert len(errors) == 1 and errors[0].startswith(expected), errors
    (tmp_path / "dagster.yaml").write_text(yaml.safe_dump(broken))
    with pytest.raises(DagsterInvalidConfigError) as raised:
        dagster_instance_config(str(tmp_path))
    assert expected in str(raised.value)


def test_run_coordinator_check_reports_a_key_the_instance_schema_lets_through():
    broken = load_dagster_yaml()
    broken["run_coordinator"]["config"]["maxConcurrentRuns"] = 5  # the Helm spelling
    assert instance_schema_errors(broken) == []  # module/class `config:` is permissive
    errors = configurable_class_errors(broken)
    assert len(errors) == 1, errors
    assert errors[0].startswith(
        'run_coordinator.config: Received unexpected config entry "maxConcurrentRuns" at the root'
    )
