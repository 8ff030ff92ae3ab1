"""The validation set and the scoring of models on it (part of ``init``; ``nnprefine validate``).

- :func:`validation_data` labels the ``[validation]`` frames once (resumable per task)
  and stores them with origin ``validation``: the frame store keeps them in their own
  split, so no training or early stopping ever sees them.
- :func:`validate` scores a trained committee of the project on them and writes
  ``models/<name>/validation.json`` and ``validation.npz`` (per-frame errors and
  disagreements); the final model is always scored, each refinement iteration's
  committee too (its calibration scales the disagreement the selection uses).
"""

from __future__ import annotations

from typing import Any

from nnprefine.common import save_npz, write_json
from nnprefine.errors import NnprefineError
from nnprefine.reference import label_frame
from nnprefine.stages.initial_data import lattice, prepared_slab, run_reference_trajectories
from nnprefine.stages.project import Project

__all__ = ["say_validation", "validate", "validation_data", "validation_frames"]


def _trajectory_tasks(project: Project) -> list[tuple[str, dict[str, Any]]]:
    """(key, arguments) of the validation set's reference-driven trajectories."""
    v = project.config.validation
    slab = prepared_slab(project, project.config.initial_data.slab)
    tasks: list[tuple[str, dict[str, Any]]] = []

    def add(key: str, on: Any = slab, **kw: Any) -> None:
        tasks.append((key, dict(slab=on, seed=project.seed("validation", key), **kw)))

    for energy in v.impact_energies_eV:
        for run in range(v.impact_runs_per_energy):
            add(
                f"validation-impact-{energy:g}eV-{run:04d}",
                energy_eV=energy,
                duration_fs=v.impact_duration_fs,
                snapshots=v.impact_snapshots_per_run,
            )
    if v.hot_snapshots_per_temperature:
        for temperature in v.hot_temperatures_K:
            add(
                f"validation-hot_slab-{temperature:g}K",
                energy_eV=0.0,
                duration_fs=v.hot_duration_fs,
                snapshots=v.hot_snapshots_per_temperature,
                temperature_K=temperature,
            )
    second = project.config.refine.second_surface_slab
    if second is not None and v.second_surface_snapshots_per_temperature:
        second_slab = prepared_slab(project, second)
        for temperature in v.hot_temperatures_K:
            add(
                f"validation-second_surface-{temperature:g}K",
                on=second_slab,
                energy_eV=0.0,
                duration_fs=v.hot_duration_fs,
                snapshots=v.second_surface_snapshots_per_temperature,
                temperature_K=temperature,
            )
    return tasks


def _single_frames(project: Project) -> list[tuple[str, Any]]:
    """(trajectory name, Atoms) of the validation frames that are single structures."""
    from nnprefine.structures import bulk_cell

    cfg = project.config
    out = []
    if cfg.validation.production_slab and cfg.production:
        if cfg.structures.production_slab_driver == "model":
            # the reference would have to relax the large slab, which this driver avoids
            project.say("validation: no production-slab frame (production_slab_driver = model)")
        else:
            slab_config = cfg.production[0].slab
            out.append(("validation-production_slab", prepared_slab(project, slab_config)))
    if cfg.refine.second_surface_slab is not None:
        out.append(
            ("validation-second_surface", prepared_slab(project, cfg.refine.second_surface_slab))
        )
    rec = lattice(project)
    for strain in cfg.validation.bulk_strains:
        bulk = bulk_cell(
            cfg.project.element,
            cfg.structures.crystal,
            a_A=rec["a_A"] * (1 + strain),
            c_A=rec["c_A"] * (1 + strain),
        )
        out.append((f"validation-bulk-{strain:+.3f}", bulk))
    return out


