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

# Under spark-submit the driver's stderr is merged into its stdout: give it spark-submit's stderr back before
# anything is printed, so that even an argparse usage error stays out of a --json report's stream.
from spark_unlearn.logs import separate_stderr  # noqa: E402

separate_stderr()
