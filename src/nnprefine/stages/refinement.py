"""Stage ``refine``: the query-by-committee loop.

Iterations k = 1, 2, …: train the committee on all frames so far
(:func:`~nnprefine.stages.training.train_committee`), run exploration impacts driven by
member 1 while every member is evaluated on each frame, select frames where the members
disagree (:func:`nnprefine.selection.select_frames`), label them with the reference
(failures are quarantined) and store them as iteration k. Stops when the fraction of
exploration frames over threshold falls below ``refine.stop_fraction`` or after
``refine.max_iterations``; then optional iterations on a second surface. Every
exploration trajectory, label and iteration summary is written as it finishes.
"""

from __future__ import annotations

import json
import time
from typing import Any

import numpy as np
from ase import Atoms

from nnprefine.common import save_npz, write_json
from nnprefine.errors import NnprefineError
from nnprefine.reference import label_frame
from nnprefine.selection import select_frames
from nnprefine.stages.initial_data import initial_data, prepared_slab
from nnprefine.stages.project import Project
from nnprefine.stages.training import train_committee
from nnprefine.stages.validation import (
    say_validation,
    validate,
    validation_data,
    validation_set_is_empty,
)
from nnprefine.trajectories import explore_trajectory, frame_atoms, gather_explorations

__all__ = ["label_frames", "refine", "refine_iteration"]


def _explore(project: Project, k: int, committee: Any, slab: Atoms) -> dict[str, Any]:
    """Run iteration k's exploration trajectories not yet on disk; gather all of them."""
    cfg = project.config.refine
    out_dir = project.iteration_dir(k) / "explore"
    tasks = []
    for energy in cfg.exploration_energies_eV:
        for run in range(cfg.exploration_runs_per_energy):
            key = f"explore-{energy:g}eV-{run:04d}"
            if not (out_dir / f"{key}.npz").exists():
                tasks.append((key, dict(energy_eV=energy, seed=project.seed("explore", k, key))))
    shared = dict(
        slab=slab,
        committee=committee,
        settings=cfg.exploration,
        frame_interval_fs=cfg.frame_interval_fs,
        upper_trust_force_eV_per_A=cfg.upper_trust_force_eV_per_A,
    )
    project.say(f"iteration {k}: {len(tasks)} exploration trajectories to run")
    with project.executor() as executor:
        for out in executor.run(explore_trajectory, tasks, shared):
            if not out.ok:
                project.say(f"  {out.key} failed: {out.error}")
                save_npz(out_dir / f"{out.key}.npz", failed=np.array(out.error))
                continue
            save_npz(out_dir / f"{out.key}.npz", **out.value)
    return gather_explorations(list(out_dir.glob("explore-*.npz")))


def label_frames(
    project: Project, k: int, frames: list[Atoms], provenance: list[dict], origin: str = "refine"
) -> tuple[int, int]:
    """Label ``frames`` with the reference, store each as it arrives as iteration k of
    ``origin`` (a failed label is quarantined); frames already in the store are counted,
    not labelled again. ``provenance[i]``: ``trajectory``, ``time_fs``, ``selection``.
    Returns (labelled, failed)."""
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
        project.say(f"iteration {k} ({origin}): labelling {len(tasks)} frames with the reference")
        by_key = dict(tasks)
        with project.executor() as executor:
            for n_done, out in enumerate(executor.run(label_frame, tasks, dict(reference=ref)), 1):
                prov = provenance[int(out.key.split("-")[1])]
                if out.ok:
                    project.log.info(
                        f"  label {n_done}/{len(tasks)} ({prov['trajectory']}, "
                        f"{prov['time_fs']:.1f} fs): {out.value.info['label_wall_s']:.2f} s"
                    )
                    store.add(
                        out.value,
                        origin=origin,
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
                        origin=origin,
                        iteration=k,
                        reference=ref,
                        trajectory=prov["trajectory"],
                        time_fs=prov["time_fs"],
                    )
                    failed += 1
                    project.say(f"  label failed and quarantined: {out.error}")
    return labelled, failed


def _percentiles(x: np.ndarray, scale: float) -> dict[str, float | None]:
    finite = x[np.isfinite(x)]
    return {
        str(p): float(np.percentile(finite, p) * scale) if len(finite) else None
        for p in (50, 90, 99)
    }


