"""Make ``spark_unlearn`` importable when a job runs from a source checkout without installation.

spark-submit runs ``jobs/x.py`` with ``jobs/`` on ``sys.path``, not the repo
root; an installed package (``pip install -e .``) or a ``--py-files`` zip
takes precedence over this fallback.
"""

import os
import sys

try:
    import spark_unlearn  # noqa: F401
except ImportError:
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
