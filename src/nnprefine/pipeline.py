"""The main job, stage by stage: init → refine → train → sputter (transfer, repair) → report.

Each stage (in :mod:`nnprefine.stages`) takes a :class:`~nnprefine.stages.Project`,
skips what is already done and records its result; :func:`run` calls them in order, so
running it again after a kill resumes where it stopped and running it after it finished
does nothing new. :func:`status` says what is done and what remains.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from nnprefine import __version__
from nnprefine.stages import Project, init, refine, repair, report, sputter, train_final, transfer
from nnprefine.stages.production import campaigns, settings_differ, unique_campaigns
from nnprefine.stages.repair import repair_records
from nnprefine.stages.transfer import first_surface_model, transfer_label
from nnprefine.stages.validation import validation_data

__all__ = ["STAGES", "run", "run_stage", "status"]

#: command name → the stage functions it runs, in run order
STAGES: dict[str, tuple[Callable[[Project], Any], ...]] = {
    "init": (init, validation_data),
    "refine": (refine,),
    "train": (train_final,),
    "sputter": (sputter, transfer, repair),
    "report": (report,),
}


def run_stage(project: Project, name: str) -> Any:
    """The stage functions of command ``name`` in order; returns the last one's result."""
    project.verify_records()
    out: Any = None
    for stage in STAGES[name]:
        out = stage(project)
    return out


def run(project: Project) -> dict[str, Any]:
    """Every stage in order; resumes where a previous run stopped. Returns the summary."""
    t0 = time.perf_counter()
    project.save_config()
    project.say(
        f"nnprefine {__version__}: project '{project.config.project.name}' in {project.dir}"
    )
    out: Any = None
    for name in STAGES:
        out = run_stage(project, name)
    minutes = (time.perf_counter() - t0) / 60
    project.say(f"done in {minutes:.1f} min; report: {project.dir / 'report.html'}")
    return out


def status(project: Project) -> dict[str, Any]:
    """What is done and what remains, per stage."""
    project.verify_records()
    cfg = project.config
    out: dict[str, Any] = {}
    out["lattice"] = "done" if project.stage_record("lattice") else "to do"
    init_rec = project.stage_record("initial_data")
    init = cfg.initial_data
    n_tasks = (
        len(init.energies_eV) * init.runs_per_energy
        + (1 if init.thermal_frames else 0)
        + len(init.hot_temperatures_K)
        + len(init.bulk_strains)
        + (1 if init.production_slab_snapshots and cfg.production else 0)
    )
    out["initial_data"] = (
        f"done ({init_rec['frames']} frames)"
        if init_rec
        else f"{len(project.finished_tasks('initial_data'))}/{n_tasks} trajectories"
    )
    iters = sorted((project.dir / "refine").glob("iter-*/summary.json"))
    ref_rec = project.stage_record("refine")
    out["refine"] = (
        f"done ({len(ref_rec['iterations'])} iterations: {ref_rec['stop_reason']})"
        if ref_rec
        else f"{len(iters)} of at most {cfg.refine.max_iterations} iterations finished"
    )
    val = project.stage_record("validation_data")
    out["validation_data"] = f"done ({val['frames']} frames)" if val else "to do"
    out["final_model"] = "done" if project.stage_record("final_model") else "to do"
    if project.results_db.exists():
        from nnprefine.sputter import ResultsDB

        with ResultsDB(project.results_db) as db:
            parts = []
            for c in campaigns(project):
                changed = settings_differ(project, db, c)
                if changed:
                    parts.append(f"{c['label']} run with other settings ({', '.join(changed)})")
                    continue
                done = sum(
                    min(len(db.done(c["label"], e)), c["trajectories"]) for e in c["energies_eV"]
                )
                parts.append(f"{c['label']} {done}/{c['trajectories'] * len(c['energies_eV'])}")
        out["sputter"] = "; ".join(parts) + " trajectories"
    else:
        out["sputter"] = "to do"
    if any(p.transfer_trajectories for p in cfg.production):
        name = first_surface_model(project)
        parts = []
        if name is not None and project.results_db.exists():
            from nnprefine.sputter import ResultsDB

            with ResultsDB(project.results_db) as db:
                for c in unique_campaigns(project, "model"):
                    n = c["production"].transfer_trajectories
                    if n:
                        label = transfer_label(c["label"])
                        done = sum(min(len(db.done(label, e)), n) for e in c["energies_eV"])
                        parts.append(f"{label} {done}/{n * len(c['energies_eV'])}")
        out["transfer"] = (
            f"model {name}: " + "; ".join(parts) if parts else "to do (after refine and sputter)"
        )
    if any(p.refine_on_flags for p in cfg.production):
        done = repair_records(project)
        stopped = [rec["stopped"] for rec in done if "stopped" in rec]
        out["repair"] = (
            f"done ({len(done) - 1} rounds; then {stopped[0]})"
            if stopped
            else f"{len(done)} rounds done"
        )
    out["report"] = "written" if (project.dir / "report.html").exists() else "to do"
    if project.data_db.exists():
        with project.store() as store:
            out["frames"] = {"labelled": len(store), "quarantined": store.n_quarantined()}
    return out
