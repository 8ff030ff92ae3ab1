"""One executor interface for independent tasks: in-process (default) or a Dask cluster.

Reference labels, exploration trajectories and production trajectories are independent
tasks. Every stage hands them to an executor and stores each outcome as it streams back,
so the driver is the only writer of the databases and a crash loses at most the tasks in
flight.

A task is ``(key, kwargs)``; the executor calls ``fn(**shared, **kwargs)`` and yields a
:class:`TaskOutcome` per task, in completion order. ``shared`` holds large read-only
objects (models, slabs) that a cluster ships to the workers once, not once per task.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

__all__ = ["Executor", "InProcessExecutor", "TaskOutcome"]


@dataclass(frozen=True)
class TaskOutcome:
    """The result of one task: ``value`` when it succeeded, ``error`` (text) when not."""

    key: str
    value: Any = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


class Executor(Protocol):
    """What every executor offers."""

    def run(
        self,
        fn: Callable[..., Any],
        tasks: Iterable[tuple[str, Mapping[str, Any]]],
        shared: Mapping[str, Any] | None = None,
    ) -> Iterator[TaskOutcome]:
        """Run ``fn(**shared, **kwargs)`` for every ``(key, kwargs)``; yield outcomes as they finish."""
        ...

    def close(self) -> None: ...


class InProcessExecutor:
    """Runs tasks one after another in this process. No dependencies, the default."""

    def run(
        self,
        fn: Callable[..., Any],
        tasks: Iterable[tuple[str, Mapping[str, Any]]],
        shared: Mapping[str, Any] | None = None,
    ) -> Iterator[TaskOutcome]:
        shared = dict(shared or {})
        for key, kwargs in tasks:
            try:
                value = fn(**shared, **kwargs)
            except Exception as exc:  # a failed task is recorded, never fatal to the stage
                text = "".join(traceback.format_exception_only(type(exc), exc)).strip()
                yield TaskOutcome(key=key, error=text)
            else:
                yield TaskOutcome(key=key, value=value)

    def close(self) -> None:
        pass

    def __enter__(self) -> InProcessExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
