"""Does the committee watch see the wrong trajectories, and does a repair round help? (#21)

Runs one project of a config (default: the quick preset) with a deliberately
under-trained committee (``--epochs``, one refinement iteration), production at
``--energies`` with ``--trajectories`` model-driven impacts per energy, the reference
itself on the same seeds, and one repair round (``refine_on_flags``). From the project's
``summary.json`` it reports:

- the watch's flag × fate table: of the flagged and of the unflagged trajectories, how
  many met the reference's fate on the same seed (the watch is informative when the
  flagged ones differ more often);
- the repair: flagged trajectories re-run with the repaired model, how many are still
  flagged, and how many meet the reference's fate before and after;
- the validation RMSE of the final model and of the repaired one.

    OMP_NUM_THREADS=1 NUMBA_NUM_THREADS=1 python benchmarks/repair.py --out repair-benchmark

The project folder resumes like any other. Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np

from nnprefine.config import load_config
from nnprefine.pipeline import run
from nnprefine.stages import Project

ROOT = Path(__file__).resolve().parent.parent


def benchmark_config(args: argparse.Namespace):
    """The config with the benchmark's under-training, production and repair settings."""
    cfg = load_config(args.config)
    prod = dataclasses.replace(
        cfg.production[0],
        energies_eV=tuple(args.energies),
        trajectories_per_energy=args.trajectories,
        reference_energies_eV=tuple(args.energies),
        reference_trajectories=args.trajectories,
        refine_on_flags=True,
        repair_rounds=1,
        repair_frames=args.repair_frames,
    )
    return dataclasses.replace(
        cfg,
        project=dataclasses.replace(cfg.project, seed=args.seed, output_dir=str(args.out)),
        training=dataclasses.replace(
            cfg.training,
            settings=dataclasses.replace(cfg.training.settings, epochs=args.epochs),
        ),
        refine=dataclasses.replace(cfg.refine, max_iterations=1),
        production=(prod,),
    )


def _auc(score: list[float], positive: list[bool]) -> float | None:
    """Probability that a random positive scores above a random negative (ties ½)."""
    pos = [x for x, p in zip(score, positive, strict=True) if p]
    neg = [x for x, p in zip(score, positive, strict=True) if not p]
    if not pos or not neg:
        return None
    wins = sum((a > b) + 0.5 * (a == b) for a in pos for b in neg)
    return wins / (len(pos) * len(neg))


def watch_signal(db_path: Path, model_label: str, reference_label: str) -> dict:
    """Do the watch's continuous figures rank the seeds whose fate differs from the
    reference's above the others? AUC of the calibrated max disagreement and of the
    fraction of watched frames over threshold (0.5: no information)."""
    from nnprefine.comparison import paired, same_fate
    from nnprefine.sputter import ResultsDB

    with ResultsDB(db_path) as db:
        pairs = paired(
            [r for r in db.rows(model_label) if int(r.get("watched") or 0)],
            db.rows(reference_label),
        )
    differ = [not same_fate(a, b) for a, b in pairs]
    peak = [float(a["max_disagreement"] or 0.0) for a, _ in pairs]
    share = [int(a["n_over_threshold"] or 0) / max(int(a["n_watched"] or 0), 1) for a, _ in pairs]
    return {
        "paired": len(pairs),
        "fate_differs": sum(differ),
        "auc_max_disagreement": _auc(peak, differ),
        "auc_fraction_over_threshold": _auc(share, differ),
        "fraction_over_threshold_range": [min(share, default=0.0), max(share, default=0.0)],
    }


def over_threshold_shares(db_path: Path, label: str, fractions=(0.0, 0.5, 0.9)) -> dict:
    """The re-run seeds before (``label``) and after one repair (``label``/repair-1): mean
    share of checks over threshold, and how many a watch with each ``flag_fraction``
    would flag (the rows keep the counts, so any fraction can be judged afterwards)."""
    from nnprefine.sputter import ResultsDB

    with ResultsDB(db_path) as db:
        after = {(r["energy_eV"], r["idx"]): r for r in db.rows(f"{label}/repair-1")}
        before = {k: r for r in db.rows(label) if (k := (r["energy_eV"], r["idx"])) in after}

    def share(r: dict) -> float:
        return int(r["n_over_threshold"] or 0) / max(int(r["n_watched"] or 0), 1)

    out: dict = {"rerun": len(after)}
    for name, rows in (("before", before), ("after", after)):
        shares = [share(r) for r in rows.values()]
        out[f"mean_share_over_threshold_{name}"] = float(np.mean(shares)) if shares else None
        out[f"flagged_{name}"] = {
            f"{f:g}": sum(x > 0 and x >= f for x in shares) for f in fractions
        }
    return out


