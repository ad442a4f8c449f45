"""Structured logs: one JSON object per line on stderr, with the current request's id.

Extra fields go in `extra=`: `logger.info("request", extra={"status": 200, "latency_ms": 12.5})`. Lines written
while serving a traced request carry its `trace_id` (service/tracing.py).
"""

import logging
import sys
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

import orjson

request_id: ContextVar[str | None] = ContextVar("request_id", default=None)
# The error code of the current request's answer, for its access log line (service/errors.py sets it).
error_code: ContextVar[str | None] = ContextVar("error_code", default=None)
# The OpenTelemetry trace of the current request, when traced (service/tracing.py sets it).
trace_id: ContextVar[str | None] = ContextVar("trace_id", default=None)

# Attributes every LogRecord has; anything else on a record came from `extra=` and is logged as a field.
_RECORD_ATTRIBUTES = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        current_request = request_id.get()
        if current_request is not None:
            entry["request_id"] = current_request
        current_trace = trace_id.get()
        if current_trace is not None:
            entry["trace_id"] = current_trace
        for key, value in vars(record).items():
            if key not in _RECORD_ATTRIBUTES and not key.startswith("_") and key != "color_message":
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


class _JsonHandler(logging.StreamHandler):
    """Marks the handler this module installed, so configuring again replaces it."""


def configure_logging(level: str) -> None:
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, _JsonHandler)]:
        root.removeHandler(handler)
    handler = _JsonHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root.addHandler(handler)
    root.setLevel(level.upper())
    # uvicorn's loggers go through the root handler; its access log is replaced by ours, which knows
    # the request id and latency.
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = True
    logging.getLogger("uvicorn.access").disabled = True
    # Python warnings (PyTorch's, among others) become log records too: every line on stderr stays JSON.
    logging.captureWarnings(True)
