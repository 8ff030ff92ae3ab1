"""The query-by-committee loop: explore with member 1, select where members disagree, label.

Stages, each resumable (see :mod:`nnprefine.project`):

- :func:`initial_data` — reference-driven impact MD and thermal MD on the small slab;
  random snapshots carry the reference's own energies and forces (no extra calls) and are
  stored as iteration 0.
- :func:`refine` — iterations k = 1, 2, …: train the committee on all frames so far,
  run exploration impacts driven by member 1 while every member is evaluated on each
  frame, select frames (:func:`nnprefine.selection.select_frames`), label them with the
  reference (failures are quarantined), store them as iteration k. Stops when the
  fraction of exploration frames over threshold falls below ``stop_fraction`` or after
  ``max_iterations``; then optional iterations on a second surface.
- :func:`train_committee` — train (or load, when already trained) a committee on the
  store's frames.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator

from nnprefine.config import Config, SlabConfig
from nnprefine.errors import NnprefineError, ReferenceCalculationError, SimulationError
from nnprefine.project import Project, atomic_path
from nnprefine.selection import select_frames

__all__ = [
    "explore_trajectory",
    "initial_data",
    "label_task",
    "refine",
    "reference_trajectory_frames",
    "train_committee",
]

_REFERENCES: dict[str, Any] = {}


def _reference(spec: dict[str, Any]) -> Any:
    """One reference calculator per spec and process (LAMMPS start-up is not free)."""
    from nnprefine.reference import make_reference

    key = json.dumps(spec, sort_keys=True)
    if key not in _REFERENCES:
        _REFERENCES[key] = make_reference(spec)
    return _REFERENCES[key]


def label_task(atoms: Atoms, reference: dict[str, Any]) -> Atoms:
    """Label one frame with the reference: energy (eV), forces (eV/Å). Runs on a worker.

    Raises :class:`ReferenceCalculationError` for a failure, NaN or non-convergence.
    """
    frame = atoms.copy()
    frame.constraints = []
    calc = _reference(reference)
    frame.calc = calc
    t0 = time.perf_counter()
    try:
        energy = frame.get_potential_energy()
        forces = frame.get_forces()
    except NnprefineError:
        raise
    except Exception as exc:  # DFT codes raise their own types (SCF not converged, ...)
        raise ReferenceCalculationError(f"{type(exc).__name__}: {exc}") from exc
    converged = getattr(calc, "converged", True)
    if converged is False:
        raise ReferenceCalculationError("the reference calculation did not converge")
    if not (math.isfinite(energy) and np.isfinite(forces).all()):
        raise ReferenceCalculationError("the reference returned NaN or inf")
    frame.calc = SinglePointCalculator(frame, energy=float(energy), forces=np.array(forces))
    frame.info["label_wall_s"] = time.perf_counter() - t0
    return frame


# -- slabs -------------------------------------------------------------------------------


def prepared_slab(project: Project, slab: SlabConfig, calc: Any = None, tag: str = "") -> Atoms:
    """The relaxed, equilibrated slab of ``slab`` (built once, then read from its file).

    ``calc``: what relaxes and equilibrates it (default: the reference); ``tag`` names the
    file apart from the reference-prepared one (``slabs/<label><tag>.traj``).
    """
    from ase.io import read, write

    from nnprefine.structures import equilibrate_nvt, make_slab, relax_slab

    path = project.slab_path(slab.label + tag)
    if path.exists():
        return read(path)
    cfg = project.config
    lattice = project.stage_record("lattice")
    a, c = (lattice["a_A"], lattice["c_A"]) if lattice else (cfg.structures.a_A, cfg.structures.c_A)
    atoms = make_slab(
        slab.surface,
        slab.size,
        a_A=a,
        c_A=c,
        vacuum_A=slab.vacuum_A,
        fixed_layers=cfg.structures.fixed_layers,
        element=cfg.project.element,
    )
    ref = calc if calc is not None else _reference(cfg.reference.spec())
    t0 = time.perf_counter()
    relax_slab(atoms, ref, fmax_eV_per_A=cfg.structures.relax_fmax_eV_per_A)
    if cfg.structures.equilibration_fs > 0:
        equilibrate_nvt(
            atoms,
            ref,
            temperature_K=cfg.structures.temperature_K,
            duration_fs=cfg.structures.equilibration_fs,
            timestep_fs=cfg.structures.equilibration_timestep_fs,
            seed=project.seed("equilibrate", slab.label),
            thermostat=cfg.structures.thermostat,
        )
    project.say(
        f"slab {slab.label}: {len(atoms)} atoms relaxed and equilibrated at "
        f"{cfg.structures.temperature_K:.0f} K ({time.perf_counter() - t0:.0f} s)"
    )
    atoms.calc = None
    with atomic_path(path) as tmp:
        write(tmp, atoms)
    return read(path)


def lattice(project: Project) -> dict[str, Any]:
    """Relax hcp bulk with the reference (recorded once as the stage ``lattice``)."""
    from nnprefine.structures import relax_hcp

    rec = project.stage_record("lattice")
    if rec is None:
        cfg = project.config
        rec = relax_hcp(
            _reference(cfg.reference.spec()),
            element=cfg.project.element,
            a_A=cfg.structures.a_A,
            c_A=cfg.structures.c_A,
        )
        project.record_stage("lattice", rec)
        project.say(
            f"reference hcp {cfg.project.element}: a = {rec['a_A']:.4f} Å, c = {rec['c_A']:.4f} Å, "
            f"E = {rec['energy_eV_per_atom']:.4f} eV/atom"
        )
    return rec


# -- initial data ------------------------------------------------------------------------


def _md_run(
    slab: Atoms,
    calc: Any,
    energy_eV: float,
    duration_fs: float,
    timestep_fs: float,
    frame_interval_fs: float,
    seed: int,
    record: Any,
    halt: Any = None,
) -> str:
    """Impact (``energy_eV`` > 0) or thermal MD (``energy_eV`` ≤ 0) on ``slab``, recording frames.

    ``record(state)`` is called every ``frame_interval_fs``; ``halt(state)`` may return a
    reason to stop. Returns why the run ended: "duration", "unphysical" or halt's reason.
    """
    from nnprefine.impact import setup_impact
    from nnprefine.md import SanityObserver, VelocityVerlet

    if energy_eV > 0:
        atoms, _ = setup_impact(slab, energy_eV, seed)
    else:
        atoms = slab.copy()
    atoms.calc = calc
    interval = max(1, int(round(frame_interval_fs / timestep_fs)))
    try:
        dyn = VelocityVerlet(atoms, timestep_fs)
    except SimulationError:
        return "unphysical"
    sanity = SanityObserver(atoms, min_distance_A=0.3, max_energy_drift_eV=20.0)
    dyn.attach(sanity, interval)
    if halt is not None:
        dyn.attach(halt, 1)
    dyn.attach(lambda state: record(state, atoms) and None, interval)
    try:
        return dyn.run(duration_fs)
    except SimulationError:
        return "unphysical"


def reference_trajectory_frames(
    slab: Atoms,
    reference: dict[str, Any],
    energy_eV: float,
    duration_fs: float,
    timestep_fs: float,
    snapshots: int,
    seed: int,
    r_cut_A: float,
) -> list[Atoms]:
    """Run one reference-driven MD run; return ``snapshots`` random frames with their labels.

    ``energy_eV`` > 0: an impact; ≤ 0: thermal MD of the slab. The labels are the
    reference's own energies and forces along the run: no extra reference calls.
    """
    calc = _reference(reference)
    frames: list[Atoms] = []

    def record(state: Any, atoms: Atoms) -> None:
        frame = Atoms(
            atoms.get_chemical_symbols(),
            positions=state.positions.copy(),
            cell=slab.cell,
            pbc=slab.pbc,
        )
        # The integrator zeroes forces on fixed atoms; labels need the reference's own.
        forces = np.array(state.results["forces"], dtype=float)
        frame.calc = SinglePointCalculator(frame, energy=float(state.energy_eV), forces=forces)
        frame.info["time_fs"] = float(state.time_fs)
        frames.append(frame)

    reason = _md_run(slab, calc, energy_eV, duration_fs, timestep_fs, timestep_fs, seed, record)
    if reason == "unphysical":
        frames = frames[:-1]  # the last recorded frame may already be broken
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(len(frames), size=min(snapshots, len(frames)), replace=False))
    return [frames[i] for i in pick]


def initial_data(project: Project) -> dict[str, Any]:
    """Label the initial data set (iteration 0); returns counts. Resumable per trajectory."""
    cfg = project.config
    rec = project.stage_record("initial_data")
    if rec is not None:
        return rec
    lattice(project)
    init = cfg.initial_data
    slab = prepared_slab(project, init.slab)
    ref = cfg.reference.spec()
    tasks: list[tuple[str, dict[str, Any]]] = []
    for energy in init.energies_eV:
        duration = (
            init.high_energy_duration_fs if energy >= init.high_energy_eV else init.duration_fs
        )
        for run in range(init.runs_per_energy):
            key = f"impact-{energy:g}eV-{run:04d}"
            tasks.append(
                (
                    key,
                    dict(
                        energy_eV=energy,
                        duration_fs=duration,
                        seed=project.seed("init", key),
                        snapshots=init.snapshots_per_run,
                    ),
                )
            )
    if init.thermal_frames:
        duration = init.thermal_frames * init.thermal_interval_fs
        tasks.append(
            (
                "thermal",
                dict(
                    energy_eV=0.0,
                    duration_fs=duration,
                    seed=project.seed("init", "thermal"),
                    snapshots=init.thermal_frames,
                ),
            )
        )
    done = project.finished_tasks("initial_data")
    todo = [(k, kw) for k, kw in tasks if k not in done]
    project.say(f"initial data: {len(tasks)} reference trajectories ({len(todo)} to run)")
    shared = dict(
        slab=slab, reference=ref, timestep_fs=init.timestep_fs, r_cut_A=cfg.descriptor.r_cut_A
    )
    with project.store() as store, project.executor() as ex:
        for i, out in enumerate(ex.run(reference_trajectory_frames, todo, shared), 1):
            if not out.ok:
                project.say(f"  {out.key}: failed ({out.error}); recorded, not retried")
                project.finish_task("initial_data", out.key, failed=out.error)
                continue
            kw = dict(todo)[out.key]
            ids = store.add_many(
                out.value,
                origin="initial",
                iteration=0,
                reference=ref,
                seed=kw["seed"],
                trajectory=out.key,
            )
            project.finish_task("initial_data", out.key, frames=sum(i is not None for i in ids))
            if i % max(1, len(todo) // 10) == 0 or i == len(todo):
                project.say(f"  {i}/{len(todo)} trajectories done, {len(store)} frames stored")
        rec = {"frames": store.count(iteration=0), "trajectories": len(tasks)}
    project.record_stage("initial_data", rec)
    return rec


# -- training ----------------------------------------------------------------------------


def make_sfset(config: Config):
    from nnprefine.descriptors import make_set, paper_set

    d = config.descriptor
    if d.preset == "paper":
        return paper_set(config.project.element, r_cut_A=d.r_cut_A)
    return make_set(
        (config.project.element,),
        n_radial=d.n_radial,
        n_narrow=d.n_narrow,
        n_wide=d.n_wide,
        r_cut_A=d.r_cut_A,
    )


def train_committee(
    project: Project,
    name: str,
    max_iteration: int | None = None,
    warm_start_from: str | None = None,
) -> tuple[Any, dict[str, Any]]:
    """Train the committee ``models/<name>`` on the store's frames (of iterations ≤ max_iteration).

    Returns the committee and its record (RMSE per member, frames, seconds). When the
    model directory and its record exist, they are loaded instead (resume).
    """
    from nnprefine.model import Committee, ZBLBaseline
    from nnprefine.training import TrainingSettings, rmse, train

    cfg = project.config
    directory = project.model_dir(name)
    rec = project.stage_record(f"train-{name}")
    if rec is not None and directory.exists():
        return Committee.load(directory), rec
    with project.store() as store:
        train_frames = store.frames(split="train", max_iteration=max_iteration)
        test_frames = store.frames(split="test", max_iteration=max_iteration)
    warm = (
        warm_start_from is not None
        and project.model_dir(warm_start_from).exists()
        and cfg.training.warm_start
    )
    if warm:
        committee = Committee.load(project.model_dir(warm_start_from))
    else:
        net = cfg.network
        committee = Committee.create(
            make_sfset(cfg),
            n_members=net.committee_size,
            hidden=net.hidden,
            activation=net.activation,
            seed=project.seed("committee"),
            baseline=ZBLBaseline(net.zbl_inner_A, net.zbl_outer_A) if net.zbl_baseline else None,
        )
    t = cfg.training
    settings = TrainingSettings(
        optimizer=t.optimizer,
        epochs=t.epochs,
        energy_weight=t.energy_weight,
        force_weight=t.force_weight,
        seed=project.seed("train", name),
        patience_epochs=t.early_stopping_patience,
        batch_size_frames=t.batch_size,
        learning_rate=t.learning_rate,
        kalman_force_fraction=t.force_fraction,
        kalman_type=t.kalman_type,
        scaling_mode=t.scaling_mode,
        warm_start=warm,
        jacobian_cache_GiB=t.jacobian_cache_GiB,
    )
    project.say(
        f"training committee '{name}': {len(train_frames)} train / {len(test_frames)} test frames"
    )
    t0 = time.perf_counter()
    train(committee, train_frames, test_frames, settings, log_dir=project.dir / "training" / name)
    seconds = time.perf_counter() - t0
    train_err = rmse(committee, train_frames)
    test_err = (
        rmse(committee, test_frames)
        if test_frames
        else {"energy_meV_per_atom": [math.nan], "force_meV_per_A": [math.nan]}
    )
    committee.save(directory)
    rec = {
        "name": name,
        "train_frames": len(train_frames),
        "test_frames": len(test_frames),
        "seconds": seconds,
        "train_rmse_energy_mev_per_atom": train_err["energy_meV_per_atom"],
        "train_rmse_force_mev_per_A": train_err["force_meV_per_A"],
        "test_rmse_energy_mev_per_atom": test_err["energy_meV_per_atom"],
        "test_rmse_force_mev_per_A": test_err["force_meV_per_A"],
    }
    project.record_stage(f"train-{name}", rec)
    project.say(
        f"  trained in {seconds:.0f} s; member 1 test RMSE {rec['test_rmse_energy_mev_per_atom'][0]:.2f} meV/atom, "
        f"{rec['test_rmse_force_mev_per_A'][0]:.0f} meV/Å"
    )
    return committee, rec


# -- exploration -------------------------------------------------------------------------


def explore_trajectory(
    slab: Atoms,
    committee: Any,
    energy_eV: float,
    duration_fs: float,
    timestep_fs: float,
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

    def record(state: Any, atoms: Atoms) -> None:
        times.append(state.time_fs)
        e_dis.append(float(state.results.get("energy_disagreement_eV_per_atom", np.nan)))
        f_dis.append(float(state.results.get("force_disagreement_eV_per_A", np.nan)))
        positions.append(state.positions.copy())

    def halt(state: Any) -> str | None:
        f = state.results.get("force_disagreement_eV_per_A", np.nan)
        return "trust" if not f <= upper_trust_force_eV_per_A else None

    reason = _md_run(
        slab, calc, energy_eV, duration_fs, timestep_fs, frame_interval_fs, seed, record, halt
    )
    halted = "" if reason == "duration" else reason
    before = np.zeros(len(times), dtype=bool)
    if halted:
        # The frames just before the halt; the very last one may be the untrusted one itself.
        before[max(0, len(times) - frames_before_halt - 1) :] = True
    n_atoms = len(slab) + (1 if energy_eV > 0 else 0)
    return {
        "time_fs": np.array(times, dtype=float),
        "energy_disagreement_eV_per_atom": np.array(e_dis, dtype=float),
        "force_disagreement_eV_per_A": np.array(f_dis, dtype=float),
        "positions": np.array(positions, dtype=float).reshape(-1, n_atoms, 3),
        "before_halt": before,
        "halted": np.array(halted),
    }


def _save_npz(path: Path, **arrays: Any) -> None:
    with atomic_path(path) as tmp:
        np.savez_compressed(tmp, **arrays)


def _explore(project: Project, k: int, committee: Any, slab: Atoms) -> dict[str, Any]:
    cfg = project.config.refine
    out_dir = project.iteration_dir(k) / "explore"
    tasks = []
    for energy in cfg.exploration_energies_eV:
        for run in range(cfg.exploration_runs_per_energy):
            key = f"explore-{energy:g}eV-{run:04d}"
            path = out_dir / f"{key}.npz"
            if not path.exists():
                tasks.append((key, dict(energy_eV=energy, seed=project.seed("explore", k, key))))
    shared = dict(
        slab=slab,
        committee=committee,
        duration_fs=cfg.exploration_duration_fs,
        timestep_fs=cfg.exploration_timestep_fs,
        frame_interval_fs=cfg.frame_interval_fs,
        upper_trust_force_eV_per_A=cfg.upper_trust_force_eV_per_A,
    )
    project.say(f"iteration {k}: {len(tasks)} exploration trajectories to run")
    with project.executor() as ex:
        for out in ex.run(explore_trajectory, tasks, shared):
            if not out.ok:
                project.say(f"  {out.key} failed: {out.error}")
                _save_npz(out_dir / f"{out.key}.npz", failed=np.array(out.error))
                continue
            _save_npz(out_dir / f"{out.key}.npz", **out.value)
    # Gather every trajectory's frames.
    rows: dict[str, list[Any]] = {k_: [] for k_ in ("traj", "time", "e", "f", "halt", "pos")}
    halted = 0
    for path in sorted(out_dir.glob("explore-*.npz")):
        data = np.load(path)
        if "failed" in data:
            continue
        n = len(data["time_fs"])
        if n == 0:
            continue
        rows["traj"] += [path.stem] * n
        rows["time"].append(data["time_fs"])
        rows["e"].append(data["energy_disagreement_eV_per_atom"])
        rows["f"].append(data["force_disagreement_eV_per_A"])
        rows["halt"].append(data["before_halt"])
        rows["pos"] += list(data["positions"])
        halted += bool(str(data["halted"]))

    def cat(xs: list[np.ndarray]) -> np.ndarray:
        return np.concatenate(xs) if xs else np.zeros(0)

    return {
        "trajectory": np.array(rows["traj"]),
        "time_fs": cat(rows["time"]),
        "energy": cat(rows["e"]),
        "force": cat(rows["f"]),
        "before_halt": cat(rows["halt"]).astype(bool),
        "positions": rows["pos"],
        "halted": halted,
    }


def _label_selected(
    project: Project, k: int, frames: list[Atoms], provenance: list[dict]
) -> tuple[int, int]:
    """Label ``frames`` with the reference, store them as iteration k; returns (labelled, failed)."""
    ref = project.config.reference.spec()
    labelled = failed = 0
    with project.store() as store:
        tasks = []
        for i, atoms in enumerate(frames):
            status = store.status(atoms, ref)
            if status == "labelled":
                labelled += 1
            elif status == "quarantined":
                failed += 1
            else:
                tasks.append((f"label-{i:05d}", dict(atoms=atoms)))
        project.say(f"iteration {k}: labelling {len(tasks)} frames with the reference")
        by_key = dict(tasks)
        with project.executor() as ex:
            for n_done, out in enumerate(ex.run(label_task, tasks, dict(reference=ref)), 1):
                i = int(out.key.split("-")[1])
                prov = provenance[i]
                if out.ok:
                    project.log.info(
                        f"  label {n_done}/{len(tasks)} ({prov['trajectory']}, "
                        f"{prov['time_fs']:.1f} fs): {out.value.info['label_wall_s']:.2f} s"
                    )
                    store.add(
                        out.value,
                        origin="refine",
                        iteration=k,
                        reference=ref,
                        selection=prov["selection"],
                        trajectory=prov["trajectory"],
                        time_fs=prov["time_fs"],
                    )
                    labelled += 1
                else:
                    store.quarantine(
                        by_key[out.key]["atoms"],
                        out.error,
                        origin="refine",
                        iteration=k,
                        reference=ref,
                        trajectory=prov["trajectory"],
                        time_fs=prov["time_fs"],
                    )
                    failed += 1
                    project.say(f"  label failed and quarantined: {out.error}")
    return labelled, failed


def refine_iteration(project: Project, k: int, slab: Atoms, surface: str) -> dict[str, Any]:
    """One iteration k ≥ 1: train, explore, select, label. Returns its summary."""
    summary_path = project.iteration_dir(k) / "summary.json"
    if summary_path.exists():
        return json.loads(summary_path.read_text())
    cfg = project.config
    t_start = time.perf_counter()
    committee, train_rec = train_committee(
        project,
        f"iter-{k:03d}",
        max_iteration=k - 1,
        warm_start_from=f"iter-{k - 1:03d}" if k > 1 else None,
    )
    t_train = time.perf_counter() - t_start
    t0 = time.perf_counter()
    ex = _explore(project, k, committee, slab)
    t_explore = time.perf_counter() - t0
    th = cfg.refine.thresholds_for(k - 1)
    sel = select_frames(
        ex["trajectory"],
        ex["time_fs"],
        ex["energy"],
        ex["force"],
        energy_threshold_eV_per_atom=th.energy_meV_per_atom / 1000.0,
        force_threshold_eV_per_A=th.force_eV_per_A,
        upper_trust_force_eV_per_A=cfg.refine.upper_trust_force_eV_per_A,
        max_selected=cfg.refine.max_selected_per_iteration,
        min_separation_fs=cfg.refine.min_frame_separation_fs,
        adaptive_count=cfg.refine.adaptive_count,
        before_halt=ex["before_halt"],
    )
    mask = np.zeros(len(ex["time_fs"]), dtype=bool)
    mask[sel.selected] = True
    _save_npz(
        project.iteration_dir(k) / "disagreement.npz",
        energy_eV_per_atom=ex["energy"],
        force_eV_per_A=ex["force"],
        selected=mask,
        over_threshold=sel.over_threshold,
        energy_threshold_eV_per_atom=th.energy_meV_per_atom / 1000.0,
        force_threshold_eV_per_A=th.force_eV_per_A,
    )
    frames, provenance = [], []
    for i in sel.selected:
        positions = ex["positions"][i]  # slab atoms, then the projectile
        symbols = slab.get_chemical_symbols() + [cfg.project.element] * (len(positions) - len(slab))
        frames.append(Atoms(symbols, positions=positions, cell=slab.cell, pbc=slab.pbc))
        provenance.append(
            {
                "trajectory": str(ex["trajectory"][i]),
                "time_fs": float(ex["time_fs"][i]),
                "selection": {
                    "energy_disagreement_eV_per_atom": float(ex["energy"][i]),
                    "force_disagreement_eV_per_A": float(ex["force"][i]),
                    "before_halt": bool(ex["before_halt"][i]),
                    "adaptive": sel.adaptive,
                    "surface": surface,
                },
            }
        )
    t0 = time.perf_counter()
    labelled, failed = _label_selected(project, k, frames, provenance)
    t_label = time.perf_counter() - t0
    e, f = ex["energy"], ex["force"]
    finite = np.isfinite(e) & np.isfinite(f)
    summary = {
        "iteration": k,
        "surface": surface,
        "frames_explored": int(len(e)),
        "frames_selected": int(len(sel.selected)),
        "frames_labelled": labelled,
        "labels_failed": failed,
        "fraction_over_threshold": sel.fraction_over_threshold,
        "trajectories_halted": ex["halted"],
        "adaptive_selection": sel.adaptive,
        "energy_threshold_meV_per_atom": th.energy_meV_per_atom,
        "force_threshold_eV_per_A": th.force_eV_per_A,
        "energy_disagreement_percentiles_meV_per_atom": {
            str(p): float(np.percentile(e[finite], p) * 1000) if finite.any() else None
            for p in (50, 90, 99)
        },
        "force_disagreement_percentiles_eV_per_A": {
            str(p): float(np.percentile(f[finite], p)) if finite.any() else None
            for p in (50, 90, 99)
        },
        "train_rmse_energy_mev_per_atom": train_rec["train_rmse_energy_mev_per_atom"][0],
        "train_rmse_force_mev_per_A": train_rec["train_rmse_force_mev_per_A"][0],
        "test_rmse_energy_mev_per_atom": train_rec["test_rmse_energy_mev_per_atom"][0],
        "test_rmse_force_mev_per_A": train_rec["test_rmse_force_mev_per_A"][0],
        "seconds": {"train": t_train, "explore": t_explore, "label": t_label},
    }
    project.write_json(summary_path, summary)
    project.say(
        f"iteration {k}: explored {summary['frames_explored']} frames, "
        f"{100 * summary['fraction_over_threshold']:.1f} % over threshold, selected {summary['frames_selected']}, "
        f"labelled {labelled}, failed {failed}"
    )
    return summary


def refine(project: Project) -> dict[str, Any]:
    """The whole refinement schedule; returns the iteration summaries and why it stopped."""
    rec = project.stage_record("refine")
    if rec is not None:
        return rec
    cfg = project.config
    initial_data(project)
    slab = prepared_slab(project, cfg.initial_data.slab)
    summaries = []
    reason = f"reached refine.max_iterations = {cfg.refine.max_iterations}"
    k = 0
    for k in range(1, cfg.refine.max_iterations + 1):
        s = refine_iteration(project, k, slab, cfg.initial_data.slab.label)
        summaries.append(s)
        if s["fraction_over_threshold"] < cfg.refine.stop_fraction:
            reason = (
                f"fraction over threshold {s['fraction_over_threshold']:.4f} < refine.stop_fraction "
                f"= {cfg.refine.stop_fraction} after iteration {k}"
            )
            break
    if cfg.refine.second_surface_slab is not None and cfg.refine.second_surface_iterations > 0:
        second = prepared_slab(project, cfg.refine.second_surface_slab)
        for k2 in range(k + 1, k + 1 + cfg.refine.second_surface_iterations):
            summaries.append(
                refine_iteration(project, k2, second, cfg.refine.second_surface_slab.label)
            )
    project.say(f"refinement stopped: {reason}")
    rec = {"iterations": summaries, "stop_reason": reason}
    project.record_stage("refine", rec)
    return rec
