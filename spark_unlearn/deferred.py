"""Values built on first use: the Spark plans of a request that a copy-on-write publication never reads.

A small request on a blocked version publishes from arrays on the driver
(:class:`~spark_unlearn.als.result.RowChanges`); the lazy DataFrames of its
new tables are needed only when something reads them (metrics, a full
write).  Building one costs dozens of Py4J calls, so they are built only
then.
"""

from __future__ import annotations

from typing import Any, Callable


class Deferred:
    """A value computed by ``build()`` the first time :meth:`get` is called, then kept."""

    __slots__ = ("_build", "_value", "_done")

    def __init__(self, build: Callable[[], Any]):
        self._build = build
        self._value = None
        self._done = False

    def get(self) -> Any:
        if not self._done:
            self._value = self._build()
            self._done = True
            self._build = None
        return self._value

    @property
    def built(self) -> bool:
        return self._done


def force(value: Any) -> Any:
    """``value``, or what it builds if it is :class:`Deferred`."""
    return value.get() if isinstance(value, Deferred) else value


class ForcesDeferred:
    """Mixin: reading an attribute that holds a :class:`Deferred` builds it and stores the result."""

    def __getattribute__(self, name: str) -> Any:
        value = object.__getattribute__(self, name)
        if isinstance(value, Deferred):
            value = value.get()
            object.__setattr__(self, name, value)
        return value

    def is_built(self, name: str) -> bool:
        """Whether attribute ``name`` holds a value (not a :class:`Deferred` not built yet)."""
        value = object.__getattribute__(self, name)
        return not isinstance(value, Deferred) or value.built


class ForcedDict(dict):
    """A dict whose :class:`Deferred` values are built when first read by key (and then stored)."""

    def __getitem__(self, key: Any) -> Any:
        value = super().__getitem__(key)
        if isinstance(value, Deferred):
            value = value.get()
            super().__setitem__(key, value)
        return value


__all__ = ["Deferred", "ForcedDict", "ForcesDeferred", "force"]
