"""Selection logic on synthetic disagreement: thresholds, trust, caps, spreading, NaN."""

from __future__ import annotations

import numpy as np

from nnprefine.selection import select_frames, spread_over_trajectories


def _frames(n_traj: int = 3, n_frames: int = 40, dt_fs: float = 1.0):
    traj = np.repeat(np.arange(n_traj), n_frames)
    t = np.tile(np.arange(n_frames) * dt_fs, n_traj)
    return traj, t


def test_paper_thresholds_either_criterion_selects():
    traj, t = _frames(1, 4)
    e = np.array([0.001, 0.025, 0.001, 0.001])  # eV/atom; threshold 20 meV/atom
    f = np.array([0.5, 0.5, 2.5, 1.9])  # eV/Å; threshold 2 eV/Å
    sel = select_frames(
        traj, t, e, f, energy_threshold_eV_per_atom=0.020, force_threshold_eV_per_A=2.0
    )
    assert sorted(sel.selected.tolist()) == [1, 2]
    assert sel.fraction_over_threshold == 0.5


def test_upper_trust_level_excludes_lost_frames_and_nan():
    traj, t = _frames(1, 5)
    e = np.array([0.1, 0.1, 0.1, np.nan, 0.0])
    f = np.array([3.0, 12.0, 4.0, 1.0, 0.1])
    sel = select_frames(
        traj,
        t,
        e,
        f,
        energy_threshold_eV_per_atom=0.02,
        force_threshold_eV_per_A=2.0,
        upper_trust_force_eV_per_A=10.0,
    )
    assert sorted(sel.selected.tolist()) == [0, 2]
    assert sel.untrusted.tolist() == [False, True, False, True, False]
    # NaN and untrusted frames still count as over threshold: the model is not converged.
    assert sel.over_threshold.sum() == 4


def test_cap_takes_the_largest_disagreements():
    traj, t = _frames(1, 10)
    f = np.linspace(2.1, 3.0, 10)
    e = np.zeros(10)
    sel = select_frames(
        traj,
        t,
        e,
        f,
        energy_threshold_eV_per_atom=0.02,
        force_threshold_eV_per_A=2.0,
        max_selected=3,
    )
    assert sel.selected.tolist() == [9, 8, 7]


def test_decorrelation_spreads_picks_in_time_within_a_trajectory():
    traj, t = _frames(2, 20, dt_fs=0.5)
    rng = np.random.default_rng(0)
    f = 2.0 + rng.random(len(t))  # everything over threshold
    e = np.zeros(len(t))
    sel = select_frames(
        traj,
        t,
        e,
        f,
        energy_threshold_eV_per_atom=0.02,
        force_threshold_eV_per_A=2.0,
        min_separation_fs=3.0,
        max_selected=100,
    )
    for k in (0, 1):
        times = np.sort(t[sel.selected][traj[sel.selected] == k])
        assert len(times) >= 3
        assert np.all(np.diff(times) >= 3.0)
    # A greedy spread over 9.5 fs at 3 fs separation accepts at most 4 per trajectory.
    assert len(sel.selected) <= 8


def test_adaptive_mode_when_thresholds_pick_nothing():
    traj, t = _frames(1, 10)
    e = np.linspace(0.0, 0.001, 10)
    f = np.linspace(0.0, 0.5, 10)
    kwargs = dict(energy_threshold_eV_per_atom=0.02, force_threshold_eV_per_A=2.0)
    assert len(select_frames(traj, t, e, f, **kwargs).selected) == 0
    sel = select_frames(traj, t, e, f, adaptive_count=2, **kwargs)
    assert sel.adaptive
    assert sorted(sel.selected.tolist()) == [8, 9]
    assert sel.fraction_over_threshold == 0.0


def test_frames_before_a_halt_go_first():
    traj, t = _frames(2, 5)
    e = np.zeros(10)
    f = np.array([2.5, 2.6, 2.7, 2.8, 2.9, 0.1, 0.1, 0.1, 0.3, 0.2])
    halt = np.zeros(10, dtype=bool)
    halt[[8, 9]] = True  # trajectory 1 blew up after frame 9
    sel = select_frames(
        traj,
        t,
        e,
        f,
        energy_threshold_eV_per_atom=0.02,
        force_threshold_eV_per_A=2.0,
        max_selected=3,
        before_halt=halt,
    )
    assert sel.selected.tolist()[:2] == [8, 9]
    assert sel.selected.tolist()[2] == 4


def test_empty_input():
    sel = select_frames(
        np.array([]),
        np.array([]),
        np.array([]),
        np.array([]),
        energy_threshold_eV_per_atom=0.02,
        force_threshold_eV_per_A=2.0,
    )
    assert len(sel.selected) == 0 and sel.fraction_over_threshold == 0.0


def test_flagged_frames_are_spread_over_trajectories_before_any_gives_a_second():
    # trajectory "a" is wild (every frame scores higher than any of "b" or "c")
    keys = ["a"] * 5 + ["b", "b", "c"]
    score = [9.0, 8.0, 7.0, 6.0, 5.0, 2.0, 1.5, np.nan]
    # NaN (a member lost) ranks first; then one frame of each trajectory, best first
    assert list(spread_over_trajectories(keys, score, 3)) == [0, 5, 7]
    assert list(spread_over_trajectories(keys, score, 5)) == [0, 1, 5, 6, 7]
    assert list(spread_over_trajectories(keys, score, 100)) == list(range(8))
    assert len(spread_over_trajectories([], [], 4)) == 0
