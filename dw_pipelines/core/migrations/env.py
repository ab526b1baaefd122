"""Alembic environment: runs online against the engine handed over in `config.attributes`."""

from alembic import context

from dw_pipelines.core.db import metadata

config = context.config
engine = config.attributes["engine"]

with engine.begin() as connection:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        version_table=config.get_main_option("version_table"),
        render_as_batch=connection.dialect.name == "sqlite",
    )
    context.run_migrations()
