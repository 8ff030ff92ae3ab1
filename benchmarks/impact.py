"""Impact MD cost: the paper's fixed-step protocol vs adaptive step + early termination.

For N seeds at one energy (default 100 eV) on a Be(0001) slab with the built-in SNAP
reference, every seed runs twice:

* fixed: 0.2 fs for 120 fs (+120 fs while undecided), with the early-stop test in
  "shadow" mode: it records when and with which outcome it would have stopped, so the
  paired agreement (same seed, same fixed step, with and without early termination)
  comes from the same, deterministic trajectory;
* adaptive + early stop: the adaptive time step (``AdaptiveTimestep()`` defaults) and
  early termination switched on. Its trajectory diverges chaotically from the fixed one,
  so it is compared statistically: yield difference in units of its standard error.

Reported: core-seconds per trajectory of each, the fraction of core time spent outside
the force call, the paired agreement of outcomes (sputtered count and reflection) with its
95 % Wilson lower bound, both yields and their difference in standard errors (and
Fisher's exact p, which still means something when the yields are near zero). Last
line: one JSON object.

Long runs: ``--results runs.jsonl`` appends each finished seed at once and skips seeds
already there, so a killed run resumes where it stopped (the prepared slab is stored
beside it, ``runs.slab.extxyz``, and reused). ``--workers 2`` runs seeds on a local Dask
cluster, one core each.

    python benchmarks/impact.py --slab small --trajectories 10
    python benchmarks/impact.py --slab paper --trajectories 100 --results impact100.jsonl
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

from ase import Atoms
from ase.io import read, write
from scipy.stats import fisher_exact

from nnprefine.impact import ImpactResult, ImpactSettings, run_impact
from nnprefine.md import AdaptiveTimestep
from nnprefine.parallel import make_executor
from nnprefine.reference import SnapReference
from nnprefine.structures import be0001_slab, equilibrate_nvt, relax_slab
from nnprefine.yields import estimate_yield, wilson_interval

SLABS = {"small": ((4, 4, 6), 5.8), "paper": ((7, 7, 10), 7.0)}
FIXED = ImpactSettings(early_stop="shadow")
FAST = ImpactSettings(adaptive=AdaptiveTimestep(), early_stop="on")


def _summary(r: ImpactResult) -> dict[str, Any]:
    return {
        "n_sputtered": r.n_sputtered,
        "reflected": r.reflected,
        "undecided": r.undecided,
        "unphysical": r.unphysical,
        "steps": r.steps,
        "simulated_fs": r.simulated_fs,
        "core_s": r.core_s,
        "force_s": r.force_s,
        "energy_drift_eV": r.energy_drift_eV,
        "shadow": r.shadow,
    }


def paired_seed(slab: Atoms, calc: Any, energy_eV: float, seed: int) -> dict[str, Any]:
    """One seed with the fixed protocol (early stop in shadow) and with adaptive + early stop."""
    fixed = run_impact(slab, calc, energy_eV, seed, FIXED)
    fast = run_impact(slab, calc, energy_eV, seed, FAST)
    return {"seed": seed, "energy_eV": energy_eV, "fixed": _summary(fixed), "fast": _summary(fast)}


def _slab(kind: str, equilibrate_fs: float, seed: int, cache: Path | None) -> Atoms:
    """The relaxed, 300 K equilibrated slab; read from ``cache`` when it exists."""
    if cache is not None and cache.exists():
        slab = read(cache)
        print(f"{len(slab)}-atom slab read from {cache}", flush=True)
        return slab
    calc = SnapReference()
    size, vacuum = SLABS[kind]
    t0 = time.perf_counter()
    slab = be0001_slab(size=size, a_A=2.2395, c_A=3.6043, vacuum_A=vacuum)
    relax_slab(slab, calc, fmax_eV_per_A=5e-3)
    equilibrate_nvt(slab, calc, temperature_K=300.0, duration_fs=equilibrate_fs, seed=seed)
    slab.calc = None
    print(
        f"{len(slab)}-atom slab relaxed and equilibrated ({equilibrate_fs:g} fs) in "
        f"{time.perf_counter() - t0:.0f} s",
        flush=True,
    )
    if cache is not None:
        write(cache, slab)
    return slab


def _agree(run: dict[str, Any]) -> bool:
    f, sh = run["fixed"], run["fixed"]["shadow"]
    if sh.get("stop_time_fs") is None:  # early stop never fired: the same run
        return True
    return (sh["n_sputtered"], sh["reflected"]) == (f["n_sputtered"], f["reflected"])


def _yield(rows: list[dict[str, Any]]) -> tuple[float, float]:
    est = estimate_yield(0.0, rows)
    return est.yield_, est.error


def summarize(runs: list[dict[str, Any]], slab_atoms: int, energy_eV: float) -> dict[str, Any]:
    """The issue's figures from the per-seed records."""
    fixed = [r["fixed"] for r in runs]
    fast = [r["fast"] for r in runs]
    n = len(runs)

    def mean(rows: list[dict[str, Any]], key: str) -> float:
        return sum(r[key] for r in rows) / n

    def outside(rows: list[dict[str, Any]]) -> float:
        return 1.0 - sum(r["force_s"] for r in rows) / sum(r["core_s"] for r in rows)

    yf, df = _yield(fixed)
    ya, da = _yield(fast)
    se = math.hypot(df / 2, da / 2)  # D = 2σ/√N, so D/2 is the standard error
    fired = [r for r in fixed if r["shadow"].get("stop_time_fs") is not None]
    n_agree = sum(map(_agree, runs))
    # Near zero yield the normal approximation says nothing; Fisher's exact test on the
    # 2×2 table (trajectories with / without sputtering, fixed vs adaptive) still does.
    events = [sum(r["n_sputtered"] > 0 for r in rows) for rows in (fixed, fast)]
    _, fisher_p = fisher_exact([[events[0], n - events[0]], [events[1], n - events[1]]])
    return {
        "slab_atoms": slab_atoms,
        "energy_eV": energy_eV,
        "trajectories": n,
        "fixed_core_s_per_trajectory": mean(fixed, "core_s"),
        "adaptive_core_s_per_trajectory": mean(fast, "core_s"),
        "speedup": mean(fixed, "core_s") / mean(fast, "core_s"),
        "fixed_steps_mean": mean(fixed, "steps"),
        "adaptive_steps_mean": mean(fast, "steps"),
        "adaptive_simulated_fs_mean": mean(fast, "simulated_fs"),
        "early_stop_time_fs_mean": (
            sum(r["shadow"]["stop_time_fs"] for r in fired) / len(fired) if fired else None
        ),
        "fraction_outside_force_call": outside(fixed),
        "fraction_outside_force_call_adaptive": outside(fast),
        "max_abs_energy_drift_fixed_eV": max(abs(r["energy_drift_eV"]) for r in fixed),
        "max_abs_energy_drift_adaptive_eV": max(abs(r["energy_drift_eV"]) for r in fast),
        "early_stop_paired_agreement": n_agree / n,
        # what N seeds can show: the 95 % Wilson lower bound of the agreement
        "early_stop_agreement_wilson_low": wilson_interval(n_agree, n)[0],
        "early_stop_fired": len(fired),
        "fixed_yield": yf,
        "fixed_yield_error": df,
        "adaptive_yield": ya,
        "adaptive_yield_error": da,
        "yield_difference_sigma": abs(yf - ya) / se if se > 0 else 0.0,
        "yield_difference_fisher_p": float(fisher_p),
        "sputtered_fixed": sum(r["n_sputtered"] for r in fixed),
        "sputtered_adaptive": sum(r["n_sputtered"] for r in fast),
        "reflected_fixed": sum(r["reflected"] for r in fixed),
        "reflected_adaptive": sum(r["reflected"] for r in fast),
        "undecided_fixed": sum(r["undecided"] for r in fixed),
        "undecided_adaptive": sum(r["undecided"] for r in fast),
        "unphysical": sum(r["unphysical"] for r in fixed + fast),
    }


