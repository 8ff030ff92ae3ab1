"""The committee watch: what it measures equals the committee's own disagreement, it flags
by the calibrated thresholds, keeps spread-out frames and stores them with the trajectory."""

from __future__ import annotations

import numpy as np
import pytest
from _tiny import scaled_potential

from nnprefine.calculators import CommitteeCalculator, NNPCalculator
from nnprefine.descriptors import make_set
from nnprefine.errors import ConfigError
from nnprefine.impact import ImpactSettings, run_impact
from nnprefine.model import Committee, ZBLBaseline
from nnprefine.sputter import ResultsDB, run_campaign
from nnprefine.structures import be0001_slab
from nnprefine.watch import CommitteeWatch, WatchSettings


@pytest.fixture(scope="module")
def committee() -> Committee:
    """Two small members with scaled inputs and a shared ZBL baseline (it must cancel)."""
    sfset = make_set(["Be"], n_radial=4, n_narrow=2, n_wide=2, r_cut_A=4.5)
    baseline = ZBLBaseline(1.0, 2.0)
    members = [scaled_potential(sfset, seed=seed, baseline=baseline) for seed in (0, 1)]
    return Committee(members)


@pytest.fixture(scope="module")
def slab():
    s = be0001_slab(size=(3, 3, 4), vacuum_A=6.0, fixed_layers=1)
    rng = np.random.default_rng(7)
    v = rng.normal(scale=0.01, size=(len(s), 3))
    v[s.get_tags() == 4] = 0.0
    s.set_velocities(v)
    return s


def test_the_watch_measures_the_committees_disagreement(committee, slab):
    """One force pass on the gradient difference gives max |F_0 − F_1| of two full passes."""
    atoms = slab.copy()
    atoms.rattle(0.15, seed=2)
    full = CommitteeCalculator(committee)
    atoms.calc = full
    atoms.get_forces()
    calc = NNPCalculator(committee[0])
    atoms.calc = calc
    atoms.get_forces()
    de, df = CommitteeWatch(committee, calc).judge()
    assert df > 1e-3  # the members really differ
    assert df == pytest.approx(full.results["force_disagreement_eV_per_A"], rel=1e-10)
    assert de == pytest.approx(full.results["energy_disagreement_eV_per_atom"], rel=1e-10)
    # the calibration scales what the watch reports
    scaled = CommitteeWatch(committee, calc, WatchSettings(energy_scale=2.0, force_scale=3.0))
    assert scaled.judge() == pytest.approx((2.0 * de, 3.0 * df), rel=1e-12)


def test_along_an_impact_the_watch_sees_what_a_committee_driver_sees(committee, slab):
    """Member 0 drives both runs, so the trajectories are the same; the watch every step
    finds the maximum the committee calculator records, and every 3rd step a third of the
    checks."""
    settings = ImpactSettings(timestep_fs=0.5, duration_fs=6.0, max_extensions=0, early_stop="off")
    ref = run_impact(slab, CommitteeCalculator(committee), 60.0, 4, settings)
    out = {}
    for k in (1, 3):
        calc = NNPCalculator(committee[0])
        w = CommitteeWatch(committee, calc, WatchSettings(interval=k, max_frames=0))
        r = run_impact(slab, calc, 60.0, 4, settings, observers=((w, k),))
        assert r.steps == ref.steps
        out[k] = (w, r)
    w1 = out[1][0]
    assert w1.n_checked == ref.steps + 1  # observers also see the state before step 1
    assert w1.max_force_disagreement == pytest.approx(ref.max_disagreement, rel=1e-8)
    assert out[3][0].n_checked == ref.steps // 3 + 1
    assert out[3][0].max_force_disagreement <= w1.max_force_disagreement * (1 + 1e-12)


