"""Throughput of a production campaign on 1 and 2 Dask worker processes, and what the
machine can give (two independent processes).

The task unit is one impact trajectory on the Be(0001) production slab (7×7×10, 490
atoms, bottom two layers fixed, 300 K Maxwell–Boltzmann velocities) driven by the
built-in SNAP reference through ASE's velocity Verlet, dt 0.2 fs: a Be projectile 5 Å
above the surface at a seeded random (x, y), moving along −z with ``--energy-eV``. The
campaign code was not in the tree when this was written, so by default the benchmark
times these MD runs directly (``--unit ase``); ``--unit impact`` runs the same
trajectories through ``nnprefine.impact.run_impact``, which landed later; each is cut to ``--steps`` steps to keep the
benchmark short, and per-hour figures are scaled to the paper's 600-step (120 fs)
trajectory: trajectories/hour = tasks × (steps / 600) / hours.

Measured:
- serial: one process runs every task in-process (``InProcessExecutor``);
- Dask with 1 and with 2 worker processes (one thread each) on a ``LocalCluster``;
- baseline: the same tasks in one independent process, then in two at once; the ratio
  of their throughputs is what two processes can give on this machine (DESIGN §6: about
  1.3× on its two vCPUs for CPU-bound work), the yardstick for the 2-worker speed-up.

Run: ``python benchmarks/parallel.py`` (``--quick`` for a smoke run). The last line
printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Any

import numpy as np
from ase import Atom, Atoms
from ase.md.verlet import VelocityVerlet
from ase.units import fs

PRODUCTION_STEPS = 600  # 120 fs at 0.2 fs, the paper's first segment of an impact
TIMESTEP_FS = 0.2
BE_MASS_AMU = 9.012182


def production_slab(size: tuple[int, int, int] = (7, 7, 10), seed: int = 0) -> Atoms:
    """The 490-atom Be(0001) slab with 300 K velocities (not relaxed: timing only)."""
    from nnprefine.structures import be0001_slab, maxwell_boltzmann_velocities

    slab = be0001_slab(size)
    slab.set_velocities(maxwell_boltzmann_velocities(slab, 300.0, np.random.default_rng(seed)))
    return slab


def impact(calc: Any, slab: Atoms, seed: int, energy_eV: float, n_steps: int) -> dict[str, float]:
    """One impact trajectory of ``n_steps``; returns the projectile's final height and speed."""
    from ase.units import _amu, _e  # SI constants, to turn eV into Å/(ASE time)

    rng = np.random.default_rng(seed)
    atoms = slab.copy()
    atoms.set_velocities(slab.get_velocities())
    top = atoms.positions[:, 2].max()
    xy = rng.random(2) @ atoms.cell.array[:2, :2]
    atoms.append(Atom("Be", (xy[0], xy[1], top + 5.0)))
    speed_m_per_s = np.sqrt(2.0 * energy_eV * _e / (BE_MASS_AMU * _amu))
    v = atoms.get_velocities()
    v[-1] = (0.0, 0.0, -speed_m_per_s * 1e10 * fs * 1e-15)  # Å/fs → ASE units
    atoms.set_velocities(v)
    atoms.calc = calc
    VelocityVerlet(atoms, timestep=TIMESTEP_FS * fs).run(n_steps)
    return {"z_A": float(atoms.positions[-1, 2]), "e_pot_eV": atoms.get_potential_energy()}


def campaign_impact(
    calc: Any, slab: Atoms, seed: int, energy_eV: float, n_steps: int
) -> dict[str, float]:
    """The same trajectory through the campaign code, ``nnprefine.impact.run_impact``."""
    from nnprefine.impact import ImpactSettings, run_impact

    settings = ImpactSettings(
        timestep_fs=TIMESTEP_FS, duration_fs=n_steps * TIMESTEP_FS, max_extensions=0
    )
    result = run_impact(slab, calc, energy_eV, seed, settings=settings)
    return {"unphysical": float(result.unphysical)}


UNITS = {"ase": impact, "impact": campaign_impact}


def task_list(n_tasks: int, energy_eV: float, n_steps: int, first_seed: int = 0) -> list:
    return [
        (f"impact-{s}", {"seed": s, "energy_eV": energy_eV, "n_steps": n_steps})
        for s in range(first_seed, first_seed + n_tasks)
    ]


