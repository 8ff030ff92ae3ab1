"""Stage ``report``: ``summary.json``, the figures and ``report.html`` from what the stages
recorded (stage records, iteration summaries, ``data.db``, ``results.db``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from nnprefine import __version__
from nnprefine.errors import ConfigError
from nnprefine.stages.production import settings_differ, unique_campaigns
from nnprefine.stages.project import Project
from nnprefine.stages.repair import repair_records
from nnprefine.stages.transfer import transfer_summary

__all__ = ["report", "summary"]


def _estimates(project: Project, db: Any, c: dict[str, Any]) -> list[Any]:
    """The yields of campaign ``c`` at the energies the config asks for, after checking
    that ``results.db`` ran it with the config's seed and impact settings: a report never
    publishes trajectories of other settings."""
    changed = settings_differ(project, db, c)
    if changed:
        raise ConfigError(
            f"{project.results_db} holds {c['label']!r} run with other settings "
            f"({', '.join(changed)} differ from the config): the report will not publish "
            "them. Restore the settings, or give the project a new output_dir"
        )
    wanted = {float(e) for e in c["energies_eV"]}
    return [e for e in db.yields(c["label"]) if e.n > 0 and e.energy_eV in wanted]


def _sputtered_atoms(atoms: list[dict[str, float]]) -> dict[str, Any]:
    """Mean kinetic energy (eV) and polar angle from the normal (deg) of the sputtered
    atoms, with their 10 %, 50 % and 90 % quantiles; None when none sputtered."""
    if not atoms:
        return {"sputtered_energy_mean_eV": None, "sputtered_polar_mean_deg": None}
    ke = np.array([a["kinetic_eV"] for a in atoms])
    polar = np.array([a["polar_deg"] for a in atoms])
    return {
        "sputtered_energy_mean_eV": float(ke.mean()),
        "sputtered_energy_quantiles_eV": [float(q) for q in np.quantile(ke, [0.1, 0.5, 0.9])],
        "sputtered_polar_mean_deg": float(polar.mean()),
        "sputtered_polar_quantiles_deg": [float(q) for q in np.quantile(polar, [0.1, 0.5, 0.9])],
    }


def _watch_columns(energy_eV: float, traj: list[dict[str, Any]]) -> dict[str, Any]:
    """The committee watch's share of one energy: watched and flagged trajectories, the
    flagged fraction, and the yield (2σ/√N) of the trajectories it did not flag."""
    from nnprefine.yields import estimate_yield

    watched = [r for r in traj if r.get("watched")]
    if not watched:
        return {}
    flagged = sum(int(r["flagged"] or 0) for r in watched)
    calm = [r for r in watched if not r["flagged"]]
    est = estimate_yield(energy_eV, calm) if calm else None
    return {
        "watched": len(watched),
        "flagged": flagged,
        "flagged_fraction": flagged / len(watched),
        "yield_unflagged": est.yield_ if est and est.n else None,
        "error_2sigma_unflagged": est.error if est and est.n else None,
    }


def _comparison_rows(project: Project) -> list[dict[str, Any]]:
    """Model against reference on the same seeds, per surface and energy both ran
    (:func:`nnprefine.comparison.compare_drivers`), with the watch's flag × fate table."""
    from nnprefine.comparison import compare_drivers, flag_table
    from nnprefine.sputter import ResultsDB

    by_seed_label: dict[str, dict[str, dict[str, Any]]] = {}
    for c in unique_campaigns(project):
        by_seed_label.setdefault(c["seed_label"], {})[c["driver"]] = c
    out = []
    with ResultsDB(project.results_db) as db:
        for pair in by_seed_label.values():
            if set(pair) != {"model", "reference"}:
                continue
            model, ref = db.rows(pair["model"]["label"]), db.rows(pair["reference"]["label"])
            for cmp in compare_drivers(model, ref):
                e = cmp.energy_eV
                flags = flag_table(
                    [r for r in model if r["energy_eV"] == e],
                    [r for r in ref if r["energy_eV"] == e],
                )
                out.append(
                    {
                        "surface": pair["model"]["production"].slab.label,
                        **cmp.as_dict(),
                        "watch_by_fate": flags,
                    }
                )
    return out


