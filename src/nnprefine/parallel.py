"""One executor interface for independent tasks: in-process (default) or a Dask cluster.

Reference labels, exploration trajectories and production trajectories are independent
tasks. Every stage hands them to an executor and stores each outcome as it streams back,
so the driver is the only writer of the databases and a crash loses at most the tasks in
flight.

A task is ``(key, kwargs)``; the executor calls ``fn(**shared, **kwargs)`` and yields a
:class:`TaskOutcome` per task, in completion order. ``shared`` holds large read-only
objects (models, slabs) that a cluster ships to the workers once, not once per task.

Two executors implement the interface:

- :class:`InProcessExecutor` runs the tasks one after another in this process;
- :class:`DaskExecutor` runs them on a ``distributed`` cluster: a local cluster of worker
  processes on this machine, or any existing scheduler (e.g. one that ``dask-jobqueue``
  started on Slurm or PBS). A worker that dies has its task re-run elsewhere; a task that
  raises is reported as failed, once. See ``docs/parallel.md``.

:func:`make_executor` builds either from the small spec the ``[executor]`` config table gives.
"""

from __future__ import annotations

import contextlib
import difflib
import os
import sys
import traceback
import uuid
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from nnprefine.errors import ConfigError, NnprefineError

__all__ = [
    "DaskExecutor",
    "Executor",
    "ExecutorError",
    "InProcessExecutor",
    "TaskOutcome",
    "THREAD_ENV_VARS",
    "make_executor",
    "usable_cores",
]


class ExecutorError(NnprefineError, RuntimeError):
    """A cluster could not be started or reached, or has no usable workers."""


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


def _error_text(exc: BaseException) -> str:
    """``"ValueError: message"``: the exception's type and text, without the traceback."""
    return "".join(traceback.format_exception_only(type(exc), exc)).strip()


def _call(
    fn: Callable[..., Any], shared: Mapping[str, Any], key: str, kwargs: Mapping[str, Any]
) -> TaskOutcome:
    """Run one task; an exception becomes a failed outcome (the same in every executor)."""
    try:
        value = fn(**shared, **kwargs)
    except Exception as exc:  # a failed task is recorded, never fatal to the stage
        return TaskOutcome(key=key, error=_error_text(exc))
    return TaskOutcome(key=key, value=value)


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
            yield _call(fn, shared, key, kwargs)

    def close(self) -> None:
        pass

    def __enter__(self) -> InProcessExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- threads inside a worker ------------------------------------------------------------------

#: Variables that cap the threads of OpenMP (LAMMPS, torch), BLAS, numba and numexpr.
THREAD_ENV_VARS = (
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
    "NUMBA_NUM_THREADS",
)
# Read when a worker process starts (numpy's BLAS is loaded before any task runs), so they
# must be in the environment the nanny spawns the worker with.
_PRE_SPAWN_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def usable_cores() -> int:
    """The number of CPU cores this process may run on (its affinity mask, else the CPU count)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _limit_threads(n_threads: int) -> None:
    """Cap torch's and numba's threads in the calling thread; set the variables others read.

    Called in the worker thread before every task: numba's thread count belongs to the
    calling thread, and torch may be imported by the first task. Cheap when nothing changes.
    """
    value = str(n_threads)
    for name in THREAD_ENV_VARS:
        if os.environ.get(name) != value and not (
            name == "NUMBA_NUM_THREADS" and "numba" in sys.modules
        ):
            os.environ[name] = value  # for libraries not loaded yet
    torch = sys.modules.get("torch")
    if torch is not None and torch.get_num_threads() != n_threads:
        torch.set_num_threads(n_threads)
    numba = sys.modules.get("numba")
    if numba is not None:
        cap = min(n_threads, int(numba.config.NUMBA_NUM_THREADS))
        if numba.get_num_threads() != cap:
            numba.set_num_threads(cap)


def _run_task(
    fn: Callable[..., Any],
    shared: Mapping[str, Any],
    key: str,
    kwargs: Mapping[str, Any],
    n_threads: int | None,
) -> TaskOutcome:
    """What a Dask worker runs for one task."""
    if n_threads is not None:
        _limit_threads(n_threads)
    return _call(fn, shared, key, kwargs)


def _is_cancellation(exc: BaseException | None) -> bool:
    """Whether a future failed because Dask cancelled it (not because the task raised)."""
    import asyncio
    import concurrent.futures

    from distributed.client import FutureCancelledError

    return isinstance(
        exc, FutureCancelledError | asyncio.CancelledError | concurrent.futures.CancelledError
    )


def _worker_info() -> dict[str, Any]:
    """Run on each worker when connecting: can it import nnprefine, and which version?"""
    import nnprefine

    return {"version": nnprefine.__version__, "pid": os.getpid()}


@contextlib.contextmanager
def _environ(values: Mapping[str, str]) -> Iterator[None]:
    """Set environment variables for the duration of the block, then restore them."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, old in saved.items():
            if old is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = old