def _total(tables: list[dict]) -> dict:
    """The flag × fate tables of all energies, summed."""
    out = {k: {"same": 0, "differ": 0} for k in ("flagged", "not_flagged")}
    for t in tables:
        for k in out:
            for fate in ("same", "differ"):
                out[k][fate] += t[k][fate]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--config", type=Path, default=ROOT / "examples" / "be0001-quick.toml")
    ap.add_argument("--epochs", type=int, default=4, help="training epochs (under-trained)")
    ap.add_argument("--energies", type=float, nargs="+", default=[200.0, 300.0], help="eV")
    ap.add_argument("--trajectories", type=int, default=12, help="per energy and driver")
    ap.add_argument("--repair-frames", type=int, default=30)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", type=Path, default=Path("repair-benchmark"))
    args = ap.parse_args()
    args.out = args.out.resolve()

    t0 = time.perf_counter()
    project = Project(benchmark_config(args))
    run(project)
    wall = time.perf_counter() - t0
    summary = json.loads((project.dir / "summary.json").read_text())

    print("\nflag × fate (same / differ from the reference on the same seed)")
    tables = []
    for cmp in summary.get("comparisons", []):
        t = cmp["watch_by_fate"]
        tables.append(t)
        print(
            f"  {cmp['energy_eV']:g} eV: flagged {t['flagged']['same']}/{t['flagged']['differ']}, "
            f"not flagged {t['not_flagged']['same']}/{t['not_flagged']['differ']}"
        )
    total = _total(tables)
    rounds = [r for r in summary.get("repairs", []) if "stopped" not in r]
    rows = [row for r in rounds for row in r["energies"]]
    print("\nrepair round 1")
    for row in rows:
        print(
            f"  {row['energy_eV']:g} eV: re-ran {row['rerun']}, flagged "
            f"{row['flagged_before']} -> {row['flagged_after']}, same fate as the reference "
            f"{row.get('same_fate_as_reference_before')} -> "
            f"{row.get('same_fate_as_reference_after')} of {row.get('reference_paired')}"
        )
    v = summary.get("validation", {})
    label = project.config.production[0].slab.label
    signal = watch_signal(project.results_db, f"{label}/model", f"{label}/reference")
    print(f"\nwatch signal against fate: {signal}")
    shares = over_threshold_shares(project.results_db, f"{label}/model")
    print(f"checks over threshold, before and after the repair: {shares}")

    def frac(k: str) -> float | None:
        n = total[k]["same"] + total[k]["differ"]
        return total[k]["differ"] / n if n else None

    flagged_yields = [y for y in summary.get("yields", []) if y["driver"] == "model"]
    print(
        json.dumps(
            {
                "epochs": args.epochs,
                "energies_eV": args.energies,
                "trajectories_per_energy": args.trajectories,
                "flag_by_fate": total,
                "fate_differs_given_flagged": frac("flagged"),
                "fate_differs_given_not_flagged": frac("not_flagged"),
                "flagged_fraction": [y.get("flagged_fraction") for y in flagged_yields],
                "watch_signal": signal,
                "over_threshold_before_after": shares,
                "repair_rerun": sum(r["rerun"] for r in rows),
                "repair_flagged_before": sum(r["flagged_before"] for r in rows),
                "repair_flagged_after": sum(r["flagged_after"] for r in rows),
                "repair_same_fate_as_reference_before": sum(
                    r.get("same_fate_as_reference_before") or 0 for r in rows
                ),
                "repair_same_fate_as_reference_after": sum(
                    r.get("same_fate_as_reference_after") or 0 for r in rows
                ),
                "repair_reference_paired": sum(r.get("reference_paired") or 0 for r in rows),
                "final_validation_rmse": v.get("all"),
                "repair_validation_rmse": [r.get("validation") for r in rounds],
                "repairs": summary.get("repairs"),
                "wall_s": wall,
            }
        )
    )


if __name__ == "__main__":
    main()