def _calibrate(project: Project, k: int, committee: Any) -> tuple[dict[str, float], Any]:
    """Iteration k's committee on the validation set: (α_E, α_F) to scale its disagreement
    with (1, 1 when ``refine.calibrated`` is off or there is no validation set), and the
    validation figures (None without a validation set)."""
    try:
        out = validate(project, f"iter-{k:03d}", committee)
    except NnprefineError as exc:
        project.say(f"iteration {k}: no calibration ({exc})")
        return {"energy": 1.0, "force": 1.0}, None
    say_validation(project, out)
    alpha = out["calibration"]
    if not project.config.refine.calibrated or not all(np.isfinite(list(alpha.values()))):
        return {"energy": 1.0, "force": 1.0}, out
    return alpha, out


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
    alpha, validation = _calibrate(project, k, committee)
    t0 = time.perf_counter()
    explored = _explore(project, k, committee, slab)
    t_explore = time.perf_counter() - t0
    rules = cfg.refine.selection(k - 1)
    # the selection and the stop rule see the calibrated disagreement (α = 1: the raw one)
    e, f = alpha["energy"] * explored["energy"], alpha["force"] * explored["force"]
    sel = select_frames(
        explored["trajectory"],
        explored["time_fs"],
        e,
        f,
        before_halt=explored["before_halt"],
        **rules.as_kwargs(),
    )
    mask = np.zeros(len(e), dtype=bool)
    mask[sel.selected] = True
    save_npz(
        project.iteration_dir(k) / "disagreement.npz",
        energy_eV_per_atom=e,
        force_eV_per_A=f,
        selected=mask,
        over_threshold=sel.over_threshold,
        energy_threshold_eV_per_atom=rules.energy_threshold_eV_per_atom,
        force_threshold_eV_per_A=rules.force_threshold_eV_per_A,
    )
    projectile = project.config.refine.exploration.projectile
    frames = [frame_atoms(slab, explored["positions"][i], projectile) for i in sel.selected]
    provenance = [
        {
            "trajectory": str(explored["trajectory"][i]),
            "time_fs": float(explored["time_fs"][i]),
            "selection": {
                "energy_disagreement_eV_per_atom": float(explored["energy"][i]),
                "force_disagreement_eV_per_A": float(explored["force"][i]),
                "calibration": alpha,
                "before_halt": bool(explored["before_halt"][i]),
                "adaptive": sel.adaptive,
                "surface": surface,
            },
        }
        for i in sel.selected
    ]
    t0 = time.perf_counter()
    labelled, failed = label_frames(project, k, frames, provenance)
    t_label = time.perf_counter() - t0
    summary = {
        "iteration": k,
        "surface": surface,
        "frames_explored": int(len(e)),
        "frames_selected": int(len(sel.selected)),
        "frames_labelled": labelled,
        "labels_failed": failed,
        "fraction_over_threshold": sel.fraction_over_threshold,
        "trajectories_halted": explored["halted"],
        "adaptive_selection": sel.adaptive,
        "energy_threshold_meV_per_atom": rules.energy_threshold_eV_per_atom * 1000.0,
        "force_threshold_eV_per_A": rules.force_threshold_eV_per_A,
        "energy_disagreement_percentiles_meV_per_atom": _percentiles(e, 1000.0),
        "force_disagreement_percentiles_eV_per_A": _percentiles(f, 1.0),
        "train_rmse_energy_mev_per_atom": train_rec["train_rmse_energy_mev_per_atom"][0],
        "train_rmse_force_mev_per_A": train_rec["train_rmse_force_mev_per_A"][0],
        "test_rmse_energy_mev_per_atom": train_rec["test_rmse_energy_mev_per_atom"][0],
        "test_rmse_force_mev_per_A": train_rec["test_rmse_force_mev_per_A"][0],
        "seconds": {"train": t_train, "explore": t_explore, "label": t_label},
        "calibration": alpha,
        "disagreement": "calibrated" if alpha != {"energy": 1.0, "force": 1.0} else "raw",
        "mean_disagreement_eV_per_A": float(np.nanmean(f)) if len(f) else None,
    }
    if validation is not None:
        summary["validation"] = {
            "energy_rmse_meV_per_atom": validation["all"]["energy_rmse_meV_per_atom"],
            "force_rmse_meV_per_A": validation["all"]["force_rmse_meV_per_A"],
            "rank_correlation_force": validation["rank_correlation_force"],
        }
    write_json(summary_path, summary)
    project.say(
        f"iteration {k}: explored {summary['frames_explored']} frames, "
        f"{100 * summary['fraction_over_threshold']:.1f} % over threshold, "
        f"selected {summary['frames_selected']}, labelled {labelled}, failed {failed}"
    )
    return summary


def refine(project: Project) -> dict[str, Any]:
    """The whole refinement schedule; returns the iteration summaries and why it stopped."""
    rec = project.stage_record("refine")
    if rec is not None:
        return rec
    cfg = project.config
    initial_data(project)
    if cfg.refine.calibrated and not validation_set_is_empty(project):
        validation_data(project)  # the calibration needs it (as `nnprefine run` has it)
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
    second = cfg.refine.second_surface_slab
    if second is not None and cfg.refine.second_surface_iterations > 0:
        second_slab = prepared_slab(project, second)
        for k2 in range(k + 1, k + 1 + cfg.refine.second_surface_iterations):
            summaries.append(refine_iteration(project, k2, second_slab, second.label))
    project.say(f"refinement stopped: {reason}")
    rec = {"iterations": summaries, "stop_reason": reason}
    project.record_stage("refine", rec)
    return rec