def _check_count(name: str, value: Any, minimum: int, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(
            f"executor {name} must be an integer >= {minimum}"
            + (" (or None)" if allow_none else "")
            + f", not {value!r}"
        )


# -- Dask ----------------------------------------------------------------------------------


class DaskExecutor:
    """Runs tasks on a Dask ``distributed`` cluster and streams outcomes back as they finish.

    Without ``scheduler_address`` it starts a ``LocalCluster`` of ``n_workers`` worker
    processes on this machine, bound to 127.0.0.1, each running one task at a time with
    ``threads_per_worker`` threads for OpenMP, BLAS, numba and torch. Keep
    ``n_workers * threads_per_worker`` at or below the cores (:func:`usable_cores`); a
    warning says when it is not. A worker process that dies is restarted by its nanny.

    With ``scheduler_address`` (``"tcp://host:8786"``) it connects to a running scheduler,
    e.g. one started by ``dask-jobqueue`` on Slurm/PBS, and leaves that cluster running on
    :meth:`close`. The workers there must have the same nnprefine installed; the scheduler's
    own ``distributed.scheduler.allowed-failures`` setting applies.

    Fault tolerance: a task whose worker dies is re-run on another worker, up to
    ``allowed_failures`` times (then it is reported as failed: it probably kills workers, by
    crashing or running out of memory); a task that raises is reported as failed at once
    with the exception's text and never retried. If the workers holding the ``shared``
    objects all die, they are shipped again and the affected tasks resubmitted. Each task
    is yielded exactly once.

    Parameters
    ----------
    n_workers: worker processes of the local cluster (ignored with ``scheduler_address``).
    threads_per_worker: threads of the numerical libraries per worker process; ``None``
        leaves the workers of an existing cluster as they were started.
    scheduler_address: address of an existing scheduler; ``None`` starts a local cluster.
    allowed_failures: how many worker deaths one task may cause before it is reported
        failed (local cluster only).
    connect_timeout_s: how long to wait for the scheduler to answer, s.
    worker_wait_timeout_s: how long :meth:`run` waits for a first worker to join, s
        (``None``: forever, e.g. while batch jobs queue).
    memory_limit: per-worker memory limit of the local cluster (``"auto"``, ``"4GiB"``,
        bytes, or ``None`` for no limit); a worker past 95 % of it is restarted.
    dashboard_address: where the local cluster serves its dashboard (e.g.
        ``"127.0.0.1:8787"``; needs bokeh); ``None`` serves none.
    max_in_flight: the most tasks submitted at once (``None``: all at once). With a limit,
        ``tasks`` is read lazily as outcomes come back.
    """

    def __init__(
        self,
        n_workers: int = 2,
        threads_per_worker: int | None = 1,
        scheduler_address: str | None = None,
        *,
        allowed_failures: int = 3,
        connect_timeout_s: float = 30.0,
        worker_wait_timeout_s: float | None = 600.0,
        memory_limit: str | float | None = "auto",
        dashboard_address: str | None = None,
        max_in_flight: int | None = None,
    ) -> None:
        _check_count("n_workers", n_workers, 1)
        _check_count("threads_per_worker", threads_per_worker, 1, allow_none=True)
        _check_count("allowed_failures", allowed_failures, 0)
        _check_count("max_in_flight", max_in_flight, 1, allow_none=True)
        if scheduler_address is not None and (
            not isinstance(scheduler_address, str) or not scheduler_address.strip()
        ):
            raise ConfigError(
                f"scheduler_address must be an address like 'tcp://10.0.0.5:8786', "
                f"not {scheduler_address!r}"
            )
        self.threads_per_worker = threads_per_worker
        self.scheduler_address = scheduler_address
        self.allowed_failures = allowed_failures
        self.connect_timeout_s = connect_timeout_s
        self.worker_wait_timeout_s = worker_wait_timeout_s
        self.max_in_flight = max_in_flight
        self._cluster: Any = None
        self._client: Any = None
        if scheduler_address is None:
            self._start_local(n_workers, memory_limit, dashboard_address)
        else:
            self._connect(scheduler_address)

    # -- set-up ------------------------------------------------------------------------------
    def _start_local(
        self, n_workers: int, memory_limit: str | float | None, dashboard_address: str | None
    ) -> None:
        import dask
        from distributed import Client, LocalCluster

        threads = self.threads_per_worker or 1
        cores = usable_cores()
        if n_workers * threads > cores:
            warnings.warn(
                f"{n_workers} workers x {threads} threads = {n_workers * threads} threads on "
                f"{cores} cores: the workers will slow each other down; use at most "
                f"{max(cores // threads, 1)} workers or fewer threads per worker",
                RuntimeWarning,
                stacklevel=3,
            )
        env = {name: str(threads) for name in THREAD_ENV_VARS}
        pre_spawn = {name: env[name] for name in _PRE_SPAWN_VARS}
        # The nanny takes the pre-spawn values from the environment of this process when it
        # exists, so set them here for the start and restore them afterwards.
        config = {
            "distributed.nanny.pre-spawn-environ": pre_spawn,
            # A worker holds only the task it runs: when it dies, only that task counts the
            # death against allowed_failures, not innocent tasks queued behind it.
            "distributed.scheduler.worker-saturation": 1.0,
        }
        try:
            with _environ(pre_spawn), dask.config.set(config):
                self._cluster = LocalCluster(
                    n_workers=n_workers,
                    threads_per_worker=1,
                    processes=True,
                    host="127.0.0.1",
                    dashboard_address=dashboard_address,
                    memory_limit=memory_limit,
                    env=env,
                    scheduler_kwargs={
                        "allowed_failures": self.allowed_failures,
                        "dashboard": dashboard_address is not None,
                        # The scheduler serves /health etc. even without a dashboard; a free
                        # port on 127.0.0.1 rather than 8787, which another cluster may hold.
                        "dashboard_address": dashboard_address or "127.0.0.1:0",
                    },
                )
                self._client = Client(self._cluster, timeout=self.connect_timeout_s)
        except Exception as exc:
            self.close()
            raise ExecutorError(
                f"could not start a local Dask cluster of {n_workers} workers ({_error_text(exc)}); "
                "check that this machine can open ports on 127.0.0.1, or use the in-process "
                "executor ([executor] kind = 'in-process')"
            ) from exc

    def _connect(self, address: str) -> None:
        from distributed import Client

        try:
            self._client = Client(address, timeout=self.connect_timeout_s)
        except Exception as exc:
            raise ExecutorError(
                f"could not reach a Dask scheduler at {address!r} within "
                f"{self.connect_timeout_s:g} s ({_error_text(exc)}); check that the scheduler "
                "is running (dask scheduler, or cluster.scheduler_address of a dask-jobqueue "
                "cluster), that the address and port are right and that no firewall blocks it"
            ) from exc
        try:
            info = self._client.run(_worker_info)
        except Exception as exc:
            self.close()
            raise ExecutorError(
                f"the Dask workers of {address!r} cannot import nnprefine ({_error_text(exc)}); "
                "install nnprefine in the workers' Python environment (the same version as here)"
            ) from exc
        import nnprefine

        versions = {v["version"] for v in info.values()}
        if versions - {nnprefine.__version__}:
            warnings.warn(
                f"the Dask workers run nnprefine {sorted(versions)}, this process "
                f"{nnprefine.__version__}; install the same version on both",
                RuntimeWarning,
                stacklevel=3,
            )

    # -- properties --------------------------------------------------------------------------
    @property
    def client(self) -> Any:
        """The ``distributed.Client`` in use (for inspection, e.g. ``client.run(os.getpid)``)."""
        if self._client is None:
            raise ExecutorError("this DaskExecutor is closed; create a new one")
        return self._client

    @property
    def n_workers(self) -> int:
        """The number of workers connected now."""
        return len(self.client.scheduler_info(n_workers=-1)["workers"])

    def __repr__(self) -> str:
        where = self.scheduler_address or "local cluster"
        state = "closed" if self._client is None else f"{self.n_workers} workers"
        return f"DaskExecutor({where}, {state}, threads_per_worker={self.threads_per_worker})"

    # -- running -----------------------------------------------------------------------------
    def _wait_for_workers(self) -> None:
        if self.client.scheduler_info(n_workers=-1)["workers"]:
            return
        try:
            self.client.wait_for_workers(1, timeout=self.worker_wait_timeout_s)
        except Exception as exc:
            where = self.scheduler_address or "the local cluster"
            raise ExecutorError(
                f"no Dask worker joined {where} within {self.worker_wait_timeout_s} s; start "
                "workers (dask worker <address>, or cluster.scale(...) with dask-jobqueue) or "
                "give a longer worker_wait_timeout_s"
            ) from exc

    def _scatter(self, shared: Mapping[str, Any]) -> dict[str, Any]:
        """Ship the shared objects to every worker once; returns a dict of futures."""
        if not shared:
            return {}
        self._wait_for_workers()
        names = list(shared)
        futures = self.client.scatter([shared[n] for n in names], broadcast=True, hash=False)
        return dict(zip(names, futures, strict=True))

    def _shared_alive(self, shared_futures: Mapping[str, Any]) -> bool:
        futures = list(shared_futures.values())
        if not futures:
            return True
        if any(f.status != "finished" for f in futures):
            return False
        holders = self.client.who_has(futures)
        return all(holders.get(f.key) for f in futures)

    def _describe_failure(self, exc: BaseException) -> str:
        from distributed import KilledWorker

        if isinstance(exc, KilledWorker):
            return (
                f"the worker process died each of the {exc.allowed_failures + 1} times this task "
                "ran (a crash in compiled code, or out of memory?); run it in-process to see "
                f"the error. Dask: {exc}"
            )
        return _error_text(exc)

    def run(
        self,
        fn: Callable[..., Any],
        tasks: Iterable[tuple[str, Mapping[str, Any]]],
        shared: Mapping[str, Any] | None = None,
    ) -> Iterator[TaskOutcome]:
        """Run ``fn(**shared, **kwargs)`` for every ``(key, kwargs)`` on the cluster.

        Yields one :class:`TaskOutcome` per task, in completion order. ``fn`` must be
        importable on the workers (or picklable by value: defined in ``__main__``), and
        ``shared`` values must pickle; they are sent to every worker once per call. Closing
        the generator early cancels the tasks still pending.
        """
        from distributed import as_completed

        client = self.client
        self._wait_for_workers()
        shared = dict(shared or {})
        shared_futures = self._scatter(shared)
        run_id = uuid.uuid4().hex[:8]
        name = getattr(fn, "__name__", "task")
        pending: dict[Any, tuple[int, str, Mapping[str, Any], int]] = {}
        yielded: set[int] = set()
        results = as_completed(with_results=False)
        task_iter = enumerate(iter(tasks))

        def submit(index: int, key: str, kwargs: Mapping[str, Any], attempt: int) -> None:
            future = client.submit(
                _run_task,
                fn,
                shared_futures,
                key,
                dict(kwargs),
                self.threads_per_worker,
                key=f"{name}-{run_id}-{index}-{attempt}",
                pure=False,
            )
            pending[future] = (index, key, kwargs, attempt)
            results.add(future)

        def fill() -> None:
            while self.max_in_flight is None or len(pending) < self.max_in_flight:
                try:
                    index, (key, kwargs) = next(task_iter)
                except StopIteration:
                    return
                submit(index, key, kwargs, 0)

        try:
            fill()
            for future in results:
                entry = pending.pop(future, None)
                if entry is None:
                    continue
                index, key, kwargs, attempt = entry
                # result() waits for a recomputation when the result was lost with its
                # worker; the task's own exceptions were caught on the worker already.
                try:
                    outcome = future.result()
                    failure: BaseException | None = None
                except BaseException as exc:
                    outcome, failure = None, exc
                if _is_cancellation(failure):
                    if attempt < self.allowed_failures + 1:
                        # The shared objects were lost with the workers holding them: ship
                        # them again and resubmit (the task itself did nothing wrong).
                        if not self._shared_alive(shared_futures):
                            client.cancel(list(shared_futures.values()))
                            shared_futures = self._scatter(shared)
                        future.release()
                        submit(index, key, kwargs, attempt + 1)
                        continue
                    outcome = TaskOutcome(
                        key=key,
                        error="the task was cancelled repeatedly because the workers holding "
                        "its shared objects died; check the workers' memory and logs",
                    )
                elif failure is not None:
                    if isinstance(failure, KeyboardInterrupt | SystemExit):
                        raise failure
                    outcome = TaskOutcome(key=key, error=self._describe_failure(failure))
                future.release()
                if index in yielded:  # cannot happen; guards the exactly-once promise
                    continue
                yielded.add(index)
                fill()
                yield outcome
        finally:
            if self._client is not None:
                leftover = list(pending) + list(shared_futures.values())
                if leftover:
                    with contextlib.suppress(Exception):
                        client.cancel(leftover)

    # -- shutting down -----------------------------------------------------------------------
    def close(self) -> None:
        """Disconnect; a local cluster is shut down, an external one keeps running."""
        client, cluster = self._client, self._cluster
        self._client = self._cluster = None
        if client is not None:
            with contextlib.suppress(Exception):
                client.close()
        if cluster is not None:
            with contextlib.suppress(Exception):
                cluster.close()

    def __enter__(self) -> DaskExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- factory -------------------------------------------------------------------------------

_DASK_KEYS = {
    "kind",
    "n_workers",
    "threads_per_worker",
    "scheduler_address",
    "allowed_failures",
    "connect_timeout_s",
    "worker_wait_timeout_s",
    "memory_limit",
    "dashboard_address",
    "max_in_flight",
}
_IN_PROCESS_NAMES = ("local", "in-process", "inprocess")


def _did_you_mean(word: str, options: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(options), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def make_executor(
    spec: Mapping[str, Any] | str | Executor | None = None,
) -> InProcessExecutor | DaskExecutor | Executor:
    """Build an executor from a config spec.

    - ``None``, ``"local"`` or ``"in-process"`` (or ``{"kind": "in-process"}``):
      :class:`InProcessExecutor`;
    - ``"dask"`` or ``{"kind": "dask", "n_workers": 2, "threads_per_worker": 1}``: a local
      Dask cluster of worker processes;
    - ``{"kind": "dask", "scheduler_address": "tcp://host:8786"}``: an existing cluster.

    Other :class:`DaskExecutor` keyword arguments may be given in the dict too. An object
    that already is an executor is returned as it is.
    """
    if spec is None:
        return InProcessExecutor()
    if hasattr(spec, "run") and hasattr(spec, "close"):
        return spec  # type: ignore[return-value]
    if isinstance(spec, str):
        spec = {"kind": "in-process" if spec in _IN_PROCESS_NAMES else spec}
    if not isinstance(spec, Mapping):
        raise ConfigError(
            "an executor spec must be None, 'in-process', 'dask' or a table like "
            f"{{kind = 'dask', n_workers = 2}}, not {type(spec).__name__}"
        )
    kind = spec.get("kind", "dask" if "scheduler_address" in spec else "in-process")
    if kind in _IN_PROCESS_NAMES:
        extra = set(spec) - {"kind"}
        if extra:
            raise ConfigError(
                f"executor keys {sorted(extra)} only apply to kind = 'dask'; "
                "set kind = 'dask' or remove them"
            )
        return InProcessExecutor()
    if kind != "dask":
        raise ConfigError(
            f"unknown executor kind {kind!r}{_did_you_mean(str(kind), ('in-process', 'dask'))}; "
            "use 'in-process' or 'dask'"
        )
    unknown = sorted(set(spec) - _DASK_KEYS)
    if unknown:
        hints = "".join(_did_you_mean(k, _DASK_KEYS) for k in unknown)
        raise ConfigError(
            f"unknown executor key(s) {unknown}{hints}; allowed: {sorted(_DASK_KEYS)}"
        )
    kwargs = {k: v for k, v in spec.items() if k != "kind"}
    if kwargs.get("scheduler_address") == "":
        kwargs["scheduler_address"] = None
    return DaskExecutor(**kwargs)
