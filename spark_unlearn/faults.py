"""Named fail points, to test crash safety with a real ``SIGKILL`` at an exact place.

A job run with ``SPARK_UNLEARN_FAILPOINT=<name>`` in its environment kills
its own process (``SIGKILL``: no cleanup handler, no ``finally``, exactly like
the OOM killer or a lost node) when it reaches :func:`failpoint` ``(<name>)``.
Unset, a fail point costs one dictionary lookup.  The names in use are listed
in :data:`POINTS`; tests/test_crash_safety.py kills the unlearning job at each.
"""

from __future__ import annotations

import logging
import os
import signal

log = logging.getLogger(__name__)

ENV = "SPARK_UNLEARN_FAILPOINT"

POINTS = (
    "during_solve",  # after the first frontier round, nothing written yet
    "after_solve",  # unlearning computed, nothing written yet
    "after_factors_written",  # new factor tables in staging
    "after_ratings_written",  # remaining ratings (the new data version) in staging
    "before_commit_check",  # store lock held, CURRENT not yet compared with the parent
    "after_version_renamed",  # complete version in versions/, CURRENT not yet moved
    "after_current_switched",  # CURRENT moved, ledger entry not yet appended
)


def failpoint(name: str) -> None:
    """Kill this process with ``SIGKILL`` if ``SPARK_UNLEARN_FAILPOINT`` equals ``name``."""
    if os.environ.get(ENV) == name:
        log.warning("fail point %s reached: killing process %d with SIGKILL", name, os.getpid())
        for handler in logging.getLogger().handlers:
            handler.flush()
        os.kill(os.getpid(), signal.SIGKILL)
