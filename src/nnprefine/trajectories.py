"""Worker functions that run one MD trajectory and return what a stage stores.

- :func:`reference_trajectory_frames`: a reference-driven impact (or thermal MD) whose
  random snapshots carry the reference's own energies and forces — the initial data.
- :func:`explore_trajectory`: an impact driven by committee member 1 with every member
  evaluated on each recorded frame — refinement's exploration.

Impacts run through :func:`nnprefine.impact.run_impact`, the runner production uses,
with the :class:`~nnprefine.impact.ImpactSettings` their config section holds. The
arrays one exploration returns are written to one ``.npz`` each;
:func:`gather_explorations` reads them back and :func:`frame_atoms` rebuilds a chosen
frame as :class:`ase.Atoms`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator

from nnprefine.errors import NonFiniteResultError, ReferenceCalculationError, SimulationError
from nnprefine.impact import ImpactSettings, run_impact
from nnprefine.reference import cached_reference

__all__ = [
    "explore_trajectory",
    "frame_atoms",
    "gather_explorations",
    "reference_trajectory_frames",
]


def _thermal_run(
    slab: Atoms,
    calc: Any,
    duration_fs: float,
    settings: ImpactSettings,
    record: Callable[[Any], None],
    temperature_K: float | None = None,
    seed: int = 0,
) -> str:
    """NVE MD of the slab itself, recording every step; why it ended.

    The slab keeps its own velocities, or, with ``temperature_K``, starts from
    Maxwell–Boltzmann velocities at 2·T (half flows into the potential energy).
    """
    from nnprefine.md import SanityObserver, VelocityVerlet
    from nnprefine.structures import maxwell_boltzmann_velocities

    atoms = slab.copy()
    if temperature_K is not None:
        rng = np.random.default_rng(seed)
        atoms.set_velocities(maxwell_boltzmann_velocities(atoms, 2 * temperature_K, rng))
    atoms.calc = calc
    try:
        dyn = VelocityVerlet(atoms, settings.timestep_fs)
    except SimulationError as exc:  # the first force call failed
        raise ReferenceCalculationError(f"thermal run: {exc}") from exc
    sanity = SanityObserver(atoms, settings.min_distance_A, settings.max_energy_drift_eV)
    dyn.attach(sanity, 1)
    dyn.attach(lambda state: record(state) and None, 1)
    try:
        return dyn.run(duration_fs)
    except NonFiniteResultError as exc:
        raise ReferenceCalculationError(f"thermal run: {exc}") from exc
    except SimulationError:
        return "unphysical"


def reference_trajectory_frames(
    slab: Atoms,
    reference: dict[str, Any],
    energy_eV: float,
    duration_fs: float,
    settings: ImpactSettings,
    snapshots: int,
    seed: int,
    temperature_K: float | None = None,
) -> list[Atoms]:
    """Run one reference-driven MD run; return ``snapshots`` random frames with their labels.

    ``energy_eV`` > 0: an impact of ``duration_fs`` (``settings`` give the step and the
    sanity bounds); ≤ 0: NVE MD of the slab as it is, or heated to ``temperature_K``
    (a hot slab: velocities drawn at 2·T from ``seed``). The labels are the reference's own
    energies (eV) and forces (eV/Å) along the run, and its stress (eV/Å³) in a cell
    periodic in 3D when it computed one: no extra reference calls. A run whose
    dynamics turn unphysical keeps the frames before it; one where the reference returns
    NaN or inf (or raises) is a :class:`ReferenceCalculationError`, none of its frames kept.
    """
    calc = cached_reference(reference)
    frames: list[Atoms] = []

    def record(state: Any) -> None:
        frame = frame_atoms(slab, state.positions.copy(), settings.projectile)
        # The integrator zeroes forces on fixed atoms; labels need the reference's own.
        forces = np.array(state.results["forces"], dtype=float)
        extra = {}
        stress = state.results.get("stress")
        if frame.pbc.all() and stress is not None:  # bulk: the reference's stress, if it gave one
            extra["stress"] = np.array(stress, dtype=float)
        frame.calc = SinglePointCalculator(
            frame, energy=float(state.energy_eV), forces=forces, **extra
        )
        frame.info["time_fs"] = float(state.time_fs)
        frames.append(frame)

    if energy_eV > 0:
        run = dataclasses.replace(settings, duration_fs=duration_fs, max_extensions=0)
        try:
            result = run_impact(slab, calc, energy_eV, seed, run, observers=((record, 1),))
        except SimulationError as exc:  # the first force call failed
            raise ReferenceCalculationError(str(exc)) from exc
        if result.stop_reason == "non-finite":
            # the reference failed, not the physics: the whole run is a recorded failure
            raise ReferenceCalculationError(
                f"{energy_eV:g} eV impact, seed {seed}: {result.detail}"
            )
        unphysical = result.unphysical
    else:
        reason = _thermal_run(slab, calc, duration_fs, settings, record, temperature_K, seed)
        unphysical = reason == "unphysical"
        frames = frames[1:]  # step 0 is the structure as given, which other sets may hold
    if unphysical:
        frames = frames[:-1]  # the last recorded frame may already be broken
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(len(frames), size=min(snapshots, len(frames)), replace=False))
    return [frames[i] for i in pick]


def explore_trajectory(
    slab: Atoms,
    committee: Any,
    energy_eV: float,
    settings: ImpactSettings,
    frame_interval_fs: float,
    upper_trust_force_eV_per_A: float,
    seed: int,
    frames_before_halt: int = 3,
) -> dict[str, Any]:
    """One exploration impact driven by member 1, every member evaluated on each frame.

    Returns arrays per recorded frame: ``time_fs`` (fs), ``energy_disagreement_eV_per_atom``,
    ``force_disagreement_eV_per_A``, ``positions`` (n_frames, n_atoms, 3) Å,
    ``before_halt`` (bool), and ``halted``: why the run stopped early ("trust", "unphysical")
    or "". A run is halted when the force disagreement passes the upper trust level or the
    dynamics turn unphysical; its last ``frames_before_halt`` recorded frames are flagged.
    """
    from nnprefine.calculators import CommitteeCalculator

    calc = CommitteeCalculator(committee)
    times, e_dis, f_dis, positions = [], [], [], []

    def record(state: Any) -> None:
        times.append(state.time_fs)
        e_dis.append(float(state.results.get("energy_disagreement_eV_per_atom", np.nan)))
        f_dis.append(float(state.results.get("force_disagreement_eV_per_A", np.nan)))
        positions.append(state.positions.copy())

    def halt(state: Any) -> str | None:
        f = state.results.get("force_disagreement_eV_per_A", np.nan)
        return "trust" if not f <= upper_trust_force_eV_per_A else None

    interval = max(1, int(round(frame_interval_fs / settings.timestep_fs)))
    run = dataclasses.replace(settings, max_extensions=0, r_cut_A=committee.members[0].r_cut_A)
    try:
        result = run_impact(
            slab, calc, energy_eV, seed, run, observers=((halt, 1), (record, interval))
        )
        halted = (
            "unphysical"
            if result.unphysical
            else ("trust" if result.stop_reason == "trust" else "")
        )
    except SimulationError:
        halted = "unphysical"
    before = np.zeros(len(times), dtype=bool)
    if halted:
        # The frames just before the halt; the very last one may be the untrusted one itself.
        before[max(0, len(times) - frames_before_halt - 1) :] = True
    n_atoms = len(slab) + 1
    return {
        "time_fs": np.array(times, dtype=float),
        "energy_disagreement_eV_per_atom": np.array(e_dis, dtype=float),
        "force_disagreement_eV_per_A": np.array(f_dis, dtype=float),
        "positions": np.array(positions, dtype=float).reshape(-1, n_atoms, 3),
        "before_halt": before,
        "halted": np.array(halted),
    }


def gather_explorations(paths: Sequence[Path]) -> dict[str, Any]:
    """Every recorded frame of the exploration files ``paths`` (written from
    :func:`explore_trajectory`'s arrays; a failed run's file holds only ``failed``).

    Returns ``trajectory`` (n,) names (the files' stems), ``time_fs``, ``energy``
    (eV/atom), ``force`` (eV/Å) disagreements (n,), ``before_halt`` (n,) bool,
    ``positions``: a list of n (n_atoms, 3) arrays, and ``halted``: how many runs stopped early.
    """
    traj: list[str] = []
    times, e, f, halt, pos = [], [], [], [], []
    halted = 0
    for path in sorted(paths):
        data = np.load(path)
        if "failed" in data or len(data["time_fs"]) == 0:
            continue
        n = len(data["time_fs"])
        traj += [Path(path).stem] * n
        times.append(data["time_fs"])
        e.append(data["energy_disagreement_eV_per_atom"])
        f.append(data["force_disagreement_eV_per_A"])
        halt.append(data["before_halt"])
        pos += list(data["positions"])
        halted += bool(str(data["halted"]))

    def cat(xs: list[np.ndarray]) -> np.ndarray:
        return np.concatenate(xs) if xs else np.zeros(0)

    return {
        "trajectory": np.array(traj),
        "time_fs": cat(times),
        "energy": cat(e),
        "force": cat(f),
        "before_halt": cat(halt).astype(bool),
        "positions": pos,
        "halted": halted,
    }


def frame_atoms(slab: Atoms, positions: np.ndarray, projectile: str | None = None) -> Atoms:
    """An exploration frame as :class:`ase.Atoms`: the slab's atoms, then projectiles of
    element ``projectile`` (default: the slab's first atom's); ``positions`` (n_atoms, 3)
    Å; the slab's cell and periodicity."""
    symbols = slab.get_chemical_symbols()
    symbols += [projectile or symbols[0]] * (len(positions) - len(symbols))
    return Atoms(symbols, positions=positions, cell=slab.cell, pbc=slab.pbc)
