"""Stage ``transfer``: the paper's NNP5 → NNP6 comparison, one model per surface round.

The paper refined its Be(0001) potential again for Be(01-10): the potential fitted to one
surface (NNP5) had to be checked on the other before its yields could be trusted, and the
refined potential (NNP6) was then used on both. Here the potential fitted to the first
surface is the committee of the first iteration on ``refine.second_surface_slab``
(``models/iter-<k>``, trained on the frames of the first surface only, before the second
surface's exploration); the final model plays NNP6.

For every model-driven campaign of a ``[[production]]`` section with
``transfer_trajectories`` > 0, that many trajectories per energy are driven by the
first-surface model on the final model's seeds (label ``<campaign>/first-surface``, rows
tagged with the model's name), watched by its own committee. :func:`transfer_rows`
compares the two models seed by seed, and with the reference check where it ran the
same seeds; :func:`transfer_summary` adds both models' validation RMSE per group (the
``second_surface`` group is the frames the first model never saw) and what the
committee said while exploring each surface.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from nnprefine.comparison import compare_drivers, fate_agreement
from nnprefine.stages.production import campaign_slab, unique_campaigns, watch_settings
from nnprefine.stages.project import Project

__all__ = ["first_surface_model", "transfer", "transfer_label", "transfer_summary"]


def transfer_label(label: str) -> str:
    """The label of the first-surface model's trajectories of campaign ``label``."""
    return f"{label}/first-surface"


def first_surface_model(project: Project) -> str | None:
    """The name of the committee fitted to the first surface only (the paper's NNP5): the
    one that explored the second surface first. None before refinement reached it."""
    second = project.config.refine.second_surface_slab
    rec = project.stage_record("refine")
    if second is None or rec is None:
        return None
    for it in rec["iterations"]:
        if it.get("surface") == second.label:
            return f"iter-{int(it['iteration']):03d}"
    return None


def _sections(project: Project) -> list[dict[str, Any]]:
    return [c for c in unique_campaigns(project, "model") if c["production"].transfer_trajectories]


def transfer(project: Project) -> dict[str, Any]:
    """Run the first-surface model's trajectories (see the module docstring); returns
    ``{"model": name, "campaigns": [label, …]}`` (no model: no section asks for it)."""
    from nnprefine.calculators import NNPCalculator
    from nnprefine.model import Committee
    from nnprefine.sputter import run_campaign
    from nnprefine.stages.validation import say_validation, validate, validation_set_is_empty

    sections = _sections(project)
    if not sections:
        return {"model": None, "campaigns": []}
    name = first_surface_model(project)
    if name is None:  # config validation makes this a refine record without the round
        project.say("transfer: refinement ran no second-surface iteration; nothing to compare")
        return {"model": None, "campaigns": []}
    committee = Committee.load(project.model_dir(name))
    if not (project.model_dir(name) / "validation.json").exists() and not (
        validation_set_is_empty(project)
    ):
        say_validation(project, validate(project, name, committee))
    member = committee.members[0]
    final_member = Committee.load(project.model_dir("final")).members[0]
    for c in sections:
        prod = c["production"]
        ws = watch_settings(project, prod, project.model_dir(name))
        project.say(
            f"transfer: {c['label']} with the first-surface model '{name}', "
            f"{prod.transfer_trajectories} trajectories per energy"
        )
        with project.executor() as executor:
            run_campaign(
                project.results_db,
                campaign_slab(project, prod, final_member),
                NNPCalculator(member),
                surface=transfer_label(c["label"]),
                energies_eV=c["energies_eV"],
                n_trajectories=prod.transfer_trajectories,
                campaign_seed=project.seed("production", c["seed_label"]),
                seed_label=c["seed_label"],
                settings=dataclasses.replace(prod.impact, r_cut_A=member.r_cut_A),
                executor=executor,
                driver="model",
                watch=None if ws is None or len(committee) < 2 else (committee, ws),
                model_name=name,
            )
    return {"model": name, "campaigns": [transfer_label(c["label"]) for c in sections]}


def _flagged_fraction(rows: list[dict[str, Any]]) -> float | None:
    watched = [r for r in rows if int(r.get("watched") or 0)]
    return sum(int(r["flagged"] or 0) for r in watched) / len(watched) if watched else None


def transfer_rows(project: Project, db: Any) -> list[dict[str, Any]]:
    """Per campaign and energy: both models on the same seeds (yields with 2σ/√N, z of the
    difference, Fisher p, same-fate fraction, flagged fractions) and, where the reference
    check ran those seeds, how often each model met its fate."""
    reference_of = {x["seed_label"]: x["label"] for x in unique_campaigns(project, "reference")}
    out = []
    for c in _sections(project):
        first = db.rows(transfer_label(c["label"]))
        seeds = {int(r["seed"]) for r in first}
        final = [r for r in db.rows(c["label"]) if int(r["seed"]) in seeds]
        reference = (
            db.rows(reference_of[c["seed_label"]]) if c["seed_label"] in reference_of else []
        )
        for cmp in compare_drivers(first, final):
            e = cmp.energy_eV
            d = cmp.as_dict()
            f_rows = [r for r in first if r["energy_eV"] == e]
            n_rows = [r for r in final if r["energy_eV"] == e]
            row = {
                "surface": c["production"].slab.label,
                "campaign": c["label"],
                "energy_eV": e,
                "first_surface_model": d["model"] | {"flagged_fraction": _flagged_fraction(f_rows)},
                "final_model": d["reference"] | {"flagged_fraction": _flagged_fraction(n_rows)},
                **{k: d[k] for k in ("difference", "combined_se", "z", "fisher_p", "n_paired")},
                "same_fate": d["same_fate"],
            }
            ref_rows = [r for r in reference if r["energy_eV"] == e]
            if ref_rows:
                row["first_surface_model"] |= fate_agreement(f_rows, ref_rows)
                row["final_model"] |= fate_agreement(n_rows, ref_rows)
            out.append(row)
    return out


def _groups(project: Project, name: str) -> dict[str, Any] | None:
    path = project.model_dir(name) / "validation.json"
    if not path.exists():
        return None
    scored = json.loads(path.read_text())
    return {"all": scored["all"], **scored["groups"]}


def transfer_summary(project: Project, db: Any) -> dict[str, Any] | None:
    """``summary.json``'s ``transfer`` block (None without a first-surface model): the
    model names, both models' validation RMSE per group, the fraction of exploration
    frames over threshold on each surface, and :func:`transfer_rows`."""
    name = first_surface_model(project)
    if name is None:
        return None
    rec = project.stage_record("refine")
    second = project.config.refine.second_surface_slab
    explored = {
        f"iter-{int(it['iteration']):03d}": {
            "surface": it.get("surface"),
            "fraction_over_threshold": it["fraction_over_threshold"],
        }
        for it in rec["iterations"]
    }
    return {
        "first_surface_model": name,
        "final_model": "final",
        "second_surface": second.label,
        "validation": {
            "first_surface_model": _groups(project, name),
            "final": _groups(project, "final"),
        },
        "exploration": explored,
        "yields": transfer_rows(project, db),
    }
