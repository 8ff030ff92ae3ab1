"""The main job, stage by stage: init → refine → train → sputter → report.

Each stage function takes a :class:`~nnprefine.project.Project`, skips what is already
done and records its result; :func:`run` calls them in order, so running it again after
a kill resumes where it stopped and running it after it finished does nothing new.
"""

from __future__ import annotations

import json
import math
import time
from typing import Any

import numpy as np

from nnprefine import __version__
from nnprefine.project import Project
from nnprefine.refine import (
    _reference,
    initial_data,
    lattice,
    prepared_slab,
    refine,
    train_committee,
)

__all__ = ["STAGES", "final_model", "init", "report", "run", "status", "sputter"]


def init(project: Project) -> dict[str, Any]:
    """Lattice constants, all slabs of the config, and the initial data set."""
    cfg = project.config
    lattice(project)
    slabs = [cfg.initial_data.slab]
    if cfg.structures.production_slab_driver == "reference":
        slabs += [p.slab for p in cfg.production]
    for slab in slabs:
        prepared_slab(project, slab)
    if cfg.refine.second_surface_slab is not None:
        prepared_slab(project, cfg.refine.second_surface_slab)
    return initial_data(project)


def _last_iteration(project: Project) -> int:
    rec = project.stage_record("refine")
    return len(rec["iterations"]) if rec else 0


def final_model(project: Project) -> dict[str, Any]:
    """Train the final committee on all data; parity data, lattice and slab energy vs reference."""
    rec = project.stage_record("final_model")
    if rec is not None:
        return rec
    from nnprefine.calculators import NNPCalculator
    from nnprefine.structures import relax_hcp

    cfg = project.config
    k = _last_iteration(project)
    committee, train_rec = train_committee(
        project, "final", warm_start_from=f"iter-{k:03d}" if k else None
    )
    member = committee.members[0]
    parity: dict[str, Any] = {}
    with project.store() as store:
        for split in ("train", "test"):
            e_ref, e_nnp, f_ref, f_nnp = [], [], [], []
            for atoms in store.frames(split=split):
                n = len(atoms)
                e_ref.append(atoms.get_potential_energy() / n)
                f_ref.append(atoms.get_forces().ravel())
                e, f = member.energy_forces(atoms)
                e_nnp.append(e / n)
                f_nnp.append(np.asarray(f).ravel())
            parity[split] = {
                "energy_ref": np.array(e_ref),
                "energy_nnp": np.array(e_nnp),
                "force_ref": np.concatenate(f_ref) if f_ref else np.zeros(0),
                "force_nnp": np.concatenate(f_nnp) if f_nnp else np.zeros(0),
            }
    np.savez_compressed(
        project.model_dir("final") / "parity.npz",
        **{f"{s}_{k}": v for s, d in parity.items() for k, v in d.items()},
    )
    ref_lat = lattice(project)
    nnp_lat = relax_hcp(
        NNPCalculator(member), element=cfg.project.element, a_A=ref_lat["a_A"], c_A=ref_lat["c_A"]
    )
    slab = prepared_slab(project, cfg.initial_data.slab)
    slab.calc = _reference(cfg.reference.spec())
    slab_ref = slab.get_potential_energy() / len(slab)
    slab.calc = NNPCalculator(member)
    slab_nnp = slab.get_potential_energy() / len(slab)
    rec = {
        **train_rec,
        "lattice": {
            "model": {
                "a": nnp_lat["a_A"],
                "c": nnp_lat["c_A"],
                "energy_eV_per_atom": nnp_lat["energy_eV_per_atom"],
                "slab_energy_eV_per_atom": slab_nnp,
            },
            "reference": {
                "a": ref_lat["a_A"],
                "c": ref_lat["c_A"],
                "energy_eV_per_atom": ref_lat["energy_eV_per_atom"],
                "slab_energy_eV_per_atom": slab_ref,
            },
        },
    }
    project.record_stage("final_model", rec)
    project.say(
        f"final model: a = {nnp_lat['a_A']:.4f} Å (reference {ref_lat['a_A']:.4f}), "
        f"c = {nnp_lat['c_A']:.4f} Å (reference {ref_lat['c_A']:.4f})"
    )
    return rec