def _yield_rows(project: Project) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Rows of ``summary.json``'s ``yields`` and Eckstein fits, from ``results.db``."""
    from nnprefine.sputter import ResultsDB

    rows, fits = [], []
    with ResultsDB(project.results_db) as db:
        for c in unique_campaigns(project):
            surface = c["production"].slab.label
            ests = _estimates(project, db, c)
            for e in ests:
                traj = db.rows(c["label"], e.energy_eV)
                atoms_out = [a for r in traj for a in json.loads(r["sputtered_json"] or "[]")]
                rows.append(
                    {
                        "surface": surface,
                        "energy_eV": e.energy_eV,
                        "driver": c["driver"],
                        "trajectories": e.n,
                        "sputtered": e.n_sputtered,
                        "yield": e.yield_,
                        "yield_upper": e.yield_upper,
                        "error_2sigma": e.error,
                        "wilson_low": e.wilson_low,
                        "wilson_high": e.wilson_high,
                        "clopper_pearson_low": e.exact_low,
                        "clopper_pearson_high": e.exact_high,
                        "reflected": e.reflection,
                        "undecided": e.n_undecided,
                        "unphysical": e.n_unphysical,
                        "core_seconds_per_trajectory": sum(r["core_s"] for r in traj)
                        / max(len(traj), 1),
                        **_sputtered_atoms(atoms_out),
                        **_watch_columns(e.energy_eV, traj),
                    }
                )
            if c["driver"] != "model":
                continue
            fit, why = _campaign_fit(project, c, ests)
            if fit is None:
                project.say(f"Eckstein fit of {c['label']} {why}")
                continue
            fits.append(
                {
                    "surface": surface,
                    "projectile": fit.pair[0],
                    "target": fit.pair[1],
                    **fit.params,
                    **{f"{k}_error": v for k, v in fit.errors.items() if k not in fit.fixed},
                    "fixed": ", ".join(fit.fixed),
                    "chi2": fit.chi2,
                    "dof": fit.dof,
                }
            )
    return rows, fits


def _yield_plot(project: Project, path: Path) -> list[Path]:
    """One panel per surface: every model campaign on it with its fit (``path`` for the
    first surface, ``<stem>_<n>.png`` for the next); empty when there is nothing to plot."""
    from nnprefine.sputter import ResultsDB
    from nnprefine.yields import plot_yields

    panels: dict[str, list[Any]] = {}
    with ResultsDB(project.results_db) as db:
        for c in unique_campaigns(project):
            if c["driver"] != "model":
                continue
            ests = _estimates(project, db, c)
            if not ests:
                continue
            fit, _ = _campaign_fit(project, c, ests)  # a failed fit: the points stay
            label = f"this work ({c['label'].removesuffix('/model')}, NNP)"
            slab = c["production"].slab
            panel = panels.setdefault(slab.label, {"slab": slab, "pairs": set(), "series": []})
            panel["pairs"].add(_pair(project, c))
            panel["series"].append((label, ests, fit))
    out = []
    for n, panel in enumerate(panels.values()):
        slab, series = panel["slab"], panel["series"]
        surface = f"{slab.element}({slab.surface})"
        if len(panel["pairs"]) == 1:
            ions, target = next(iter(panel["pairs"]))
            title = _title(ions, target) + f", {surface}"
        else:
            title = f"sputtering of {surface}"
        # the paper's points are Be on Be(0001)
        paper = panel["pairs"] == {("Be", "Be")} and slab.surface == "0001"
        out.append(
            plot_yields(
                path if n == 0 else path.with_name(f"{path.stem}_{n}{path.suffix}"),
                series[0][1],
                series[0][2],
                label=series[0][0],
                title=title,
                more=series[1:],
                **({} if paper else {"published": None}),
            )
        )
    return out


