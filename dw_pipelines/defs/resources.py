"""`DwResource`: the outbox queue, the warehouse and the ingestion service, for ops and sensors.

The database URLs are resource fields so Dagster resolves them at run time from `dg.EnvVar` and
never shows them in the UI. Left empty, they fall back to the settings (the embedded default).
"""

from pydantic import Field, PrivateAttr

import dagster as dg
from dw_pipelines.core.contracts import ContractRegistry
from dw_pipelines.core.db import create_db_engine
from dw_pipelines.core.ingestion import IngestionService
from dw_pipelines.core.landing import LandingZone
from dw_pipelines.core.outbox import DwIngestionJobQueue
from dw_pipelines.core.warehouse import Warehouse, create_warehouse_engine
from dw_pipelines.settings import SHIPPED_DATASETS_DIR, Settings, normalize_database_url


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
            database_url = normalize_database_url(self.database_url or settings.database_url)
            warehouse_url = normalize_database_url(
                self.warehouse_url or self.database_url or settings.warehouse_url
            )
            contracts = ContractRegistry.from_directories(
                SHIPPED_DATASETS_DIR, settings.datasets_path
            )
            landing = LandingZone(settings.landing_roots)
            queue = DwIngestionJobQueue(create_db_engine(database_url), contracts, landing)
            warehouse = Warehouse(create_warehouse_engine(warehouse_url))
            self._service = IngestionService(
                queue, warehouse, contracts, landing, batch_rows=settings.read_batch_rows
            )
        return self._service

    @property
    def queue(self) -> DwIngestionJobQueue:
        return self.service.queue

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        if self._service is not None:
            self._service.queue.engine.dispose()
            self._service.warehouse.engine.dispose()
            self._service = None