def _impact_settings(prod: Any, r_cut_A: float, temperature_K: float):
    from nnprefine.impact import ImpactSettings
    from nnprefine.md import AdaptiveTimestep

    return ImpactSettings(
        r_cut_A=r_cut_A,
        timestep_fs=prod.timestep_fs,
        duration_fs=prod.duration_fs,
        extension_fs=prod.extension_fs,
        max_extensions=prod.max_extensions,
        adaptive=AdaptiveTimestep() if prod.adaptive_timestep else None,
        early_stop="on" if prod.early_stop else "off",
        heat_sink=None if prod.heat_sink == "off" else prod.heat_sink,
        heat_sink_temperature_K=temperature_K,
        heat_sink_tau_fs=prod.heat_sink_tau_fs,
    )


def _campaigns(project: Project) -> list[dict[str, Any]]:
    """Every campaign the config asks for: surface label, driver, energies, count."""
    out = []
    for i, prod in enumerate(project.config.production):
        runs = [("model", prod.energies_eV, prod.trajectories_per_energy)]
        if prod.reference_energies_eV and prod.reference_trajectories:
            runs.append(("reference", prod.reference_energies_eV, prod.reference_trajectories))
        for driver, energies, n in runs:
            if energies and n:
                out.append(
                    {
                        "index": i,
                        "production": prod,
                        "driver": driver,
                        "energies_eV": energies,
                        "trajectories": n,
                        "label": f"{prod.slab.label}/{driver}",
                    }
                )
    return out


def sputter(project: Project) -> dict[str, Any]:
    """Production campaigns with member 1 of the final committee, and reference checks.

    Each trajectory is stored in ``results.db`` as it finishes; re-running skips stored ones.
    """
    from nnprefine.calculators import NNPCalculator
    from nnprefine.model import Committee
    from nnprefine.sputter import run_campaign

    cfg = project.config
    final_model(project)
    member = Committee.load(project.model_dir("final")).members[0]
    estimates = {}
    for c in _campaigns(project):
        prod = c["production"]
        if cfg.structures.production_slab_driver == "model":
            slab = prepared_slab(project, prod.slab, calc=NNPCalculator(member), tag="-model")
        else:
            slab = prepared_slab(project, prod.slab)
        model_driven = c["driver"] == "model"
        if model_driven:
            calc, r_cut = NNPCalculator(member), member.r_cut_A
        else:
            calc = _reference(cfg.reference.spec())
            r_cut = float(getattr(calc, "r_cut_A", cfg.descriptor.r_cut_A))
        project.say(
            f"production {c['label']}: {len(c['energies_eV'])} energies × {c['trajectories']} trajectories"
        )
        with project.executor() as ex:
            estimates[c["label"]] = run_campaign(
                project.results_db,
                slab,
                calc,
                surface=c["label"],
                energies_eV=c["energies_eV"],
                n_trajectories=c["trajectories"],
                campaign_seed=project.seed("production", c["label"]),
                settings=_impact_settings(prod, r_cut, cfg.structures.temperature_K),
                executor=ex,
                driver=c["driver"],
                # sequential stopping applies to the model's campaign, not the reference check
                target_error=prod.target_error if model_driven else None,
                n_max=prod.max_trajectories_per_energy if model_driven else None,
            )
        for est in estimates[c["label"]]:
            project.say(
                f"  {est.energy_eV:g} eV: yield {est.yield_:.3f} ± {est.error:.3f} (N = {est.n}), "
                f"reflected {est.reflection:.3f}"
            )
    return {label: [e.energy_eV for e in est] for label, est in estimates.items()}


def _yields(project: Project) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Rows of ``summary.json``'s ``yields`` and Eckstein fits, from ``results.db``."""
    from nnprefine.errors import NnprefineError
    from nnprefine.sputter import ResultsDB

    rows, fits = [], []
    with ResultsDB(project.results_db) as db:
        for c in _campaigns(project):
            ests = [e for e in db.yields(c["label"]) if e.n > 0]
            cost = {}
            for e in ests:
                traj = db.rows(c["label"], e.energy_eV)
                cost[e.energy_eV] = sum(r["core_s"] for r in traj) / max(len(traj), 1)
            for e in ests:
                rows.append(
                    {
                        "surface": c["production"].slab.label,
                        "energy_eV": e.energy_eV,
                        "driver": c["driver"],
                        "trajectories": e.n,
                        "sputtered": e.n_sputtered,
                        "yield": e.yield_,
                        "error_2sigma": e.error,
                        "wilson_low": e.wilson_low,
                        "wilson_high": e.wilson_high,
                        "reflected": e.reflection,
                        "undecided": e.n_undecided,
                        "unphysical": e.n_unphysical,
                        "core_seconds_per_trajectory": cost[e.energy_eV],
                    }
                )
            if c["driver"] == "model":
                skip = eckstein_fit_skip_reason(ests)
                if skip is not None:
                    project.say(f"Eckstein fit of {c['label']} skipped: {skip}")
                    continue
                try:
                    fit = _eckstein_fit(ests)
                except (NnprefineError, RuntimeError, ValueError) as exc:
                    project.say(f"Eckstein fit of {c['label']} failed: {exc}")
                    continue
                fits.append(
                    {
                        "surface": c["production"].slab.label,
                        **{k: v for k, v in fit.params.items()},
                        **{f"{k}_error": v for k, v in fit.errors.items() if k not in fit.fixed},
                        "fixed": ", ".join(fit.fixed),
                        "chi2": fit.chi2,
                        "dof": fit.dof,
                    }
                )
    return rows, fits