def _sputtered_plots(project: Project, figs: Path) -> list[Path]:
    """Per model campaign that sputtered: histograms of the sputtered atoms' kinetic
    energy and polar angle, all energies pooled, beside its reference check's if any."""
    from nnprefine.comparison import plot_sputtered_distributions, sputtered_atoms
    from nnprefine.sputter import ResultsDB

    out = []
    with ResultsDB(project.results_db) as db:
        found = unique_campaigns(project)
        for c in found:
            rows = db.rows(c["label"]) if c["driver"] == "model" else []
            if not sputtered_atoms(rows)[0].size:
                continue
            check = [
                r
                for ref in found
                if ref["driver"] == "reference" and ref["production"] is c["production"]
                for r in db.rows(ref["label"])
            ]
            out.append(
                plot_sputtered_distributions(
                    figs / f"sputtered_{len(out)}.png",
                    rows,
                    check,
                    title=f"sputtered atoms, {c['label']} (all energies)",
                )
            )
    return out


def _campaign_fit(project: Project, c: dict[str, Any], ests: list[Any]) -> tuple[Any, str]:
    """The Eckstein fit of model campaign ``c`` (μ, λ fixed), or None and why not."""
    from nnprefine.errors import NnprefineError
    from nnprefine.yields import eckstein_fit_skip_reason, fit_campaign

    polar = c["production"].impact.polar_deg
    if polar != 0:
        return None, (
            f"skipped: the Eckstein formula used is for normal incidence; the campaign "
            f"shoots at {polar:g}° from the normal"
        )
    skip = eckstein_fit_skip_reason(ests)
    if skip is not None:
        return None, f"skipped: {skip}"
    try:
        return fit_campaign(ests, pair=_pair(project, c)), ""
    except (NnprefineError, RuntimeError, ValueError) as exc:
        return None, f"failed: {exc}"


def _pair(project: Project, c: dict[str, Any]) -> tuple[str, str]:
    """(projectile, target) of campaign ``c``: the elements the Eckstein formula needs."""
    cfg = project.config
    ions = c["production"].impact.projectile or cfg.project.projectile_element
    return ions, cfg.project.element


def _title(ions: str, target: str) -> str:
    """'Be self-sputtering', or 'Be on W sputtering' for a projectile of another element."""
    return f"{target} self-sputtering" if ions == target else f"{ions} on {target} sputtering"


def _dataset_growth(project: Project) -> list[dict[str, int]]:
    """Cumulative train and test frames after each iteration."""
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
    return growth


def summary(project: Project) -> dict[str, Any]:
    """What ``summary.json`` holds: iterations, dataset growth, final model, lattice, yields."""
    cfg = project.config
    out: dict[str, Any] = {
        "project": cfg.project.name,
        "system": {
            "title": _title(cfg.project.projectile_element, cfg.project.element),
            "target": cfg.project.element,
            "crystal": cfg.structures.crystal,
            "projectile": cfg.project.projectile_element,
            # every campaign's, when one names its own
            "projectiles": sorted({p.impact.projectile for p in cfg.production}),
            "elements": list(cfg.elements),
        },
        "code_version": __version__,
        "reference": cfg.reference.spec(),
        "iterations": [],
        "lattice": {},
        "yields": [],
        "dataset_growth": _dataset_growth(project),
    }
    init_rec = project.stage_record("initial_data")
    if init_rec:
        out["initial_frames"] = init_rec["frames"]
    for path in sorted((project.dir / "refine").glob("iter-*/summary.json")):
        out["iterations"].append(json.loads(path.read_text()))
    rec = project.stage_record("refine")
    if rec:
        out["refine_stop_reason"] = rec["stop_reason"]
    final = project.stage_record("final_model")
    if final:
        out["lattice"] = final["lattice"]
        out["final_model"] = {
            "train_frames": final["train_frames"],
            "test_frames": final["test_frames"],
            **{
                key: final[key][0]
                for key in (
                    "train_rmse_energy_mev_per_atom",
                    "test_rmse_energy_mev_per_atom",
                    "train_rmse_force_mev_per_A",
                    "test_rmse_force_mev_per_A",
                )
            },
        }
    validation = project.model_dir("final") / "validation.json"
    if final and validation.exists():
        out["validation"] = _validation_block(json.loads(validation.read_text()), final)
    if project.results_db.exists():
        out["yields"], out["eckstein_fits"] = _yield_rows(project)
        out["comparisons"] = _comparison_rows(project)
        repairs = repair_records(project)
        if repairs:
            out["repairs"] = repairs
        from nnprefine.sputter import ResultsDB

        with ResultsDB(project.results_db) as db:
            transfer = transfer_summary(project, db)
        if transfer is not None and transfer["yields"]:
            out["transfer"] = transfer
    return out


