"""Structured logging: one `dictConfig` dict for the app and uvicorn, JSON lines by default.

Each line carries timestamp, level, logger, message, and, where known, the request id, the
variant and the current trace and span ids. Request-scoped values travel in context variables set
by the request middleware, so no call site has to pass them along.
"""

from __future__ import annotations

import contextvars
import json
import logging
import time
from typing import Any

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "request_id", default=None
)
# The id of the request's API key (shared/quotas.py), never the key: set by the key middleware.
key_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("key_id", default=None)
_variant = {"value": ""}

# Attributes every LogRecord has; anything else passed through `extra=` is logged as a field.
_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "color_message",
}


def _trace_ids() -> tuple[str | None, str | None]:
    try:
        from opentelemetry import trace
    except ImportError:  # pragma: no cover - opentelemetry-api ships with the sdk
        return None, None
    ctx = trace.get_current_span().get_span_context()
    if not ctx.is_valid:
        return None, None
    return format(ctx.trace_id, "032x"), format(ctx.span_id, "016x")


class ContextFilter(logging.Filter):
    """Adds request_id, key_id, variant, trace_id and span_id to every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = getattr(record, "request_id", None) or request_id_var.get()
        record.key_id = getattr(record, "key_id", None) or key_id_var.get()
        record.variant = _variant["value"]
        trace_id, span_id = _trace_ids()
        record.trace_id = trace_id
        record.span_id = span_id
        return True


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON object per line."""

    def format(self, record: logging.LogRecord) -> str:
        created = time.gmtime(record.created)
        out: dict[str, Any] = {
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S", created) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and value is not None and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """Plain lines for a terminal: time, level, logger, [request id or -], message."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s [%(rid)s] %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        record.rid = getattr(record, "request_id", None) or "-"
        return super().format(record)


def config(level: str = "info", fmt: str = "json", variant: str = "") -> dict[str, Any]:
    """The logging configuration, for `logging.config.dictConfig` and uvicorn's `log_config`."""
    _variant["value"] = variant
    formatter: dict[str, Any] = (
        {"()": "shared.logs.JsonFormatter"}
        if fmt == "json"
        else {"()": "shared.logs.TextFormatter"}
    )
    handler = {
        "class": "logging.StreamHandler",
        "formatter": "default",
        "filters": ["context"],
        "stream": "ext://sys.stderr",
    }
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"context": {"()": "shared.logs.ContextFilter"}},
        "formatters": {"default": formatter},
        "handlers": {"default": handler},
        "loggers": {
            "kubesentiment": {"level": level.upper()},
            "uvicorn": {"level": level.upper()},
            "uvicorn.error": {"level": level.upper()},
            "uvicorn.access": {"level": level.upper()},
        },
        "root": {"handlers": ["default"], "level": level.upper()},
    }


def configure(level: str = "info", fmt: str = "json", variant: str = "") -> None:
    """Apply `config(...)` to the logging module."""
    import logging.config

    logging.config.dictConfig(config(level, fmt, variant))