#: the least data an Eckstein fit (free E_th and q) is attempted on: energies, energies
#: with sputtering, sputtered atoms in all. With fewer, q and E_th are not determined.
MIN_FIT_ENERGIES, MIN_FIT_ENERGIES_WITH_EVENTS, MIN_FIT_EVENTS = 3, 2, 5


def eckstein_fit_skip_reason(ests: list[Any]) -> str | None:
    """Why the yields are too few to fit (None when they suffice)."""
    with_events = [e for e in ests if e.n_sputtered > 0]
    events = sum(e.n_sputtered for e in ests)
    if (
        len(ests) >= MIN_FIT_ENERGIES
        and len(with_events) >= MIN_FIT_ENERGIES_WITH_EVENTS
        and events >= MIN_FIT_EVENTS
    ):
        return None
    return (
        f"{len(ests)} energies, {len(with_events)} with sputtering, {events} sputtered atoms; "
        f"a fit needs at least {MIN_FIT_ENERGIES}, {MIN_FIT_ENERGIES_WITH_EVENTS} and "
        f"{MIN_FIT_EVENTS} (run more trajectories per energy)"
    )


def _eckstein_fit(ests: list[Any]) -> Any:
    """Eckstein fit of a campaign's yields with μ and λ fixed at the paper's values.

    None when the data are too few (:func:`eckstein_fit_skip_reason`).
    """
    from nnprefine.yields import fit_eckstein

    if eckstein_fit_skip_reason(ests) is not None:
        return None
    return fit_eckstein(
        [e.energy_eV for e in ests],
        [e.yield_ for e in ests],
        [e.fit_sigma for e in ests],
        fixed={"mu": 1.34, "lambda_": 2.03},
    )


def _yield_plot(project: Project, path: Any) -> Any:
    from nnprefine.sputter import ResultsDB
    from nnprefine.yields import plot_yields

    model_runs = [c for c in _campaigns(project) if c["driver"] == "model"]
    if not model_runs:
        return None
    c = model_runs[0]
    with ResultsDB(project.results_db) as db:
        ests = [e for e in db.yields(c["label"]) if e.n > 0]
    if not ests:
        return None
    try:
        fit = _eckstein_fit(ests)
    except Exception:  # a failed fit is reported in the summary; the plot shows the points
        fit = None
    return plot_yields(
        path,
        ests,
        fit,
        label=f"this work ({c['production'].slab.label}, NNP)",
        title=f"Be self-sputtering, {c['production'].slab.label}",
    )


def _gather_summary(project: Project) -> dict[str, Any]:
    cfg = project.config
    summary: dict[str, Any] = {
        "project": cfg.project.name,
        "code_version": __version__,
        "reference": cfg.reference.spec(),
        "iterations": [],
        "lattice": {},
        "yields": [],
    }
    counts: dict[int, dict[str, int]] = {}
    if project.data_db.exists():
        with project.store() as store:
            counts = store.counts_per_iteration()
    cumulative = {"train": 0, "test": 0}
    growth = []
    for k in sorted(counts):
        cumulative["train"] += counts[k].get("train", 0)
        cumulative["test"] += counts[k].get("test", 0)
        growth.append(
            {"iteration": k, "train_frames": cumulative["train"], "test_frames": cumulative["test"]}
        )
    summary["dataset_growth"] = growth
    init_rec = project.stage_record("initial_data")
    if init_rec:
        summary["initial_frames"] = init_rec["frames"]
    for path in sorted((project.dir / "refine").glob("iter-*/summary.json")):
        summary["iterations"].append(json.loads(path.read_text()))
    rec = project.stage_record("refine")
    if rec:
        summary["refine_stop_reason"] = rec["stop_reason"]
    final = project.stage_record("final_model")
    if final:
        summary["lattice"] = final["lattice"]
        summary["final_model"] = {
            "train_frames": final["train_frames"],
            "test_frames": final["test_frames"],
            "train_rmse_energy_mev_per_atom": final["train_rmse_energy_mev_per_atom"][0],
            "test_rmse_energy_mev_per_atom": final["test_rmse_energy_mev_per_atom"][0],
            "train_rmse_force_mev_per_A": final["train_rmse_force_mev_per_A"][0],
            "test_rmse_force_mev_per_A": final["test_rmse_force_mev_per_A"][0],
        }
    if project.results_db.exists():
        summary["yields"], summary["eckstein_fits"] = _yields(project)
    return summary