def test_flags_by_the_thresholds_and_keeps_spread_frames(committee, slab):
    settings = ImpactSettings(timestep_fs=0.5, duration_fs=10.0, max_extensions=0, early_stop="off")
    calc = NNPCalculator(committee[0])
    low = WatchSettings(
        interval=2,
        energy_threshold_eV_per_atom=1e-9,
        force_threshold_eV_per_A=1e-9,
        max_frames=3,
        min_separation_fs=3.0,
    )
    w = CommitteeWatch(committee, calc, low)
    run_impact(slab, calc, 60.0, 4, settings, observers=((w, 2),))
    assert w.flagged and w.n_over == w.n_checked == 11
    times = [a.info["time_fs"] for a in w.frames]
    assert len(times) == 3 and np.all(np.diff(times) >= 3.0)
    # the kept frames are the most disagreeing ones that respect the spacing
    assert all(a.info["force_disagreement_eV_per_A"] > 0 for a in w.frames)
    assert w.record()["flagged"] == 1 and w.record()["n_over_threshold"] == 11
    calc = NNPCalculator(committee[0])
    high = WatchSettings(
        interval=2, energy_threshold_eV_per_atom=10.0, force_threshold_eV_per_A=1e3
    )
    w = CommitteeWatch(committee, calc, high)
    run_impact(slab, calc, 60.0, 4, settings, observers=((w, 2),))
    assert not w.flagged and w.frames == [] and w.n_checked == 11


def test_flag_fraction_tolerates_a_spike_but_not_a_sustained_excess(committee, slab):
    """With flag_fraction f the trajectory is flagged only when ≥ f of its checks are over
    threshold; the threshold set at the median check's disagreement splits them."""
    settings = ImpactSettings(timestep_fs=0.5, duration_fs=10.0, max_extensions=0, early_stop="off")
    seen = []
    for flag_fraction in (0.0, 0.3, 0.8):
        calc = NNPCalculator(committee[0])
        probe = CommitteeWatch(committee, calc, WatchSettings(interval=2, max_frames=0))
        checks = []

        def record(state, probe=probe, checks=checks):
            checks.append(probe.judge()[1])

        run_impact(slab, calc, 60.0, 4, settings, observers=((record, 2),))
        level = float(np.median(checks))
        calc = NNPCalculator(committee[0])
        ws = WatchSettings(
            interval=2,
            energy_threshold_eV_per_atom=10.0,
            force_threshold_eV_per_A=level,
            flag_fraction=flag_fraction,
        )
        w = CommitteeWatch(committee, calc, ws)
        run_impact(slab, calc, 60.0, 4, settings, observers=((w, 2),))
        assert w.n_over == sum(c > level for c in checks) == 5  # 11 checks, strictly above
        seen.append(w.flagged)
    assert seen == [True, True, False]


def test_a_campaign_stores_the_watch_and_its_frames(tmp_path, committee, slab):
    calc = NNPCalculator(committee[0])
    low = WatchSettings(
        interval=2,
        energy_threshold_eV_per_atom=1e-9,
        force_threshold_eV_per_A=1e-9,
        max_frames=2,
        min_separation_fs=1.0,
    )
    settings = ImpactSettings(timestep_fs=0.5, duration_fs=4.0, max_extensions=0)
    db = tmp_path / "w.sqlite"
    run_campaign(
        db, slab, calc, surface="w", energies_eV=[40.0], n_trajectories=2, campaign_seed=1,
        settings=settings, watch=(committee, low), quiet=True,
    )  # fmt: skip
    with ResultsDB(db) as rdb:
        rows = rdb.rows("w", 40.0)
        frames = rdb.flagged_frames("w")
    assert [r["flagged"] for r in rows] == [1, 1] and all(r["n_watched"] == 5 for r in rows)
    assert rows[0]["driver_fingerprint"] == committee[0].fingerprint()
    assert len(frames) == 4 and {a.info["idx"] for a in frames} == {0, 1}
    assert len(frames[0]) == len(slab) + 1  # the projectile is in the frame


def test_the_watch_refuses_a_driver_that_is_not_member_0(committee):
    with pytest.raises(ConfigError, match="member 0"):
        CommitteeWatch(committee, NNPCalculator(committee[1]))
    with pytest.raises(ConfigError, match="interval"):
        WatchSettings(interval=0)


def test_flagged_counts_per_energy(tmp_path, committee, slab):
    calc = NNPCalculator(committee[0])
    low = WatchSettings(
        interval=4, energy_threshold_eV_per_atom=1e-9, force_threshold_eV_per_A=1e-9
    )
    settings = ImpactSettings(timestep_fs=0.5, duration_fs=2.0, max_extensions=0)
    db = tmp_path / "c.sqlite"
    kw = dict(surface="c", n_trajectories=2, campaign_seed=1, settings=settings, quiet=True)
    run_campaign(db, slab, calc, energies_eV=[30.0], watch=(committee, low), **kw)
    run_campaign(db, slab, calc, energies_eV=[40.0], **kw)  # not watched: not counted
    with ResultsDB(db) as rdb:
        assert rdb.flagged_counts("c") == {30.0: (2, 2)}