def thread_env() -> dict[str, str]:
    """One thread per process for every numerical library, as the Dask workers get."""
    from nnprefine.parallel import THREAD_ENV_VARS

    return {**os.environ, **{name: "1" for name in THREAD_ENV_VARS}}


def timed_run(executor: Any, tasks: list, shared: dict[str, Any], unit: str = "ase") -> float:
    """Wall time (s) from submitting to the last outcome; checks that every task succeeded."""
    start = time.perf_counter()
    outcomes = list(executor.run(UNITS[unit], tasks, shared=shared))
    elapsed = time.perf_counter() - start
    failed = [o for o in outcomes if not o.ok]
    if failed or len(outcomes) != len(tasks):
        raise SystemExit(f"benchmark tasks failed: {[o.error for o in failed]}")
    return elapsed


def independent_processes(n_procs: int, n_tasks: int, args: argparse.Namespace) -> float:
    """Run ``n_tasks`` in each of ``n_procs`` processes at once; the slowest loop time (s)."""
    cmd = [
        sys.executable,
        __file__,
        "--loop-only",
        "--steps",
        str(args.steps),
        "--energy-eV",
        str(args.energy_eV),
        "--unit",
        args.unit,
        *(["--model", args.model] if args.model else []),
    ]
    procs = [
        subprocess.Popen(
            [*cmd, "--tasks", str(n_tasks), "--first-seed", str(100 * (i + 1))],
            stdout=subprocess.PIPE,
            text=True,
            env=thread_env(),
        )
        for i in range(n_procs)
    ]
    times = []
    for p in procs:
        out, _ = p.communicate()
        if p.returncode:
            raise SystemExit(f"baseline process failed with exit code {p.returncode}")
        times.append(json.loads(out.strip().splitlines()[-1])["loop_s"])
    return max(times)


def make_calc(model_dir: str | None) -> Any:
    """The force field of the tasks: built-in SNAP, or member 1 of a saved committee."""
    if not model_dir:
        from nnprefine.reference import SnapReference

        return SnapReference()
    from nnprefine.calculators import NNPCalculator
    from nnprefine.model import Committee

    return NNPCalculator(Committee.load(model_dir).members[0])


def loop_only(args: argparse.Namespace) -> None:
    """One baseline process: build the slab, then time ``--tasks`` impacts in a loop."""
    from nnprefine.parallel import InProcessExecutor

    shared = {"calc": make_calc(args.model), "slab": production_slab()}
    tasks = task_list(args.tasks, args.energy_eV, args.steps, args.first_seed)
    print(json.dumps({"loop_s": timed_run(InProcessExecutor(), tasks, shared, args.unit)}))


