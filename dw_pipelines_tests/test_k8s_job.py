"""The Kubernetes Job a `dw_ingestion_job` run gets on the Helm deployment, built without a cluster.

The chart turns `runLauncher.config.k8sRunLauncher` into the `run_launcher` block of the
instance's dagster.yaml (templates/helpers/instance/_run-launcher.tpl); `render_run_launcher`
below does the same from `helm-values.yaml`. A real `K8sRunLauncher` (dagster-k8s 0.29.27) is
loaded from that block into a test instance and launches a run; the one call that would reach a
cluster, creating the Job, is captured instead. So the manifest is what dagster-k8s itself builds
(`K8sContainerContext.create_for_run` -> `get_user_defined_k8s_config` on the run's
`dagster-k8s/config` tag -> `construct_dagster_k8s_job`), and it is then validated against the
`batch/v1` Job schema that ships inside kubernetes-validate (offline, strict: unknown fields fail).
"""

import copy
import json
from collections.abc import Iterator, Mapping
from importlib.resources import files
from pathlib import Path
from typing import Any, NamedTuple

import dagster as dg
import kubernetes
import pytest
from dagster._core.definitions.reconstruct import ReconstructableRepository
from dagster._core.launcher import LaunchRunContext
from dagster._core.remote_origin import (
    GrpcServerCodeLocationOrigin,
    RemoteJobOrigin,
    RemoteRepositoryOrigin,
)
from dagster._core.test_utils import create_run_for_test
from dagster._grpc.types import ExecuteRunArgs
from dagster._serdes import deserialize_value
from dagster_k8s import K8sRunLauncher
from dagster_k8s.client import DagsterKubernetesClient
from dagster_k8s.job import USER_DEFINED_K8S_CONFIG_KEY, get_user_defined_k8s_config
from jsonschema import Draft202012Validator
from referencing import Registry, Resource

from dw_pipelines.settings import (
    CODE_LOCATION_NAME,
    INGESTION_JOB_NAME,
    TAG_DATASET,
    TAG_JOB_ID,
    TAG_TENANT,
)
from dw_pipelines_tests.test_helm_values import (
    K8S_VERSIONS,
    SUBCHART,
    deep_merge,
    format_path,
    load_helm_values,
)

# The chart defaults the run launcher block reads (helm/dagster/values.yaml), so this test needs
# only helm-values.yaml; test_helm_values.py checks them against the chart's copy.
CHART_DEFAULTS: dict[str, Any] = {
    "global": {
        "postgresqlSecretName": "dagster-postgresql-secret",
        "dagsterHome": "/opt/dagster/dagster_home",
        "serviceAccountName": "",
    },
    "serviceAccount": {"name": ""},
    "imagePullSecrets": [],
    "runLauncher": {
        "type": "K8sRunLauncher",
        "config": {
            "k8sRunLauncher": {
                "imagePullPolicy": "Always",
                "jobNamespace": None,
                "loadInclusterConfig": True,
                "kubeconfigFile": None,
                "envConfigMaps": [],
                "envSecrets": [],
                "envVars": [],
                "volumes": [],
                "volumeMounts": [],
                "labels": {},
                "resources": {},
                "failPodOnRunFailure": False,
                "securityContext": None,
                "runK8sConfig": {},
            }
        },
    },
}

# `helm install dagster dagster/dagster -n dw`: the chart's fullname is then "dagster".
RELEASE_NAME = "dagster"
RELEASE_NAMESPACE = "dw"

# What the outbox sensor puts on a run (another module builds the real tag; same shape).
TAG_RESOURCES = {
    "requests": {"cpu": "500m", "memory": "1Gi"},
    "limits": {"cpu": "2", "memory": "4Gi"},
}
RUN_TAGS = {
    TAG_JOB_ID: "job-0001",
    TAG_DATASET: "orders",
    TAG_TENANT: "acme",
    "dagster/partition": "2026-11-24",
    USER_DEFINED_K8S_CONFIG_KEY: json.dumps({"container_config": {"resources": TAG_RESOURCES}}),
}

# Enough of a kubeconfig for the kubernetes client to load; nothing ever connects to it.
FAKE_KUBECONFIG = """\
apiVersion: v1
kind: Config
clusters: [{name: test, cluster: {server: "https://127.0.0.1:6443"}}]
users: [{name: test, user: {token: test}}]
contexts: [{name: test, context: {cluster: test, user: test}}]
current-context: test
"""


def merged_values() -> dict[str, Any]:
    return deep_merge(CHART_DEFAULTS, load_helm_values())


def user_deployment(values: Mapping[str, Any]) -> dict[str, Any]:
    (deployment,) = values[SUBCHART]["deployments"]
    return deployment