def _validation_block(scored: dict[str, Any], final: dict[str, Any]) -> dict[str, Any]:
    """``summary.json``'s ``validation``: per-group RMSE, NNP − reference energies of bulk
    and slab (meV/atom), lattice constants, rank correlation, calibration and the verdict."""
    m, r = final["lattice"]["model"], final["lattice"]["reference"]
    return {
        **{k: scored[k] for k in ("all", "groups", "rank_correlation_force", "calibration")},
        "bulk_energy_error_meV_per_atom": 1000
        * (m["energy_eV_per_atom"] - r["energy_eV_per_atom"]),
        "slab_energy_error_meV_per_atom": 1000
        * (m["slab_energy_eV_per_atom"] - r["slab_energy_eV_per_atom"]),
        "lattice_error_percent": {k: 100 * (m[k] / r[k] - 1) for k in ("a", "c")},
        "verdict": scored["verdict"],
    }


def _disagreement_plots(project: Project, iterations: list[dict[str, Any]]) -> list[Any]:
    from nnprefine import report as rp

    plots = []
    for it in iterations:
        k = it["iteration"]
        path = project.iteration_dir(k) / "disagreement.npz"
        if path.exists():
            d = np.load(path)
            plots.append(
                rp.plot_disagreement(
                    d["energy_eV_per_atom"],
                    d["force_eV_per_A"],
                    d["selected"],
                    float(d["energy_threshold_eV_per_atom"]),
                    float(d["force_threshold_eV_per_A"]),
                    project.figures_dir / f"disagreement_iter{k:03d}.png",
                    title=f"iteration {k} ({it.get('surface', '')})",
                )
            )
    return plots


def report(project: Project) -> dict[str, Any]:
    """Write figures, ``summary.json`` and ``report.html`` from what the stages produced."""
    from nnprefine import report as rp

    out = summary(project)
    figs = project.figures_dir
    figures: dict[str, Any] = {}
    if out["dataset_growth"]:
        figures["dataset_growth"] = rp.plot_dataset_growth(
            out["dataset_growth"], figs / "dataset_growth.png"
        )
    if out["iterations"]:
        figures["convergence"] = rp.plot_convergence(out["iterations"], figs / "convergence.png")
        figures["disagreement"] = _disagreement_plots(project, out["iterations"])
    parity_path = project.model_dir("final") / "parity.npz"
    if parity_path.exists():
        d = np.load(parity_path)
        parity = {
            s: {k: d[f"{s}_{k}"] for k in ("energy_ref", "energy_nnp", "force_ref", "force_nnp")}
            for s in ("train", "test")
        }
        figures["parity"] = rp.plot_parity(parity, figs / "parity.png")
    scored = project.model_dir("final") / "validation.npz"
    if "validation" in out and scored.exists():
        from nnprefine.validation import informative

        d = np.load(scored)
        ok = informative(d["force_disagreement_eV_per_A"])  # not the perfect crystal's noise
        figures["validation"] = rp.plot_error_vs_disagreement(
            d["force_disagreement_eV_per_A"][ok],
            d["max_force_error_eV_per_A"][ok],
            d["groups"][ok],
            figs / "validation_error_vs_disagreement.png",
            rank_correlation=out["validation"]["rank_correlation_force"],
            alpha=out["validation"]["calibration"]["force"],
        )
    if out["yields"]:
        plots = _yield_plot(project, figs / "yields.png")
        if plots:
            figures["yields"] = plots
        figures["sputtered"] = _sputtered_plots(project, figs)
    rp.write_summary(out, project.dir / "summary.json")
    rp.write_html(project.dir / "report.html", out, figures)
    return out
