"""`DW_LOG_FORMAT=json` for runs: Dagster's console logger replaced by one that writes JSON lines.

Dagster writes a run's log lines (its own events and our steps' messages) to the run process's
stderr through its console logger. With the JSON format the ingestion job configures this one
instead (`core.logs.JsonFormatter`): the same records, one JSON object each, with the job's
fields that our steps attach (`extra=log_extra(...)`) and Dagster's run id and step key.
"""

import logging
import sys

import dagster as dg

from dw_pipelines.core.logs import JsonFormatter

LOGGER_KEY = "console"  # replaces Dagster's default console logger of that name
# The job's run config that turns the logger on (Dagster instantiates only configured loggers).
JSON_LOGGING_CONFIG = {"loggers": {LOGGER_KEY: {"config": {"log_level": "DEBUG"}}}}


@dg.logger(
    config_schema={"log_level": dg.Field(str, default_value="DEBUG", is_required=False)},
    description="The run's log lines as JSON objects on stderr (DW_LOG_FORMAT=json).",
)
def json_lines_logger(init_context: dg.InitLoggerContext) -> logging.Logger:
    level = logging.getLevelName(init_context.logger_config["log_level"].upper())
    logger = logging.Logger("dw_pipelines.run", level=level)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    logger.addHandler(handler)
    return logger
