"""`helm-values.yaml` checked offline against the official Dagster chart's values and schemas.

Helm does not validate a values file on its own: it deep-merges it over the chart's `values.yaml`
(maps merge key by key, lists and scalars replace, `null` deletes) and validates the result against
`values.schema.json`; the `dagster-user-deployments` subchart gets its own merge and schema. These
tests do the same with `jsonschema`, then check what a schema cannot: that every key is one the
chart knows (the top level of the chart schema accepts any key, so `dagsterDeamon:` would pass
silently), and that the values say what this deployment needs.

The chart data (values and schemas of the chart, no templates) is in `shared/dagster-helm/` next to
the repository, or wherever `DW_DAGSTER_HELM_DIR` points. Without it the tests that need it skip
(the checks of what the values say still run); the helpers below are also used by
`test_k8s_job.py`, which needs only `helm-values.yaml`.
"""

import copy
import json
import os
import re
import tomllib
from collections.abc import Iterator, Mapping, Sequence
from importlib.util import find_spec
from pathlib import Path
from typing import Any, NamedTuple

import kubernetes_validate
import pytest
import yaml
from dagster._grpc.utils import default_sensor_grpc_timeout
from jsonschema.exceptions import ValidationError
from jsonschema.validators import validator_for

from dw_pipelines.core.retry import RetryPolicy
from dw_pipelines.settings import (
    CODE_LOCATION_NAME,
    TAG_DATASET,
    TAG_MAX_RUNTIME,
    TAG_RETRY_ON_ASSET_OR_OP_FAILURE,
    TAG_TENANT,
    Settings,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
HELM_VALUES_PATH = REPO_ROOT / "helm-values.yaml"
HELM_DIR_ENV = "DW_DAGSTER_HELM_DIR"
DEFAULT_HELM_DIR = Path(__file__).resolve().parents[2] / "shared" / "dagster-helm"
SUBCHART = "dagster-user-deployments"

DB_SECRET = "dw-pipelines-db"
RUN_SERVICE_ACCOUNT = "dw-pipelines-run"
SENSOR_TIMEOUT_ENV = "DAGSTER_SENSOR_GRPC_TIMEOUT_SECONDS"
# Kubernetes validates the Service the subchart names after each deployment as a DNS-1035 label.
DNS_1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")
# Versions of Kubernetes whose (strict) schemas shipped in kubernetes-validate we check against.
K8S_VERSIONS = ("1.25", "1.37")

# Keys the schemas require that these values.yaml copies lack (the copies are older than the
# schemas: shared/dagster-helm/README.md, "Known gap"). Filled in only where missing, with the
# values newer charts ship, so a newer values.yaml that has them wins.
MAIN_DEFAULT_GAPS = {
    "global": {"dagsterInstanceConfigMap": ""},
    "migrate": {"extraContainers": [], "initContainers": []},
}
SUBCHART_DEFAULT_GAPS = {"includeInstance": False, "global": {"dagsterInstanceConfigMap": ""}}


# --- merging and loading ----------------------------------------------------------------------


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Helm's merge of user values over defaults: maps merge recursively, lists and scalars
    replace, and a key set to null is removed."""
    merged = copy.deepcopy(dict(base))
    for key, value in override.items():
        if value is None:
            merged.pop(key, None)
        elif isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def fill_missing(values: Mapping[str, Any], gaps: Mapping[str, Any]) -> dict[str, Any]:
    """`values` with the keys of `gaps` added where absent (existing values are kept)."""
    filled = copy.deepcopy(dict(values))
    for key, value in gaps.items():
        if isinstance(value, Mapping) and isinstance(filled.get(key), Mapping):
            filled[key] = fill_missing(filled[key], value)
        elif key not in filled:
            filled[key] = copy.deepcopy(value)
    return filled


def load_helm_values() -> dict[str, Any]:
    return yaml.safe_load(HELM_VALUES_PATH.read_text())


class Chart(NamedTuple):
    values: dict[str, Any]
    schema: dict[str, Any]
    subchart_values: dict[str, Any]
    subchart_schema: dict[str, Any]


def chart_dir() -> Path | None:
    override = os.environ.get(HELM_DIR_ENV)
    if override:
        path = Path(override)
        if not (path / "values.schema.json").is_file():
            pytest.fail(f"{HELM_DIR_ENV}={override} has no values.schema.json")
        return path
    return DEFAULT_HELM_DIR if (DEFAULT_HELM_DIR / "values.schema.json").is_file() else None


@pytest.fixture(scope="module")
def chart() -> Chart:
    path = chart_dir()
    if path is None:
        pytest.skip(
            f"Dagster Helm chart data not found at {DEFAULT_HELM_DIR} (the shared/ folder next to "
            f"the repository); set {HELM_DIR_ENV} to a folder with the chart's values.yaml, "
            "values.schema.json and charts/dagster-user-deployments/"
        )
    sub = path / "charts" / SUBCHART
    return Chart(
        values=fill_missing(yaml.safe_load((path / "values.yaml").read_text()), MAIN_DEFAULT_GAPS),
        schema=json.loads((path / "values.schema.json").read_text()),
        subchart_values=fill_missing(
            yaml.safe_load((sub / "values.yaml").read_text()), SUBCHART_DEFAULT_GAPS
        ),
        subchart_schema=json.loads((sub / "values.schema.json").read_text()),
    )


@pytest.fixture
def values() -> dict[str, Any]:
    return load_helm_values()


def subchart_values_for(chart: Chart, values: Mapping[str, Any]) -> dict[str, Any]:
    """What the subchart is validated with: its defaults, the parent's section merged over them,
    and the parent's merged `global`."""
    merged = deep_merge(chart.values, values)
    sub = deep_merge(chart.subchart_values, merged[SUBCHART])
    sub["global"] = deep_merge(chart.subchart_values.get("global") or {}, merged["global"])
    return sub


# --- schema validation ------------------------------------------------------------------------


def schema_errors(schema: Mapping[str, Any], instance: Any) -> list[str]:
    """Every validation error, as 'path: message' lines (draft picked from the schema: these
    schemas use $defs and so are 2020-12)."""
    validator_class = validator_for(schema)
    validator_class.check_schema(schema)
    return sorted(describe(error) for error in validator_class(schema).iter_errors(instance))


def describe(error: ValidationError) -> str:
    """'path: message' of the error or, for anyOf/oneOf, of its deepest causes: the failures
    inside the branches that got furthest, not the whole value that matched no branch."""
    leaves = list(_leaf_errors(error))
    depth = max(len(leaf.absolute_path) for leaf in leaves)
    return "; ".join(
        sorted(
            {
                f"{format_path(leaf.absolute_path) or '<root>'}: {leaf.message}"
                for leaf in leaves
                if len(leaf.absolute_path) == depth
            }
        )
    )


def _leaf_errors(error: ValidationError) -> Iterator[ValidationError]:
    if not error.context:
        yield error
    for cause in error.context:
        yield from _leaf_errors(cause)


def format_path(path: Sequence[str | int]) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


# --- key names --------------------------------------------------------------------------------


def _resolve(root: Mapping[str, Any], ref: str) -> dict[str, Any]:
    if not ref.startswith("#/"):
        raise AssertionError(f"remote $ref in the chart schema: {ref}")
    node: Any = root
    for part in ref[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def _alternatives(root: Mapping[str, Any], node: Mapping[str, Any]) -> list[list[Mapping]]:
    """The ways `node` can match: each a list of schema nodes that apply together ($ref and
    allOf add to every way; anyOf and oneOf branch)."""
    ways: list[list[Mapping]] = [[node]]
    parts: list[list[list[Mapping]]] = []
    if "$ref" in node:
        parts.append(_alternatives(root, _resolve(root, node["$ref"])))
    parts.extend(_alternatives(root, member) for member in node.get("allOf", []))
    for keyword in ("anyOf", "oneOf"):
        if keyword in node:
            parts.append([way for member in node[keyword] for way in _alternatives(root, member)])
    for part in parts:
        ways = [way + extra for way in ways for extra in part]
    return ways


def _allows(way: Sequence[Mapping], json_type: str) -> bool:
    for node in way:
        declared = node.get("type")
        if declared is not None and json_type not in (
            declared if isinstance(declared, list) else [declared]
        ):
            return False
    return True


class _ObjectSchema(NamedTuple):
    free: bool  # any key is allowed (a map, or an object the schema leaves open)
    children: dict[str, list[Mapping]]  # schema nodes for each named key
    value_schemas: list[Mapping]  # schema nodes for the values of a map


def _object_schema(root: Mapping[str, Any], node: Mapping[str, Any]) -> _ObjectSchema:
    free = False
    children: dict[str, list[Mapping]] = {}
    value_schemas: list[Mapping] = []
    for way in _alternatives(root, node):
        if not _allows(way, "object"):
            continue
        declared = [n["properties"] for n in way if n.get("properties")]
        if not declared:
            closed = any(n.get("additionalProperties") is False for n in way)
            free = free or not closed
            value_schemas += [
                n["additionalProperties"]
                for n in way
                if isinstance(n.get("additionalProperties"), dict)
            ]
        for properties in declared:
            for key, child in properties.items():
                children.setdefault(key, []).append(child)
    return _ObjectSchema(free, children, value_schemas)


def _item_schemas(root: Mapping[str, Any], node: Mapping[str, Any]) -> list[Mapping]:
    return [
        n["items"]
        for way in _alternatives(root, node)
        if _allows(way, "array")
        for n in way
        if isinstance(n.get("items"), dict)
    ]


def _any_of(nodes: Sequence[Mapping]) -> Mapping | None:
    return None if not nodes else nodes[0] if len(nodes) == 1 else {"anyOf": list(nodes)}


def _example_item(defaults: Any) -> Any:
    """The chart's example list entries merged into one, to know their keys."""
    items = (
        [item for item in defaults if isinstance(item, Mapping)]
        if isinstance(defaults, list)
        else []
    )
    merged: dict[str, Any] = {}
    for item in items:
        merged = deep_merge(merged, item)
    return merged or None


def unknown_keys(
    values: Any, schema_root: Mapping[str, Any], defaults: Any, schema: Mapping | None = None
) -> list[str]:
    """Key paths in `values` that neither the chart's defaults nor its schema know.

    Follows dicts recursively and the dict items of lists (checked against the schema's `items`
    and the chart's example entries). A key is known if the defaults have it, the schema names
    it, or the schema leaves that object open (maps such as `labels`, free-form blocks such as
    `runMonitoring` or `podSpecConfig`).
    """
    return list(
        _unknown(values, schema_root, schema_root if schema is None else schema, defaults, "")
    )


def _unknown(
    value: Any, root: Mapping[str, Any], schema: Mapping | None, defaults: Any, path: str
) -> Iterator[str]:
    if isinstance(value, Mapping):
        known_defaults = defaults if isinstance(defaults, Mapping) else {}
        if schema is None:
            # Only the defaults describe this block; an empty default is an open map.
            shape = _ObjectSchema(free=not known_defaults, children={}, value_schemas=[])
        else:
            shape = _object_schema(root, schema)
        for key, child in value.items():
            child_path = f"{path}.{key}" if path else str(key)
            child_schemas = shape.children.get(key) or shape.value_schemas
            if key not in known_defaults and key not in shape.children and not shape.free:
                yield child_path
                continue
            if schema is not None and not child_schemas and key not in known_defaults:
                continue  # an open object: nothing below it to check against
            yield from _unknown(
                child, root, _any_of(child_schemas), known_defaults.get(key), child_path
            )
    elif isinstance(value, list):
        item_schema = _any_of(_item_schemas(root, schema)) if schema is not None else None
        example = _example_item(defaults)
        if item_schema is None and example is None:
            return
        for index, item in enumerate(value):
            if isinstance(item, Mapping):
                yield from _unknown(item, root, item_schema, example, f"{path}[{index}]")


def rename_key(values: dict[str, Any], path: Sequence[str | int], old: str, new: str) -> None:
    """Rename `old` to `new` in the dict at `path`, keeping its position."""
    node: Any = values
    for part in path:
        node = node[part]
    items = [(new if key == old else key, value) for key, value in node.items()]
    assert any(key == new for key, _ in items), f"{old} not found at {path}"
    node.clear()
    node.update(items)


# --- (a), (b): the merged values validate ---------------------------------------------------


def test_values_validate_against_the_chart_schema(chart, values):
    errors = schema_errors(chart.schema, deep_merge(chart.values, values))
    assert not errors, "helm-values.yaml merged over the chart's values.yaml:\n" + "\n".join(errors)


def test_user_deployments_validate_against_the_subchart_schema(chart, values):
    errors = schema_errors(chart.subchart_schema, subchart_values_for(chart, values))
    assert not errors, f"{SUBCHART} values merged over the subchart's values.yaml:\n" + "\n".join(
        errors
    )


@pytest.mark.parametrize(
    ("path", "bad_value", "expected_error_at"),
    [
        (("runLauncher", "type"), "K8sRunLaunchr", "runLauncher.type"),
        (
            (
                "dagsterDaemon",
                "runCoordinator",
                "config",
                "queuedRunCoordinator",
                "maxConcurrentRuns",
            ),
            "ten",
            "dagsterDaemon.runCoordinator.config.queuedRunCoordinator.maxConcurrentRuns",
        ),
        (("postgresql", "enabled"), "false", "postgresql.enabled"),
        (("retention", "sensor", "purgeAfterDays", "skipped"), "7d", "retention.sensor"),
    ],
)
def test_schema_validation_reports_bad_values(chart, values, path, bad_value, expected_error_at):
    broken = copy.deepcopy(values)
    node = broken
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = bad_value
    errors = schema_errors(chart.schema, deep_merge(chart.values, broken))
    assert any(error.startswith(expected_error_at) for error in errors), errors


def test_subchart_validation_reports_a_deployment_without_image(chart, values):
    broken = copy.deepcopy(values)
    del broken[SUBCHART]["deployments"][0]["image"]
    errors = schema_errors(chart.subchart_schema, subchart_values_for(chart, broken))
    assert any("'image' is a required property" in error for error in errors), errors


# --- (c): every key is one the chart knows --------------------------------------------------


def test_every_key_is_known_to_the_chart(chart, values):
    unknown = unknown_keys(values, chart.schema, chart.values)
    assert not unknown, f"keys the chart does not know (typos?): {unknown}"


def test_user_deployment_keys_are_known_to_the_subchart(chart, values):
    section = {"deployments": values[SUBCHART]["deployments"]}
    unknown = unknown_keys(section, chart.subchart_schema, chart.subchart_values)
    assert not unknown, f"keys the subchart does not know (typos?): {unknown}"


TYPOS = [
    ((), "dagsterDaemon", "dagsterDeamon", "dagsterDeamon"),
    (("dagsterDaemon",), "runCoordinator", "runCordinator", "dagsterDaemon.runCordinator"),
    (
        (
            "dagsterDaemon",
            "runCoordinator",
            "config",
            "queuedRunCoordinator",
            "tagConcurrencyLimits",
            1,
        ),
        "limit",
        "limt",
        "dagsterDaemon.runCoordinator.config.queuedRunCoordinator.tagConcurrencyLimits[1].limt",
    ),
    (
        (
            "dagsterDaemon",
            "runCoordinator",
            "config",
            "queuedRunCoordinator",
            "tagConcurrencyLimits",
            0,
            "value",
        ),
        "applyLimitPerUniqueValue",
        "applyLimitPerUniqeValue",
        "dagsterDaemon.runCoordinator.config.queuedRunCoordinator.tagConcurrencyLimits[0].value"
        ".applyLimitPerUniqeValue",
    ),
    (
        ("runLauncher", "config", "k8sRunLauncher", "envSecrets", 0),
        "name",
        "nmae",
        "runLauncher.config.k8sRunLauncher.envSecrets[0].nmae",
    ),
    (
        (SUBCHART, "deployments", 0),
        "dagsterApiGrpcArgs",
        "dagsterApiGrpcArg",
        f"{SUBCHART}.deployments[0].dagsterApiGrpcArg",
    ),
    (
        (SUBCHART, "deployments", 0, "readinessProbe"),
        "periodSeconds",
        "periodSecond",
        f"{SUBCHART}.deployments[0].readinessProbe.periodSecond",
    ),
    (("dagsterWebserver",), "replicaCount", "replicas", "dagsterWebserver.replicas"),
    (
        ("retention", "sensor", "purgeAfterDays"),
        "skipped",
        "skiped",
        "retention.sensor.purgeAfterDays.skiped",
    ),
    (("postgresql",), "postgresqlHost", "postgresHost", "postgresql.postgresHost"),
]


@pytest.mark.parametrize(("parent", "old", "new", "expected"), TYPOS, ids=[t[2] for t in TYPOS])
def test_key_checker_reports_typos(chart, values, parent, old, new, expected):
    broken = copy.deepcopy(values)
    rename_key(broken, parent, old, new)
    assert unknown_keys(broken, chart.schema, chart.values) == [expected]


def test_schema_alone_misses_a_top_level_typo(chart, values):
    """Why the key checker exists: the chart schema accepts any top-level key."""
    broken = copy.deepcopy(values)
    rename_key(broken, (), "dagsterDaemon", "dagsterDeamon")
    assert schema_errors(chart.schema, deep_merge(chart.values, broken)) == []
    assert unknown_keys(broken, chart.schema, chart.values) == ["dagsterDeamon"]


def test_chart_defaults_used_by_the_job_test_match_the_chart(chart):
    """test_k8s_job.py renders the run launcher without the chart data, from a copy of the
    defaults it reads; the copy must match the chart."""
    from dw_pipelines_tests.test_k8s_job import CHART_DEFAULTS

    def leaves(node: Any, path: tuple = ()) -> Iterator[tuple[tuple, Any]]:
        if isinstance(node, Mapping) and node:
            for key, child in node.items():
                yield from leaves(child, (*path, key))
        else:
            yield path, node

    for path, expected in leaves(CHART_DEFAULTS):
        actual: Any = chart.values
        for part in path:
            actual = actual.get(part) if isinstance(actual, Mapping) else None
        assert actual == expected, f"chart default {'.'.join(path)} is {actual!r}"


# --- (d): what the values say ---------------------------------------------------------------


def deployment(values: Mapping[str, Any]) -> dict[str, Any]:
    (only,) = values[SUBCHART]["deployments"]
    return only


def k8s_run_launcher(values: Mapping[str, Any]) -> dict[str, Any]:
    return values["runLauncher"]["config"]["k8sRunLauncher"]


def env_value(env: Sequence[Mapping[str, Any]], name: str) -> str | None:
    return next((item.get("value") for item in env if item["name"] == name), None)


def workspace_locations(merged: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The `load_from` entries of the chart's workspace.yaml (configmap-workspace.yaml): the
    webserver's fixed servers when workspace.enabled, otherwise one per user deployment, the
    location named after the deployment."""
    workspace = merged["dagsterWebserver"]["workspace"]
    if workspace["enabled"]:
        return [
            {"host": s["host"], "port": s["port"], "location_name": s.get("name") or s["host"]}
            for s in workspace["servers"]
        ]
    return [
        {"host": d["name"], "port": d["port"], "location_name": d["name"]}
        for d in merged[SUBCHART]["deployments"]
    ]


def test_the_code_location_is_named_dw_pipelines_and_served_by_the_user_deployment(values):
    merged = deep_merge({"dagsterWebserver": {"workspace": {"enabled": False}}}, values)
    (location,) = workspace_locations(merged)
    assert location["location_name"] == CODE_LOCATION_NAME
    user = deployment(values)
    assert (location["host"], location["port"]) == (user["name"], user["port"])
    assert values[SUBCHART]["enabled"] is True


def test_user_deployment_names_are_valid_kubernetes_service_names(values):
    # The subchart creates a Service named exactly after each deployment.
    for item in values[SUBCHART]["deployments"]:
        assert DNS_1035_LABEL.match(item["name"]), item["name"]


def test_user_deployment_loads_the_definitions_module(values):
    args = deployment(values)["dagsterApiGrpcArgs"]
    assert args == ["-m", "dw_pipelines.definitions"]
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    assert args[1] == pyproject["tool"]["dagster"]["module_name"]
    assert pyproject["tool"]["dagster"]["code_location_name"] == CODE_LOCATION_NAME
    assert find_spec(args[1]) is not None


def test_user_deployment_image_is_immutable_and_cached(values):
    image = deployment(values)["image"]
    assert image["repository"] == "registry.example.com/dw-pipelines"
    assert re.fullmatch(r"v\d+\.\d+\.\d+", str(image["tag"])), image["tag"]
    assert image["pullPolicy"] == "IfNotPresent"
    # Runs take the code server's image, so they can never run other code.
    assert "image" not in k8s_run_launcher(values)


def test_user_deployment_environment_probe_and_resources(values):
    user = deployment(values)
    assert [s["name"] for s in user["envSecrets"]] == [DB_SECRET]
    assert env_value(user["env"], "DW_LANDING_ROOT")
    assert user["port"] == 3030
    probe = user["readinessProbe"]
    assert probe["enabled"] is True and "exec" not in probe  # the chart's gRPC health check
    assert probe["timeoutSeconds"] < probe["periodSeconds"]
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(user["resources"][kind])
    # Runs get their settings from the run launcher only (see test_k8s_job.py).
    assert user["includeConfigInLaunchedRuns"] == {"enabled": False}


def test_run_launcher_is_k8s_with_the_db_secret_and_its_own_service_account(values):
    assert values["runLauncher"]["type"] == "K8sRunLauncher"
    launcher = k8s_run_launcher(values)
    assert [s["name"] for s in launcher["envSecrets"]] == [DB_SECRET]
    assert "jobNamespace" not in launcher
    assert launcher["imagePullPolicy"] == "IfNotPresent"
    assert launcher["runK8sConfig"]["podSpecConfig"]["serviceAccountName"] == RUN_SERVICE_ACCOUNT
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(launcher["resources"][kind])
    # Runs see the same landing root as the code server.
    landing = env_value(deployment(values)["env"], "DW_LANDING_ROOT")
    assert f"DW_LANDING_ROOT={landing}" in launcher["envVars"]


@pytest.mark.parametrize("k8s_version", K8S_VERSIONS)
def test_extra_manifests_create_the_run_service_account(values, k8s_version):
    manifests = values["extraManifests"]
    accounts = [m["metadata"]["name"] for m in manifests if m["kind"] == "ServiceAccount"]
    assert accounts == [RUN_SERVICE_ACCOUNT]
    for manifest in manifests:
        kubernetes_validate.validate(manifest, k8s_version, strict=True)


def test_dagster_instance_uses_an_external_postgres_with_an_operator_secret(chart, values):
    assert values["postgresql"]["enabled"] is False
    assert values["postgresql"]["postgresqlHost"]
    assert values["postgresql"]["postgresqlUsername"]
    assert values["postgresql"]["postgresqlDatabase"]
    assert values["generatePostgresqlPasswordSecret"] is False
    secret = values["global"]["postgresqlSecretName"]
    assert secret and secret != chart.values["global"]["postgresqlSecretName"]


def test_run_queue_limits_key_on_the_sensor_tags(values):
    coordinator = values["dagsterDaemon"]["runCoordinator"]
    assert coordinator["enabled"] is True and coordinator["type"] == "QueuedRunCoordinator"
    queued = coordinator["config"]["queuedRunCoordinator"]
    assert queued["maxConcurrentRuns"] == 10
    limits = {limit["key"]: limit for limit in queued["tagConcurrencyLimits"]}
    per_value = {"applyLimitPerUniqueValue": True}
    assert limits[TAG_TENANT]["value"] == per_value
    assert 1 <= limits[TAG_TENANT]["limit"] < queued["maxConcurrentRuns"]
    # One load of a dataset at a time: merge loads land in enqueue order.
    assert limits[TAG_DATASET] == {"key": TAG_DATASET, "value": per_value, "limit": 1}
    assert limits["dagster/backfill"] == {"key": "dagster/backfill", "limit": 3}


def test_run_retries_only_cover_crashes(values):
    # The chart renders only these two keys; "not after a step failure" is a run tag.
    retries = values["dagsterDaemon"]["runRetries"]
    assert retries == {"enabled": True, "maxRetries": 0}
    tags = Settings.from_env({}).run_policy_tags
    assert tags[TAG_RETRY_ON_ASSET_OR_OP_FAILURE] == "false"


def test_run_monitoring_timeout_outlasts_the_worker_retry_waits(values):
    monitoring = values["dagsterDaemon"]["runMonitoring"]
    assert monitoring["enabled"] is True
    assert monitoring["startTimeoutSeconds"] >= 300
    policy = RetryPolicy()
    waits_with_defaults = sum(policy.schedule()) * (1 + policy.jitter)  # ~341 s
    # The cap is the run tag the code server's sensor puts on each run (the chart renders no
    # maxRuntimeSeconds). A run waiting for its retry must not be killed: room for all default
    # waits, or for one wait at the cap, plus the load.
    assert "maxRuntimeSeconds" not in monitoring
    (deployment,) = values["dagster-user-deployments"]["deployments"]
    configured = env_value(deployment["env"], "DW_RUN_MAX_RUNTIME_SECONDS")
    settings = Settings.from_env({"DW_RUN_MAX_RUNTIME_SECONDS": configured})
    assert settings.run_policy_tags[TAG_MAX_RUNTIME] == configured
    assert int(configured) == Settings.from_env({}).run_max_runtime_seconds
    assert int(configured) > policy.max_delay_seconds + waits_with_defaults


def test_sensor_grpc_timeout_is_raised_for_daemon_and_webserver(values, monkeypatch):
    daemon = env_value(values["dagsterDaemon"]["env"], SENSOR_TIMEOUT_ENV)
    webserver = env_value(values["dagsterWebserver"]["env"], SENSOR_TIMEOUT_ENV)
    assert daemon == webserver
    default = default_sensor_grpc_timeout()
    monkeypatch.setenv(SENSOR_TIMEOUT_ENV, daemon)
    assert default_sensor_grpc_timeout() == int(daemon) > default
    assert values["dagsterDaemon"]["sensors"] == {"useThreads": True, "numWorkers": 4}


def test_webserver_replicas_and_resources(values):
    webserver = values["dagsterWebserver"]
    assert webserver["replicaCount"] >= 2
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(webserver["resources"][kind])


def test_retention_purges_only_skipped_sensor_ticks(values):
    retention = values["retention"]
    assert retention["enabled"] is True
    assert retention["sensor"]["purgeAfterDays"] == {
        "skipped": 7,
        "success": -1,
        "failure": -1,
        "started": -1,
    }


def test_run_pods_get_the_object_storage_settings_the_worker_reads(values):
    """The DW_S3_* variables the run pods get are ones Settings reads, with values it accepts
    (the site-specific endpoint and region are left commented in the file)."""
    env_vars = values["runLauncher"]["config"]["k8sRunLauncher"]["envVars"]
    pairs = dict(item.split("=", 1) for item in env_vars)
    s3 = {k: v for k, v in pairs.items() if k.startswith("DW_S3_")}
    assert set(s3) == {
        "DW_S3_CONNECT_TIMEOUT_SECONDS",
        "DW_S3_REQUEST_TIMEOUT_SECONDS",
        "DW_S3_MAX_ATTEMPTS",
    }
    configured = Settings.from_env(s3).s3_options
    assert configured == Settings.from_env({}).s3_options  # the defaults, pinned
    text = HELM_VALUES_PATH.read_text()
    for commented in ("DW_S3_REGION=", "DW_S3_ENDPOINT_URL=", "eks.amazonaws.com/role-arn:"):
        assert f"# - {commented}" in text or f"#   {commented}" in text, commented


def test_the_worker_logs_json_on_the_cluster(values):
    (deployment,) = values["dagster-user-deployments"]["deployments"]
    assert env_value(deployment["env"], "DW_LOG_FORMAT") == "json"
    env_vars = values["runLauncher"]["config"]["k8sRunLauncher"]["envVars"]
    assert "DW_LOG_FORMAT=json" in env_vars
    assert Settings.from_env({"DW_LOG_FORMAT": "json"}).log_format == "json"
