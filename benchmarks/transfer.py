"""The paper's NNP5 → NNP6 round, scaled down: is the first-surface model fit for a second
surface, and does a refinement round there mend it? (#21 item 4)

Runs one project of a config (default: the quick preset) with a refinement round on
Be(01-10) after the Be(0001) loop (``refine.second_surface_slab``), production on both
surfaces, the committee trained on Be(0001) only (NNP5) beside the final model (NNP6) on
the same seeds (``transfer_trajectories``), and the reference itself on the Be(01-10)
seeds. From the project's ``summary.json`` it reports both models' validation RMSE per
group (``second_surface``: Be(01-10) frames neither trained on), the fraction of
exploration frames over threshold per surface, and per surface and energy the two
models' yields, flagged fractions and agreement with the reference.

    OMP_NUM_THREADS=1 NUMBA_NUM_THREADS=1 python benchmarks/transfer.py --out transfer-benchmark

The project folder resumes like any other. Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

from nnprefine.config import SlabConfig, load_config
from nnprefine.pipeline import run
from nnprefine.stages import Project

ROOT = Path(__file__).resolve().parent.parent


def benchmark_config(args: argparse.Namespace):
    """The config with a second-surface round and production on both surfaces."""
    cfg = load_config(args.config)
    energies = tuple(args.energies)
    first = dataclasses.replace(
        cfg.production[0],
        energies_eV=energies,
        trajectories_per_energy=args.trajectories,
        reference_energies_eV=(),
        reference_trajectories=0,
        transfer_trajectories=args.trajectories,
    )
    second = dataclasses.replace(
        first,
        slab=SlabConfig("01-10", tuple(args.production_size), 7.0),
        reference_energies_eV=energies,
        reference_trajectories=args.trajectories,
    )
    return dataclasses.replace(
        cfg,
        project=dataclasses.replace(cfg.project, seed=args.seed, output_dir=str(args.out)),
        refine=dataclasses.replace(
            cfg.refine,
            second_surface_slab=SlabConfig("01-10", tuple(args.refine_size), 7.0),
            second_surface_iterations=1,
        ),
        production=(first, second),
    )


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--config", type=Path, default=ROOT / "examples" / "be0001-quick.toml")
    ap.add_argument("--energies", type=float, nargs="+", default=[200.0, 300.0], help="eV")
    ap.add_argument("--trajectories", type=int, default=8, help="per energy, model and surface")
    ap.add_argument("--refine-size", type=int, nargs=3, default=[3, 4, 6], help="Be(01-10)")
    ap.add_argument("--production-size", type=int, nargs=3, default=[3, 4, 8], help="Be(01-10)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", type=Path, default=Path("transfer-benchmark"))
    args = ap.parse_args()
    args.out = args.out.resolve()

    t0 = time.perf_counter()
    project = Project(benchmark_config(args))
    run(project)
    wall = time.perf_counter() - t0
    summary = json.loads((project.dir / "summary.json").read_text())
    t = summary["transfer"]
    first = t["first_surface_model"]

    print(f"\nvalidation RMSE, {first} → final (E meV/atom, F meV/Å)")
    v = t["validation"]
    for g, b in v["final"].items():
        a = v["first_surface_model"].get(g, {})
        print(
            f"  {g:>15}: {a.get('energy_rmse_meV_per_atom', float('nan')):7.2f} → "
            f"{b['energy_rmse_meV_per_atom']:7.2f}   {a.get('force_rmse_meV_per_A', float('nan')):5.0f}"
            f" → {b['force_rmse_meV_per_A']:5.0f}"
        )
    print("exploration frames over threshold")
    for name, it in t["exploration"].items():
        print(f"  {name} on {it['surface']}: {it['fraction_over_threshold']:.0%}")
    print(f"yields on the same seeds, {first} vs final")
    for y in t["yields"]:
        a, b = y["first_surface_model"], y["final_model"]
        ref = f", same fate as reference {a['same_fate']} vs {b['same_fate']} of {a['paired']}"
        print(
            f"  {y['surface']} {y['energy_eV']:g} eV: {a['yield']:.3f} ± {a['error_2sigma']:.3f} vs "
            f"{b['yield']:.3f} ± {b['error_2sigma']:.3f} (z {y['z']:.2f}), same fate "
            f"{y['same_fate']:.2f}, flagged {a['flagged_fraction']} vs {b['flagged_fraction']}"
            + (ref if "paired" in a else "")
        )
    print(
        json.dumps(
            {
                "first_surface_model": first,
                "validation": v,
                "exploration": t["exploration"],
                "yields": t["yields"],
                "reference_yields": [y for y in summary["yields"] if y["driver"] == "reference"],
                "wall_s": wall,
            }
        )
    )


if __name__ == "__main__":
    main()
