"""Which exploration frames go to the reference: thresholds, trust level, caps, spreading.

Pure functions on arrays of per-frame committee disagreement. The refinement loop
(:mod:`nnprefine.stages.refinement`) gathers the arrays from its exploration trajectories and
labels what :func:`select_frames` returns.

Rules, in order:

1. A frame is *over threshold* when its energy disagreement exceeds the energy
   threshold or its force disagreement exceeds the force threshold (the paper's
   criterion). NaN disagreement counts as over threshold (the model is lost there).
2. A frame is *untrusted* when its force disagreement exceeds the upper trust level or is
   NaN: the model has left any region it knows, and such frames are not selected (DP-GEN's
   ``trust_hi``). Frames just before a trajectory was halted there are flagged by the
   caller (``before_halt``) and go first: they are the most valuable candidates.
3. Candidates are over-threshold, trusted frames. When there are none and ``adaptive_count``
   > 0, the ``adaptive_count`` trusted frames of largest disagreement are taken instead.
4. Candidates are ranked (``before_halt`` first, then by disagreement relative to the
   thresholds) and accepted greedily, skipping a frame closer than
   ``min_separation_fs`` in time to one already accepted from the same trajectory
   (adjacent frames are near-duplicates), until ``max_selected`` are accepted.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from nnprefine.errors import ConfigError

__all__ = ["Selection", "SelectionSettings", "select_frames", "spread_over_trajectories"]


@dataclass(frozen=True)
class SelectionSettings:
    """The rules' parameters, as :func:`select_frames` takes them (see the module docstring).

    The paper's thresholds: 20 meV/atom and 2 eV/Å in the first iteration, then 2 meV/atom
    and 0.8 eV/Å.
    """

    energy_threshold_eV_per_atom: float = 0.020
    force_threshold_eV_per_A: float = 2.0
    upper_trust_force_eV_per_A: float = np.inf
    max_selected: int = 200
    min_separation_fs: float = 0.0
    adaptive_count: int = 0

    def __post_init__(self) -> None:
        for name in (
            "energy_threshold_eV_per_atom",
            "force_threshold_eV_per_A",
            "upper_trust_force_eV_per_A",
        ):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("max_selected", "min_separation_fs", "adaptive_count"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be zero or more, got {getattr(self, name)}")

    def as_kwargs(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Selection:
    """What :func:`select_frames` decided, frame by frame (index arrays into the inputs)."""

    selected: np.ndarray  # (n_selected,) int, in acceptance order
    over_threshold: np.ndarray  # (n_frames,) bool
    untrusted: np.ndarray  # (n_frames,) bool
    candidates: np.ndarray  # (n_candidates,) int
    adaptive: bool  # True when thresholds picked nothing and the adaptive rule was used

    @property
    def fraction_over_threshold(self) -> float:
        n = len(self.over_threshold)
        return float(self.over_threshold.sum() / n) if n else 0.0


def select_frames(
    trajectory: np.ndarray,
    time_fs: np.ndarray,
    energy_disagreement_eV_per_atom: np.ndarray,
    force_disagreement_eV_per_A: np.ndarray,
    *,
    energy_threshold_eV_per_atom: float,
    force_threshold_eV_per_A: float,
    upper_trust_force_eV_per_A: float = np.inf,
    max_selected: int = 200,
    min_separation_fs: float = 0.0,
    adaptive_count: int = 0,
    before_halt: np.ndarray | None = None,
) -> Selection:
    """Choose frames to label from per-frame committee disagreement.

    ``trajectory``: (n,) ints or strings naming each frame's trajectory; ``time_fs``: (n,)
    float, fs; the disagreements (n,) float in eV/atom and eV/Å (paper definitions);
    ``before_halt``: (n,) bool, frames just before a trajectory was halted at the trust
    level or for being unphysical. See the module docstring for the rules.
    """
    e = np.asarray(energy_disagreement_eV_per_atom, dtype=float)
    f = np.asarray(force_disagreement_eV_per_A, dtype=float)
    traj = np.asarray(trajectory)
    t = np.asarray(time_fs, dtype=float)
    n = len(e)
    if not (len(f) == len(traj) == len(t) == n):
        raise ValueError("trajectory, time_fs and both disagreement arrays must have equal length")
    halt = np.zeros(n, dtype=bool) if before_halt is None else np.asarray(before_halt, dtype=bool)
    nan = ~(np.isfinite(e) & np.isfinite(f))
    with np.errstate(invalid="ignore"):
        over = nan | (e > energy_threshold_eV_per_atom) | (f > force_threshold_eV_per_A)
        untrusted = nan | (f > upper_trust_force_eV_per_A)
    trusted = ~untrusted
    # Disagreement in units of the thresholds: one number to rank by.
    score = np.where(
        nan, -np.inf, np.maximum(e / energy_threshold_eV_per_atom, f / force_threshold_eV_per_A)
    )
    candidates = np.flatnonzero((over | halt) & trusted)
    adaptive = False
    if len(candidates) == 0 and adaptive_count > 0:
        pool = np.flatnonzero(trusted)
        order = pool[np.argsort(-score[pool], kind="stable")]
        candidates = np.sort(order[:adaptive_count])
        adaptive = len(candidates) > 0
    # Rank: before-halt frames first, then by score (ties broken by index, so deterministic).
    rank = np.lexsort((candidates, -score[candidates], ~halt[candidates]))
    ordered = candidates[rank]
    accepted: list[int] = []
    taken_times: dict[object, list[float]] = {}
    for i in ordered:
        if len(accepted) >= max_selected:
            break
        key = traj[i].item() if hasattr(traj[i], "item") else traj[i]
        times = taken_times.setdefault(key, [])
        if any(abs(t[i] - tt) < min_separation_fs for tt in times):
            continue
        times.append(float(t[i]))
        accepted.append(int(i))
    return Selection(
        selected=np.asarray(accepted, dtype=int),
        over_threshold=over,
        untrusted=untrusted,
        candidates=candidates,
        adaptive=adaptive,
    )


def spread_over_trajectories(
    trajectory: np.ndarray | list[Any], score: np.ndarray | list[float], cap: int
) -> np.ndarray:
    """Indices of at most ``cap`` frames, spread over trajectories: round by round, each
    trajectory gives its best remaining frame (largest ``score``), trajectories with the
    larger best score first. Every trajectory is represented before any gives a second
    frame, so a single wild trajectory cannot take the whole budget. NaN scores rank first.

    trajectory: (n,) keys; score: (n,) larger = more wanted; returns sorted indices.
    """
    if cap < 0:
        raise ConfigError(f"cap must be ≥ 0, got {cap}")
    keys = list(trajectory)
    s = np.asarray(score, dtype=float)
    if len(keys) != len(s):
        raise ValueError(f"trajectory ({len(keys)}) and score ({len(s)}) differ in length")
    s = np.where(np.isnan(s), np.inf, s)
    queues: dict[Any, list[int]] = {}
    for i in sorted(range(len(s)), key=lambda i: -s[i]):
        queues.setdefault(keys[i], []).append(i)
    order = list(queues.values())  # trajectories by their best frame, best first
    taken: list[int] = []
    depth = 0
    while len(taken) < cap and any(len(q) > depth for q in order):
        for q in order:
            if len(q) > depth and len(taken) < cap:
                taken.append(q[depth])
        depth += 1
    return np.array(sorted(taken), dtype=int)
