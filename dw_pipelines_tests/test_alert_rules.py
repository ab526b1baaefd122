"""The Prometheus alert rules and the metrics exporter manifest of the dw worker, checked offline.

* `promtool check rules` / `promtool test rules` on deploy/prometheus. promtool is a system
  binary: `.ci/run` installs the Debian `prometheus` package when it is missing, and under CI
  (`CI` set) these tests fail without it. On a developer machine without promtool they are
  skipped with that reason, so `make test` still needs nothing but Python.
* Every alert has a severity, a runbook_url into docs/runbooks/dw-worker.md with one of the
  agreed anchors, reads only metrics the exporter serves, and has promtool cases that fire and
  that do not.
* deploy/k8s/metrics-exporter.yaml: the Deployment and the Service validate against the
  Kubernetes schema shipped in kubernetes-validate (strict: unknown fields fail); the
  ServiceMonitor (a CRD, no schema there) is checked by hand against the Service.
"""

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
RULES = REPO / "deploy" / "prometheus" / "dw-worker-rules.yaml"
RULE_TESTS = REPO / "deploy" / "prometheus" / "dw-worker-rules.test.yaml"
EXPORTER_MANIFEST = REPO / "deploy" / "k8s" / "metrics-exporter.yaml"

RUNBOOK = "docs/runbooks/dw-worker.md"
# The headings of the runbook, one per alert (anchor = alert name in lower case).
RUNBOOK_ANCHORS = {
    "DwOutboxPendingGrowing": "dwoutboxpendinggrowing",
    "DwWorkerLagHigh": "dwworkerlaghigh",
    "DwDeadLettersIncreasing": "dwdeadlettersincreasing",
    "DwFailureRatioHigh": "dwfailureratiohigh",
    "DwNoSuccessfulJobs": "dwnosuccessfuljobs",
    "DwExporterDown": "dwexporterdown",
    "DwExporterScrapeError": "dwexporterscrapeerror",
    "DwContractInvalid": "dwcontractinvalid",
}
SEVERITIES = {"warning", "critical"}

# What `dw-pipelines metrics serve` exports (histograms also as _bucket/_sum/_count).
EXPORTED_METRICS = {
    "dw_worker_jobs_total",
    "dw_worker_lag_seconds",
    "dw_worker_retries_total",
    "dw_ingestion_outbox_pending",
    "dw_ingestion_queue_running_jobs",
    "dw_ingestion_dead_letters",
    "dw_ingestion_rows_loaded_total",
    "dw_ingestion_job_duration_seconds_bucket",
    "dw_ingestion_job_duration_seconds_sum",
    "dw_ingestion_job_duration_seconds_count",
    "dw_worker_scrape_error",
    "dw_ingestion_contract_errors",
}
SCRAPE_JOB = "dw-worker-exporter"
EXPORTER_PORT = 9464
K8S_VERSIONS = ("1.30", "1.37")


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("promtool")
    if exe is None:
        message = (
            "promtool not found on PATH. Install it (Debian/Ubuntu: `apt-get install -y "
            "--no-install-recommends prometheus`; .ci/run does this when it is missing)."
        )
        if os.environ.get("CI"):
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return subprocess.run(
        [exe, *args], cwd=REPO, capture_output=True, text=True, timeout=120, check=False
    )


def load_alerts() -> list[dict[str, Any]]:
    doc = yaml.safe_load(RULES.read_text())
    groups = doc["groups"]
    assert [g["name"] for g in groups] == ["dw-worker"]
    return [rule for rule in groups[0]["rules"] if "alert" in rule]


def load_manifests() -> dict[str, dict[str, Any]]:
    docs = [d for d in yaml.safe_load_all(EXPORTER_MANIFEST.read_text()) if d]
    by_kind = {d["kind"]: d for d in docs}
    assert len(by_kind) == len(docs), "one document per kind expected"
    assert set(by_kind) == {"Deployment", "Service", "ServiceMonitor"}
    return by_kind


def test_promtool_check_rules():
    result = promtool("check", "rules", str(RULES.relative_to(REPO)))
    assert result.returncode == 0, f"promtool check rules failed:\n{result.stdout}{result.stderr}"
    assert f"SUCCESS: {len(RUNBOOK_ANCHORS)} rules found" in result.stdout, result.stdout


def test_promtool_test_rules():
    result = promtool("test", "rules", str(RULE_TESTS.relative_to(REPO)))
    assert result.returncode == 0, f"promtool test rules failed:\n{result.stdout}{result.stderr}"
    assert "SUCCESS" in result.stdout, result.stdout


