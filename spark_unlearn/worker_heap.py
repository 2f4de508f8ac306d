"""Keep PySpark's per-task garbage collection cheap in reused Python workers.

A reused PySpark worker runs ``gc.collect()`` after every task (pyspark
``daemon.py``).  A full collection walks every tracked object of the process,
and once our modules (numpy, pyarrow, pyspark.sql) are imported there are
some 40,000: 16-36 ms per task measured on the 2-core machine, paid before the
worker can take its next task.  On the small blocks of ml-latest-small an
ALS task is ~100 ms, so this is a visible share of every training stage.

:func:`freeze_worker_heap` moves the objects alive at the start of a task
into the permanent generation (``gc.freeze``), which collections skip.
Cyclic garbage is not at risk: the daemon has just collected it when the
next task starts, and what a task leaves behind is collected after it as
before.  Reference counting, which frees nearly all of a task's arrays, is
unaffected.  The cost: an object alive at a task's start that later ends up
in a reference cycle is never freed by the cycle collector; our tasks keep
no state between runs, so this leaves out module-level objects only.
"""

from __future__ import annotations

import gc


def freeze_worker_heap() -> None:
    """Exempt the objects alive now from the worker's per-task ``gc.collect()`` (call at the start of a task)."""
    gc.freeze()
