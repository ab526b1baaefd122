"""`DwResource`: the outbox queue, the warehouse and the ingestion service, for ops and sensors.

The database URLs are resource fields so Dagster resolves them at run time from `dg.EnvVar` and
never shows them in the UI. Left empty, they fall back to the settings (the embedded default).
"""

import dataclasses

import dagster as dg
from pydantic import Field, PrivateAttr

from dw_pipelines.core.ingestion import IngestionService
from dw_pipelines.core.outbox import DwIngestionJobQueue
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

    def settings(self) -> Settings:
        return Settings.from_env()

    @property
    def service(self) -> IngestionService:
        """Built on first use, so a sensor tick or a run opens only the engines it needs."""
        if self._service is None:
            settings = self.settings()
            overrides = {}
            if self.database_url:
                overrides["database_url"] = normalize_database_url(self.database_url)
            if self.warehouse_url or self.database_url:
                overrides["warehouse_url"] = normalize_database_url(
                    self.warehouse_url or self.database_url
                )
            self._service = build_service(dataclasses.replace(settings, **overrides))
        return self._service

    @property
    def queue(self) -> DwIngestionJobQueue:
        return self.service.queue

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        if self._service is not None:
            dispose(self._service)
            self._service = None