def report(project: Project) -> dict[str, Any]:
    """Write figures, ``summary.json`` and ``report.html`` from what the stages produced."""
    from nnprefine import report as rp

    summary = _gather_summary(project)
    figs = project.figures_dir
    figures: dict[str, Any] = {}
    if summary["dataset_growth"]:
        figures["dataset_growth"] = rp.plot_dataset_growth(
            summary["dataset_growth"], figs / "dataset_growth.png"
        )
    if summary["iterations"]:
        figures["convergence"] = rp.plot_convergence(
            summary["iterations"], figs / "convergence.png"
        )
        dis = []
        for it in summary["iterations"]:
            k = it["iteration"]
            path = project.iteration_dir(k) / "disagreement.npz"
            if path.exists():
                d = np.load(path)
                dis.append(
                    rp.plot_disagreement(
                        d["energy_eV_per_atom"],
                        d["force_eV_per_A"],
                        d["selected"],
                        float(d["energy_threshold_eV_per_atom"]),
                        float(d["force_threshold_eV_per_A"]),
                        figs / f"disagreement_iter{k:03d}.png",
                        title=f"iteration {k} ({it.get('surface', '')})",
                    )
                )
        figures["disagreement"] = dis
    parity_path = project.model_dir("final") / "parity.npz"
    if parity_path.exists():
        d = np.load(parity_path)
        parity = {
            s: {k: d[f"{s}_{k}"] for k in ("energy_ref", "energy_nnp", "force_ref", "force_nnp")}
            for s in ("train", "test")
        }
        figures["parity"] = rp.plot_parity(parity, figs / "parity.png")
    if summary["yields"]:
        plot = _yield_plot(project, figs / "yields.png")
        if plot is not None:
            figures["yields"] = plot
    rp.write_summary(summary, project.dir / "summary.json")
    rp.write_html(project.dir / "report.html", summary, figures)
    return summary


def status(project: Project) -> dict[str, Any]:
    """What is done and what remains, per stage."""
    cfg = project.config
    out: dict[str, Any] = {}
    out["lattice"] = "done" if project.stage_record("lattice") else "to do"
    init_rec = project.stage_record("initial_data")
    n_tasks = len(cfg.initial_data.energies_eV) * cfg.initial_data.runs_per_energy + (
        1 if cfg.initial_data.thermal_frames else 0
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
    out["final_model"] = "done" if project.stage_record("final_model") else "to do"
    if project.results_db.exists():
        from nnprefine.sputter import ResultsDB

        with ResultsDB(project.results_db) as db:
            parts = []
            for c in _campaigns(project):
                done = sum(
                    min(len(db.done(c["label"], e)), c["trajectories"]) for e in c["energies_eV"]
                )
                parts.append(f"{c['label']} {done}/{c['trajectories'] * len(c['energies_eV'])}")
        out["sputter"] = "; ".join(parts) + " trajectories"
    else:
        out["sputter"] = "to do"
    out["report"] = "written" if (project.dir / "report.html").exists() else "to do"
    if project.data_db.exists():
        with project.store() as store:
            out["frames"] = {"labelled": len(store), "quarantined": store.n_quarantined()}
    return out


STAGES = {
    "init": init,
    "refine": refine,
    "train": final_model,
    "sputter": sputter,
    "report": report,
}


def run(project: Project) -> dict[str, Any]:
    """Every stage in order; resumes where a previous run stopped."""
    t0 = time.perf_counter()
    project.save_config()
    project.say(
        f"nnprefine {__version__}: project '{project.config.project.name}' in {project.dir}"
    )
    init(project)
    refine(project)
    final_model(project)
    sputter(project)
    summary = report(project)
    minutes = (time.perf_counter() - t0) / 60
    project.say(f"done in {minutes:.1f} min; report: {project.dir / 'report.html'}")
    return summary


def _finite(x: Any) -> Any:
    return x if not (isinstance(x, float) and math.isnan(x)) else None
