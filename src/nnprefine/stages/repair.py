"""Stage ``repair``: production mends its own potential where the committee watch flagged it.

For the model-driven campaigns of every ``[[production]]`` section with
``refine_on_flags = true``, round r = 1, 2, … up to the section's ``repair_rounds``:

1. gather the frames the committee watch kept from the trajectories flagged in the
   previous round (round 1: the campaign of the final model), at most ``repair_frames``
   per campaign, spread over its trajectories
   (:func:`nnprefine.selection.spread_over_trajectories`);
2. label them with the reference and store each in ``data.db`` as it arrives, origin
   ``production``, iteration K + r (K: the refinement iterations);
3. train the committee ``models/repair-<r>`` on every frame so far (warm-started from the
   model before it when ``training.warm_start``) and score it on the validation set; its
   calibration scales its own watch;
4. re-run the flagged trajectories on their own seeds, from the same slab, driven by the
   new member 0 and watched by the new committee: campaign label ``<campaign>/repair-<r>``.

Re-runs are stored under their own label and every row names its model (``model``
column), so a yield never mixes trajectories of two models; the campaigns' yields in the
report stay those of the final model. What a round shows, per energy: how many of the
re-run trajectories the watch still flags (all were flagged before), the yields of the
same seeds under the old and the new model, and, where a reference check ran the same
seeds, how often each model met the reference's fate. Each step resumes (labels are
looked up in the store, a trained model is loaded, stored trajectories are skipped);
``stages/repair-<r>.json`` records a finished round.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from nnprefine.comparison import fate_agreement
from nnprefine.selection import spread_over_trajectories
from nnprefine.stages.production import campaign_slab, unique_campaigns, watch_settings
from nnprefine.stages.project import Project
from nnprefine.stages.refinement import label_frames
from nnprefine.stages.training import train_committee

__all__ = ["repair", "repair_label", "repair_records"]


def repair_label(label: str, r: int) -> str:
    """The campaign label of round ``r``'s re-runs of campaign ``label`` (r = 0: itself)."""
    return label if r == 0 else f"{label}/repair-{r}"


def _flagged(db: Any, label: str) -> dict[float, list[int]]:
    """{energy (eV): indices} of the trajectories of ``label`` the watch flagged."""
    out: dict[float, list[int]] = {}
    for row in db.rows(label):
        if int(row.get("flagged") or 0):
            out.setdefault(float(row["energy_eV"]), []).append(int(row["idx"]))
    return out


def _chosen_frames(db: Any, label: str, ws: Any, cap: int) -> list[Any]:
    """At most ``cap`` of the watch's kept frames of ``label``, spread over trajectories,
    ranked by their calibrated disagreement relative to the watch's thresholds."""
    frames = db.flagged_frames(label)
    keys = [(a.info["energy_eV"], a.info["idx"]) for a in frames]
    score = [
        max(
            a.info["energy_disagreement_eV_per_atom"] / ws.energy_threshold_eV_per_atom,
            a.info["force_disagreement_eV_per_A"] / ws.force_threshold_eV_per_A,
        )
        for a in frames
    ]
    return [frames[i] for i in spread_over_trajectories(keys, score, cap)]


def _round_rows(
    db: Any, c: dict[str, Any], r: int, todo: dict[float, list[int]], reference_label: str | None
) -> list[dict[str, Any]]:
    """Per energy of campaign ``c``'s round ``r``: re-run, still flagged, yields of the same
    seeds before and after, and agreement with the reference check (campaign
    ``reference_label``, None without one) on those seeds."""
    from nnprefine.yields import estimate_yield

    out = []
    for energy, idx in sorted(todo.items()):
        wanted = set(idx)
        before = [x for x in db.rows(repair_label(c["label"], r - 1), energy) if x["idx"] in wanted]
        after = [x for x in db.rows(repair_label(c["label"], r), energy) if x["idx"] in wanted]
        y0, y1 = estimate_yield(energy, before), estimate_yield(energy, after)
        row = {
            "campaign": c["label"],
            "energy_eV": energy,
            "rerun": len(after),
            "flagged_before": sum(int(x["flagged"] or 0) for x in before),
            "flagged_after": sum(int(x["flagged"] or 0) for x in after),
            "yield_before": y0.yield_,
            "yield_after": y1.yield_,
            "same_fate_before_after": fate_agreement(after, before)["same_fate"],
        }
        if reference_label is not None:
            reference = db.rows(reference_label, energy)
            fb, fa = fate_agreement(before, reference), fate_agreement(after, reference)
            row |= {
                "reference_paired": fa["paired"],
                "same_fate_as_reference_before": fb["same_fate"],
                "same_fate_as_reference_after": fa["same_fate"],
            }
        out.append(row)
    return out


def repair_records(project: Project) -> list[dict[str, Any]]:
    """The recorded rounds (``stages/repair-<r>.json``, without their bookkeeping keys), in
    order; the last may hold only ``round`` and ``stopped`` (why the repair ended)."""
    rounds = max(
        (c["production"].repair_rounds for c in unique_campaigns(project, "model")
         if c["production"].refine_on_flags),
        default=0,
    )  # fmt: skip
    out = []
    for r in range(1, rounds + 1):
        rec = project.stage_record(f"repair-{r}")
        if rec is None:
            break
        out.append({k: v for k, v in rec.items() if k not in ("stage", "data_db")})
        if "stopped" in rec:
            break
    return out


