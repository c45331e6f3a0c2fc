"""Log lines of the gateway (and of ``python -m triton_local``): one JSON object per line, or text.

``configure_logging(fmt, level)`` installs one handler on the root logger, with
:class:`JsonFormatter` (``fmt="json"``) or a text format (``fmt="text"``), and routes uvicorn's
``uvicorn.error`` and ``uvicorn.access`` loggers through it (uvicorn is then started with
``log_config=None``, see :func:`gateway.server.uvicorn_options`, so it does not replace them).

Every record gets ``request_id``: the id bound by :class:`gateway.request_id.RequestId` for the
request being served (a contextvar, so it follows the request through ``await`` and into the
access-log line uvicorn writes when the response starts), ``""`` outside a request. A JSON line is

    {"ts": "2026-11-23T11:30:00.123Z", "level": "INFO", "logger": "uvicorn.access",
     "message": "127.0.0.1:5000 - \\"POST /qa HTTP/1.1\\" 200", "request_id": "3f2c...",
     "pid": 1234, "client": "127.0.0.1:5000", "method": "POST", "path": "/qa", "status": 200}

with ``exc`` (the formatted traceback) when the record carries an exception, the access-log
fields (``client``, ``method``, ``path``, ``status``) on uvicorn's access lines, and any ``extra=``
fields a caller passes. Standard library only.
"""

from __future__ import annotations

import datetime
import json
import logging
import sys
from typing import Any, Literal, TextIO

from gateway.request_id import current as request_id_var

LogFormat = Literal["json", "text"]
TEXT_FORMAT = "%(asctime)s %(levelname)s %(process)d %(name)s [%(request_id)s]: %(message)s"

# Attributes every LogRecord has: not copied into the JSON line as extra fields.
# color_message: uvicorn's ANSI-coloured copy of the message.
_RECORD_FIELDS = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "request_id", "color_message"}
_UVICORN_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access")


class RequestIdFilter(logging.Filter):
    """Sets ``record.request_id`` to the id of the request being served (``""`` outside one)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = request_id_var.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ``ts`` (UTC, ISO 8601), ``level``, ``logger``, ``message``,
    ``request_id``, ``pid``; ``exc`` with a traceback; uvicorn access fields; ``extra=`` fields."""

    def format(self, record: logging.LogRecord) -> str:
        ts = datetime.datetime.fromtimestamp(record.created, datetime.UTC)
        line: dict[str, Any] = {
            "ts": ts.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", ""),
            "pid": record.process,
        }
        if record.name == "uvicorn.access" and isinstance(record.args, tuple) and len(record.args) == 5:
            client, method, path, _, status = record.args
            line.update(client=client, method=method, path=path, status=status)
        for key, value in record.__dict__.items():
            if key not in _RECORD_FIELDS and key not in line:
                line[key] = value
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exc"] = record.exc_text
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line, default=str, ensure_ascii=False)


def make_handler(fmt: LogFormat, stream: TextIO | None = None) -> logging.Handler:
    """A handler writing to ``stream`` (stderr) with the request-id filter and the chosen formatter."""
    handler = logging.StreamHandler(sys.stderr if stream is None else stream)
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    return handler


def configure_logging(fmt: LogFormat, level: str | int = "INFO") -> None:
    """Route every log record (the app's, uvicorn's server and access logs) to one handler in ``fmt``.

    Replaces the root logger's handlers; uvicorn's loggers lose their own handlers and propagate
    to the root, so each line is written once, in one format.
    """
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(make_handler(fmt))
    root.setLevel(level.upper() if isinstance(level, str) else level)
    for name in _UVICORN_LOGGERS:
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
