"""Exception types raised at the boundaries of spark_unlearn.

One exception type per kind of problem, so callers (and job exit codes) can
tell them apart.  Every message names the offending value and says how to fix
it.
"""

from __future__ import annotations


class SparkUnlearnError(Exception):
    """Base class of every error spark_unlearn raises on purpose."""


class SchemaError(SparkUnlearnError):
    """Input has missing, extra or wrongly typed columns, or an unreadable layout."""


class InvalidIdError(SparkUnlearnError):
    """A user or item id is null, not an integer, negative or outside int32."""


class InvalidRatingError(SparkUnlearnError):
    """A rating is null, NaN or infinite."""


class DuplicateRatingError(SparkUnlearnError):
    """The same (user, item) pair occurs more than once and the policy is 'error'."""


class EmptyInputError(SparkUnlearnError):
    """An input that must hold rows holds none."""


class UnknownIdError(SparkUnlearnError):
    """A user or item is not known to the model or the data."""


class ConfigError(SparkUnlearnError):
    """A configuration file or argument is invalid (unknown key, wrong type, bad value)."""


class StoreError(SparkUnlearnError):
    """A model store or model version is missing, incomplete, tampered or inconsistent."""


class OutputPathError(SparkUnlearnError):
    """An output path cannot be written safely (exists, is not a directory, not writable)."""


class ObjectiveError(SparkUnlearnError):
    """A model's hyperparameters are unknown, or the model is not stationary under the ones given."""


class StoreMovedError(SparkUnlearnError):
    """The store's current version moved on since a request read it (another publisher committed first).

    ``current`` is what ``CURRENT`` names now, ``expected`` what the request
    was based on.  Nothing was published.
    """

    def __init__(self, message: str, *, current: str | None = None, expected: str | None = None) -> None:
        super().__init__(message)
        self.current = current
        self.expected = expected