def user_image(values: Mapping[str, Any]) -> str:
    """DAGSTER_CURRENT_IMAGE of the code server (the subchart's dagster.dagsterImage.name)."""
    image = user_deployment(values)["image"]
    return f"{image['repository']}:{image['tag']}"


def render_run_launcher(values: Mapping[str, Any]) -> dict[str, Any]:
    """The instance's `run_launcher` block, as _run-launcher.tpl renders it for K8sRunLauncher."""
    launcher = values["runLauncher"]["config"]["k8sRunLauncher"]
    config: dict[str, Any] = {
        "load_incluster_config": launcher["loadInclusterConfig"],
        "job_namespace": launcher.get("jobNamespace") or RELEASE_NAMESPACE,
        "image_pull_policy": launcher["imagePullPolicy"],
        # dagster.serviceAccountName: the chart's own account, which may create Jobs.
        "service_account_name": values["global"]["serviceAccountName"]
        or values["serviceAccount"]["name"]
        or RELEASE_NAME,
        "dagster_home": values["global"]["dagsterHome"],
        "instance_config_map": f"{RELEASE_NAME}-instance",
        "postgres_password_secret": values["global"]["postgresqlSecretName"],
    }
    if launcher.get("kubeconfigFile"):
        config["kubeconfig_file"] = launcher["kubeconfigFile"]
    if values.get("imagePullSecrets"):
        config["image_pull_secrets"] = values["imagePullSecrets"]
    if "image" in launcher:
        config["job_image"] = f"{launcher['image']['repository']}:{launcher['image']['tag']}"
    for key, name in [("envConfigMaps", "env_config_maps"), ("envSecrets", "env_secrets")]:
        if launcher.get(key):
            config[name] = [source["name"] for source in launcher[key] if "name" in source]
    for key, name in [
        ("envVars", "env_vars"),
        ("volumeMounts", "volume_mounts"),
        ("volumes", "volumes"),
        ("labels", "labels"),
        ("resources", "resources"),
        ("schedulerName", "scheduler_name"),
        ("securityContext", "security_context"),
    ]:
        if launcher.get(key):
            config[name] = launcher[key]
    if launcher.get("failPodOnRunFailure"):
        config["fail_pod_on_run_failure"] = True
    run_k8s_config = launcher.get("runK8sConfig") or {}
    if run_k8s_config:
        config["run_k8s_config"] = {
            name: run_k8s_config[key]
            for key, name in [
                ("containerConfig", "container_config"),
                ("podSpecConfig", "pod_spec_config"),
                ("podTemplateSpecMetadata", "pod_template_spec_metadata"),
                ("jobSpecConfig", "job_spec_config"),
                ("jobMetadata", "job_metadata"),
            ]
            if run_k8s_config.get(key)
        }
    return {"module": "dagster_k8s", "class": "K8sRunLauncher", "config": config}


def render_code_location_container_context(values: Mapping[str, Any]) -> dict[str, Any]:
    """What the subchart passes to `dagster api grpc --container-context` when a deployment's
    includeConfigInLaunchedRuns is enabled (dagsterUserDeployments.k8sContainerContext)."""
    deployment = user_deployment(values)
    k8s: dict[str, Any] = {
        "image_pull_policy": deployment["image"]["pullPolicy"],
        "env_config_maps": [f"{RELEASE_NAME}-{deployment['name']}-user-env"],
        "namespace": RELEASE_NAMESPACE,
        # dagsterUserDeployments.serviceAccountName with no account named anywhere.
        "service_account_name": f"{RELEASE_NAME}-user-deployments",
    }
    if deployment.get("envSecrets"):
        k8s["env_secrets"] = [source["name"] for source in deployment["envSecrets"]]
    if deployment.get("resources"):
        k8s["resources"] = deployment["resources"]
    if isinstance(deployment.get("env"), list) and deployment["env"]:
        k8s["env"] = deployment["env"]
    return {"k8s": k8s}


class LaunchedRun(NamedTuple):
    manifest: dict[str, Any]  # the Job, as the Kubernetes API receives it (camelCase JSON)
    namespace: str
    run: dg.DagsterRun


