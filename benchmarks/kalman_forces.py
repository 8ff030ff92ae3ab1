"""The Kalman filter's force updates: one batched pass against one pass per component (#16)

A Kalman force update needs ∂F_c/∂w of the m force components it picks in a frame. The
old path ran m backward passes through the forces (each through the descriptor's sparse
product and the networks); the new one (``_TorchModel.force_components``) takes the m
sparse rows of ∂G/∂r and runs one batched backward pass through the networks. Both are
timed here in one process on the training frames of a project's ``data.db`` (the quick
preset's descriptor and networks by default), per frame at several force fractions, and
as whole Kalman member-epochs (old path swapped in for the baseline).

    OMP_NUM_THREADS=1 NUMBA_NUM_THREADS=1 python benchmarks/kalman_forces.py \\
        --data /tmp/bench/repair/data.db

Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nnprefine import training as tr
from nnprefine._kalman import GlobalKalmanFilter
from nnprefine.config import load_config
from nnprefine.dataset import FrameStore
from nnprefine.model import NNPotential, ZBLBaseline

ROOT = Path(__file__).resolve().parent.parent


def kalman_epoch_s(tm: Any, frames: list, settings: Any, seed: int) -> float:
    """Seconds of one Kalman member-epoch over ``frames``."""
    s = settings
    n_w = sum(p.numel() for p in tm.params)
    kf = GlobalKalmanFilter(
        n_w, s.kalman_epsilon, s.kalman_q0, s.kalman_q_tau_epochs, s.kalman_q_min,
        s.kalman_lambda0, s.kalman_nu, kind=s.kalman_type, eta0=s.kalman_eta0,
    )  # fmt: skip
    t0 = time.perf_counter()
    tr._epoch_kalman(tm, frames, s, kf, np.random.default_rng(seed), 0, lambda n: None)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(ROOT / "examples" / "be0001-quick.toml"))
    ap.add_argument("--data", required=True, help="a project's data.db")
    ap.add_argument("--frames", type=int, default=60, help="training frames used")
    ap.add_argument("--fractions", nargs="+", type=float, default=[0.02, 0.05, 0.10])
    args = ap.parse_args()
    cfg = load_config(args.config)
    with FrameStore(args.data, elements=cfg.elements, test_fraction=0.1) as store:
        atoms = store.frames(split="train")[: args.frames]
    net = cfg.network
    pot = NNPotential(
        cfg.descriptor.symmetry_functions(cfg.elements),
        net.hidden,
        net.activation,
        1,
        baseline=ZBLBaseline(net.zbl_inner_A, net.zbl_outer_A) if net.zbl_baseline else None,
    )
    frames = tr._prepare(atoms, pot, 1.0, tr._JacobianBudget(2**34))
    tr._set_offsets(frames, pot)
    tm = tr._TorchModel(pot)
    rng = np.random.default_rng(0)
    out: dict[str, Any] = {
        "frames": len(frames),
        "atoms_per_frame": float(np.mean([f.n_atoms for f in frames])),
        "weights": sum(p.numel() for p in tm.params),
    }
    warm = torch.arange(3)  # the first batched call builds vmap's rules: not timed
    tm.force_components_per_pass(frames[0], warm), tm.force_components(frames[0], warm)
    for fraction in args.fractions:
        t_old = t_new = 0.0
        worst = 0.0
        for f in frames:
            m = max(1, int(round(fraction * 3 * f.n_atoms)))
            comps = torch.from_numpy(rng.choice(3 * f.n_atoms, size=m, replace=False))
            t0 = time.perf_counter()
            v_old, h_old = tm.force_components_per_pass(f, comps)
            t1 = time.perf_counter()
            v_new, h_new = tm.force_components(f, comps)
            t2 = time.perf_counter()
            t_old, t_new = t_old + t1 - t0, t_new + t2 - t1
            worst = max(worst, float((h_old - h_new).abs().max() / h_old.abs().max()))
        key = f"f{fraction:g}"
        out[f"{key}_per_component_ms_per_frame"] = 1e3 * t_old / len(frames)
        out[f"{key}_batched_ms_per_frame"] = 1e3 * t_new / len(frames)
        out[f"{key}_speedup"] = t_old / t_new
        out[f"{key}_max_rel_difference"] = worst
        print(
            f"force fraction {fraction:g}: {1e3 * t_old / len(frames):.1f} ms per frame one "
            f"pass per component, {1e3 * t_new / len(frames):.1f} ms batched "
            f"({t_old / t_new:.1f}x), max relative difference {worst:.1e}",
            flush=True,
        )
    batched = tm.force_components
    for fraction in (min(args.fractions), max(args.fractions)):
        s = dataclasses.replace(cfg.training.settings, kalman_force_fraction=fraction, quiet=True)
        new = kalman_epoch_s(tm, frames, s, seed=3)
        tm.force_components = tm.force_components_per_pass  # the old path
        old = kalman_epoch_s(tm, frames, s, seed=3)
        tm.force_components = batched
        key = f"f{fraction:g}"
        out[f"{key}_epoch_s_old"], out[f"{key}_epoch_s_new"] = old, new
        out[f"{key}_epoch_speedup"] = old / new
        print(f"Kalman member-epoch at force fraction {fraction:g}: {old:.2f} s → {new:.2f} s")
    print(json.dumps({k: float(f"{v:.4g}") if isinstance(v, float) else v for k, v in out.items()}))


if __name__ == "__main__":
    main()
