"""The operator's stack for UI tests: `dagster-webserver` and `dagster-daemon` as real processes
on the shipped `dagster.yaml` (Postgres-backed instance, queued coordinator with the
`dagster/backfill` limit), the shipped `workspace.yaml`, and a GraphQL client for the webserver.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from dw_pipelines_tests.conftest import create_database, database_url

REPO_ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


@dataclass(frozen=True)
class OperatorEnv:
    """The environment of an operator's stack: `dw_env` is the worker's `DW_*` settings,
    `env` what the Dagster processes and the CLI run with (`dw_env`, the instance folder with
    the shipped `dagster.yaml`, its Postgres storage, this venv's commands first on PATH)."""

    home: Path
    dw_env: dict[str, str]
    env: dict[str, str]


def operator_env(
    pg_admin: sa.Engine,
    pg_server_url: str,
    pg_template: str,
    root: Path,
    name: str,
    **dw: str,
) -> OperatorEnv:
    """Fresh databases (`<template>_<name>_dw` migrated, `<template>_<name>_dagster` empty) and
    the environment of a stack on them; `dw` adds or overrides `DW_*` settings."""
    dw_db, dagster_db = f"{pg_template}_{name}_dw", f"{pg_template}_{name}_dagster"
    create_database(pg_admin, dw_db, template=pg_template)
    create_database(pg_admin, dagster_db)
    home = root / "dagster-home"
    home.mkdir()
    shutil.copy(REPO_ROOT / "dagster.yaml", home / "dagster.yaml")  # the shipped instance
    dw_env = {
        "DW_HOME": str(root / "dw-home"),
        "DW_DATABASE_URL": database_url(pg_server_url, dw_db),
        "DW_SENSOR_INTERVAL_SECONDS": "1",
        "DW_RECONCILE_INTERVAL_SECONDS": "5",
        **dw,
    }
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("DW_")},
        **dw_env,
        "DAGSTER_HOME": str(home),
        # dagster-postgres speaks psycopg2 and wants a plain postgresql:// URL.
        "DAGSTER_PG_URL": sa.make_url(database_url(pg_server_url, dagster_db))
        .set(drivername="postgresql")
        .render_as_string(hide_password=False),
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    return OperatorEnv(home, dw_env, env)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class GraphQLError(AssertionError):
    pass


@dataclass
class DagsterStack:
    home: Path
    env: dict[str, str]
    port: int
    logs: Path
    processes: list[subprocess.Popen] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 120) -> None:
        self.logs.mkdir(parents=True, exist_ok=True)
        commands = {
            "webserver": [
                str(BIN / "dagster-webserver"), "-w", "workspace.yaml",
                "-h", "127.0.0.1", "-p", str(self.port),
            ],
            "daemon": [str(BIN / "dagster-daemon"), "run", "-w", "workspace.yaml"],
        }  # fmt: skip
        for name, command in commands.items():
            # The child keeps its own copy of the descriptor; ours can close at once.
            with open(self.logs / f"{name}.log", "wb") as log:
                process = subprocess.Popen(
                    command, cwd=REPO_ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                    start_new_session=True,
                )  # fmt: skip
            self.processes.append(process)
        self.wait_until(self._code_location_loaded, timeout, "the webserver to load dw_pipelines")

    def _code_location_loaded(self) -> bool:
        try:
            data = self.query(
                """{ workspaceOrError { ... on Workspace { locationEntries {
                     name locationOrLoadError { __typename } } } } }"""
            )
        except (OSError, urllib.error.URLError, GraphQLError):
            return False
        entries = data["workspaceOrError"]["locationEntries"]
        return any(
            e["name"] == "dw_pipelines"
            and e["locationOrLoadError"]
            and e["locationOrLoadError"]["__typename"] == "RepositoryLocation"
            for e in entries
        )

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)

    def log_tail(self, chars: int = 4000) -> str:
        return "\n".join(
            f"--- {path.name}\n{path.read_text(errors='replace')[-chars:]}"
            for path in sorted(self.logs.glob("*.log"))
        )

    def query(self, text: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        body = json.dumps({"query": text, "variables": variables or {}}).encode()
        request = urllib.request.Request(
            f"{self.url}/graphql", data=body, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                payload = json.load(response)
        except urllib.error.HTTPError as exc:  # GraphQL errors come back as 4xx/5xx with a body
            body = exc.read().decode(errors="replace")[:2000]
            raise GraphQLError(f"HTTP {exc.code}: {body}") from None
        if payload.get("errors"):
            raise GraphQLError(json.dumps(payload["errors"])[:2000])
        return payload["data"]

    def wait_until(self, condition: Callable[[], Any], timeout: float, what: str) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            for process in self.processes:
                if process.poll() is not None:
                    raise AssertionError(f"a Dagster process exited early\n{self.log_tail()}")
            value = condition()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}\n{self.log_tail()}")
            time.sleep(1)
