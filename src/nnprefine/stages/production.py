"""Stage ``sputter``: production impact campaigns with member 1 of the final committee.

Every ``[[production]]`` table is one campaign of model-driven impacts and, optionally, a
reference-driven check at a few energies. Each trajectory is stored in ``results.db`` as
it finishes (:func:`nnprefine.sputter.run_campaign`); re-running skips stored ones.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from nnprefine.reference import cached_reference
from nnprefine.stages.initial_data import prepared_slab
from nnprefine.stages.project import Project
from nnprefine.stages.training import train_final

__all__ = ["campaign_slab", "campaigns", "sputter", "unique_campaigns", "watch_settings"]


def campaigns(project: Project) -> list[dict[str, Any]]:
    """Every campaign the config asks for: index, production section, driver, energies,
    trajectories per energy and the label its trajectories are stored under.

    The label is ``<slab label>/<driver>``; ``seed_label`` is the label without the driver,
    so the model-driven campaign and its reference check run the same impact seeds
    (trajectory i at energy E starts identically for both: a paired comparison). Two sections on the same slab with the same
    impact settings share it on purpose: the later one adds trajectories to the same
    statistics (the paper's 5,000 trajectories near threshold on top of 500), and the
    report lists each label once. With other settings a section gets its own label,
    ``<slab label>/<driver>/production<index>``, so trajectories of different protocols
    are never pooled.
    """
    out = []
    settings_of: dict[str, Any] = {}
    for i, prod in enumerate(project.config.production):
        runs = [("model", prod.energies_eV, prod.trajectories_per_energy)]
        if prod.reference_energies_eV and prod.reference_trajectories:
            runs.append(("reference", prod.reference_energies_eV, prod.reference_trajectories))
        for driver, energies, n in runs:
            if energies and n:
                label, seed_label = f"{prod.slab.label}/{driver}", prod.slab.label
                if settings_of.setdefault(label, prod.impact) != prod.impact:
                    label, seed_label = f"{label}/production{i}", f"{seed_label}/production{i}"
                out.append(
                    {
                        "index": i,
                        "production": prod,
                        "driver": driver,
                        "energies_eV": energies,
                        "trajectories": n,
                        "label": label,
                        "seed_label": seed_label,
                    }
                )
    return out


def unique_campaigns(project: Project, driver: str | None = None) -> list[dict[str, Any]]:
    """:func:`campaigns` (of ``driver`` only, when given), each label once: sections that
    share a label pool their trajectories."""
    first: dict[str, dict[str, Any]] = {}
    for c in campaigns(project):
        if driver is None or c["driver"] == driver:
            first.setdefault(c["label"], c)
    return list(first.values())


def settings_differ(project: Project, db: Any, c: dict[str, Any]) -> list[str]:
    """What differs between the settings ``results.db`` ran campaign ``c`` with and the
    config's (impact settings, campaign seed); empty when it matches or was not run."""
    meta = db.campaign_meta(c["label"])
    if meta is None:
        return []
    from nnprefine.sputter import settings_record

    settings = settings_record(c["production"].impact, target=project.config.project.element)
    stored = meta["settings"]
    keys = (set(stored) | set(settings)) - {"r_cut_A"}  # r_cut_A is resolved from the model
    changed = sorted(k for k in keys if stored.get(k) != settings.get(k))
    if meta["campaign_seed"] != project.seed("production", c["seed_label"]):
        changed.append("campaign seed (project seed or label)")
    return changed


def watch_settings(project: Project, prod: Any, model_dir: Path | None = None) -> Any:
    """The committee watch of a model-driven campaign: ``prod``'s interval and frames, the
    last ``[[refine.thresholds]]`` pair, the calibration of ``validation.json`` in
    ``model_dir`` (default ``models/final``; 1 when the model was not validated, which the
    log says). None when ``prod.watch_interval`` is 0."""
    from nnprefine.watch import WatchSettings

    if prod.watch_interval == 0:
        return None
    last = project.config.refine.thresholds[-1]
    record = (model_dir or project.model_dir("final")) / "validation.json"
    alpha = {"energy": 1.0, "force": 1.0}
    if record.exists():
        alpha = json.loads(record.read_text()).get("calibration") or alpha
    else:
        project.say(f"  committee watch uncalibrated: no {record} ('nnprefine validate')")
    return WatchSettings(
        interval=prod.watch_interval,
        energy_threshold_eV_per_atom=last.energy_meV_per_atom / 1000.0,
        force_threshold_eV_per_A=last.force_eV_per_A,
        energy_scale=float(alpha["energy"]),
        force_scale=float(alpha["force"]),
        max_frames=prod.watch_frames,
        min_separation_fs=prod.watch_separation_fs,
        flag_fraction=prod.watch_flag_fraction,
    )


def campaign_slab(project: Project, prod: Any, member: Any) -> Any:
    """The relaxed, equilibrated slab of production section ``prod`` (prepared by the
    reference, or by ``member`` of the final committee with ``production_slab_driver =
    "model"``); every campaign and re-run of the section starts from it."""
    from nnprefine.calculators import NNPCalculator

    if project.config.structures.production_slab_driver == "model":
        return prepared_slab(project, prod.slab, calc=NNPCalculator(member), tag="-model")
    return prepared_slab(project, prod.slab)


def sputter(project: Project) -> dict[str, Any]:
    """Production campaigns with member 1 of the final committee, and reference checks.

    Returns the energies (eV) done per campaign label.
    """
    from nnprefine.calculators import NNPCalculator
    from nnprefine.model import Committee
    from nnprefine.sputter import ResultsDB, run_campaign

    cfg = project.config
    train_final(project)
    committee = Committee.load(project.model_dir("final"))
    member = committee.members[0]
    estimates = {}
    for c in campaigns(project):
        prod = c["production"]
        slab = campaign_slab(project, prod, member)
        model_driven = c["driver"] == "model"
        calc = NNPCalculator(member) if model_driven else cached_reference(cfg.reference.spec())
        # both drivers classify with the model's range, so the reference check pairs with
        # the model's campaign seed by seed (the reference's own range may be shorter)
        r_cut = member.r_cut_A
        watch = None
        if model_driven and len(committee) > 1:
            ws = watch_settings(project, prod)
            watch = None if ws is None else (committee, ws)
        project.say(
            f"production {c['label']}: {len(c['energies_eV'])} energies × "
            f"{c['trajectories']} trajectories"
        )
        with project.executor() as executor:
            estimates[c["label"]] = run_campaign(
                project.results_db,
                slab,
                calc,
                surface=c["label"],
                energies_eV=c["energies_eV"],
                n_trajectories=c["trajectories"],
                campaign_seed=project.seed("production", c["seed_label"]),
                seed_label=c["seed_label"],
                settings=dataclasses.replace(prod.impact, r_cut_A=r_cut),
                executor=executor,
                driver=c["driver"],
                # sequential stopping applies to the model's campaign, not the reference check
                target_error=prod.target_error if model_driven else None,
                n_max=prod.max_trajectories_per_energy if model_driven else None,
                watch=watch,
                model_name="final" if model_driven else None,
            )
        for est in estimates[c["label"]]:
            project.say(
                f"  {est.energy_eV:g} eV: yield {est.yield_:.3f} ± {est.error:.3f} (N = {est.n}), "
                f"at most {est.yield_upper:.3f} with its {est.n_undecided} undecided, "
                f"reflected {est.reflection:.3f}"
            )
        if watch is not None:
            with ResultsDB(project.results_db) as db:
                for energy, (n_flagged, n) in db.flagged_counts(c["label"]).items():
                    project.say(
                        f"  {energy:g} eV: committee watch flagged {n_flagged} of {n} "
                        f"trajectories ({n_flagged / max(n, 1):.0%})"
                    )
    return {label: [e.energy_eV for e in est] for label, est in estimates.items()}
