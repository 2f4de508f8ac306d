"""Logging set-up for jobs: one call, library modules only use ``logging.getLogger(__name__)``."""

from __future__ import annotations

import logging
import sys

_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging(level: str | int = "INFO") -> None:
    """Send spark_unlearn's log records to stderr at ``level`` (jobs call this once)."""
    root = logging.getLogger("spark_unlearn")
    root.setLevel(level)
    if not any(getattr(h, "_spark_unlearn", False) for h in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(_FORMAT, datefmt="%H:%M:%S"))
        handler._spark_unlearn = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.propagate = False
