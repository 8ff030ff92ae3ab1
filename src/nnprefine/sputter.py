"""Sputtering campaigns: energies × trajectories, stored one by one in SQLite, resumable.

A trajectory's identity is (surface label, energy, index); its seed is derived from
the campaign seed and that identity (:func:`trajectory_seed`), so any trajectory can be
replayed alone and a campaign can be resumed: the same command skips every trajectory
already in the database and runs only the missing ones. Each result is written and
committed as soon as it streams back from the executor, so killing a campaign loses at
most the trajectories in flight, and the primary key (surface, energy_eV, idx) makes a
duplicate impossible.

On resume the campaign re-reads the database's record of its campaign seed, impact
settings, slab fingerprint and driver (its name and the fingerprint of its potential,
which changes when a model is retrained) for that surface label; if any differ from the
call, it stops with a :class:`~nnprefine.errors.ConfigError` rather than mixing
trajectories run under different settings (use a new database or surface label).
Energies and trajectory counts may change between runs (that is how a campaign grows).
"""

from __future__ import annotations

import hashlib
import io
import json
import sqlite3
import sys
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import closing
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms

from nnprefine import __version__
from nnprefine.errors import ConfigError
from nnprefine.impact import ImpactSettings, run_impact
from nnprefine.parallel import Executor, InProcessExecutor
from nnprefine.yields import YieldEstimate, estimate_yield

__all__ = [
    "ResultsDB",
    "impact_task",
    "run_campaign",
    "driver_fingerprint",
    "slab_fingerprint",
    "trajectory_seed",
]

_COLUMNS = {
    "surface": "TEXT NOT NULL",
    "energy_eV": "REAL NOT NULL",
    "idx": "INTEGER NOT NULL",
    "seed": "INTEGER NOT NULL",
    "campaign_seed": "INTEGER NOT NULL",
    "x_A": "REAL",
    "y_A": "REAL",
    "polar_deg": "REAL",
    "azimuth_deg": "REAL",
    "n_sputtered": "INTEGER NOT NULL",
    "reflected": "INTEGER NOT NULL",
    "undecided": "INTEGER NOT NULL",
    "unphysical": "INTEGER NOT NULL",
    "sputtered_json": "TEXT",
    "stop_reason": "TEXT",
    "detail": "TEXT",
    "steps": "INTEGER",
    "simulated_fs": "REAL",
    "n_extensions": "INTEGER",
    "wall_s": "REAL",
    "core_s": "REAL",
    "force_s": "REAL",
    "energy_drift_eV": "REAL",
    "max_disagreement": "REAL",
    "max_energy_disagreement": "REAL",
    "watched": "INTEGER",
    "n_watched": "INTEGER",
    "n_over_threshold": "INTEGER",
    "flagged": "INTEGER",
    "driver": "TEXT",
    "driver_fingerprint": "TEXT",
    "model": "TEXT",
    "code_version": "TEXT",
    "settings_json": "TEXT",
    "created_unix": "REAL",
}


def trajectory_seed(campaign_seed: int, surface: str, energy_eV: float, index: int) -> int:
    """The seed of trajectory (surface, energy, index): a 63-bit integer, deterministic."""
    text = f"{int(campaign_seed)}|{surface}|{float(energy_eV)!r}|{int(index)}"
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 1


def driver_fingerprint(calc: Any) -> str:
    """Identity of the potential that drives the MD (hex, 16 characters).

    An NNP or committee calculator: its model's :meth:`fingerprint` (changes when it is
    retrained). Any other calculator: a hash of its class and parameters.
    """
    model = getattr(calc, "potential", None) or getattr(calc, "committee", None)
    if model is not None and hasattr(model, "fingerprint"):
        return str(model.fingerprint())
    cls = type(calc)
    params = json.dumps(getattr(calc, "parameters", {}) or {}, sort_keys=True, default=str)
    text = f"{cls.__module__}.{cls.__qualname__}|{params}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def slab_fingerprint(slab: Atoms) -> str:
    """sha256 of the slab's numbers, cell, positions and velocities (hex, 16 characters)."""
    h = hashlib.sha256()
    for arr in (slab.numbers, slab.cell.array, slab.positions, slab.get_velocities()):
        h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()[:16]


