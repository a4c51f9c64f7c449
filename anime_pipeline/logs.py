"""Log lines of the pipeline: plain text, or JSON lines with ``ANIME_PIPELINE_LOG_FORMAT=json``.

Render progress carries ``clip_task_id`` (``tenant/project/episode/SHOT``), ``clip_status``
(started, ok, degraded, placeholder, cached) and ``parallel_slot`` (which of the step's slots
rendered it) as record attributes; the JSON form writes them as fields.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time

FORMAT_ENV = "ANIME_PIPELINE_LOG_FORMAT"
FIELDS = ("clip_task_id", "clip_status", "parallel_slot", "server")
_HANDLER_NAME = "anime_pipeline-json"


def json_format() -> bool:
    return os.environ.get(FORMAT_ENV, "").strip().lower() == "json"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
                    + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in FIELDS:
            if hasattr(record, name):
                line[name] = getattr(record, name)
        if record.exc_info:
            line["error"] = self.formatException(record.exc_info).splitlines()[-1]
        return json.dumps(line, ensure_ascii=False)


def configure(stream: object = None) -> None:
    """With JSON logs asked for, every ``anime_pipeline`` log line goes to stderr as JSON
    (once per process; a no-op otherwise)."""
    if not json_format():
        return
    logger = logging.getLogger("anime_pipeline")
    if any(getattr(h, "name", "") == _HANDLER_NAME for h in logger.handlers):
        return
    handler = logging.StreamHandler(stream or sys.stderr)  # type: ignore[arg-type]
    handler.name = _HANDLER_NAME
    handler.setFormatter(JsonFormatter())
    logger.addHandler(handler)
    if logger.level == logging.NOTSET or logger.level > logging.INFO:
        logger.setLevel(logging.INFO)
