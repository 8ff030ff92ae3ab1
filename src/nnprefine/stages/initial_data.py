"""Stage ``init``: the reference's lattice constants, the prepared slabs, the initial data
and the validation set (:mod:`nnprefine.stages.validation`).

- :func:`lattice` relaxes hcp bulk with the reference (recorded once).
- :func:`prepared_slab` builds, relaxes and equilibrates a slab (written once to
  ``slabs/<label>.traj``, read from there afterwards).
- :func:`initial_data` runs reference-driven impacts and thermal MD on the small slab;
  random snapshots carry the reference's own energies and forces (no extra calls) and
  are stored as iteration 0. Resumable per trajectory.
"""

from __future__ import annotations

import time
from typing import Any

from ase import Atoms

from nnprefine.common import atomic_path
from nnprefine.config import SlabConfig
from nnprefine.reference import cached_reference
from nnprefine.stages.project import Project
from nnprefine.trajectories import reference_trajectory_frames

__all__ = ["init", "initial_data", "lattice", "prepared_slab"]


def lattice(project: Project) -> dict[str, Any]:
    """Relax hcp bulk with the reference (recorded once as the stage ``lattice``)."""
    from nnprefine.structures import relax_hcp

    rec = project.stage_record("lattice")
    if rec is None:
        cfg = project.config
        rec = relax_hcp(
            cached_reference(cfg.reference.spec()),
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


def prepared_slab(
    project: Project, slab_config: SlabConfig, calc: Any = None, tag: str = ""
) -> Atoms:
    """The relaxed, equilibrated slab ``slab_config`` describes (built once, then read from
    its file).

    ``calc``: what relaxes and equilibrates it (default: the reference); ``tag`` names the
    file apart from the reference-prepared one (``slabs/<label><tag>.traj``). The lattice
    constants are the reference's (stage ``lattice``) when known, else the config's guesses.
    """
    from ase.io import read, write

    from nnprefine.structures import prepare_slab

    path = project.slab_path(slab_config.label + tag)
    if path.exists():
        return read(path)
    cfg = project.config
    rec = project.stage_record("lattice")
    a, c = (rec["a_A"], rec["c_A"]) if rec else (cfg.structures.a_A, cfg.structures.c_A)
    t0 = time.perf_counter()
    st = cfg.structures
    driver = calc if calc is not None else cached_reference(cfg.reference.spec())
    atoms = prepare_slab(
        slab_config.surface,
        slab_config.size,
        driver,
        a_A=a,
        c_A=c,
        vacuum_A=slab_config.vacuum_A,
        element=cfg.project.element,
        fixed_layers=st.fixed_layers,
        relax_fmax_eV_per_A=st.relax_fmax_eV_per_A,
        temperature_K=st.temperature_K,
        equilibration_fs=st.equilibration_fs,
        equilibration_timestep_fs=st.equilibration_timestep_fs,
        thermostat=st.thermostat,
        seed=project.seed("equilibrate", slab_config.label),
    )
    if calc is None:  # kept, so that no later stage asks the reference for it again
        atoms.info["reference_energy_eV"] = float(driver.get_potential_energy(atoms))
    project.say(
        f"slab {slab_config.label}: {len(atoms)} atoms relaxed and equilibrated at "
        f"{st.temperature_K:.0f} K ({time.perf_counter() - t0:.0f} s)"
    )
    with atomic_path(path) as tmp:
        write(tmp, atoms)
    return read(path)


def _initial_tasks(project: Project) -> list[tuple[str, dict[str, Any]]]:
    """(key, arguments) of every reference trajectory of the initial data."""
    init = project.config.initial_data
    tasks: list[tuple[str, dict[str, Any]]] = []
    for energy in init.energies_eV:
        for run in range(init.runs_per_energy):
            key = f"impact-{energy:g}eV-{run:04d}"
            kw = dict(
                energy_eV=energy,
                duration_fs=init.duration_fs(energy),
                seed=project.seed("init", key),
                snapshots=init.snapshots_per_run,
            )
            tasks.append((key, kw))
    if init.thermal_frames:
        kw = dict(
            energy_eV=0.0,
            duration_fs=init.thermal_frames * init.thermal_interval_fs,
            seed=project.seed("init", "thermal"),
            snapshots=init.thermal_frames,
        )
        tasks.append(("thermal", kw))
    return tasks


def initial_data(project: Project) -> dict[str, Any]:
    """Label the initial data set (iteration 0); returns counts. Resumable per trajectory."""
    rec = project.stage_record("initial_data")
    if rec is not None:
        return rec
    cfg = project.config
    lattice(project)
    slab = prepared_slab(project, cfg.initial_data.slab)
    ref = cfg.reference.spec()
    tasks = _initial_tasks(project)
    done = project.finished_tasks("initial_data")
    todo = [(k, kw) for k, kw in tasks if k not in done]
    project.say(f"initial data: {len(tasks)} reference trajectories ({len(todo)} to run)")
    shared = dict(slab=slab, reference=ref, settings=cfg.initial_data.impact)
    with project.store() as store, project.executor() as executor:
        for i, out in enumerate(executor.run(reference_trajectory_frames, todo, shared), 1):
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
    rec = initial_data(project)
    from nnprefine.stages.validation import validation_data

    validation_data(project)
    return rec
