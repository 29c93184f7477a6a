"""Logs: every line with the id of the request it belongs to, as text or as JSON (`LOG_FORMAT`).

The standard library's `logging` is what uvicorn, SQLAlchemy and the app already log through;
one small `Formatter` makes all of their lines JSON, with no second logging API to bridge (as
structlog would need) and no dependency for what `json.dumps` does (python-json-logger). `serve`
applies `logging_config()` in each worker, uvicorn's loggers included.
"""

import json
import logging
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, Final, Literal

LogFormat = Literal["text", "json"]

# The id of the request being served (`core/telemetry.py` sets it), `-` outside a request.
request_id: ContextVar[str] = ContextVar("request_id", default="-")

TEXT_FORMAT: Final = "%(asctime)s %(levelname)s [%(process)d] %(name)s [%(request_id)s] %(message)s"
# What every `LogRecord` has: anything else on a record came from `extra=` and is a field.
_STANDARD_ATTRIBUTES: Final = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", None, None)).keys()
    | {"message", "asctime", "request_id", "color_message", "taskName"}
)


class RequestIdFilter(logging.Filter):
    """Give each record the id of the request it was logged in (`%(request_id)s`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, process (the worker's id), message,
    request id, the fields given in `extra=`, and the traceback if any."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "process": record.process,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", request_id.get()),
        }
        line |= {
            key: value for key, value in vars(record).items() if key not in _STANDARD_ATTRIBUTES
        }
        if record.exc_info:
            line["exc_info"] = self.formatException(record.exc_info)
        if record.stack_info:
            line["stack_info"] = self.formatStack(record.stack_info)
        return json.dumps(line, default=str, ensure_ascii=False)


def logging_config(
    log_format: LogFormat, package: str, *, access_log: bool = True
) -> dict[str, Any]:
    """A `logging.config.dictConfig` configuration (uvicorn's `log_config`): one handler on
    standard output, in `log_format`, for the app's loggers (`package`), uvicorn's and any
    other library's warnings. Without `access_log`, a request is logged only when its answer
    is a `5xx`."""
    # By name, not by object: uvicorn hands the configuration to its worker processes (pickled).
    json_formatter = {"()": f"{__name__}.{JsonFormatter.__name__}"}
    formatter = json_formatter if log_format == "json" else {"format": TEXT_FORMAT}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"request_id": {"()": f"{__name__}.{RequestIdFilter.__name__}"}},
        "formatters": {"default": formatter},
        "handlers": {
            "default": {
                "class": "logging.StreamHandler",
                "stream": "ext://sys.stdout",
                "formatter": "default",
                "filters": ["request_id"],
            },
        },
        "root": {"level": "WARNING", "handlers": ["default"]},
        "loggers": {
            "uvicorn": {"level": "INFO"},
            # Requests are logged once, by the app (`core/telemetry.py`), not by uvicorn too.
            "uvicorn.access": {"level": "WARNING", "propagate": False},
            package: {"level": "INFO"},
            f"{package}.access": {"level": "INFO" if access_log else "WARNING"},
        },
    }