def settings_record(settings: ImpactSettings, target: str | None = None) -> dict[str, Any]:
    """``settings`` as the plain data a campaign is recorded with in ``results.db``.

    ``target``: the slab's element. A projectile of that element (self-sputtering, all
    campaigns had before the key existed) is left out, so their records stay valid.
    """
    record = json.loads(json.dumps(asdict(settings), sort_keys=True, default=str))
    if record.get("projectile") in (None, target):
        record.pop("projectile", None)
    return record


class ResultsDB:
    """The SQLite results database of sputtering campaigns.

    Table ``trajectories`` has one row per finished trajectory (primary key
    surface, energy_eV, idx); ``failures`` one row per task that raised; ``campaigns``
    the settings each surface label was run with.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._con = sqlite3.connect(str(self.path), timeout=60.0)
        cols = ", ".join(f"{k} {v}" for k, v in _COLUMNS.items())
        with self._con:
            self._con.execute(
                f"CREATE TABLE IF NOT EXISTS trajectories ({cols}, "
                "PRIMARY KEY (surface, energy_eV, idx))"
            )
            self._con.execute(
                "CREATE TABLE IF NOT EXISTS failures (surface TEXT, energy_eV REAL, idx INTEGER, "
                "seed INTEGER, error TEXT, created_unix REAL)"
            )
            self._con.execute(
                "CREATE TABLE IF NOT EXISTS campaigns (surface TEXT PRIMARY KEY, meta_json TEXT)"
            )
            self._con.execute(
                "CREATE TABLE IF NOT EXISTS flagged_frames (surface TEXT NOT NULL, "
                "energy_eV REAL NOT NULL, idx INTEGER NOT NULL, time_fs REAL NOT NULL, "
                "energy_disagreement REAL, force_disagreement REAL, extxyz TEXT NOT NULL, "
                "PRIMARY KEY (surface, energy_eV, idx, time_fs))"
            )
            # databases written before a column existed get it (empty for their rows)
            have = {r[1] for r in self._con.execute("PRAGMA table_info(trajectories)")}
            for k, v in _COLUMNS.items():
                if k not in have:
                    self._con.execute(
                        f"ALTER TABLE trajectories ADD COLUMN {k} {v.replace(' NOT NULL', '')}"
                    )

    def close(self) -> None:
        self._con.close()

    def __enter__(self) -> ResultsDB:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def check_campaign(self, surface: str, meta: dict[str, Any]) -> None:
        """Record ``meta`` for ``surface``, or check it equals what is recorded."""
        row = self._con.execute(
            "SELECT meta_json FROM campaigns WHERE surface = ?", (surface,)
        ).fetchone()
        text = json.dumps(meta, sort_keys=True)
        if row is None:
            with self._con:
                self._con.execute("INSERT INTO campaigns VALUES (?, ?)", (surface, text))
            return
        old = json.loads(row[0])
        changed = sorted(k for k in set(old) | set(meta) if old.get(k) != meta.get(k))
        if changed:
            raise ConfigError(
                f"{self.path} holds surface {surface!r} run with other settings ({', '.join(changed)} "
                "differ); resuming would mix trajectories. Use a new database or surface label, "
                "or restore the original settings"
            )

    def campaign_meta(self, surface: str) -> dict[str, Any] | None:
        """The settings ``surface`` was run with (see :meth:`check_campaign`), or None."""
        row = self._con.execute(
            "SELECT meta_json FROM campaigns WHERE surface = ?", (surface,)
        ).fetchone()
        return None if row is None else json.loads(row[0])

    def done(self, surface: str, energy_eV: float) -> set[int]:
        """Indices of the stored trajectories of (surface, energy)."""
        rows = self._con.execute(
            "SELECT idx FROM trajectories WHERE surface = ? AND energy_eV = ?",
            (surface, float(energy_eV)),
        )
        return {int(r[0]) for r in rows}

    def insert(self, row: dict[str, Any], frames: Sequence[Atoms] = ()) -> bool:
        """Store one trajectory row and the watch's flagged ``frames`` (``Atoms`` with
        ``info`` time_fs and disagreements) in one transaction; False if it was there."""
        keys = [k for k in _COLUMNS if k in row]
        with self._con:
            cur = self._con.execute(
                f"INSERT OR IGNORE INTO trajectories ({', '.join(keys)}) "
                f"VALUES ({', '.join('?' for _ in keys)})",
                [row[k] for k in keys],
            )
            if cur.rowcount == 1:
                for a in frames:
                    self._con.execute(
                        "INSERT OR REPLACE INTO flagged_frames VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (
                            row["surface"], float(row["energy_eV"]), int(row["idx"]),
                            float(a.info["time_fs"]),
                            float(a.info["energy_disagreement_eV_per_atom"]),
                            float(a.info["force_disagreement_eV_per_A"]),
                            _extxyz(a),
                        ),
                    )  # fmt: skip
        return cur.rowcount == 1

    def flagged_frames(self, surface: str) -> list[Atoms]:
        """The frames the committee watch kept from ``surface``'s flagged trajectories, with
        ``info`` keys energy_eV, idx, time_fs and the calibrated disagreements."""
        from ase.io import read

        out = []
        rows = self._con.execute(
            "SELECT energy_eV, idx, time_fs, energy_disagreement, force_disagreement, extxyz "
            "FROM flagged_frames WHERE surface = ? ORDER BY energy_eV, idx, time_fs",
            (surface,),
        )
        for e, idx, t, de, df, text in rows:
            a = read(io.StringIO(text), format="extxyz")
            a.info.update(
                energy_eV=e, idx=idx, time_fs=t,
                energy_disagreement_eV_per_atom=de, force_disagreement_eV_per_A=df,
            )  # fmt: skip
            out.append(a)
        return out

    def flagged_counts(self, surface: str) -> dict[float, tuple[int, int]]:
        """Per energy (eV): (flagged, watched) trajectories of ``surface``."""
        rows = self._con.execute(
            "SELECT energy_eV, SUM(flagged), COUNT(*) FROM trajectories "
            "WHERE surface = ? AND watched = 1 GROUP BY energy_eV ORDER BY energy_eV",
            (surface,),
        )
        return {float(e): (int(f), int(n)) for e, f, n in rows}

    def insert_failure(
        self, surface: str, energy_eV: float, idx: int, seed: int, error: str
    ) -> None:
        with self._con:
            self._con.execute(
                "INSERT INTO failures VALUES (?, ?, ?, ?, ?, ?)",
                (surface, float(energy_eV), int(idx), int(seed), error, time.time()),
            )

    def rows(
        self, surface: str | None = None, energy_eV: float | None = None
    ) -> list[dict[str, Any]]:
        """Stored trajectories as dicts, optionally for one surface and/or energy."""
        sql, args = "SELECT * FROM trajectories WHERE 1", []
        if surface is not None:
            sql += " AND surface = ?"
            args.append(surface)
        if energy_eV is not None:
            sql += " AND energy_eV = ?"
            args.append(float(energy_eV))
        with closing(self._con.execute(sql + " ORDER BY surface, energy_eV, idx", args)) as cur:
            names = [d[0] for d in cur.description]
            return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]

    def energies(self, surface: str) -> list[float]:
        rows = self._con.execute(
            "SELECT DISTINCT energy_eV FROM trajectories WHERE surface = ? ORDER BY energy_eV",
            (surface,),
        )
        return [float(r[0]) for r in rows]

    def yields(self, surface: str) -> list[YieldEstimate]:
        """Yield estimates per stored energy of ``surface``."""
        return [estimate_yield(e, self.rows(surface, e)) for e in self.energies(surface)]


def _extxyz(atoms: Atoms) -> str:
    from ase.io import write

    buf = io.StringIO()
    a = atoms.copy()
    a.info = {}
    write(buf, a, format="extxyz")
    return buf.getvalue()


def impact_task(
    slab: Atoms,
    calc: Any,
    settings: ImpactSettings,
    surface: str,
    energy_eV: float,
    index: int,
    seed: int,
    campaign_seed: int,
    driver: str,
    watch: tuple[Any, Any] | None = None,
) -> dict[str, Any]:
    """Run one trajectory and return its database row (a plain, picklable dict).

    ``watch``: (committee, :class:`~nnprefine.watch.WatchSettings`) to have the committee
    judge the trajectory (``calc`` must be an NNPCalculator of its member 0); the row then
    carries the watch's columns and, under ``flagged_frames``, the frames it kept.
    """
    observers: tuple[tuple[Any, int], ...] = ()
    observer = None
    if watch is not None:
        from nnprefine.watch import CommitteeWatch

        committee, watch_settings = watch
        observer = CommitteeWatch(committee, calc, watch_settings)
        observers = ((observer, watch_settings.interval),)
    r = run_impact(slab, calc, energy_eV, seed, settings, observers=observers)
    sp = r.spec
    row = {
        "surface": surface,
        "energy_eV": float(energy_eV),
        "idx": int(index),
        "seed": int(seed),
        "campaign_seed": int(campaign_seed),
        "x_A": sp.x_A,
        "y_A": sp.y_A,
        "polar_deg": sp.polar_deg,
        "azimuth_deg": sp.azimuth_deg,
        "n_sputtered": r.n_sputtered,
        "reflected": int(r.reflected),
        "undecided": int(r.undecided),
        "unphysical": int(r.unphysical),
        "sputtered_json": json.dumps(r.sputtered),
        "stop_reason": r.stop_reason,
        "detail": r.detail,
        "steps": r.steps,
        "simulated_fs": r.simulated_fs,
        "n_extensions": r.n_extensions,
        "wall_s": r.wall_s,
        "core_s": r.core_s,
        "force_s": r.force_s,
        "energy_drift_eV": r.energy_drift_eV,
        "max_disagreement": r.max_disagreement,
        "driver": driver,
        "driver_fingerprint": driver_fingerprint(calc),
        "code_version": __version__,
        "settings_json": json.dumps(asdict(settings), sort_keys=True, default=str),
        "created_unix": time.time(),
    }
    if observer is not None:
        row |= observer.record() | {"flagged_frames": observer.frames}
    return row


class _Progress:
    """A rich progress bar, or nothing when quiet or not on a terminal."""

    def __init__(self, total: int, quiet: bool) -> None:
        self._bar: Any = None
        if quiet or not sys.stdout.isatty():
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

        self._bar = Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
        )
        self._bar.start()
        self._task = self._bar.add_task("impacts", total=total)

    def advance(self, text: str, total: int | None = None) -> None:
        if self._bar is not None:
            self._bar.update(self._task, advance=1, description=text, total=total)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()


def _missing(done: set[int], count: int) -> list[int]:
    """The first ``count`` non-negative indices not in ``done``."""
    out, i = [], 0
    while len(out) < count:
        if i not in done:
            out.append(i)
        i += 1
    return out


def run_campaign(
    db_path: str | Path,
    slab: Atoms,
    calc: Any,
    *,
    surface: str,
    energies_eV: Sequence[float],
    n_trajectories: int,
    campaign_seed: int,
    settings: ImpactSettings | None = None,
    executor: Executor | None = None,
    target_error: float | None = None,
    n_max: int | None = None,
    batch_size: int = 20,
    driver: str | None = None,
    seed_label: str | None = None,
    watch: tuple[Any, Any] | None = None,
    indices: Mapping[float, Sequence[int]] | None = None,
    model_name: str | None = None,
    quiet: bool = False,
) -> list[YieldEstimate]:
    """Run (or resume) a campaign of impacts; return the yield per energy.

    ``slab``: relaxed, equilibrated atoms with velocities; ``calc``: any ASE calculator
    (shipped once to the executor's workers). Without ``target_error`` every energy gets
    trajectories 0 … ``n_trajectories``−1. With it (sequential stopping) each energy runs
    in batches of ``batch_size`` until its yield error bar (the larger of D = 2σ/√N and
    the 95 % Wilson half-width, which stays non-zero when nothing was sputtered) is at
    most ``target_error`` with at least ``n_trajectories`` done, or ``n_max`` is reached.
    Stopping on the data biases the yield slightly low (a run that happens to sit low
    reaches its error bar sooner); keep ``n_trajectories`` large enough to limit that.
    ``driver`` names the potential that drives the MD (default: the calculator's class).
    ``seed_label`` (default ``surface``) is the label the trajectory seeds are derived
    from: two campaigns with the same ``campaign_seed`` and ``seed_label`` start
    trajectory i at energy E from the same impact point and direction, which pairs a
    model-driven campaign with its reference-driven check seed by seed.
    ``watch``: (committee, :class:`~nnprefine.watch.WatchSettings`) puts a committee
    watch on every trajectory (``calc`` an NNPCalculator of the committee's member 0);
    rows get its columns (``flagged``, …) and ``flagged_frames`` the frames it kept. The
    watch only reads the dynamics, so it is not part of the campaign's recorded settings.
    ``indices``: {energy: trajectory indices} to run exactly those (a re-run of chosen
    seeds, e.g. the flagged ones with a repaired model) instead of 0 … n−1; the energies
    are its keys and ``n_trajectories`` is not used. ``model_name`` goes into every row's
    ``model`` column (which model of the project drove it).
    """
    settings = settings or ImpactSettings()
    settings.resolve_r_cut(calc)  # fail now, not in every task
    if n_trajectories < 0 or batch_size < 1:
        raise ConfigError(
            f"need n_trajectories >= 0 and batch_size >= 1, got {n_trajectories}, {batch_size}"
        )
    if target_error is not None and (target_error <= 0 or n_max is None or n_max < n_trajectories):
        raise ConfigError(
            "sequential stopping needs target_error > 0 and n_max >= n_trajectories (the cap "
            f"on trajectories per energy); got target_error={target_error}, n_max={n_max}"
        )
    if indices is not None:
        if target_error is not None:
            raise ConfigError("run_campaign: give indices or target_error, not both")
        if any(int(i) < 0 for idx in indices.values() for i in idx):
            raise ConfigError("run_campaign: trajectory indices must be ≥ 0")
        energies_eV = list(indices)
    energies = [float(e) for e in energies_eV]
    executor = executor or InProcessExecutor()
    driver = driver or type(calc).__name__
    meta = {
        "campaign_seed": int(campaign_seed),
        "settings": settings_record(settings, target=slab.get_chemical_symbols()[0]),
        "slab": slab_fingerprint(slab),
        "driver": driver,
        "driver_fingerprint": driver_fingerprint(calc),
    }
    seed_label = surface if seed_label is None else seed_label
    if seed_label != surface:  # recorded only then: older records stay valid
        meta["seed_label"] = seed_label
    with ResultsDB(db_path) as db:
        db.check_campaign(surface, meta)
        shared = {
            "slab": slab,
            "calc": calc,
            "settings": settings,
            "surface": surface,
            "campaign_seed": int(campaign_seed),
            "driver": driver,
        }
        if watch is not None:
            shared["watch"] = watch

        def tasks_for(
            energy: float, indices: Iterable[int]
        ) -> Iterator[tuple[str, dict[str, Any]]]:
            for i in indices:
                seed = trajectory_seed(campaign_seed, seed_label, energy, i)
                yield f"{surface}|{energy!r}|{i}", {"energy_eV": energy, "index": i, "seed": seed}

        def run_batch(plan: dict[float, list[int]], bar: _Progress) -> int:
            tasks = [t for e, idx in plan.items() for t in tasks_for(e, idx)]
            by_key = dict(tasks)
            stored = 0
            for out in executor.run(impact_task, tasks, shared):
                kw = by_key[out.key]
                if out.ok:
                    frames = out.value.pop("flagged_frames", [])
                    out.value["model"] = model_name
                    stored += db.insert(out.value, frames)
                else:
                    db.insert_failure(
                        surface, kw["energy_eV"], kw["index"], kw["seed"], out.error or ""
                    )
                bar.advance(f"{kw['energy_eV']:g} eV")
            return stored

        if target_error is None:
            if indices is not None:
                plan = {
                    float(e): sorted({int(i) for i in idx} - db.done(surface, float(e)))
                    for e, idx in indices.items()
                }
            else:
                plan = {e: _missing(db.done(surface, e), n_trajectories) for e in energies}
                plan = {e: [i for i in idx if i < n_trajectories] for e, idx in plan.items()}
            bar = _Progress(sum(map(len, plan.values())), quiet)
            try:
                run_batch(plan, bar)
            finally:
                bar.close()
        else:
            assert n_max is not None
            bar = _Progress(n_max * len(energies), quiet)
            try:
                while True:
                    plan = {}
                    for e in energies:
                        done = db.done(surface, e)
                        n = len(done)
                        if n >= n_max:
                            continue
                        if n >= n_trajectories and n > 0:
                            est = estimate_yield(e, db.rows(surface, e))
                            if max(est.error, est.wilson_half_width) <= target_error:
                                continue
                        want = max(min(batch_size, n_max - n), n_trajectories - n)
                        plan[e] = _missing(done, min(want, n_max - n))
                    if not plan or run_batch(plan, bar) == 0:
                        break  # done, or every task of a batch failed (see the failures table)
            finally:
                bar.close()
        return [estimate_yield(e, db.rows(surface, e)) for e in energies]
