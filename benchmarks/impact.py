"""Impact MD cost: the paper's fixed-step protocol vs adaptive step + early termination.

For N seeds at one energy (default 100 eV) on a Be(0001) slab with the built-in SNAP
reference, every trajectory runs twice:

* fixed: 0.2 fs for 120 fs (+120 fs while undecided), with the early-stop test in
  "shadow" mode: it records when and with which outcome it would have stopped, so the
  paired agreement (same seed, same fixed step, with and without early termination)
  comes from the same trajectory;
* adaptive + early stop: the adaptive time step and early termination switched on.

Reported: core-seconds per trajectory of each, the fraction of core time spent outside
the force call, the paired agreement of outcomes (sputtered count and reflection), both
yields and their difference in standard errors. Last line: one JSON object.

    python benchmarks/impact.py --slab small --trajectories 10
    python benchmarks/impact.py --slab paper --trajectories 2
"""

from __future__ import annotations

import argparse
import json
import math
import time

from nnprefine.impact import ImpactSettings, run_impact
from nnprefine.md import AdaptiveTimestep
from nnprefine.reference import SnapReference
from nnprefine.structures import be0001_slab, equilibrate_nvt, relax_slab
from nnprefine.yields import estimate_yield

SLABS = {"small": ((4, 4, 6), 5.8), "paper": ((7, 7, 10), 7.0)}


def _yield(results: list) -> tuple[float, float]:
    rows = [
        dict(
            n_sputtered=r.n_sputtered,
            reflected=r.reflected,
            undecided=r.undecided,
            unphysical=r.unphysical,
        )
        for r in results
    ]
    est = estimate_yield(0.0, rows)
    return est.yield_, est.error


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--slab", choices=sorted(SLABS), default="small")
    ap.add_argument("--trajectories", type=int, default=4)
    ap.add_argument("--energy", type=float, default=100.0, help="projectile energy (eV)")
    ap.add_argument(
        "--paired-energy",
        type=float,
        default=None,
        help="also run fixed+shadow trajectories at this energy for the paired agreement",
    )
    ap.add_argument("--paired-trajectories", type=int, default=0)
    ap.add_argument("--equilibrate-fs", type=float, default=1000.0)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    calc = SnapReference()
    size, vacuum = SLABS[args.slab]
    t0 = time.perf_counter()
    slab = be0001_slab(size=size, a_A=2.2395, c_A=3.6043, vacuum_A=vacuum)
    relax_slab(slab, calc, fmax_eV_per_A=5e-3)
    equilibrate_nvt(
        slab, calc, temperature_K=300.0, duration_fs=args.equilibrate_fs, seed=args.seed
    )
    slab.calc = None
    print(
        f"{len(slab)}-atom slab relaxed and equilibrated ({args.equilibrate_fs:g} fs) in "
        f"{time.perf_counter() - t0:.0f} s",
        flush=True,
    )

    fixed = ImpactSettings(early_stop="shadow")
    fast = ImpactSettings(adaptive=AdaptiveTimestep(), early_stop="on")
    fixed_runs, fast_runs, paired = [], [], []
    for i in range(args.trajectories):
        seed = 1000 * args.seed + i
        f = run_impact(slab, calc, args.energy, seed, fixed)
        a = run_impact(slab, calc, args.energy, seed, fast)
        fixed_runs.append(f)
        fast_runs.append(a)
        paired.append(f)
        print(
            f"seed {seed}: fixed {f.n_sputtered} sp, refl {f.reflected}, {f.steps} steps, "
            f"{f.core_s:.1f} core-s, dE {f.energy_drift_eV:+.4f} eV, shadow stop "
            f"{f.shadow.get('stop_time_fs')} fs -> {f.shadow.get('n_sputtered')} | adaptive "
            f"{a.n_sputtered} sp, {a.steps} steps, {a.simulated_fs:.0f} fs, {a.core_s:.1f} core-s, "
            f"dE {a.energy_drift_eV:+.4f} eV",
            flush=True,
        )
    if args.paired_energy is not None:
        for i in range(args.paired_trajectories):
            seed = 1000 * args.seed + 500 + i
            f = run_impact(slab, calc, args.paired_energy, seed, fixed)
            paired.append(f)
            print(
                f"paired {args.paired_energy:g} eV seed {seed}: {f.n_sputtered} sp, shadow "
                f"{f.shadow.get('stop_time_fs')} fs -> {f.shadow.get('n_sputtered')}",
                flush=True,
            )

    def agree(r) -> bool:
        sh = r.shadow
        if sh.get("stop_time_fs") is None:  # early stop never fired: identical run
            return True
        return (sh["n_sputtered"], sh["reflected"]) == (r.n_sputtered, r.reflected)

    n = len(fixed_runs)
    core_fixed = sum(r.core_s for r in fixed_runs) / n
    core_fast = sum(r.core_s for r in fast_runs) / n
    outside = 1.0 - sum(r.force_s for r in fixed_runs) / sum(r.core_s for r in fixed_runs)
    outside_fast = 1.0 - sum(r.force_s for r in fast_runs) / sum(r.core_s for r in fast_runs)
    yf, df = _yield(fixed_runs)
    ya, da = _yield(fast_runs)
    se = math.hypot(df / 2, da / 2)
    result = {
        "slab_atoms": len(slab),
        "energy_eV": args.energy,
        "trajectories": n,
        "fixed_core_s_per_trajectory": core_fixed,
        "adaptive_core_s_per_trajectory": core_fast,
        "speedup": core_fixed / core_fast,
        "fixed_steps_mean": sum(r.steps for r in fixed_runs) / n,
        "adaptive_steps_mean": sum(r.steps for r in fast_runs) / n,
        "adaptive_simulated_fs_mean": sum(r.simulated_fs for r in fast_runs) / n,
        "fraction_outside_force_call": outside,
        "fraction_outside_force_call_adaptive": outside_fast,
        "max_abs_energy_drift_fixed_eV": max(abs(r.energy_drift_eV) for r in fixed_runs),
        "max_abs_energy_drift_adaptive_eV": max(abs(r.energy_drift_eV) for r in fast_runs),
        "early_stop_paired_agreement": sum(map(agree, paired)) / len(paired),
        "early_stop_paired_n": len(paired),
        "early_stop_fired": sum(r.shadow.get("stop_time_fs") is not None for r in paired),
        "paired_sputtered_atoms": sum(r.n_sputtered for r in paired),
        "fixed_yield": yf,
        "adaptive_yield": ya,
        "yield_difference_sigma": abs(yf - ya) / se if se > 0 else 0.0,
        "undecided_fixed": sum(r.undecided for r in fixed_runs),
        "undecided_adaptive": sum(r.undecided for r in fast_runs),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