def _line(run: dict[str, Any]) -> str:
    f, a = run["fixed"], run["fast"]
    return (
        f"seed {run['seed']}: fixed {f['n_sputtered']} sp, refl {int(f['reflected'])}, "
        f"{f['steps']} steps, {f['core_s']:.1f} core-s, dE {f['energy_drift_eV']:+.4f} eV, "
        f"shadow stop {f['shadow'].get('stop_time_fs')} fs -> {f['shadow'].get('n_sputtered')}"
        f" | adaptive {a['n_sputtered']} sp, {a['steps']} steps, {a['simulated_fs']:.0f} fs, "
        f"{a['core_s']:.1f} core-s, dE {a['energy_drift_eV']:+.4f} eV"
    )


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--slab", choices=sorted(SLABS), default="small")
    ap.add_argument("--trajectories", type=int, default=4)
    ap.add_argument("--energy", type=float, default=100.0, help="projectile energy (eV)")
    ap.add_argument("--equilibrate-fs", type=float, default=1000.0)
    ap.add_argument("--seed", type=int, default=0, help="first trajectory seed")
    ap.add_argument("--workers", type=int, default=1, help=">1: a local Dask cluster")
    ap.add_argument("--results", type=Path, default=None, help="JSONL file: resumable run")
    args = ap.parse_args()

    runs: list[dict[str, Any]] = []
    slab_cache = None
    if args.results is not None:
        slab_cache = args.results.with_suffix(".slab.extxyz")
        if args.results.exists():
            runs = [json.loads(x) for x in args.results.read_text().splitlines() if x.strip()]
            runs = [r for r in runs if r["energy_eV"] == args.energy]
            print(f"{len(runs)} seeds already in {args.results}", flush=True)
    slab = _slab(args.slab, args.equilibrate_fs, args.seed, slab_cache)
    done = {r["seed"] for r in runs}
    todo = [s for s in range(args.seed, args.seed + args.trajectories) if s not in done]
    runs = [r for r in runs if args.seed <= r["seed"] < args.seed + args.trajectories]

    spec = None if args.workers <= 1 else {"kind": "dask", "n_workers": args.workers}
    tasks = ((str(s), {"seed": s}) for s in todo)
    shared = {"slab": slab, "calc": SnapReference(), "energy_eV": args.energy}
    with make_executor(spec) as executor:
        for out in executor.run(paired_seed, tasks, shared):
            if not out.ok:
                print(f"seed {out.key} failed: {out.error}", flush=True)
                continue
            runs.append(out.value)
            if args.results is not None:
                with args.results.open("a") as fh:
                    fh.write(json.dumps(out.value) + "\n")
            print(_line(out.value), flush=True)
    if not runs:
        raise SystemExit("no finished trajectories to summarize")
    print(json.dumps(summarize(sorted(runs, key=lambda r: r["seed"]), len(slab), args.energy)))


if __name__ == "__main__":
    main()
