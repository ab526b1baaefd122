"""The on-call runbook (docs/runbooks/dw-worker.md) is executable: its reprocessing blocks really
take a FAILED job to COMPLETED, every alert has its section, and every `dw-pipelines` command it
mentions exists.
"""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import click
import dagster as dg
import pytest

from dw_pipelines.cli import main as cli_main
from dw_pipelines.definitions import build_definitions
from dw_pipelines.services import build_service, dispose
from dw_pipelines.settings import SAMPLES_DIR
from dw_pipelines_tests.daemon_support import SYNC_INSTANCE_YAML
from dw_pipelines_tests.test_ingestion_runs import enqueue, run

REPO_ROOT = Path(__file__).resolve().parent.parent
RUNBOOK = REPO_ROOT / "docs" / "runbooks" / "dw-worker.md"
VENV_BIN = Path(sys.executable).parent
MARKER = "<!-- runbook-test: reprocess -->"

ALERTS = [
    "DwOutboxPendingGrowing",
    "DwWorkerLagHigh",
    "DwDeadLettersIncreasing",
    "DwFailureRatioHigh",
    "DwNoSuccessfulJobs",
    "DwExporterDown",
    "DwExporterScrapeError",
    "DwContractInvalid",
]

BAD_ORDERS = """\
order_id,customer_id,order_date,amount,currency,status,is_gift,created_at,note
1001,1,2026-11-24,19.99,EUR,paid,false,2026-11-24T08:15:00Z,
1002,2,2026-11-24,twelve,EUR,paid,true,2026-11-24T09:02:31Z,
"""


def runbook_text() -> str:
    return RUNBOOK.read_text(encoding="utf-8")


def reprocess_blocks(text: str) -> list[str]:
    """Every fenced sh/bash block right after the `runbook-test: reprocess` marker."""
    lines = text.splitlines()
    blocks = []
    for i, line in enumerate(lines):
        if line.strip() != MARKER:
            continue
        fence = lines[i + 1].strip() if i + 1 < len(lines) else ""
        assert fence in ("```sh", "```bash"), f"line {i + 2}: marker not followed by a sh fence"
        body = []
        for inner in lines[i + 2 :]:
            if inner.strip() == "```":
                break
            body.append(inner)
        else:
            pytest.fail(f"line {i + 2}: unclosed code block after the marker")
        blocks.append("\n".join(body))
    return blocks


def code_snippets(text: str) -> list[str]:
    """Fenced code blocks and inline code spans."""
    fence = r"^[ \t]*```[^\n]*\n(.*?)^[ \t]*```"
    fenced = re.findall(fence, text, flags=re.MULTILINE | re.DOTALL)
    prose = re.sub(fence, "", text, flags=re.MULTILINE | re.DOTALL)
    return fenced + re.findall(r"`([^`\n]+)`", prose)


def command_paths(text: str) -> set[tuple[str, ...]]:
    """The subcommand path of every `dw-pipelines ...` invocation, resolved as click would."""
    paths = set()
    for snippet in code_snippets(text):
        for match in re.finditer(r"(?<![\w/-])dw-pipelines((?:[ \t]+\S+)*)", snippet):
            words = match.group(1).split()
            command: click.Command = cli_main
            path: list[str] = []
            for word in words:
                if not isinstance(command, click.Group) or word.startswith("-"):
                    break
                path.append(word)
                sub = command.commands.get(word)
                if sub is None:
                    break  # unknown: `--help` below fails and names it
                command = sub
            paths.add(tuple(path))
    return paths


def test_the_runbook_has_a_section_per_alert():
    headings = set(re.findall(r"^## (.+?)\s*$", runbook_text(), flags=re.MULTILINE))
    missing = [alert for alert in ALERTS if alert not in headings]
    assert not missing, f"alert sections missing from {RUNBOOK.name}: {missing}"


def test_every_dw_pipelines_command_in_the_runbook_exists():
    paths = command_paths(runbook_text())
    assert ("outbox", "retry") in paths and ("outbox", "show") in paths
    for path in sorted(paths):
        result = subprocess.run(
            [str(VENV_BIN / "dw-pipelines"), *path, "--help"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, f"dw-pipelines {' '.join(path)}: {result.stderr}"


@pytest.mark.slow  # a Dagster run inside the CLI subprocess; ~7 s
def test_the_reprocess_blocks_take_a_failed_job_to_completed(
    pg_url: str, dw_env, landing_dir: Path, tmp_path: Path
):
    blocks = reprocess_blocks(runbook_text())
    assert blocks, f"no '{MARKER}' block in {RUNBOOK}"

    settings = dw_env(pg_url, DW_RETRY_MAX_RETRIES=0)
    service = build_service(settings)
    try:
        source = landing_dir / "orders_upload.csv"
        source.write_text(BAD_ORDERS, encoding="utf-8")
        job_def = build_definitions(settings).resolve_job_def("dw_ingestion_job")
        with dg.instance_for_test() as instance:
            job = enqueue(service, "orders", source)
            assert not run(job_def, instance, job).success
        failed = service.queue.get(job.job_id)
        assert failed.status == "FAILED" and "twelve" in failed.last_error

        # The producer fixes the file at the same path; the operator follows the runbook.
        shutil.copyfile(SAMPLES_DIR / "orders_2026-11-24.csv", source)
        dagster_home = tmp_path / "dagster-home"
        dagster_home.mkdir()
        (dagster_home / "dagster.yaml").write_text(SYNC_INSTANCE_YAML)
        env = {
            "PATH": os.pathsep.join([str(VENV_BIN), os.environ.get("PATH", "")]),
            "HOME": str(tmp_path),
            "USER": "runbook-user",
            "JOB_ID": job.job_id,
            "OPERATOR": "oncall-alice",
            "DAGSTER_HOME": str(dagster_home),
            **{k: v for k, v in os.environ.items() if k.startswith("DW_")},
        }
        env.pop("DW_FAULT_INJECTION", None)
        work_dir = tmp_path / "ops"
        work_dir.mkdir()
        shutil.copyfile(REPO_ROOT / "workspace.yaml", work_dir / "workspace.yaml")
        for block in blocks:
            result = subprocess.run(
                ["bash", "-euo", "pipefail", "-c", block],
                env=env,
                cwd=work_dir,
                capture_output=True,
                text=True,
                timeout=300,
            )
            assert result.returncode == 0, f"{block}\n---\n{result.stdout}\n{result.stderr}"

        row = service.queue.get(job.job_id)
        assert (row.status, row.rows_loaded, row.last_error) == ("COMPLETED", 6, None)
        assert service.warehouse.storage_rows(service.contracts.get("orders"), job.job_id) == 6
        requeued = [e for e in service.queue.audit_trail(job.job_id) if e.event == "REQUEUED"]
        assert len(requeued) == len(blocks)
        assert requeued[0].details["operator"] == "oncall-alice"
        assert requeued[0].details["previous_status"] == "FAILED"
    finally:
        dispose(service)
