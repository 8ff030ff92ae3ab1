"""The refinement loop's measured outcome, over several seeds of one config.

For each project seed, runs the initial data and the query-by-committee loop of a config
(default: the quick preset with the built-in SNAP reference) into its own folder and
reports, per iteration: frames explored and selected, the fraction of exploration frames
over threshold, the committee-disagreement median, the mean calibrated force disagreement
(α·d, the error the committee predicts), the validation RMSE of the committee that
explored (on the project's validation set, never trained on), the test RMSE and the wall
time of each stage. One run is one sample of a noisy quantity
(the committee's training noise and the exploration's random impact points both move
the fraction), so the seeds' mean per iteration and the number of seeds whose fraction
fell at every iteration are the figures to compare over time.

    python benchmarks/refinement.py --seeds 1 2 3 --iterations 3
    python benchmarks/refinement.py --config examples/be0001-quick.toml --keep-stop-rule

Runs resume (each seed's folder is an ordinary project). Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from nnprefine.config import load_config
from nnprefine.stages import Project, initial_data, refine
from nnprefine.stages.validation import validation_data

ROOT = Path(__file__).resolve().parent.parent


def run_seed(config_path: Path, seed: int, iterations: int, stop: bool, out: Path) -> dict:
    cfg = load_config(config_path)
    cfg = dataclasses.replace(
        cfg,
        project=dataclasses.replace(cfg.project, seed=seed, output_dir=str(out / f"seed-{seed}")),
        refine=dataclasses.replace(
            cfg.refine,
            max_iterations=iterations,
            stop_fraction=cfg.refine.stop_fraction if stop else 0.0,
        ),
    )
    project = Project(cfg)
    t0 = time.perf_counter()
    init = initial_data(project)
    validation_data(project)
    t_init = time.perf_counter() - t0
    rec = refine(project)
    return {"seed": seed, "initial_frames": init["frames"], "initial_s": t_init, **rec}


def _validation(iteration: dict, what: str) -> float:
    """The iteration committee's validation RMSE: energy (meV/atom) or force (meV/Å)."""
    v = iteration.get("validation")
    if v is None:
        return float("nan")
    return v["energy_rmse_meV_per_atom"] if what == "energy" else v["force_rmse_meV_per_A"]


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--config", type=Path, default=ROOT / "examples" / "be0001-quick.toml")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--iterations", type=int, default=3)
    ap.add_argument(
        "--keep-stop-rule",
        action="store_true",
        help="stop at the config's stop_fraction (default: run every iteration)",
    )
    ap.add_argument("--out", type=Path, default=Path("refinement-benchmark"))
    args = ap.parse_args()

    runs = []
    for seed in args.seeds:
        run = run_seed(args.config, seed, args.iterations, args.keep_stop_rule, args.out)
        runs.append(run)
        print(f"seed {seed}: {run['initial_frames']} initial frames ({run['initial_s']:.0f} s)")
        print(
            "  iter  explored  selected  over thr.  median dE   median dF  α·dF mean"
            "  validation RMSE  test RMSE        s"
        )
        for it in run["iterations"]:
            sec = it["seconds"]
            print(
                f"  {it['iteration']:4d}  {it['frames_explored']:8d}  {it['frames_selected']:8d}"
                f"  {100 * it['fraction_over_threshold']:8.1f}%"
                f"  {it['energy_disagreement_percentiles_meV_per_atom']['50']:6.1f} meV"
                f"  {it['force_disagreement_percentiles_eV_per_A']['50']:5.2f} eV/Å"
                f"  {it.get('mean_disagreement_eV_per_A') or float('nan'):5.2f} eV/Å"
                f"  {_validation(it, 'energy'):6.1f}, {_validation(it, 'force'):4.0f}"
                f"  {it['test_rmse_energy_mev_per_atom']:5.1f}, {it['test_rmse_force_mev_per_A']:4.0f}"
                f"  {sec['train']:.0f}/{sec['explore']:.0f}/{sec['label']:.0f}",
                flush=True,
            )
        print(f"  stopped: {run['stop_reason']}", flush=True)

    fractions = {r["seed"]: [it["fraction_over_threshold"] for it in r["iterations"]] for r in runs}
    n_iter = max(len(f) for f in fractions.values())
    mean = [float(np.mean([f[k] for f in fractions.values() if len(f) > k])) for k in range(n_iter)]

    calibrated = {
        r["seed"]: [it.get("mean_disagreement_eV_per_A") for it in r["iterations"]] for r in runs
    }
    validation_force = {
        r["seed"]: [_validation(it, "force") for it in r["iterations"]] for r in runs
    }

    def mean_over_seeds(per_seed: dict) -> list[float]:
        return [
            float(np.nanmean([v[k] for v in per_seed.values() if len(v) > k and v[k] is not None]))
            for k in range(n_iter)
        ]

    def falls(f: list[float]) -> bool:
        return len(f) > 1 and all(b < a for a, b in zip(f, f[1:], strict=False))

    stages: dict[str, list[float]] = {"initial_data": [r["initial_s"] for r in runs]}
    for r in runs:
        for it in r["iterations"]:
            for k, v in it["seconds"].items():
                stages.setdefault(k, []).append(v)
    result: dict[str, Any] = {
        "config": str(args.config),
        "seeds": args.seeds,
        "fraction_over_threshold": {str(k): v for k, v in fractions.items()},
        "fraction_over_threshold_mean": mean,
        "seeds_falling_every_iteration": sum(falls(f) for f in fractions.values()),
        "median_energy_disagreement_meV_per_atom": {
            str(r["seed"]): [
                it["energy_disagreement_percentiles_meV_per_atom"]["50"] for it in r["iterations"]
            ]
            for r in runs
        },
        "last_test_rmse_energy_meV_per_atom": {
            str(r["seed"]): r["iterations"][-1]["test_rmse_energy_mev_per_atom"] for r in runs
        },
        "last_test_rmse_force_meV_per_A": {
            str(r["seed"]): r["iterations"][-1]["test_rmse_force_mev_per_A"] for r in runs
        },
        "seconds_per_stage_mean": {k: float(np.mean(v)) for k, v in stages.items()},
        "calibrated_force_disagreement_mean_eV_per_A": mean_over_seeds(calibrated),
        "validation_force_rmse_mean_meV_per_A": mean_over_seeds(validation_force),
        "seeds_calibrated_disagreement_falling": sum(
            falls([x for x in v if x is not None]) for v in calibrated.values()
        ),
        "seeds_validation_error_falling": sum(falls(v) for v in validation_force.values()),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
