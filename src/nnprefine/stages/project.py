"""A project's output directory: layout, log, seeds, stage records and resumable task logs.

Layout of ``output_dir``::

    nnprefine.log            log of every command run on this project
    config.json              the config of the latest run (compared on resume)
    data.db                  labelled frames (nnprefine.dataset.FrameStore)
    results.db               production trajectories (nnprefine.sputter)
    lattice.json             hcp a, c, E of the reference (and later of the model)
    slabs/<label>-vacuum<v>A.traj   relaxed, equilibrated slabs (positions + velocities)
    models/iter-<k>/         the committee trained for refinement iteration k
    models/final/            the committee trained on all data
    refine/iter-<k>/         exploration results, selection, summary of iteration k
    stages/<name>.json       one record per finished stage (its result, in one write)
    tasks/<stage>.jsonl      keys of finished tasks of a stage, appended as they finish
    report.html, summary.json, figures/

Every stage is safe to re-run: it skips what its records say is done. Tasks stream into
their stores as they finish and are then appended to ``tasks/<stage>.jsonl``; a crash
between the two re-runs one task, whose labels the store recognises as duplicates.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import secrets
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from nnprefine import __version__
from nnprefine.common import derive_seed, json_default, recover_directory_swap, write_json
from nnprefine.config import Config, config_to_dict
from nnprefine.errors import NnprefineError

__all__ = ["Project"]

#: lock files this process holds (a stage called inside a locked run does not lock again)
_HELD: set[Path] = set()


def _read_lock(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _lock_is_stale(holder: dict[str, Any]) -> bool:
    """True when the holder is a process of this host that no longer runs."""
    if holder.get("host") != socket.gethostname():
        return False  # another machine's process: cannot tell, so trust it
    if holder.get("pid") == os.getpid():
        return True  # an earlier life of this PID (a restarted container): not held here
    try:
        os.kill(int(holder["pid"]), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, KeyError, ValueError):
        return False
    return False


class Project:
    """State of one configured project on disk (a thin class over its output directory)."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.dir = config.output_dir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.log = self._make_logger()

    # -- paths ---------------------------------------------------------------------------
    @property
    def data_db(self) -> Path:
        return self.dir / "data.db"

    @property
    def results_db(self) -> Path:
        return self.dir / "results.db"

    def slab_path(self, label: str) -> Path:
        return self.dir / "slabs" / f"{label}.traj"

    def model_dir(self, name: str) -> Path:
        """``models/<name>``, repaired first if a killed save left it moved aside."""
        directory = self.dir / "models" / name
        recover_directory_swap(directory)
        return directory

    def iteration_dir(self, k: int) -> Path:
        return self.dir / "refine" / f"iter-{k:03d}"

    @property
    def figures_dir(self) -> Path:
        return self.dir / "figures"

    # -- logging -------------------------------------------------------------------------
    def _make_logger(self) -> logging.Logger:
        logger = logging.getLogger(f"nnprefine.project.{self.dir}")
        if not logger.handlers:
            logger.setLevel(logging.INFO)
            handler = logging.FileHandler(self.dir / "nnprefine.log")
            handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
            logger.addHandler(handler)
            logger.propagate = False
        return logger

    def say(self, message: str, colour: str | None = None) -> None:
        """Log a line to the project log and print it (in ``colour``, "red" or "green", on
        a terminal)."""
        self.log.info(message)
        codes = {"red": "\033[1;31m", "green": "\033[1;32m"}
        if colour in codes and sys.stdout.isatty() and not os.environ.get("NO_COLOR"):
            message = f"{codes[colour]}{message}\033[0m"
        print(message, flush=True)

    # -- seeds ---------------------------------------------------------------------------
    def seed(self, *names: object) -> int:
        return derive_seed(self.config.project.seed, *names)

    # -- stage records -------------------------------------------------------------------
    def stage_record(self, name: str) -> dict[str, Any] | None:
        path = self.dir / "stages" / f"{name}.json"
        return json.loads(path.read_text()) if path.exists() else None

    def record_stage(self, name: str, result: dict[str, Any]) -> None:
        """Write stage ``name``'s record, with the fingerprint of ``data.db`` as it stands
        (see :meth:`verify_records`)."""
        extra: dict[str, Any] = {}
        if self.data_db.exists():
            with self.store() as store:
                extra["data_db"] = store.fingerprint()
        write_json(
            self.dir / "stages" / f"{name}.json",
            {"stage": name, "nnprefine_version": __version__, **result, **extra},
        )

    def verify_records(self) -> None:
        """Check that ``data.db`` still holds every frame the stage records were written
        with (the same frames, by content, up to the id each record saw); an error that
        says what was lost and how to rebuild it otherwise. Frames added since are fine."""
        folder = self.dir / "stages"
        records = sorted(folder.glob("*.json")) if folder.exists() else []
        now_at: dict[int, dict[str, Any]] = {}  # records written back to back saw the same ids
        for path in records:
            rec = json.loads(path.read_text())
            seen = rec.get("data_db")
            if not seen or not seen["frames"]:
                continue
            stage = rec.get("stage", path.stem)
            fix = (
                f"restore {self.data_db.name} from a backup, or delete {folder} and "
                f"{self.dir / 'tasks'} and rerun to label everything again"
            )
            if not self.data_db.exists() or self.data_db.stat().st_size == 0:
                raise NnprefineError(
                    f"{self.data_db} is missing or empty, but stage '{stage}' was recorded "
                    f"with {seen['frames']} labelled frames in it: the labels are lost; {fix}"
                )
            if seen["max_id"] not in now_at:
                with self.store() as store:
                    now_at[seen["max_id"]] = store.fingerprint(seen["max_id"])
            now = now_at[seen["max_id"]]
            if now != seen:
                raise NnprefineError(
                    f"{self.data_db} is not the database stage '{stage}' was recorded with "
                    f"({now['frames']} of its {seen['frames']} frames match by content): it "
                    f"was replaced or rows were deleted; {fix}"
                )

    # -- task logs -----------------------------------------------------------------------
    def _task_log(self, stage: str) -> Path:
        return self.dir / "tasks" / f"{stage}.jsonl"

    def finished_tasks(self, stage: str) -> dict[str, dict[str, Any]]:
        """Keys (with their small records) of the tasks of ``stage`` that finished."""
        path = self._task_log(stage)
        done: dict[str, dict[str, Any]] = {}
        if path.exists():
            for line in path.read_text().splitlines():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut by a crash: that task re-runs
                done[row["key"]] = row
        return done

    def finish_task(self, stage: str, key: str, **record: Any) -> None:
        path = self._task_log(stage)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as fh:
            fh.write(json.dumps({"key": key, **record}, default=json_default) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    # -- one writer at a time ------------------------------------------------------------
    @property
    def lock_path(self) -> Path:
        return self.dir / "nnprefine.lock"

    @contextmanager
    def lock(self, command: str = "nnprefine") -> Iterator[None]:
        """Hold the project for one writer while the block runs.

        A second writer fails at once with a :class:`NnprefineError` naming the holder
        (process, host, start time, command). A lock left by a process that no longer
        exists on this host is taken over. Re-entrant within one process.
        """
        if self.lock_path in _HELD:
            yield
            return
        me = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            "command": command,
        }
        # written in full under a private name, then linked into place: no other process
        # ever sees an empty or half-written lock
        mine = self.dir / f".nnprefine.lock-{os.getpid()}-{secrets.token_hex(4)}"
        mine.write_text(json.dumps(me) + "\n")
        # the take-over of a stale lock is one critical section (flock on a file that is
        # never deleted): two processes that both find a stale lock cannot both win
        guard = open(self.dir / ".nnprefine.lock.guard", "a")  # noqa: SIM115
        fcntl.flock(guard, fcntl.LOCK_EX)
        try:
            self._take_lock(mine)
        finally:
            fcntl.flock(guard, fcntl.LOCK_UN)
            guard.close()
        _HELD.add(self.lock_path)
        try:
            yield
        finally:
            _HELD.discard(self.lock_path)
            if (_read_lock(self.lock_path) or {}).get("pid") == me["pid"]:
                self.lock_path.unlink(missing_ok=True)

    def _take_lock(self, mine: Path) -> None:
        """Link ``mine`` into place as the lock, taking over a stale one (see :meth:`lock`)."""
        for _ in range(2):
            try:
                os.link(mine, self.lock_path)
            except FileExistsError:
                holder = _read_lock(self.lock_path)
                if holder is not None and not _lock_is_stale(holder):
                    mine.unlink(missing_ok=True)
                    raise NnprefineError(
                        f"{self.dir} is in use by process {holder.get('pid')} on "
                        f"{holder.get('host')} since {holder.get('started')} "
                        f"({holder.get('command')}); wait for it to finish or stop it. If "
                        f"that process is gone, delete {self.lock_path}"
                    ) from None
                self.lock_path.unlink(missing_ok=True)  # stale or unreadable: take it over
                continue
            break
        else:
            mine.unlink(missing_ok=True)
            raise NnprefineError(f"could not take the lock {self.lock_path}; retry")
        mine.unlink(missing_ok=True)

    # -- resources -----------------------------------------------------------------------
    @contextmanager
    def executor(self) -> Iterator[Any]:
        """The config's executor (in-process or a Dask cluster), closed when the block ends."""
        from nnprefine import parallel

        executor = parallel.make_executor(self.config.executor.spec())
        try:
            yield executor
        finally:
            executor.close()

    def store(self) -> Any:
        """The project's frame store (``data.db``), to use as a context manager."""
        from nnprefine.dataset import FrameStore

        return FrameStore(
            self.data_db,
            elements=self.config.elements,
            test_fraction=self.config.training.test_fraction,
        )

    def save_config(self) -> None:
        """Record the config of this run; note in the log what changed since the last one."""
        path = self.dir / "config.json"
        new = config_to_dict(self.config)
        if path.exists():
            old = json.loads(path.read_text())
            changed = sorted(
                k
                for k in set(old) | set(new)
                if old.get(k) != json.loads(json.dumps(new.get(k), default=json_default))
            )
            if changed:
                self.say(
                    f"config sections changed since the last run: {', '.join(changed)}; finished "
                    "stages keep their results (delete their records under stages/ to redo them)"
                )
        write_json(path, new)
