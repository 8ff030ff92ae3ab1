"""Benchmark: train a 2-member committee (paper architecture) on SNAP-labelled 96-atom slabs.

Frames: rattled copies of the Be(0001) 4×4×6 slab and snapshots of short Langevin MD at
300–1500 K, all labelled by the built-in SNAP reference; 90/10 split by hash. Trains the
paper's 53-30-30-1 softplus networks (53 symmetry functions, rc 7 Å) and reports seconds
per epoch, the test RMSE reached, the cost of one energy+forces call on the 490-atom slab
(one thread) and the peak memory of training per frame.

    python benchmarks/training.py --frames 200 --epochs 30 [--optimizer kalman|adam]

The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

import numpy as np


def _rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _reset_peak_rss() -> None:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def _peak_rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def make_frames(n_frames: int, seed: int) -> list:
    from ase import units
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution

    from nnprefine.reference import SnapReference
    from nnprefine.structures import be0001_slab

    rng = np.random.default_rng(seed)
    calc = SnapReference()
    slab = be0001_slab(size=(4, 4, 6), a_A=2.24, c_A=3.60, vacuum_A=5.8, fixed_layers=2)
    slab.set_constraint()
    frames = []

    def label(atoms):
        atoms.calc = calc
        e, f = atoms.get_potential_energy(), atoms.get_forces()
        frame = atoms.copy()
        frame.calc = SinglePointCalculator(frame, energy=e, forces=f)
        frames.append(frame)

    n_rattle = n_frames // 2
    for _ in range(n_rattle):
        atoms = slab.copy()
        atoms.rattle(float(rng.uniform(0.02, 0.15)), seed=int(rng.integers(2**31)))
        label(atoms)
    temps = (300.0, 800.0, 1500.0)
    per_run = 10
    k = 0
    while len(frames) < n_frames:
        atoms = slab.copy()
        atoms.calc = calc
        MaxwellBoltzmannDistribution(
            atoms, temperature_K=temps[k % 3] * 2, rng=np.random.default_rng(seed + k)
        )
        dyn = Langevin(
            atoms,
            1.0 * units.fs,
            temperature_K=temps[k % 3],
            friction=0.02,
            rng=np.random.default_rng(seed + 100 + k),
        )
        for _ in range(min(per_run, n_frames - len(frames))):
            dyn.run(10)
            label(atoms)
        k += 1
    return frames


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--frames", type=int, default=200)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--optimizer", default="kalman", choices=("adam", "kalman"))
    ap.add_argument("--force-fraction", type=float, default=0.01)
    ap.add_argument("--learning-rate", type=float, default=5e-3, help="Adam's initial rate")
    ap.add_argument(
        "--scaling", default="scalesigma", help="input scaling (n2p2 variants; see descriptors)"
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--log-dir", default=None)
    args = ap.parse_args()

    import torch

    from nnprefine.calculators import NNPCalculator
    from nnprefine.descriptors import paper_set
    from nnprefine.model import Committee
    from nnprefine.structures import be0001_slab
    from nnprefine.training import TrainingSettings, rmse, split_frames, train

    t0 = time.perf_counter()
    frames = make_frames(args.frames, args.seed)
    t_label = time.perf_counter() - t0
    train_set, test_set = split_frames(frames)
    print(
        f"{len(frames)} frames ({len(train_set)} train, {len(test_set)} test) labelled in "
        f"{t_label:.1f} s"
    )

    sfset = paper_set("Be", r_cut_A=7.0)
    com = Committee.create(
        sfset, n_members=2, hidden=(30, 30), activation="softplus", seed=args.seed
    )
    settings = TrainingSettings(
        optimizer=args.optimizer,
        epochs=args.epochs,
        seed=args.seed,
        energy_weight=1.0 if args.optimizer == "kalman" else 100.0,
        force_weight=1.0,
        batch_size_frames=4,
        learning_rate=args.learning_rate,
        learning_rate_decay_per_epoch=0.92,
        scaling_mode=args.scaling,
        patience_epochs=max(10, args.epochs // 3),
        kalman_force_fraction=args.force_fraction,
        quiet=False,
    )
    rss_before = _rss_mib()
    _reset_peak_rss()
    log_dir = args.log_dir or tempfile.mkdtemp(prefix="nnprefine-bench-train-")
    t0 = time.perf_counter()
    histories = train(com, train_set, test_set, settings, log_dir=log_dir)
    t_train = time.perf_counter() - t0
    peak = _peak_rss_mib()
    epochs_run = sum(len(h.rows) for h in histories)
    seconds_per_epoch = (
        sum(r["seconds"] for h in histories for r in h.rows) / max(1, epochs_run) * len(histories)
    )
    res = rmse(com, test_set)
    res_train = rmse(com, train_set)
    e_test = float(np.mean(res["energy_meV_per_atom"]))
    f_test = float(np.mean(res["force_meV_per_A"]))

    torch.set_num_threads(1)
    try:
        import numba

        numba.set_num_threads(1)
    except (ImportError, ValueError):
        pass
    big = be0001_slab(size=(7, 7, 10), a_A=2.24, c_A=3.60, vacuum_A=7.0, fixed_layers=2)
    big.rattle(0.05, seed=1)
    times = []
    for _ in range(3):
        big.calc = NNPCalculator(com[0])
        t0 = time.perf_counter()
        big.get_forces()
        times.append(time.perf_counter() - t0)
    us_per_atom = 1e6 * min(times) / len(big)

    print(
        f"training: {t_train:.0f} s for {epochs_run} member-epochs; "
        f"{seconds_per_epoch:.1f} s per committee epoch"
    )
    print(
        f"test RMSE per member: energy {res['energy_meV_per_atom']} meV/atom, "
        f"force {res['force_meV_per_A']} meV/Å"
    )
    print(
        f"train RMSE per member: energy {res_train['energy_meV_per_atom']} meV/atom, "
        f"force {res_train['force_meV_per_A']} meV/Å"
    )
    print(f"490-atom slab energy+forces, 1 thread: {us_per_atom:.0f} µs/atom")
    print(f"peak RSS during training {peak:.0f} MiB (before: {rss_before:.0f} MiB)")
    print(
        json.dumps(
            {
                "frames": len(frames),
                "train_frames": len(train_set),
                "test_frames": len(test_set),
                "optimizer": args.optimizer,
                "epochs_per_member": [len(h.rows) for h in histories],
                "seconds_per_epoch": round(seconds_per_epoch, 2),
                "training_seconds": round(t_train, 1),
                "test_rmse_energy_mev_per_atom": round(e_test, 3),
                "test_rmse_force_mev_per_A": round(f_test, 2),
                "train_rmse_energy_mev_per_atom": round(
                    float(np.mean(res_train["energy_meV_per_atom"])), 3
                ),
                "train_rmse_force_mev_per_A": round(
                    float(np.mean(res_train["force_meV_per_A"])), 2
                ),
                "force_call_us_per_atom_1t": round(us_per_atom, 1),
                "train_memory_mib_per_frame": round((peak - rss_before) / len(frames), 3),
                "peak_rss_mib": round(peak, 1),
                "rss_before_training_mib": round(rss_before, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
