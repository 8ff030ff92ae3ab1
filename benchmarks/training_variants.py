"""Which change of the quick preset moves the validation error? (#16, #18)

Trains one committee member per (variant, seed) on the training frames of an existing
project's ``data.db`` (its own test split for model selection) and scores it on that
project's validation frames (origin ``validation``, never trained on). A variant changes
the descriptor (``n_radial``, ``n_narrow``, ``n_wide``, ``r_cut_A``), the layers
(``hidden``) or a training setting (``epochs``, ``kalman_force_fraction``, ...) of the
config; everything else is the config's. Per run it prints the validation RMSE per group
and where the squared force error sits by the reference's |F|; the last line is one JSON
object with the mean and spread of each variant over the seeds.

    OMP_NUM_THREADS=1 NUMBA_NUM_THREADS=1 python benchmarks/training_variants.py \\
        --data /tmp/bench/repair/data.db --variants base sf12 sf12ff10 --seeds 1 2 3

Each finished run is appended to ``--log`` (JSON lines), and a re-run skips what the log
holds, so a long grid resumes.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from nnprefine.calculators import NNPCalculator
from nnprefine.config import load_config
from nnprefine.dataset import FrameStore
from nnprefine.model import Committee, NNPotential, ZBLBaseline
from nnprefine.reference import cached_reference
from nnprefine.structures import relax_bulk
from nnprefine.training import train
from nnprefine.validation import score

ROOT = Path(__file__).resolve().parent.parent

#: name → changes of the config (descriptor keys, ``hidden``, or training settings)
VARIANTS: dict[str, dict[str, Any]] = {
    "base": {},
    "ep60": {"epochs": 60, "patience_epochs": 60},
    "ff10": {"kalman_force_fraction": 0.10},
    "h25": {"hidden": (25, 25)},
    "rc6": {"r_cut_A": 6.0},
    "sf8": {"n_radial": 8, "n_narrow": 6, "n_wide": 6},
    "sf12": {"n_radial": 12, "n_narrow": 8, "n_wide": 8},
    "sf12ff10": {"n_radial": 12, "n_narrow": 8, "n_wide": 8, "kalman_force_fraction": 0.10},
    "sf12ff20": {"n_radial": 12, "n_narrow": 8, "n_wide": 8, "kalman_force_fraction": 0.20},
    "sf12ff30": {"n_radial": 12, "n_narrow": 8, "n_wide": 8, "kalman_force_fraction": 0.30},
    "sf12ff20h20": {
        "n_radial": 12,
        "n_narrow": 8,
        "n_wide": 8,
        "kalman_force_fraction": 0.20,
        "hidden": (20, 20),
    },
    "sf16ff20": {"n_radial": 14, "n_narrow": 10, "n_wide": 10, "kalman_force_fraction": 0.20},
    # n2p2's error-threshold selection of force components (short_force_error_threshold)
    "sf12ff20t1": {
        "n_radial": 12,
        "n_narrow": 8,
        "n_wide": 8,
        "kalman_force_fraction": 0.20,
        "kalman_force_error_threshold": 1.0,
    },
    "sf12ff10t1": {
        "n_radial": 12,
        "n_narrow": 8,
        "n_wide": 8,
        "kalman_force_fraction": 0.10,
        "kalman_force_error_threshold": 1.0,
    },
    "sf16ff20t1": {
        "n_radial": 14,
        "n_narrow": 10,
        "n_wide": 10,
        "kalman_force_fraction": 0.20,
        "kalman_force_error_threshold": 1.0,
    },
    "sf20ff20": {"n_radial": 16, "n_narrow": 12, "n_wide": 12, "kalman_force_fraction": 0.20},
    # the bulk frames' stress (labels with stress: --stress)
    "sf16ff20s1": {
        "n_radial": 14,
        "n_narrow": 10,
        "n_wide": 10,
        "kalman_force_fraction": 0.20,
        "stress_weight": 1.0,
    },
    "sf12ff10e15": {
        "n_radial": 12,
        "n_narrow": 8,
        "n_wide": 8,
        "kalman_force_fraction": 0.10,
        "epochs": 15,
        "patience_epochs": 15,
    },
}
_DESCRIPTOR_KEYS = ("n_radial", "n_narrow", "n_wide", "r_cut_A")
_FORCE_BINS_EV_PER_A = (0.0, 1.0, 3.0, 10.0, 30.0, np.inf)


def with_reference_stress(frames: list, reference: Any) -> int:
    """Give every frame periodic in 3D the reference's stress (labels made before the
    store kept stresses); returns how many frames got one."""
    from ase.calculators.singlepoint import SinglePointCalculator

    n = 0
    for atoms in frames:
        if not atoms.pbc.all() or "stress" in atoms.calc.results:
            continue
        probe = atoms.copy()
        probe.calc = reference
        stress = probe.get_stress()
        e, f = atoms.get_potential_energy(), atoms.get_forces()
        atoms.calc = SinglePointCalculator(atoms, energy=e, forces=f, stress=stress)
        n += 1
    return n


def run_variant(
    cfg: Any, frames: dict[str, list], variant: str, seed: int, ref_lattice: dict[str, Any]
) -> dict[str, Any]:
    """Train one member of ``variant`` with ``seed``; score it on the validation frames and
    relax its bulk lattice (against ``ref_lattice``, the reference's)."""
    change = VARIANTS[variant]
    descriptor = dataclasses.replace(
        cfg.descriptor, **{k: v for k, v in change.items() if k in _DESCRIPTOR_KEYS}
    )
    settings = dataclasses.replace(
        cfg.training.settings,
        **{k: v for k, v in change.items() if hasattr(cfg.training.settings, k)},
        quiet=True,
        seed=7 + seed,
    )
    net = cfg.network
    member = NNPotential(
        descriptor.symmetry_functions(cfg.elements),
        change.get("hidden", net.hidden),
        net.activation,
        11 + seed,
        baseline=ZBLBaseline(net.zbl_inner_A, net.zbl_outer_A) if net.zbl_baseline else None,
    )
    t0 = time.perf_counter()
    train(member, frames["train"], frames["test"], settings)
    seconds = time.perf_counter() - t0
    # a committee of one member twice: the errors are member 1's, the disagreement is 0
    scored = score(Committee([member, member]), frames["validation"]).summary()
    f_ref, f_err2 = [], []
    for atoms in frames["validation"]:
        _, forces = member.energy_forces(atoms)
        f_ref.append(np.linalg.norm(atoms.get_forces(), axis=1))
        f_err2.append(((np.asarray(forces) - atoms.get_forces()) ** 2).sum(axis=1))
    ref, err2 = np.concatenate(f_ref), np.concatenate(f_err2)
    lat = relax_bulk(
        NNPCalculator(member),
        element=cfg.project.element,
        crystal=cfg.structures.crystal,
        a_A=ref_lattice["a_A"],
        c_A=ref_lattice["c_A"],
    )
    bins = list(zip(_FORCE_BINS_EV_PER_A, _FORCE_BINS_EV_PER_A[1:], strict=False))
    return {
        "variant": variant,
        "seed": seed,
        "n_functions": len(descriptor.symmetry_functions(cfg.elements).functions),
        "train_s": seconds,
        "train_frames": len(frames["train"]),
        "validation_frames": scored["all"]["frames"],
        "energy_rmse_meV_per_atom": scored["all"]["energy_rmse_meV_per_atom"],
        "force_rmse_meV_per_A": scored["all"]["force_rmse_meV_per_A"],
        "groups": {
            g: [round(v["energy_rmse_meV_per_atom"], 2), round(v["force_rmse_meV_per_A"], 1)]
            for g, v in scored["groups"].items()
        },
        "force_sq_error_share": {
            f"{lo:g}-{hi:g}": round(float(err2[(ref >= lo) & (ref < hi)].sum() / err2.sum()), 3)
            for lo, hi in bins
        },
        "lattice_error_percent": {
            k: round(100.0 * (lat[f"{k}_A"] / ref_lattice[f"{k}_A"] - 1.0), 3) for k in ("a", "c")
        },
        "bulk_energy_error_meV_per_atom": round(
            1e3 * (lat["energy_eV_per_atom"] - ref_lattice["energy_eV_per_atom"]), 2
        ),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(ROOT / "examples" / "be0001-quick.toml"))
    ap.add_argument("--data", required=True, help="a project's data.db with validation frames")
    ap.add_argument("--variants", nargs="+", default=["base", "sf12"], choices=sorted(VARIANTS))
    ap.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    ap.add_argument("--log", default="training-variants.jsonl")
    ap.add_argument(
        "--stress", action="store_true",
        help="label the training frames periodic in 3D with the reference's stress first",
    )  # fmt: skip
    args = ap.parse_args()
    cfg = load_config(args.config)
    with FrameStore(args.data, elements=cfg.elements, test_fraction=0.1) as store:
        frames = {s: store.frames(split=s) for s in ("train", "test", "validation")}
    if not frames["validation"]:
        raise SystemExit(f"{args.data} holds no validation frames; run 'nnprefine init' first")
    reference = cached_reference(cfg.reference.spec())
    if args.stress:
        n = with_reference_stress(frames["train"], reference)
        print(f"{n} training frames labelled with the reference's stress", flush=True)
    ref_lattice = relax_bulk(
        reference, element=cfg.project.element, crystal=cfg.structures.crystal,
        a_A=cfg.structures.a_A, c_A=cfg.structures.c_A,
    )  # fmt: skip
    log = Path(args.log)
    done = [json.loads(x) for x in log.read_text().splitlines()] if log.exists() else []
    for variant in args.variants:
        for seed in args.seeds:
            if any(r["variant"] == variant and r["seed"] == seed for r in done):
                continue
            row = run_variant(cfg, frames, variant, seed, ref_lattice)
            print(
                f"{variant:>12} seed {seed}: {row['n_functions']} functions, "
                f"{row['train_s']:.0f} s, E {row['energy_rmse_meV_per_atom']:.2f} meV/atom, "
                f"F {row['force_rmse_meV_per_A']:.1f} meV/Å, groups {row['groups']}, "
                f"lattice {row['lattice_error_percent']} %",
                flush=True,
            )
            with log.open("a") as fh:
                fh.write(json.dumps(row) + "\n")
            done.append(row)
    out: dict[str, Any] = {}
    for variant in args.variants:
        rows = [r for r in done if r["variant"] == variant and r["seed"] in args.seeds]
        e = np.array([r["energy_rmse_meV_per_atom"] for r in rows])
        f = np.array([r["force_rmse_meV_per_A"] for r in rows])
        out[variant] = {
            "seeds": len(rows),
            "energy_rmse_meV_per_atom": round(float(e.mean()), 2),
            "energy_rmse_spread": round(float(e.std()), 2),
            "force_rmse_meV_per_A": round(float(f.mean()), 1),
            "force_rmse_spread": round(float(f.std()), 1),
            "train_s": round(float(np.mean([r["train_s"] for r in rows])), 1),
        }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
