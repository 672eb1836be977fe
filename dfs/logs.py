"""Structured logs: one line per event, `key=value` pairs after the message.

Every line names what it speaks of (inode, chunk, volume, peer) as fields, so
operators can grep for `chunk=42` across all services.
"""

import logging
import sys
import time


def _quote(value) -> str:
    text = value.hex() if isinstance(value, bytes) else str(value)
    if not text or any(c in text for c in ' ="'):
        return '"' + text.replace('"', '\\"') + '"'
    return text


class _Formatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        parts = [f"ts={ts}.{int(record.msecs):03d}Z", f"level={record.levelname.lower()}",
                 f"svc={record.name}", f"msg={_quote(record.getMessage())}"]
        for key, value in getattr(record, "fields", {}).items():
            parts.append(f"{key}={_quote(value)}")
        if record.exc_info:
            parts.append(f"exc={_quote(self.formatException(record.exc_info))}")
        return " ".join(parts)


class Logger:
    """A thin wrapper so call sites read `log.info("chunk lost", chunk=7)`."""

    def __init__(self, name: str):
        self._log = logging.getLogger(name)

    def _emit(self, level: int, msg: str, fields: dict, exc_info=False) -> None:
        if self._log.isEnabledFor(level):
            self._log.log(level, msg, extra={"fields": fields}, exc_info=exc_info)

    def debug(self, msg: str, **fields) -> None:
        self._emit(logging.DEBUG, msg, fields)

    def info(self, msg: str, **fields) -> None:
        self._emit(logging.INFO, msg, fields)

    def warning(self, msg: str, **fields) -> None:
        self._emit(logging.WARNING, msg, fields)

    def error(self, msg: str, exc_info=False, **fields) -> None:
        self._emit(logging.ERROR, msg, fields, exc_info=exc_info)


def get_logger(name: str) -> Logger:
    return Logger(name)


def setup(level: str = "info", stream=None) -> None:
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(_Formatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(getattr(logging, level.upper()))
