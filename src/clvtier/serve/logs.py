"""JSON logs of the scoring service: one JSON object per line on stderr."""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys

LOGGER = "clvtier.serve"
#: LogRecord attributes copied into the JSON line when a call passes them in ``extra``.
FIELDS = ("request_id", "method", "path", "status", "duration_ms", "error")


class JsonFormatter(logging.Formatter):
    """Format a record as one JSON line: time, level, logger, process, message and the request fields."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "ts": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "pid": record.process,  # which server process, when there are several
            "msg": record.getMessage(),
        }
        for name in FIELDS:
            if hasattr(record, name):
                line[name] = getattr(record, name)
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def configure_logging(level: int = logging.INFO) -> None:
    """Send the service's and uvicorn's logs to stderr as JSON lines (called by :func:`run`)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    for name in (LOGGER, "uvicorn", "uvicorn.error"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(level)
        logger.propagate = False
