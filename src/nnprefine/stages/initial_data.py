"""Stage ``init`` (with :mod:`nnprefine.stages.validation`): the reference's lattice
constants, the prepared slabs, the initial data.

- :func:`lattice` relaxes hcp bulk with the reference (recorded once).
- :func:`prepared_slab` builds, relaxes and equilibrates a slab (written once to
  ``slabs/<label>-vacuum<v>A.traj``, read from there afterwards).
- :func:`initial_data` runs reference-driven impacts and thermal MD on the small slab;
  random snapshots carry the reference's own energies and forces (no extra calls) and
  are stored as iteration 0. Resumable per trajectory.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
from ase import Atoms

from nnprefine.common import atomic_path
from nnprefine.config import SlabConfig
from nnprefine.errors import ConfigError, ReferenceCalculationError
from nnprefine.reference import cached_reference
from nnprefine.stages.project import Project
from nnprefine.trajectories import reference_trajectory_frames

__all__ = ["init", "initial_data", "lattice", "prepared_slab"]


def lattice(project: Project) -> dict[str, Any]:
    """Relax the target's bulk (structures.crystal) with the reference (recorded once as
    the stage ``lattice``): a_A, c_A (= a_A for bcc and fcc), energy_eV_per_atom."""
    from nnprefine.structures import relax_bulk

    rec = project.stage_record("lattice")
    if rec is None:
        cfg = project.config
        crystal = cfg.structures.crystal
        try:
            rec = relax_bulk(
                cached_reference(cfg.reference.spec()),
                element=cfg.project.element,
                crystal=crystal,
                a_A=cfg.structures.a_A,
                c_A=cfg.structures.c_A,
            )
        except Exception as exc:  # a DFT code's own error types, numpy's on NaN, ...
            if isinstance(exc, ReferenceCalculationError | ConfigError):
                raise
            raise ReferenceCalculationError(
                f"relaxing {crystal} {cfg.project.element} with the reference failed "
                f"({type(exc).__name__}: {exc}); check [reference] with "
                "'nnprefine check-reference'"
            ) from exc
        if not all(math.isfinite(rec[k]) for k in ("a_A", "c_A", "energy_eV_per_atom")):
            raise ReferenceCalculationError(
                f"relaxing {crystal} {cfg.project.element} with the reference gave {rec}; the "
                "reference returns NaN or inf"
            )
        project.record_stage("lattice", rec)
        project.say(
            f"reference {crystal} {cfg.project.element}: a = {rec['a_A']:.4f} Å, "
            f"c = {rec['c_A']:.4f} Å, "
            f"E = {rec['energy_eV_per_atom']:.4f} eV/atom"
        )
    return rec


def prepared_slab(
    project: Project, slab_config: SlabConfig, calc: Any = None, tag: str = ""
) -> Atoms:
    """The relaxed, equilibrated slab ``slab_config`` describes (built once, then read from
    its file).

    ``calc``: what relaxes and equilibrates it (default: the reference); ``tag`` names the
    file apart from the reference-prepared one (``slabs/<file_key><tag>.traj``). The lattice
    constants are the reference's (stage ``lattice``) when known, else the config's guesses.
    """
    from ase.io import read, write

    path = project.slab_path(slab_config.file_key + tag)
    if path.exists():
        return read(path)
    cfg = project.config
    rec = project.stage_record("lattice")
    a, c = (rec["a_A"], rec["c_A"]) if rec else (cfg.structures.a_A, cfg.structures.c_A)
    t0 = time.perf_counter()
    st = cfg.structures
    driver = calc if calc is not None else cached_reference(cfg.reference.spec())
    who = "the reference" if calc is None else type(calc).__name__
    try:
        atoms, energy = _prepare(slab_config, driver, a, c, project)
    except (ConfigError, ReferenceCalculationError):
        raise
    except Exception as exc:  # a DFT code's own errors, numpy's on NaN, ...
        raise ReferenceCalculationError(
            f"preparing slab {slab_config.label} with {who} failed ({type(exc).__name__}: "
            f"{exc}); check [reference] with 'nnprefine check-reference'"
        ) from exc
    if not (np.isfinite(atoms.positions).all() and math.isfinite(energy)):
        raise ReferenceCalculationError(
            f"preparing slab {slab_config.label} with {who} gave non-finite positions or "
            "energy; nothing was written. The calculator returns NaN or inf for this slab"
        )
    if calc is None:  # kept, so that no later stage asks the reference for it again
        atoms.info["reference_energy_eV"] = energy
    project.say(
        f"slab {slab_config.label}: {len(atoms)} atoms relaxed and equilibrated at "
        f"{st.temperature_K:.0f} K ({time.perf_counter() - t0:.0f} s)"
    )
    with atomic_path(path) as tmp:
        write(tmp, atoms)
    return read(path)


def _prepare(
    slab_config: SlabConfig, driver: Any, a: float, c: float, project: Project
) -> tuple[Atoms, float]:
    """Build, relax and equilibrate the slab with ``driver``; the atoms and their energy (eV)."""
    from nnprefine.structures import prepare_slab

    st = project.config.structures
    atoms = prepare_slab(
        slab_config.surface,
        slab_config.size,
        driver,
        a_A=a,
        c_A=c,
        vacuum_A=slab_config.vacuum_A,
        element=project.config.project.element,
        crystal=st.crystal,
        fixed_layers=st.fixed_layers,
        relax_fmax_eV_per_A=st.relax_fmax_eV_per_A,
        temperature_K=st.temperature_K,
        equilibration_fs=st.equilibration_fs,
        equilibration_timestep_fs=st.equilibration_timestep_fs,
        thermostat=st.thermostat,
        seed=project.seed("equilibrate", slab_config.label),
    )
    return atoms, float(driver.get_potential_energy(atoms))


def _initial_tasks(project: Project) -> list[tuple[str, dict[str, Any]]]:
    """(key, arguments) of every reference trajectory of the initial data."""
    from nnprefine.structures import bulk_cell

    cfg = project.config
    init = cfg.initial_data
    slab = prepared_slab(project, init.slab)
    tasks: list[tuple[str, dict[str, Any]]] = []

    def add(key: str, structure: Any, **kw: Any) -> None:
        tasks.append((key, dict(slab=structure, seed=project.seed("init", key), **kw)))

    for energy in init.energies_eV:
        for run in range(init.runs_per_energy):
            duration = init.duration_fs(energy)
            add(
                f"impact-{energy:g}eV-{run:04d}",
                slab,
                energy_eV=energy,
                duration_fs=duration,
                snapshots=init.snapshots_per_run,
            )
    if init.thermal_frames:
        duration = init.thermal_frames * init.thermal_interval_fs
        add("thermal", slab, energy_eV=0.0, duration_fs=duration, snapshots=init.thermal_frames)
    # coverage of what production meets beyond the paper's protocol
    for temperature in init.hot_temperatures_K:
        add(
            f"hot_slab-{temperature:g}K",
            slab,
            energy_eV=0.0,
            duration_fs=init.hot_duration_fs,
            snapshots=init.hot_snapshots,
            temperature_K=temperature,
        )
    if init.bulk_strains:
        lat = lattice(project)
        for strain in init.bulk_strains:
            a, c = lat["a_A"] * (1 + strain), lat["c_A"] * (1 + strain)
            cell = bulk_cell(cfg.project.element, cfg.structures.crystal, a, c)
            bulk = cell.repeat(init.bulk_size)
            add(
                f"bulk-{strain:+.3f}",
                bulk,
                energy_eV=0.0,
                duration_fs=init.bulk_duration_fs,
                snapshots=init.bulk_snapshots,
                temperature_K=init.bulk_temperature_K,
            )
    if init.production_slab_snapshots and cfg.production:
        production = prepared_slab(project, cfg.production[0].slab)
        add(
            "production_slab",
            production,
            energy_eV=0.0,
            duration_fs=init.production_slab_duration_fs,
            snapshots=init.production_slab_snapshots,
        )
    return tasks


def run_reference_trajectories(
    project: Project, stage: str, origin: str, tasks: list[tuple[str, dict[str, Any]]]
) -> None:
    """Run the reference trajectories ``tasks`` of ``stage`` not yet finished; store each
    one's labelled snapshots (origin ``origin``, iteration 0) as it arrives."""
    cfg = project.config
    ref = cfg.reference.spec()
    done = project.finished_tasks(stage)
    todo = [(k, kw) for k, kw in tasks if k not in done]
    project.say(f"{stage}: {len(tasks)} reference trajectories ({len(todo)} to run)")
    shared = dict(reference=ref, settings=cfg.initial_data.impact)
    with project.store() as store, project.executor() as executor:
        for i, out in enumerate(executor.run(reference_trajectory_frames, todo, shared), 1):
            if not out.ok:
                project.say(f"  {out.key}: failed ({out.error}); recorded, not retried")
                project.finish_task(stage, out.key, failed=out.error)
                continue
            ids = store.add_many(
                out.value,
                origin=origin,
                iteration=0,
                reference=ref,
                seed=dict(todo)[out.key]["seed"],
                trajectory=out.key,
            )
            project.finish_task(stage, out.key, frames=sum(i is not None for i in ids))
            if i % max(1, len(todo) // 10) == 0 or i == len(todo):
                n = store.count(origin=origin)
                project.say(f"  {i}/{len(todo)} trajectories done, {n} frames stored")
    keys = {k for k, _ in tasks}
    failed = {k: r["failed"] for k, r in project.finished_tasks(stage).items() if "failed" in r}
    failed = {k: v for k, v in failed.items() if k in keys}
    if failed:
        project.say(f"{stage}: {len(failed)} of {len(tasks)} reference trajectories failed")
    limit = cfg.initial_data.max_failed_fraction
    if tasks and len(failed) > limit * len(tasks):
        first = next(iter(failed.items()))
        raise ReferenceCalculationError(
            f"{len(failed)} of {len(tasks)} reference trajectories of {stage} failed, more "
            f"than initial_data.max_failed_fraction = {limit}; the first, {first[0]}: "
            f"{first[1]}. Fix the reference, then delete the failed lines of "
            f"{project.dir / 'tasks' / (stage + '.jsonl')} and run again"
        )


def initial_data(project: Project) -> dict[str, Any]:
    """Label the initial data set (iteration 0); returns counts. Resumable per trajectory."""
    rec = project.stage_record("initial_data")
    if rec is not None:
        return rec
    lattice(project)
    imported = _import_user_frames(project)
    tasks = _initial_tasks(project)
    run_reference_trajectories(project, "initial_data", "initial", tasks)
    with project.store() as store:
        rec = {
            "frames": store.count(origin="initial") + imported,
            "imported": imported,
            "trajectories": len(tasks),
        }
    if rec["frames"] == 0:
        raise ConfigError(
            "the initial data set is empty: give initial_data.runs_per_energy, "
            "thermal_frames or import_files"
        )
    project.record_stage("initial_data", rec)
    return rec


def _import_user_frames(project: Project) -> int:
    """Store ``initial_data.import_files`` (origin "import"); returns the frames of
    that origin now in ``data.db``. Idempotent: frames already stored are skipped."""
    from nnprefine.stages.imports import import_frames

    paths = project.config.import_paths()
    if paths:
        report = import_frames(project, paths, origin="import")
        project.say(
            f"initial_data: {report.stored} imported frames stored, {report.duplicates} "
            f"already there, {len(report.rejected)} rejected"
        )
        for line in report.rejected[:20]:
            project.say(f"  not stored: {line}")
    with project.store() as store:
        return store.count(origin="import")


def init(project: Project) -> dict[str, Any]:
    """Lattice constants, all slabs the config's reference prepares, the initial data set."""
    cfg = project.config
    lattice(project)
    slab_configs = [cfg.initial_data.slab]
    if cfg.structures.production_slab_driver == "reference":
        slab_configs += [p.slab for p in cfg.production]
    if cfg.refine.second_surface_slab is not None:
        slab_configs.append(cfg.refine.second_surface_slab)
    for slab_config in slab_configs:
        prepared_slab(project, slab_config)
    return initial_data(project)
