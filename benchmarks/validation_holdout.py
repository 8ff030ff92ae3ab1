"""A model scored on a validation set nobody tuned on: the config's [validation] protocol
labelled again under another master seed, into a folder of its own.

    python benchmarks/validation_holdout.py runs/be0001-quick/models/final \\
        --config examples/be0001-quick.toml --seed 1001 --out runs/holdout-1001

The set is an ordinary project folder (resumable; labelled once per seed). Prints the
per-group figures and the verdict; last line: one JSON object.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from nnprefine.config import load_config
from nnprefine.stages import Project, lattice
from nnprefine.stages.validation import validation_data, validation_frames

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("model", type=Path, help="a committee folder (models/<name>)")
    ap.add_argument("--config", type=Path, default=ROOT / "examples" / "be0001-quick.toml")
    ap.add_argument("--seed", type=int, default=1001)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    from nnprefine.model import Committee
    from nnprefine.validation import score

    cfg = load_config(args.config)
    out = (args.out or Path(f"runs/holdout-{args.seed}")).resolve()
    cfg = dataclasses.replace(
        cfg, project=dataclasses.replace(cfg.project, seed=args.seed, output_dir=str(out))
    )
    project = Project(cfg)
    lattice(project)
    validation_data(project)
    result = score(Committee.load(args.model), validation_frames(project)).summary()
    for group, r in result["groups"].items():
        print(
            f"{group:>16}: {r['frames']:4d} frames {r['energy_rmse_meV_per_atom']:7.2f} meV/atom "
            f"{r['force_rmse_meV_per_A']:6.0f} meV/Å"
        )
    print(
        f"{'all':>16}: {result['all']['frames']:4d} frames "
        f"{result['all']['energy_rmse_meV_per_atom']:7.2f} meV/atom "
        f"{result['all']['force_rmse_meV_per_A']:6.0f} meV/Å; "
        f"ρ = {result['rank_correlation_force']:.2f}"
    )
    print(json.dumps({"model": str(args.model), "seed": args.seed, **result}))


if __name__ == "__main__":
    main()
