"""Which additions to the initial data move the validation error most (#18, item 2).

One project of a config (default: the quick preset) labels, once, the initial data with
every coverage addition switched on — the small slab heated to 1000–3000 K, strained hcp
bulk supercells, the production slab's thermal motion — and its validation set. Then a
committee is trained from scratch on each subset of the training frames (the paper's
impacts + thermal frames alone, then with each addition, then with all of them) and scored
on the same validation set, per group. Training uses the config's [training] settings
(``--epochs`` overrides the count), the same seed for every subset.

    python benchmarks/data_coverage.py --out runs/coverage
    python benchmarks/data_coverage.py --epochs 150 --out runs/coverage

Resumable: labels are the project's; each subset's scores are appended to
``<out>/coverage.jsonl`` as they arrive and skipped when present. Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

from nnprefine.config import load_config
from nnprefine.stages import Project, initial_data
from nnprefine.stages.training import new_committee
from nnprefine.stages.validation import validation_data, validation_frames

ROOT = Path(__file__).resolve().parent.parent
#: trajectory-name prefixes of each addition (see stages/initial_data.py)
ADDITIONS = {"hot_slab": "hot_slab-", "bulk": "bulk-", "production_slab": "production_slab"}
BASE = ("impact-", "thermal")


def project_with_coverage(config: Path, out: Path) -> Project:
    cfg = load_config(config)
    init = dataclasses.replace(
        cfg.initial_data,
        hot_temperatures_K=(1000.0, 2000.0, 3000.0),
        hot_snapshots=8,
        hot_duration_fs=150.0,
        bulk_strains=(-0.03, -0.015, 0.0, 0.015, 0.03),
        bulk_snapshots=4,
        production_slab_snapshots=12,
    )
    cfg = dataclasses.replace(
        cfg, project=dataclasses.replace(cfg.project, output_dir=str(out)), initial_data=init
    )
    return Project(cfg)


def subsets() -> dict[str, tuple[str, ...]]:
    out = {"paper protocol": BASE}
    for name, prefix in ADDITIONS.items():
        out[f"+ {name}"] = (*BASE, prefix)
    out["+ all"] = (*BASE, *ADDITIONS.values())
    return out


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--config", type=Path, default=ROOT / "examples" / "be0001-quick.toml")
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--optimizer", choices=("adam", "kalman"), default=None)
    ap.add_argument(
        "--subsets", nargs="+", default=None, help="only these subsets (names as printed)"
    )
    ap.add_argument("--out", type=Path, default=Path("runs/coverage"))
    args = ap.parse_args()

    from nnprefine.training import train
    from nnprefine.validation import score

    project = project_with_coverage(args.config, args.out.resolve())
    t0 = time.perf_counter()
    initial_data(project)
    validation_data(project)
    label_s = time.perf_counter() - t0
    with project.store() as store:
        train_all = store.frames(split="train", origin="initial")
        test_all = store.frames(split="test", origin="initial")
    validation = validation_frames(project)
    settings = dataclasses.replace(project.config.training.settings, seed=project.seed("train"))
    if args.epochs:
        settings = dataclasses.replace(settings, epochs=args.epochs, patience_epochs=args.epochs)
    if args.optimizer:
        settings = dataclasses.replace(settings, optimizer=args.optimizer)
    tag = f"{settings.optimizer}-{settings.epochs}"
    log = args.out / "coverage.jsonl"
    done = {}
    if log.exists():
        for line in log.read_text().splitlines():
            row = json.loads(line)
            done[(row["subset"], row.get("tag", f"adam-{row['epochs']}"))] = row
    rows = []
    for name, prefixes in subsets().items():
        if args.subsets and name not in args.subsets:
            continue
        key = (name, tag)
        if key not in done:
            pick = [f for f in train_all if str(f.info["trajectory"]).startswith(prefixes)]
            test = [f for f in test_all if str(f.info["trajectory"]).startswith(prefixes)]
            committee = new_committee(project)
            t1 = time.perf_counter()
            train(committee, pick, test, dataclasses.replace(settings, quiet=True))
            result = score(committee, validation).summary()
            row = {
                "subset": name,
                "tag": tag,
                "epochs": settings.epochs,
                "train_frames": len(pick),
                "train_s": time.perf_counter() - t1,
                **result,
            }
            with log.open("a") as fh:
                fh.write(json.dumps(row) + "\n")
            done[key] = row
        rows.append(done[key])
        r = done[key]
        groups = "  ".join(
            f"{g} {v['energy_rmse_meV_per_atom']:6.1f}/{v['force_rmse_meV_per_A']:4.0f}"
            for g, v in r["groups"].items()
        )
        print(
            f"{name:>18}: {r['train_frames']:4d} frames  all "
            f"{r['all']['energy_rmse_meV_per_atom']:6.1f} meV/atom {r['all']['force_rmse_meV_per_A']:4.0f} meV/Å"
            f"  ρ {r['rank_correlation_force']:5.2f} | {groups}",
            flush=True,
        )
    print(
        json.dumps(
            {
                "config": str(args.config),
                "epochs": settings.epochs,
                "optimizer": settings.optimizer,
                "label_s": label_s,
                "validation_frames": len(validation),
                "subsets": {
                    r["subset"]: {
                        "train_frames": r["train_frames"],
                        "energy_rmse_meV_per_atom": r["all"]["energy_rmse_meV_per_atom"],
                        "force_rmse_meV_per_A": r["all"]["force_rmse_meV_per_A"],
                        "groups": {
                            g: [v["energy_rmse_meV_per_atom"], v["force_rmse_meV_per_A"]]
                            for g, v in r["groups"].items()
                        },
                        "rank_correlation_force": r["rank_correlation_force"],
                    }
                    for r in rows
                },
            }
        )
    )


if __name__ == "__main__":
    main()
