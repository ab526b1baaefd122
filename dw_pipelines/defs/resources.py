"""`DwResource`: the outbox queue, the warehouse and the ingestion service, for ops and sensors.

The database URLs are resource fields so Dagster resolves them at run time from `dg.EnvVar` and
never shows them in the UI. Left empty, they fall back to the settings (the embedded default).

Inside a run the resource also keeps a heartbeat: a background thread refreshes `heartbeat_at`
on the rows the run holds for as long as the run process lives, including while it sleeps before
a retry. The reconciler reads a stale heartbeat as a dead run (killed process, lost pod). Its
first beat comes as the run starts, and so opens the run's database connection early.
"""

import dataclasses
import threading

import dagster as dg
from pydantic import Field, PrivateAttr

from dw_pipelines.core.ingestion import IngestionService
from dw_pipelines.core.outbox import DwIngestionJobQueue
from dw_pipelines.core.quality import DataQuality
from dw_pipelines.services import build_service, dispose
from dw_pipelines.settings import Settings, normalize_database_url


class DwResource(dg.ConfigurableResource):
    """Connections to the outbox database and the warehouse."""

    database_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL of the outbox and audit database (DW_DATABASE_URL).",
    )
    warehouse_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL of the warehouse (DW_WAREHOUSE_URL); defaults to database_url.",
    )

    _service: IngestionService | None = PrivateAttr(default=None)
    _settings: Settings | None = PrivateAttr(default=None)
    _stop_heartbeat: threading.Event | None = PrivateAttr(default=None)
    _heartbeat_thread: threading.Thread | None = PrivateAttr(default=None)

    def settings(self) -> Settings:
        if self._settings is None:
            settings = Settings.from_env()
            overrides = {}
            if self.database_url:
                overrides["database_url"] = normalize_database_url(self.database_url)
            if self.warehouse_url or self.database_url:
                overrides["warehouse_url"] = normalize_database_url(
                    self.warehouse_url or self.database_url
                )
            self._settings = dataclasses.replace(settings, **overrides)
        return self._settings

    @property
    def service(self) -> IngestionService:
        """Built on first use, so a sensor tick or a run opens only the engines it needs."""
        if self._service is None:
            self._service = build_service(self.settings())
        return self._service

    @property
    def queue(self) -> DwIngestionJobQueue:
        return self.service.queue

    @property
    def quality(self) -> DataQuality:
        return DataQuality(self.service.warehouse)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        if context.run_id is not None and context.dagster_run is not None:
            self._start_heartbeat(context.run_id, context)

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        if self._stop_heartbeat is not None:
            self._stop_heartbeat.set()
            if self._heartbeat_thread is not None:
                self._heartbeat_thread.join(timeout=10)
        if self._service is not None:
            dispose(self._service)
            self._service = None

    def _start_heartbeat(self, run_id: str, context: dg.InitResourceContext) -> None:
        interval = self.settings().heartbeat_seconds
        service = self.service  # built here, before the thread shares it
        stop = threading.Event()

        def beat() -> None:
            # The first beat at once: it opens the run's database connection, and warms the
            # server's caches on it, while Dagster writes the run's opening events, not when the
            # first step needs them (the wait on the server releases the GIL).
            wait = 0.0
            while not stop.wait(wait):
                wait = interval
                try:
                    service.heartbeat(run_id)
                except Exception as exc:  # a missed beat is harmless; the next one may work
                    if context.log is not None:
                        context.log.warning(f"heartbeat for run {run_id} failed: {exc}")

        self._stop_heartbeat = stop
        self._heartbeat_thread = threading.Thread(
            target=beat, name=f"dw-heartbeat-{run_id[:8]}", daemon=True
        )
        self._heartbeat_thread.start()