def test_every_alert_has_severity_annotations_and_a_runbook_anchor():
    alerts = load_alerts()
    names = [a["alert"] for a in alerts]
    assert sorted(names) == sorted(RUNBOOK_ANCHORS), "alerts differ from the runbook's list"
    for alert in alerts:
        name = alert["alert"]
        assert alert.get("for"), f"{name}: no `for:`"
        assert alert.get("labels", {}).get("severity") in SEVERITIES, f"{name}: severity"
        annotations = alert.get("annotations", {})
        assert {"summary", "description", "runbook_url"} <= set(annotations), name
        path, _, anchor = annotations["runbook_url"].partition("#")
        assert path.endswith(RUNBOOK), f"{name}: runbook_url {annotations['runbook_url']!r}"
        assert anchor in RUNBOOK_ANCHORS.values(), f"{name}: unknown runbook anchor {anchor!r}"
        assert anchor == RUNBOOK_ANCHORS[name], f"{name}: anchor {anchor!r} is another alert's"


def test_alerts_read_only_exported_metrics_and_the_exporter_job():
    for alert in load_alerts():
        expr = alert["expr"]
        used = set(re.findall(r"\bdw_[a-z_]+\b", expr))
        assert used <= EXPORTED_METRICS, (
            f"{alert['alert']}: unknown metrics {used - EXPORTED_METRICS}"
        )
        for job in re.findall(r'\bjob\s*=~?\s*"([^"]*)"', expr):
            assert job == SCRAPE_JOB, f"{alert['alert']}: scrape job {job!r}"


def test_every_alert_has_firing_and_quiet_promtool_cases():
    doc = yaml.safe_load(RULE_TESTS.read_text())
    assert doc["rule_files"] == [RULES.name]
    assert doc["evaluation_interval"] == "1m"
    firing: set[str] = set()
    quiet: set[str] = set()
    for case in doc["tests"]:
        for check in case.get("alert_rule_test", []):
            (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
            for expected in check.get("exp_alerts") or []:
                assert "severity" in expected["exp_labels"], check["alertname"]
                assert "runbook_url" in expected["exp_annotations"], check["alertname"]
    names = {a["alert"] for a in load_alerts()}
    assert names - firing == set(), f"alerts without a firing test case: {names - firing}"
    assert names - quiet == set(), f"alerts without a non-firing test case: {names - quiet}"


@pytest.mark.parametrize("k8s_version", K8S_VERSIONS)
@pytest.mark.parametrize("kind", ["Deployment", "Service"])
def test_exporter_manifest_matches_the_kubernetes_schema(kind, k8s_version):
    manifest = load_manifests()[kind]
    kubernetes_validate.validate(manifest, k8s_version, strict=True)


def test_exporter_deployment():
    deployment = load_manifests()["Deployment"]
    spec = deployment["spec"]
    assert spec["replicas"] == 1
    pod = spec["template"]
    labels = pod["metadata"]["labels"]
    assert spec["selector"]["matchLabels"].items() <= labels.items()
    annotations = pod["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(EXPORTER_PORT)
    assert annotations["prometheus.io/path"] == "/metrics"
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    assert pod["spec"]["securityContext"]["runAsUser"] == 10001
    (container,) = pod["spec"]["containers"]
    assert container["image"] == "registry.example.com/dw-pipelines:v0.1.0"
    assert "command" not in container, "the image has CMD, not ENTRYPOINT: set args only"
    assert container["args"] == [
        "dw-pipelines",
        "metrics",
        "serve",
        "--port",
        str(EXPORTER_PORT),
        "--host",
        "0.0.0.0",
    ]
    assert container["envFrom"] == [{"secretRef": {"name": "dw-pipelines-db"}}]
    assert container["ports"][0] == {
        "name": "metrics",
        "containerPort": EXPORTER_PORT,
        "protocol": "TCP",
    }
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert {"requests", "limits"} <= set(container["resources"])


def test_exporter_service_and_service_monitor_select_the_pod():
    manifests = load_manifests()
    pod_labels = manifests["Deployment"]["spec"]["template"]["metadata"]["labels"]
    service = manifests["Service"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    (port,) = service["spec"]["ports"]
    assert port["name"] == "metrics"
    assert port["port"] == EXPORTER_PORT
    assert port["targetPort"] == "metrics"

    monitor = manifests["ServiceMonitor"]
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    service_labels = service["metadata"]["labels"]
    selector = monitor["spec"]["selector"]
    assert set(selector) == {"matchLabels"}, "only matchLabels is checked here"
    assert selector["matchLabels"].items() <= service_labels.items()
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == port["name"]
    assert endpoint.get("path", "/metrics") == "/metrics"
    # The scrape job the alert rules use: the Service label named by jobLabel (without jobLabel
    # the operator uses the Service name).
    job_label = monitor["spec"].get("jobLabel")
    job = service_labels[job_label] if job_label else service["metadata"]["name"]
    assert job == SCRAPE_JOB