def repair(project: Project) -> dict[str, Any]:
    """Every repair round the config asks for (see the module docstring); returns
    ``{"rounds": [round record, …]}`` (empty when no section has ``refine_on_flags``)."""
    from nnprefine.calculators import NNPCalculator
    from nnprefine.model import Committee
    from nnprefine.sputter import ResultsDB, run_campaign
    from nnprefine.stages.validation import say_validation, validate, validation_set_is_empty

    sections = [c for c in unique_campaigns(project, "model") if c["production"].refine_on_flags]
    if not sections:
        return {"rounds": []}
    reference_of = {x["seed_label"]: x["label"] for x in unique_campaigns(project, "reference")}
    refine_rec = project.stage_record("refine")
    k0 = len(refine_rec["iterations"]) if refine_rec else 0
    final_member = Committee.load(project.model_dir("final")).members[0]
    previous, rounds = "final", []
    for r in range(1, max(c["production"].repair_rounds for c in sections) + 1):
        name = f"repair-{r}"
        rec = project.stage_record(name)
        if rec is not None and "stopped" in rec:
            break
        if rec is not None:
            rounds.append(rec)
            previous = name
            continue
        active = [c for c in sections if r <= c["production"].repair_rounds]
        todo, frames, provenance = {}, [], []
        with ResultsDB(project.results_db) as db:
            for c in active:
                before = repair_label(c["label"], r - 1)
                flagged = _flagged(db, before)
                if not flagged:
                    continue
                todo[c["label"]] = flagged
                ws = watch_settings(project, c["production"], project.model_dir(previous))
                for a in _chosen_frames(db, before, ws, c["production"].repair_frames):
                    frames.append(a)
                    provenance.append(
                        {
                            "trajectory": f"{before}|{a.info['energy_eV']:g}eV|{a.info['idx']}",
                            "time_fs": float(a.info["time_fs"]),
                            "selection": {
                                "energy_disagreement_eV_per_atom": a.info[
                                    "energy_disagreement_eV_per_atom"
                                ],
                                "force_disagreement_eV_per_A": a.info[
                                    "force_disagreement_eV_per_A"
                                ],
                                "calibrated": True,
                                "repair_round": r,
                                "surface": c["production"].slab.label,
                            },
                        }
                    )
        if not todo:
            project.say(f"repair round {r}: the watch flagged no trajectory; nothing to repair")
            project.record_stage(name, {"round": r, "stopped": "no trajectory flagged"})
            break
        n_flagged = sum(len(v) for f in todo.values() for v in f.values())
        project.say(
            f"repair round {r}: {n_flagged} flagged trajectories, {len(frames)} of their "
            f"frames to the reference"
        )
        labelled, failed = label_frames(project, k0 + r, frames, provenance, origin="production")
        if labelled == 0:
            why = f"no frame could be labelled ({failed} failed, quarantined in data.db)"
            project.say(f"repair round {r}: {why}; stop")
            project.record_stage(name, {"round": r, "stopped": why})
            break
        committee, train_rec = train_committee(
            project, name, max_iteration=k0 + r, warm_start_from=previous
        )
        validation = None
        if not validation_set_is_empty(project):
            validation = validate(project, name, committee)
            say_validation(project, validation)
        member = committee.members[0]
        rows = []
        for c in active:
            if c["label"] not in todo:
                continue
            prod = c["production"]
            ws = watch_settings(project, prod, project.model_dir(name))
            project.say(f"repair round {r}: re-running {c['label']} with model '{name}'")
            with project.executor() as executor:
                run_campaign(
                    project.results_db,
                    campaign_slab(project, prod, final_member),
                    NNPCalculator(member),
                    surface=repair_label(c["label"], r),
                    energies_eV=list(todo[c["label"]]),
                    n_trajectories=0,
                    campaign_seed=project.seed("production", c["seed_label"]),
                    seed_label=c["seed_label"],
                    settings=dataclasses.replace(prod.impact, r_cut_A=member.r_cut_A),
                    executor=executor,
                    driver="model",
                    watch=(committee, ws),  # refine_on_flags implies a watch (config)
                    indices=todo[c["label"]],
                    model_name=name,
                )
            with ResultsDB(project.results_db) as db:
                rows += _round_rows(db, c, r, todo[c["label"]], reference_of.get(c["seed_label"]))
        for row in rows:
            project.say(
                f"  {row['campaign']} {row['energy_eV']:g} eV: still flagged "
                f"{row['flagged_after']} of {row['rerun']} re-run (before: "
                f"{row['flagged_before']}); yield on these seeds {row['yield_before']:.3f} → "
                f"{row['yield_after']:.3f}"
            )
        rec = {
            "round": r,
            "model": name,
            "previous_model": previous,
            "model_fingerprint": member.fingerprint(),
            "frames_selected": len(frames),
            "frames_labelled": labelled,
            "labels_failed": failed,
            "train_frames": train_rec["train_frames"],
            "flagged_before": n_flagged,
            "flagged_after": int(sum(row["flagged_after"] for row in rows)),
            "rerun": int(sum(row["rerun"] for row in rows)),
            "energies": rows,
        }
        if validation is not None:
            rec["validation"] = {
                "energy_rmse_meV_per_atom": validation["all"]["energy_rmse_meV_per_atom"],
                "force_rmse_meV_per_A": validation["all"]["force_rmse_meV_per_A"],
                "calibration": validation["calibration"],
            }
        project.record_stage(name, rec)
        rounds.append(rec)
        previous = name
    return {"rounds": rounds}