def launch(
    tmp_path: Path,
    tags: Mapping[str, str],
    container_context: Mapping[str, Any] | None = None,
) -> LaunchedRun:
    """Launch a dw_ingestion_job run through the K8sRunLauncher the Helm values configure."""
    values = merged_values()
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(FAKE_KUBECONFIG)
    launcher_block = render_run_launcher(values)
    # Outside a cluster: the same launcher, its API client configured from a file.
    launcher_block["config"].update(load_incluster_config=False, kubeconfig_file=str(kubeconfig))

    created: list[tuple[kubernetes.client.V1Job, str]] = []

    def create_job(self, body, namespace, **_):
        created.append((body, namespace))

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(DagsterKubernetesClient, "create_namespaced_job_with_retries", create_job)
        with dg.instance_for_test(overrides={"run_launcher": launcher_block}) as instance:
            # The run as the daemon creates it from the code server: the code pointer of
            # `-m dw_pipelines.definitions`, the server's image and (if any) container context,
            # and the location as the workspace names it.
            job_origin = (
                ReconstructableRepository.for_module(
                    "dw_pipelines.definitions",
                    "defs",
                    container_image=user_image(values),
                    container_context=container_context,
                )
                .get_reconstructable_job(INGESTION_JOB_NAME)
                .get_python_origin()
            )
            (server,) = values["dagsterWebserver"]["workspace"]["servers"]
            remote_origin = RemoteJobOrigin(
                repository_origin=RemoteRepositoryOrigin(
                    code_location_origin=GrpcServerCodeLocationOrigin(
                        host=server["host"], port=server["port"], location_name=server["name"]
                    ),
                    repository_name="__repository__",
                ),
                job_name=INGESTION_JOB_NAME,
            )
            run = create_run_for_test(
                instance,
                job_name=INGESTION_JOB_NAME,
                tags=dict(tags),
                job_code_origin=job_origin,
                remote_job_origin=remote_origin,
            )
            assert isinstance(instance.run_launcher, K8sRunLauncher)
            instance.run_launcher.launch_run(LaunchRunContext(dagster_run=run, workspace=None))
            run = instance.get_run_by_id(run.run_id)
    ((job, namespace),) = created
    manifest = kubernetes.client.ApiClient().sanitize_for_serialization(job)
    return LaunchedRun(manifest=manifest, namespace=namespace, run=run)


@pytest.fixture(scope="module")
def launched(tmp_path_factory) -> LaunchedRun:
    return launch(tmp_path_factory.mktemp("k8s"), RUN_TAGS)


def container_of(manifest: Mapping[str, Any]) -> dict[str, Any]:
    (container,) = manifest["spec"]["template"]["spec"]["containers"]
    return container