def validation_data(project: Project) -> dict[str, Any]:
    """Label the validation set once; returns its frame counts per group."""
    rec = project.stage_record("validation_data")
    if rec is not None:
        return rec
    from nnprefine.validation import group_of

    cfg = project.config
    ref = cfg.reference.spec()
    run_reference_trajectories(project, "validation", "validation", _trajectory_tasks(project))
    done = project.finished_tasks("validation")
    singles = [(k, dict(atoms=atoms)) for k, atoms in _single_frames(project) if k not in done]
    project.say(f"validation: {len(singles)} single structures to label")
    with project.store() as store, project.executor() as executor:
        for out in executor.run(label_frame, singles, dict(reference=ref)):
            if not out.ok:
                project.say(f"  {out.key}: label failed ({out.error}); recorded, not retried")
                project.finish_task("validation", out.key, failed=out.error)
                continue
            store.add(out.value, origin="validation", reference=ref, trajectory=out.key)
            project.finish_task("validation", out.key, frames=1)
        frames = store.frames(split="validation")
    counts: dict[str, int] = {}
    for atoms in frames:
        counts[group_of(atoms)] = counts.get(group_of(atoms), 0) + 1
    rec = {"frames": len(frames), "groups": counts}
    project.record_stage("validation_data", rec)
    project.say(f"validation set: {len(frames)} frames ({counts})")
    return rec


def validation_set_is_empty(project: Project) -> bool:
    """True when ``[validation]`` asks for no frame at all (every size zero)."""
    v = project.config.validation
    return not (
        (v.impact_energies_eV and v.impact_runs_per_energy and v.impact_snapshots_per_run)
        or (v.hot_temperatures_K and v.hot_snapshots_per_temperature)
        or v.production_slab
        or v.bulk_strains
    )


def validation_frames(project: Project) -> list[Any]:
    """The stored validation frames; a clear error when there are none."""
    frames = []
    if project.data_db.exists():
        with project.store() as store:
            frames = store.frames(split="validation")
    if not frames:
        raise NnprefineError(
            f"{project.data_db} holds no validation frames; run 'nnprefine init CONFIG' "
            "(it labels the [validation] set; its sizes are keys of that table)"
        )
    return frames


def validate(
    project: Project, name: str, committee: Any = None, lattice_record: Any = None
) -> dict[str, Any]:
    """Score the committee ``models/<name>`` on the validation set; returns the figures.

    Writes ``models/<name>/validation.json`` (per-group RMSE, rank correlation, calibration
    scales and, for a model with a lattice record, the verdict) and ``validation.npz``.
    """
    from nnprefine.model import Committee
    from nnprefine.validation import score, verdict

    directory = project.model_dir(name)
    if committee is None:
        if not directory.exists():
            raise NnprefineError(
                f"no model '{name}' in {project.dir / 'models'}; train it first "
                "('nnprefine run' or 'nnprefine train')"
            )
        committee = Committee.load(directory)
    frames = validation_frames(project)
    result = score(committee, frames)
    out = {"model": name, **result.summary()}
    if lattice_record is None and name == "final":
        final = project.stage_record("final_model")
        lattice_record = final["lattice"] if final else None
    out["verdict"] = verdict(out, lattice_record, project.config.validation.targets())
    save_npz(
        directory / "validation.npz",
        groups=result.groups,
        energy_error_eV_per_atom=result.energy_error,
        max_force_error_eV_per_A=result.max_force_error,
        energy_disagreement_eV_per_atom=result.energy_disagreement,
        force_disagreement_eV_per_A=result.force_disagreement,
    )
    write_json(directory / "validation.json", out)
    return out


def say_validation(project: Project, out: dict[str, Any]) -> None:
    """One line per group, then the verdict, on the console and in the log."""
    for group, r in out["groups"].items():
        project.say(
            f"  validation {group:>15}: {r['frames']:4d} frames, "
            f"{r['energy_rmse_meV_per_atom']:8.2f} meV/atom, {r['force_rmse_meV_per_A']:7.0f} meV/Å"
        )
    rho = out["rank_correlation_force"]
    alpha = out["calibration"]
    project.say(
        f"  rank correlation of force disagreement with error {rho:.2f}; calibration "
        f"α_E = {alpha['energy']:.2f}, α_F = {alpha['force']:.2f}"
    )
    ok = out["verdict"]["ok"]
    project.say(
        f"  [{'OK' if ok else 'MISSED'}] model '{out['model']}' {out['verdict']['line']}",
        colour="green" if ok else "red",
    )