def per_hour(n_tasks: int, n_steps: int, seconds: float) -> float:
    """600-step trajectories per hour."""
    return n_tasks * (n_steps / PRODUCTION_STEPS) * 3600.0 / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=4, help="trajectories per measurement")
    parser.add_argument("--steps", type=int, default=30, help="MD steps per trajectory")
    parser.add_argument("--energy-eV", type=float, default=100.0, help="projectile energy")
    parser.add_argument(
        "--unit",
        choices=sorted(UNITS),
        default="ase",
        help="ase: ASE velocity Verlet; impact: nnprefine.impact.run_impact (campaign code)",
    )
    parser.add_argument(
        "--model",
        default=None,
        help="committee directory (e.g. runs/be0001-quick/models/final): time its member 1 "
        "instead of the built-in SNAP reference",
    )
    parser.add_argument("--repeats", type=int, default=2, help="rounds; the best counts")
    parser.add_argument("--quick", action="store_true", help="1 round of 2 tasks of 5 steps")
    parser.add_argument("--loop-only", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--first-seed", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.loop_only:
        loop_only(args)
        return
    if args.quick:
        args.tasks, args.steps, args.repeats = 2, 5, 1
    if args.tasks % 2:
        parser.error("--tasks must be even, so that two workers get equal shares")

    from nnprefine.parallel import DaskExecutor, InProcessExecutor, usable_cores

    n, steps = args.tasks, args.steps
    shared = {"calc": make_calc(args.model), "slab": production_slab()}
    driver = f"NNP {args.model}" if args.model else "built-in SNAP"
    print(
        f"task: one {args.energy_eV:g} eV impact on the 491-atom Be(0001) slab, {driver}, "
        f"{steps} steps of {TIMESTEP_FS} fs; {n} tasks per measurement; "
        f"{usable_cores()} usable cores; load average {os.getloadavg()[0]:.2f}"
    )
    # Other programs on the machine come and go: every configuration is measured in each of
    # --repeats rounds, interleaved, and the best round counts.
    results: dict[str, float] = {}

    def keep_best(name: str, value: float) -> None:
        results[name] = max(results.get(name, 0.0), value)

    tasks = task_list(n, args.energy_eV, steps)
    with (
        DaskExecutor(n_workers=1, threads_per_worker=1) as one_worker,
        DaskExecutor(n_workers=2, threads_per_worker=1) as two_workers,
    ):
        # Warm-up: imports and the first LAMMPS instance, here and in every worker.
        timed_run(InProcessExecutor(), task_list(1, args.energy_eV, 2, 999), shared, args.unit)
        timed_run(one_worker, task_list(2, args.energy_eV, 2, 900), shared, args.unit)
        timed_run(two_workers, task_list(4, args.energy_eV, 2, 900), shared, args.unit)
        for round_ in range(args.repeats):
            load = os.getloadavg()[0]
            t_serial = timed_run(InProcessExecutor(), tasks, shared, args.unit)
            t_w1 = timed_run(one_worker, tasks, shared, args.unit)
            t_w2 = timed_run(two_workers, tasks, shared, args.unit)
            t_p1 = independent_processes(1, n // 2, args)
            t_p2 = independent_processes(2, n // 2, args)
            print(
                f"round {round_ + 1} (load average before it {load:.2f}): in-process {t_serial:.1f} s, "
                f"1 worker {t_w1:.1f} s, 2 workers {t_w2:.1f} s for {n} tasks; one process "
                f"{t_p1:.1f} s for {n // 2}, two processes {t_p2:.1f} s for {n // 2} each"
            )
            keep_best("trajectories_per_hour_in_process", per_hour(n, steps, t_serial))
            keep_best("trajectories_per_hour_1_worker", per_hour(n, steps, t_w1))
            keep_best("trajectories_per_hour_2_workers", per_hour(n, steps, t_w2))
            keep_best("trajectories_per_hour_1_process", per_hour(n // 2, steps, t_p1))
            keep_best("trajectories_per_hour_2_processes", per_hour(n, steps, t_p2))
    one_proc = results["trajectories_per_hour_1_process"]
    two_proc = results["trajectories_per_hour_2_processes"]

    r1 = results["trajectories_per_hour_1_worker"]
    r2 = results["trajectories_per_hour_2_workers"]
    results["scaling_efficiency"] = r2 / (2.0 * r1)
    results["two_process_baseline_speedup"] = two_proc / one_proc
    results["speedup_2_workers"] = r2 / r1
    results["speedup_vs_baseline"] = (r2 / r1) / (two_proc / one_proc)

    print("600-step (120 fs) trajectories per hour, scaled from the short runs:")
    for name in (
        "trajectories_per_hour_in_process",
        "trajectories_per_hour_1_worker",
        "trajectories_per_hour_2_workers",
        "trajectories_per_hour_1_process",
        "trajectories_per_hour_2_processes",
    ):
        print(f"  {name:40s} {results[name]:8.1f}")
    print(
        f"  2-worker speed-up {r2 / r1:.2f}x, scaling efficiency {results['scaling_efficiency']:.2f}"
    )
    print(
        f"  two independent processes give {results['two_process_baseline_speedup']:.2f}x; "
        f"Dask reaches {results['speedup_vs_baseline']:.0%} of that"
    )
    results = {k: round(v, 3) for k, v in results.items()}
    extra = {"task_steps": steps, "tasks": n, "repeats": args.repeats, "slab_atoms": 491}
    extra["driver"] = "nnp" if args.model else "snap"
    print(json.dumps({**results, **extra}))


if __name__ == "__main__":
    main()