def env_by_name(container: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    return {item["name"]: item for item in container.get("env", [])}


# --- the manifest -----------------------------------------------------------------------------


def test_the_job_runs_the_code_servers_image_with_execute_run(launched):
    values = merged_values()
    manifest = launched.manifest
    assert (manifest["apiVersion"], manifest["kind"]) == ("batch/v1", "Job")
    assert manifest["metadata"]["name"] == f"dagster-run-{launched.run.run_id}"
    assert launched.namespace == RELEASE_NAMESPACE  # jobNamespace left at the release namespace
    container = container_of(manifest)
    assert container["image"] == "registry.example.com/dw-pipelines:v0.1.0" == user_image(values)
    assert container["imagePullPolicy"] == "IfNotPresent"
    assert launched.run.tags["dagster/image"] == container["image"]
    # The image's entrypoint is not overridden; the arguments are `dagster api execute_run`
    # with the serialized run arguments.
    assert "command" not in container
    assert container["args"][:3] == ["dagster", "api", "execute_run"]
    execute_args = deserialize_value(container["args"][3], ExecuteRunArgs)
    assert execute_args.run_id == launched.run.run_id
    assert execute_args.job_origin.job_name == INGESTION_JOB_NAME
    assert execute_args.job_origin.repository_origin.code_pointer.module == (
        "dw_pipelines.definitions"
    )
    labels = manifest["metadata"]["labels"]
    assert labels["dagster/job"] == INGESTION_JOB_NAME
    assert labels["dagster/code-location"] == CODE_LOCATION_NAME
    # Kubernetes never restarts a run pod: a retry is Dagster's decision, not the Job's.
    assert manifest["spec"]["backoffLimit"] == 0
    assert manifest["spec"]["template"]["spec"]["restartPolicy"] == "Never"


def test_the_job_reads_the_database_urls_from_the_secret(launched):
    container = container_of(launched.manifest)
    assert container["envFrom"] == [{"secretRef": {"name": "dw-pipelines-db"}}]
    env = env_by_name(container)
    assert env["DW_LANDING_ROOT"]["value"] == "/landing"
    assert env["DAGSTER_RUN_JOB_NAME"]["value"] == INGESTION_JOB_NAME
    assert env["DAGSTER_HOME"]["value"] == CHART_DEFAULTS["global"]["dagsterHome"]
    # The instance database password comes from the operator's secret (global.postgresqlSecretName).
    assert env["DAGSTER_PG_PASSWORD"]["valueFrom"] == {
        "secretKeyRef": {"name": "dw-dagster-postgresql", "key": "postgresql-password"}
    }
    # No database URL is written into the manifest itself.
    assert "DW_DATABASE_URL" not in env and "DW_WAREHOUSE_URL" not in env


def test_the_job_runs_as_the_run_service_account(launched):
    pod_spec = launched.manifest["spec"]["template"]["spec"]
    assert pod_spec["serviceAccountName"] == "dw-pipelines-run"
    # Not the chart's account, which the launcher itself uses to create Jobs.
    assert render_run_launcher(merged_values())["config"]["service_account_name"] == RELEASE_NAME


def test_resources_come_from_the_run_tag(launched):
    assert get_user_defined_k8s_config(launched.run.tags).container_config == {
        "resources": TAG_RESOURCES
    }
    launcher_default = merged_values()["runLauncher"]["config"]["k8sRunLauncher"]["resources"]
    assert launcher_default != TAG_RESOURCES
    assert container_of(launched.manifest)["resources"] == TAG_RESOURCES


def test_without_the_tag_a_run_gets_the_launcher_default_resources(tmp_path):
    tags = {k: v for k, v in RUN_TAGS.items() if k != USER_DEFINED_K8S_CONFIG_KEY}
    launched = launch(tmp_path, tags)
    launcher_default = merged_values()["runLauncher"]["config"]["k8sRunLauncher"]["resources"]
    assert container_of(launched.manifest)["resources"] == launcher_default
    assert launched.manifest["spec"]["template"]["spec"]["serviceAccountName"] == (
        "dw-pipelines-run"
    )


def test_a_tag_that_sets_some_resources_keeps_the_other_launcher_defaults(tmp_path):
    """dagster-k8s deep-merges the tag over the launcher's config, key by key."""
    config = {"container_config": {"resources": {"limits": {"memory": "8Gi"}}}}
    launched = launch(tmp_path, {**RUN_TAGS, USER_DEFINED_K8S_CONFIG_KEY: json.dumps(config)})
    launcher_default = merged_values()["runLauncher"]["config"]["k8sRunLauncher"]["resources"]
    expected = deep_merge(launcher_default, {"limits": {"memory": "8Gi"}})
    assert container_of(launched.manifest)["resources"] == expected


def test_code_location_config_in_runs_would_override_the_launcher(tmp_path):
    """Why the user deployment sets includeConfigInLaunchedRuns to false: with the chart's
    default the code server's container context reaches every run and replaces the launcher's
    service account and default resources."""
    values = merged_values()
    assert user_deployment(values)["includeConfigInLaunchedRuns"] == {"enabled": False}
    tags = {k: v for k, v in RUN_TAGS.items() if k != USER_DEFINED_K8S_CONFIG_KEY}
    launched = launch(tmp_path, tags, render_code_location_container_context(values))
    pod_spec = launched.manifest["spec"]["template"]["spec"]
    assert pod_spec["serviceAccountName"] == f"{RELEASE_NAME}-user-deployments"
    assert container_of(launched.manifest)["resources"] == user_deployment(values)["resources"]


# --- the Kubernetes schema --------------------------------------------------------------------


def k8s_schema_errors(manifest: Mapping[str, Any], version: str) -> list[str]:
    """All errors of `manifest` against the strict batch/v1 Job schema of Kubernetes `version`
    shipped inside kubernetes-validate (no network: every $ref resolves in its own files)."""
    folder = files("kubernetes_validate") / "kubernetes-json-schema" / f"v{version}.0-local-strict"
    schema = json.loads((folder / "job-batch-v1.json").read_text())
    definitions = json.loads((folder / "_definitions.json").read_text())
    registry = Resource.from_contents(definitions) @ (Resource.from_contents(schema) @ Registry())
    validator = Draft202012Validator(schema, registry=registry)
    return sorted(
        f"{format_path(error.absolute_path) or '<root>'}: {error.message}"
        for error in validator.iter_errors(manifest)
    )


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_the_manifest_is_a_valid_kubernetes_job(launched, version):
    errors = k8s_schema_errors(launched.manifest, version)
    assert not errors, f"batch/v1 Job, Kubernetes {version}:\n" + "\n".join(errors)


def test_schema_validation_reports_a_misspelt_or_mistyped_field(launched):
    broken = copy.deepcopy(launched.manifest)
    pod_spec = broken["spec"]["template"]["spec"]
    pod_spec["serviceAcountName"] = pod_spec.pop("serviceAccountName")
    broken["spec"]["backoffLimit"] = "zero"
    errors = "\n".join(k8s_schema_errors(broken, K8S_VERSIONS[-1]))
    assert "serviceAcountName" in errors
    assert "spec.backoffLimit" in errors


def walk(node: Any) -> Iterator[Any]:
    yield node
    if isinstance(node, Mapping):
        for child in node.values():
            yield from walk(child)
    elif isinstance(node, list):
        for child in node:
            yield from walk(child)


def test_the_manifest_is_plain_json(launched):
    # What the API server receives: no None left over, no snake_case model leftovers.
    assert json.loads(json.dumps(launched.manifest)) == launched.manifest
    assert all(value is not None for value in walk(launched.manifest))
