"""Impacts, outcome classification, campaigns with resume, yields and the Eckstein fit."""

from __future__ import annotations

import math
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from contextlib import closing
from pathlib import Path

import numpy as np
import pytest
from ase import units

from nnprefine.errors import ConfigError
from nnprefine.impact import ImpactSettings, classify, run_impact, setup_impact
from nnprefine.md import AdaptiveTimestep
from nnprefine.reference import SnapReference
from nnprefine.sputter import ResultsDB, run_campaign, trajectory_seed
from nnprefine.structures import be0001_slab, relax_slab
from nnprefine.yields import (
    PAPER_BE0001_NNP5,
    YieldEstimate,
    eckstein_yield,
    estimate_yield,
    fit_eckstein,
    plot_yields,
    reduced_energy,
    threshold_bracket,
    wilson_interval,
    yield_error,
)

BE_MASS = 9.012182


@pytest.fixture(scope="module")
def calc():
    return SnapReference()


@pytest.fixture(scope="module")
def be_slab(calc):
    """A relaxed 3x3x4 Be(0001) slab (36 atoms, bottom two layers fixed) at ~300 K."""
    slab = be0001_slab(size=(3, 3, 4), vacuum_A=6.0)
    relax_slab(slab, calc, fmax_eV_per_A=1e-2)
    rng = np.random.default_rng(7)
    v = rng.standard_normal((len(slab), 3)) * np.sqrt(units.kB * 300.0 / BE_MASS)
    v[slab.get_tags() > 2] = 0.0
    slab.set_velocities(v)
    slab.calc = None
    return slab


# -- impact set-up -------------------------------------------------------------------------


def test_projectile_placement_and_energy(be_slab):
    atoms, spec = setup_impact(be_slab, 100.0, seed=42)
    p = spec.projectile_index
    assert p == len(be_slab) and len(atoms) == len(be_slab) + 1
    assert atoms.positions[p, 2] == pytest.approx(be_slab.positions[:, 2].max() + 5.0)
    ke = 0.5 * atoms.get_masses()[p] * (atoms.get_velocities()[p] ** 2).sum()
    assert ke == pytest.approx(100.0, rel=1e-12)
    v = atoms.get_velocities()[p]
    assert v[0] == 0 and v[1] == 0 and v[2] < 0
    frac = np.linalg.solve(atoms.cell.array[:2, :2].T, atoms.positions[p, :2])
    assert ((frac >= 0) & (frac < 1)).all()
    np.testing.assert_array_equal(atoms.get_velocities()[:-1], be_slab.get_velocities())
    assert len(atoms.constraints) == 1  # the slab's FixAtoms came along


def test_impact_points_are_uniform_over_the_cell(be_slab):
    frac = []
    for seed in range(400):
        atoms, spec = setup_impact(be_slab, 50.0, seed)
        frac.append(np.linalg.solve(atoms.cell.array[:2, :2].T, [spec.x_A, spec.y_A]))
    frac = np.array(frac)
    # Mean 1/2 and variance 1/12 of a uniform distribution, to ~4 standard errors.
    assert np.abs(frac.mean(axis=0) - 0.5).max() < 4 * math.sqrt(1 / 12 / 400)
    assert np.abs(frac.var(axis=0) - 1 / 12).max() < 0.02


def test_oblique_incidence_direction(be_slab):
    atoms, spec = setup_impact(be_slab, 100.0, seed=1, polar_deg=30.0, azimuth_deg=90.0)
    v = atoms.get_velocities()[-1]
    unit = v / np.linalg.norm(v)
    np.testing.assert_allclose(
        unit, [0.0, math.sin(math.radians(30)), -math.cos(math.radians(30))], atol=1e-12
    )


# -- classification on constructed cases -------------------------------------------------


def _flat_slab():
    """Two layers of 16 atoms on a 2.2 Å grid at z = 0 and 1.8 Å, at rest."""
    xy = np.array([(i * 2.2, j * 2.2) for i in range(4) for j in range(4)], dtype=float)
    pos = np.vstack([np.c_[xy, np.zeros(16)], np.c_[xy + 1.1, np.full(16, 1.8)]])
    return pos, np.zeros_like(pos), np.full(len(pos), BE_MASS)


def _with(pos, vel, masses, extra_pos, extra_vel):
    return (
        np.vstack([pos, extra_pos]),
        np.vstack([vel, extra_vel]),
        np.r_[masses, np.full(len(extra_pos), BE_MASS)],
    )


def test_atom_far_above_moving_up_is_sputtered():
    pos, vel, m = _with(*_flat_slab(), [[1.0, 1.0, 1.8 + 12.0]], [[0.01, 0.0, 0.05]])
    # Projectile (index 0 here: any slab atom) is not the escaping one.
    out = classify(pos, vel, m, projectile_index=0, surface_z_A=1.8, r_cut_A=4.8)
    assert out.n_sputtered == 1 and not out.reflected and not out.undecided
    s = out.sputtered[0]
    assert s.index == len(pos) - 1
    v2 = 0.01**2 + 0.05**2
    assert s.kinetic_eV == pytest.approx(0.5 * BE_MASS * v2 / units.fs**2)
    assert s.polar_deg == pytest.approx(math.degrees(math.atan2(0.01, 0.05)))
    np.testing.assert_allclose(s.direction, np.array([0.01, 0, 0.05]) / math.sqrt(v2))


def test_atom_transmitted_through_the_bottom_does_not_detach_the_slab():
    """A projectile that went through a thin slab is far below it; the slab's atoms,
    half of them moving up thermally, are still the slab, not sputtered atoms."""
    pos, vel, m = _flat_slab()
    vel = np.random.default_rng(0).normal(scale=0.005, size=vel.shape)
    pos, vel, m = _with(pos, vel, m, [[1.0, 1.0, -12.0]], [[0.0, 0.0, -0.1]])
    out = classify(pos, vel, m, projectile_index=len(pos) - 1, surface_z_A=1.8, r_cut_A=4.8)
    assert out.n_sputtered == 0 and not out.reflected
    assert out.slab_top_z_A == pytest.approx(1.8)


def test_projectile_leaving_is_reflected_not_sputtered():
    pos, vel, m = _with(*_flat_slab(), [[1.0, 1.0, 1.8 + 6.0]], [[0.0, 0.0, 0.2]])
    out = classify(pos, vel, m, projectile_index=len(pos) - 1, surface_z_A=1.8, r_cut_A=4.8)
    assert out.reflected and out.n_sputtered == 0 and not out.undecided
    assert out.reflected_kinetic_eV == pytest.approx(0.5 * BE_MASS * 0.04 / units.fs**2)


def test_atom_just_above_the_surface_moving_up_slowly_is_undecided():
    pos, vel, m = _with(*_flat_slab(), [[1.0, 1.0, 1.8 + 3.0]], [[0.0, 0.0, 0.01]])
    out = classify(pos, vel, m, projectile_index=0, surface_z_A=1.8, r_cut_A=4.8)
    assert out.undecided and out.undecided_atoms == (len(pos) - 1,)
    assert out.n_sputtered == 0
    # The same atom beyond the cutoff is sputtered; with a 7 Å (NNP) cutoff it is not yet.
    pos[-1, 2] = 1.8 + 5.5
    assert classify(pos, vel, m, 0, 1.8, 4.8).n_sputtered == 1
    assert classify(pos, vel, m, 0, 1.8, 7.0).undecided


def test_fast_atom_leaving_the_surface_plane_is_undecided():
    # 1 Å above the surface plane, below the flight margin, moving up with ~5 eV: it may be
    # leaving now, so the trajectory is extended rather than closed as "not sputtered".
    pos, vel, m = _with(*_flat_slab(), [[1.0, 1.0, 1.8 + 1.0]], [[0.0, 0.0, 0.1]])
    ke = 0.5 * BE_MASS * 0.1**2 / units.fs**2
    assert ke > 2.0
    assert classify(pos, vel, m, 0, 1.8, 4.8, escape_energy_eV=2.0).undecided
    assert not classify(pos, vel, m, 0, 1.8, 4.8, escape_energy_eV=ke + 1).undecided
    assert not classify(pos, vel, m, 0, 1.8, 4.8).undecided  # the old, margin-only rule


def test_atom_far_above_falling_back_is_undecided_and_adatom_is_not():
    pos, vel, m = _with(*_flat_slab(), [[1.0, 1.0, 20.0]], [[0.0, 0.0, -0.01]])
    assert classify(pos, vel, m, 0, 1.8, 4.8).undecided
    # An adatom one interlayer spacing up, vibrating upwards, holds nothing open.
    pos, vel, m = _with(*_flat_slab(), [[0.0, 0.0, 1.8 + 1.8]], [[0.0, 0.0, 0.01]])
    out = classify(pos, vel, m, 0, 1.8, 4.8)
    assert not out.undecided and out.n_sputtered == 0 and out.slab_top_z_A == pytest.approx(3.6)


# -- MD on the reference -------------------------------------------------------------------


def test_100eV_impact_conserves_total_energy(be_slab, calc):
    settings = ImpactSettings(timestep_fs=0.1, duration_fs=25.0, max_extensions=0)
    r = run_impact(be_slab, calc, 100.0, seed=3, settings=settings)
    assert not r.unphysical
    assert r.steps == 250
    # Fixed 0.1 fs through the collision: |ΔE| below 10 meV with 100 eV in play.
    assert abs(r.energy_drift_eV) < 0.01


def test_be_projectile_on_a_tungsten_slab_with_the_builtin_reference(calc):
    """Be on W(110), 200 eV at 30° off the normal, with the W–Be SNAP: the projectile is a
    Be atom with Be's mass and the asked direction, and the impact conserves energy."""
    from nnprefine.structures import make_slab

    slab = make_slab("110", (3, 2, 4), 3.17, 3.17, 6.0, 2, "W", "bcc")
    relax_slab(slab, calc, fmax_eV_per_A=1e-2)
    slab.calc = None
    settings = ImpactSettings(
        timestep_fs=0.1, duration_fs=20.0, max_extensions=0, projectile="Be", polar_deg=30.0
    )
    atoms, spec = setup_impact(slab, 200.0, seed=5, polar_deg=30.0, element="Be")
    assert atoms.get_chemical_symbols()[spec.projectile_index] == "Be"
    assert atoms.get_masses()[-1] == pytest.approx(BE_MASS, abs=1e-3)
    v = atoms.get_velocities()[-1]
    assert math.degrees(math.acos(-v[2] / np.linalg.norm(v))) == pytest.approx(30.0)
    r = run_impact(slab, calc, 200.0, seed=5, settings=settings)
    assert not r.unphysical and r.steps == 200
    assert calc.atoms.get_chemical_symbols()[-1] == "Be"  # what the run drove
    assert r.spec.polar_deg == 30.0
    assert abs(r.energy_drift_eV) < 0.02  # 200 eV in play, 0.1 fs steps


def test_heat_sink_in_an_impact_takes_heat_and_the_balance_closes(be_slab, calc):
    settings = ImpactSettings(
        timestep_fs=0.1,
        duration_fs=25.0,
        max_extensions=0,
        heat_sink="berendsen",
        heat_sink_temperature_K=0.0,
        heat_sink_tau_fs=10.0,
    )
    r = run_impact(be_slab, calc, 100.0, seed=3, settings=settings)
    assert not r.unphysical and r.heat_removed_eV > 0.05
    # What the slab lost is what the sink took: total + removed is conserved.
    assert abs(r.energy_drift_eV) < 0.01


def test_replay_from_seed_is_bit_for_bit(be_slab, calc):
    def frames(seed):
        out = []
        settings = ImpactSettings(timestep_fs=0.5, duration_fs=10.0, max_extensions=0)
        r = run_impact(
            be_slab,
            calc,
            100.0,
            seed,
            settings,
            observers=((lambda s: out.append((s.positions.copy(), s.velocities.copy())), 5),),
        )
        return r, out

    r1, f1 = frames(11)
    r2, f2 = frames(11)
    r3, f3 = frames(12)
    assert r1.spec == r2.spec and r1.spec != r3.spec
    assert len(f1) == len(f2) == 5
    for (p1, v1), (p2, v2) in zip(f1, f2, strict=True):
        assert np.array_equal(p1, p2) and np.array_equal(v1, v2)
    assert not np.array_equal(f1[-1][0], f3[-1][0])


def test_early_stop_ends_a_quiet_trajectory_with_the_same_outcome(be_slab, calc):
    # 15 eV cannot sputter Be; the slab is quiet once the projectile has thermalised.
    base = dict(timestep_fs=0.5, duration_fs=80.0, max_extensions=0, hold_fs=5.0)
    full = run_impact(be_slab, calc, 15.0, 5, ImpactSettings(**base, early_stop="shadow"))
    early = run_impact(be_slab, calc, 15.0, 5, ImpactSettings(**base, early_stop="on"))
    assert full.stop_reason == "duration" and early.stop_reason == "early_stop"
    assert early.simulated_fs < full.simulated_fs
    assert full.shadow["stop_time_fs"] == pytest.approx(early.simulated_fs)
    assert (early.n_sputtered, early.reflected) == (full.n_sputtered, full.reflected) == (0, False)


def test_adaptive_impact_conserves_energy_and_bounds_steps(be_slab, calc):
    adaptive = AdaptiveTimestep(
        timestep_max_fs=0.5, max_displacement_A=0.08, max_energy_change_eV=0.5
    )
    settings = ImpactSettings(duration_fs=30.0, max_extensions=0, adaptive=adaptive)
    dts = []
    r = run_impact(
        be_slab, calc, 100.0, 3, settings, observers=((lambda s: dts.append(s.timestep_fs), 1),)
    )
    assert r.simulated_fs == pytest.approx(30.0)
    # The first step moves the 100 eV projectile (0.463 Å/fs) by 0.08 Å.
    speed_A_per_fs = math.sqrt(2 * 100.0 / BE_MASS) * units.fs
    assert dts[0] == pytest.approx(0.08 / speed_A_per_fs, rel=1e-6)
    assert max(dts) <= 0.5 and min(dts) < dts[0]  # shorter steps in the collision
    assert abs(r.energy_drift_eV) < 0.05


# -- yields and fits -------------------------------------------------------------------------


def test_yield_error_reproduces_the_papers_error_bars():
    for energy, p, d in PAPER_BE0001_NNP5[1:]:
        n = 5000 if energy in (55.0, 60.0, 65.0) else 500
        assert round(yield_error(p, n), 4 if n == 5000 else 3) == pytest.approx(d), energy
    assert yield_error(0.056, 500) == pytest.approx(0.021, abs=5e-4)


def test_yield_estimate_and_intervals():
    rows = [dict(n_sputtered=1, reflected=0, undecided=0, unphysical=0)] * 3
    rows += [dict(n_sputtered=0, reflected=0, undecided=0, unphysical=0)] * 47
    rows += [dict(n_sputtered=0, reflected=0, undecided=0, unphysical=1)]
    est = estimate_yield(100.0, rows)
    assert est.n == 50 and est.n_unphysical == 1 and est.n_sputtered == 3
    assert est.yield_ == pytest.approx(0.06)
    assert est.error == pytest.approx(2 * math.sqrt(0.06 * 0.94 / 50))
    assert est.wilson_low < 0.06 < est.wilson_high
    assert est.exact_low < est.wilson_low  # Clopper-Pearson is the more conservative
    # Nothing sputtered in 10: Wilson's upper limit is z²/(n + z²), exact is 1 - 0.025^(1/10).
    assert wilson_interval(0, 10)[1] == pytest.approx(1.959964**2 / (10 + 1.959964**2))
    zero = estimate_yield(40.0, rows[3:13])
    assert zero.error == 0 and zero.exact_high == pytest.approx(1 - 0.025 ** (1 / 10))
    assert zero.fit_sigma > 0
    # Fits take one-sigma errors: σ/√N = D/2 for a well-sampled yield (paper: p 0.056, N 500).
    paper = estimate_yield(
        100.0,
        [dict(n_sputtered=1, reflected=0, undecided=0, unphysical=0)] * 28
        + [dict(n_sputtered=0, reflected=0, undecided=0, unphysical=0)] * 472,
    )
    assert paper.fit_sigma == pytest.approx(math.sqrt(0.056 * 0.944 / 500), rel=0.03)


def test_undecided_trajectories_give_an_upper_bound_beside_the_yield():
    def row(sputtered: int, undecided: int = 0, unphysical: int = 0) -> dict:
        return dict(n_sputtered=sputtered, reflected=0, undecided=undecided, unphysical=unphysical)

    # 40 impacts: 2 sputtered one atom, 1 two; 3 undecided (one of which sputtered one
    # already); an unphysical one is out of N and of the bound
    rows = [row(1), row(1), row(2), row(0, 1), row(0, 1), row(1, 1)] + [row(0)] * 34
    est = estimate_yield(60.0, rows + [row(0, 1, 1)])
    assert est.n == 40 and est.n_undecided == 3
    assert est.yield_ == pytest.approx(5 / 40)
    assert est.yield_upper == pytest.approx(5 / 40 + 3 / 40)
    decided = estimate_yield(60.0, [row(1)] + [row(0)] * 9)
    assert decided.yield_upper == decided.yield_ == pytest.approx(0.1)
    assert math.isnan(estimate_yield(60.0, []).yield_upper)


def test_threshold_bracket():
    def est(e, k):
        return estimate_yield(e, [dict(n_sputtered=k, reflected=0, undecided=0, unphysical=0)] * 5)

    assert threshold_bracket([est(45, 0), est(50, 0), est(55, 1), est(60, 1)]) == (50, 55)


def test_reduced_energy_matches_hand_value():
    # a_L = (9π²/128)^(1/3) 0.529177 / sqrt(2 · 4^(2/3)) = 0.20869 Å;
    # ε(100 eV) = 100 · ½ · 0.20869 / (16 · 14.3996) = 0.045290
    assert reduced_energy(100.0) == pytest.approx(0.045290, rel=1e-4)
    assert eckstein_yield(50.0, 53.0, 0.82, 1.34, 2.03) == 0.0


def test_eckstein_fit_recovers_known_parameters():
    truth = dict(threshold_eV=53.0, q=0.82, mu=1.34, lambda_=2.03)
    energies = np.array([55, 60, 65, 75, 100, 150, 200, 300, 500, 1000], dtype=float)
    y_true = eckstein_yield(energies, **truth)
    sigma = 0.02 * y_true + 1e-4
    rng = np.random.default_rng(0)
    y = y_true + sigma * rng.standard_normal(len(energies))
    fit = fit_eckstein(
        energies, y, sigma, start=dict(threshold_eV=45.0, q=0.5, mu=1.0, lambda_=1.0)
    )
    for k, v in truth.items():
        assert abs(fit.params[k] - v) < 4 * fit.errors[k] + 1e-9, (k, fit.params[k], fit.errors[k])
        assert fit.errors[k] < 0.2 * v
    assert fit.chi2 / fit.dof < 3
    # Fixing μ and λ (as the paper did for few points) gives Eth and q with smaller errors.
    fixed = fit_eckstein(energies[:6], y[:6], sigma[:6], fixed=dict(mu=1.34, lambda_=2.03))
    assert fixed.errors["mu"] == 0 and abs(fixed.params["threshold_eV"] - 53.0) < 1.0
    with pytest.raises(ConfigError, match="free parameters"):
        fit_eckstein(energies[:3], y[:3], sigma[:3])


def test_eckstein_fit_of_another_pair_uses_its_reduced_energy_and_starts_from_the_data():
    """Be on W: ε carries Z = 4, 74 and M = 9.01, 183.84 (hand value), and a fit of yields
    far from the paper's q = 0.82 converges from its data-derived start with the pair's
    ε; the Be-on-Be ε cannot describe the same points."""
    from nnprefine.yields import _start_from_data, collision_pair

    be_w = collision_pair("Be", "W")
    assert (be_w["z1"], be_w["z2"]) == (4, 74) and be_w["m2_amu"] == pytest.approx(183.84)
    # a_L = (9π²/128)^(1/3) 0.529177 / sqrt(4^(2/3) + 74^(2/3)) = 0.46851 / 4.4886
    # = 0.104378 Å; ε(100 eV) = 100 · 183.84/192.85 · 0.104378 / (4 · 74 · 14.3996)
    # = 0.0023344
    assert reduced_energy(100.0, **be_w) == pytest.approx(0.0023344, rel=1e-4)
    truth = dict(threshold_eV=30.0, q=3.0, mu=1.34, lambda_=2.03)
    energies = np.array([20, 25, 40, 60, 100, 200, 400], dtype=float)
    y_true = eckstein_yield(energies, **truth, **be_w)
    sigma = 0.05 * y_true + 1e-5
    y = y_true + sigma * np.random.default_rng(3).standard_normal(len(energies))
    y[y_true == 0] = 0.0
    fixed = dict(mu=1.34, lambda_=2.03)
    start = _start_from_data(energies, y, sigma, fixed, be_w)
    assert 25.0 < start["threshold_eV"] < 40.0  # between the last zero and the first yield
    assert 1.0 < start["q"] < 9.0  # from the data, not the paper's 0.82
    fit = fit_eckstein(energies, y, sigma, fixed=fixed, pair=("Be", "W"))
    assert fit.pair == ("Be", "W")
    assert abs(fit.params["q"] - 3.0) < 4 * fit.errors["q"]
    assert abs(fit.params["threshold_eV"] - 30.0) < 4 * fit.errors["threshold_eV"]
    assert fit(energies) == pytest.approx(eckstein_yield(energies, **fit.params, **be_w))
    assert fit.chi2 / fit.dof < 3
    wrong = fit_eckstein(energies, y, sigma, fixed=fixed)  # Be on Be
    assert wrong.chi2 > 10 * fit.chi2


def test_the_papers_published_fit_reproduces_its_yields_only_with_epsilon_ten_times_larger():
    """The unit slip documented in docs/report.md: q = 0.82, E_th = 53 eV in the standard
    form give Y(100 eV) = 0.009 against the paper's 0.056 ± 0.021; ε × 10 gives 0.061."""
    from nnprefine.yields import PAPER_BE0001_FIT

    def tenfold(e):  # the same formula with ε ten times larger
        eps = 10 * reduced_energy(e)
        w = eps + 0.1728 * np.sqrt(eps) + 0.008 * eps**0.1504
        sn = 0.5 * np.log1p(1.2288 * eps) / w
        x = e / 53.0 - 1
        return 0.82 * sn * x**1.34 / (2.03 / w + x**1.34)

    e100, y100, d100 = next(p for p in PAPER_BE0001_NNP5 if p[0] == 100.0)
    standard = float(eckstein_yield(100.0, **PAPER_BE0001_FIT))
    assert standard == pytest.approx(0.009, abs=5e-4)
    assert abs(standard - y100) > 2 * d100  # the published fit misses its own point
    assert abs(tenfold(100.0) - y100) < d100


def test_a_self_sputtering_record_leaves_the_projectile_out_so_old_records_stay_valid():
    from nnprefine.sputter import settings_record

    own = settings_record(ImpactSettings(projectile="Be"), target="Be")
    assert "projectile" not in own  # as every record before the key existed
    assert own == settings_record(ImpactSettings(), target="Be")
    other = settings_record(ImpactSettings(projectile="Be"), target="W")
    assert other["projectile"] == "Be"


def test_eckstein_fit_errors_are_one_sigma():
    # Coverage: over many noisy data sets, the truth lies within ±1 error of the fitted
    # threshold in ~68 % of fits (a 2σ error would give ~95 %, a 0.5σ one ~38 %).
    truth = dict(threshold_eV=53.0, q=0.82, mu=1.34, lambda_=2.03)
    energies = np.array([60, 65, 75, 100, 150, 200, 300], dtype=float)
    y_true = eckstein_yield(energies, **truth)
    sigma = 0.05 * y_true
    rng = np.random.default_rng(7)
    inside = []
    for _ in range(300):
        y = y_true + sigma * rng.standard_normal(len(energies))
        fit = fit_eckstein(energies, y, sigma, fixed=dict(mu=1.34, lambda_=2.03))
        inside.append(abs(fit.params["threshold_eV"] - 53.0) < fit.errors["threshold_eV"])
    assert 0.60 < np.mean(inside) < 0.76


def test_plot_writes_a_png(tmp_path):
    def est(e, k, n):
        return estimate_yield(
            e,
            [dict(n_sputtered=1, reflected=0, undecided=0, unphysical=0)] * k
            + [dict(n_sputtered=0, reflected=0, undecided=0, unphysical=0)] * (n - k),
        )

    ests = [est(55, 1, 200), est(75, 5, 200), est(100, 11, 200)]
    fit = fit_eckstein(
        [x.energy_eV for x in ests],
        [x.yield_ for x in ests],
        [x.fit_sigma for x in ests],
        fixed=dict(mu=1.34, lambda_=2.03),
    )
    path = plot_yields(tmp_path / "fig5.png", ests, fit)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# -- campaigns -------------------------------------------------------------------------------

_CAMPAIGN_SCRIPT = textwrap.dedent(
    """
    import sys
    import numpy as np
    from ase import units
    from ase.build import fcc111
    from ase.calculators.emt import EMT
    from ase.constraints import FixAtoms
    import nnprefine.sputter
    from nnprefine.impact import ImpactSettings
    from nnprefine.sputter import run_campaign

    # Log every trajectory this process starts, so the test can see what a resume re-ran.
    _task = nnprefine.sputter.impact_task

    def logged_task(*args, **kwargs):
        with open(sys.argv[1] + ".started", "a") as fh:
            fh.write(f"{kwargs.get('energy_eV')} {kwargs.get('index')}\\n")
        return _task(*args, **kwargs)

    nnprefine.sputter.impact_task = logged_task

    slab = fcc111("Cu", size=(2, 2, 3), vacuum=6.0)
    slab.set_constraint(FixAtoms(mask=slab.get_tags() == 3))
    rng = np.random.default_rng(1)
    v = rng.standard_normal((len(slab), 3)) * np.sqrt(units.kB * 300 / 63.5)
    v[slab.get_tags() == 3] = 0
    slab.set_velocities(v)
    settings = ImpactSettings(r_cut_A=5.0, timestep_fs=0.5, duration_fs=float(sys.argv[2]),
                              max_extensions=0)
    run_campaign(sys.argv[1], slab, EMT(), surface="cu111", energies_eV=[30.0, 60.0],
                 n_trajectories=6, campaign_seed=2024, settings=settings, quiet=True)
    """
)


def _rows(db):
    with closing(sqlite3.connect(db)) as con, con:
        return con.execute(
            "SELECT surface, energy_eV, idx, seed, created_unix FROM trajectories"
        ).fetchall()


def test_campaign_resumes_after_sigkill_without_loss_or_duplicates(tmp_path):
    script = tmp_path / "campaign.py"
    script.write_text(_CAMPAIGN_SCRIPT)
    db = tmp_path / "results.sqlite"
    env = dict(os.environ, PYTHONHASHSEED="0")
    proc = subprocess.Popen([sys.executable, str(script), str(db), "30.0"], env=env)
    deadline = time.time() + 60
    while time.time() < deadline:
        if db.exists():
            try:
                if len(_rows(db)) >= 3:
                    break
            except sqlite3.OperationalError:
                pass
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = _rows(db)
    assert 3 <= len(before) < 12, "the campaign was not killed mid-way"
    started_log = Path(str(db) + ".started")
    n_started_before = len(started_log.read_text().splitlines())
    # Resume: the same command.
    subprocess.run([sys.executable, str(script), str(db), "30.0"], env=env, check=True, timeout=120)
    after = _rows(db)
    keys = [r[:3] for r in after]
    assert len(after) == 12 and len(set(keys)) == 12
    assert set(keys) == {("cu111", e, i) for e in (30.0, 60.0) for i in range(6)}
    # Nothing was redone: rows from before the kill are untouched, and the resumed run
    # started exactly the trajectories that were missing.
    assert set(before) <= set(after)
    resumed = [tuple(line.split()) for line in started_log.read_text().splitlines()]
    resumed = resumed[n_started_before:]
    assert len(resumed) == 12 - len(before)
    assert not {(str(e), str(i)) for _, e, i, _, _ in before} & set(resumed)
    for surface, energy, idx, seed, _ in after:
        assert seed == trajectory_seed(2024, surface, energy, idx)
    # Changed settings on resume are refused, not silently mixed in.
    res = subprocess.run(
        [sys.executable, str(script), str(db), "20.0"], env=env, capture_output=True, text=True
    )
    assert res.returncode != 0 and "other settings" in res.stderr


def _sequential(db, slab, calc, target_error: float, n_max: int) -> YieldEstimate:
    """A 20 eV campaign of 3 fs trajectories (nothing sputters) in batches of 2."""
    (est,) = run_campaign(
        db,
        slab,
        calc,
        surface="be0001-36",
        energies_eV=[20.0],
        n_trajectories=2,
        campaign_seed=1,
        settings=ImpactSettings(timestep_fs=1.0, duration_fs=3.0, max_extensions=0),
        target_error=target_error,
        n_max=n_max,
        batch_size=2,
        quiet=True,
    )
    return est


def test_sequential_stopping_runs_until_n_max_when_the_error_stays_large(tmp_path, be_slab, calc):
    assert _sequential(tmp_path / "seq.sqlite", be_slab, calc, 1e-6, n_max=5).n == 5
    with ResultsDB(tmp_path / "seq.sqlite") as db:
        rows = db.rows("be0001-36", 20.0)
        assert sorted(r["idx"] for r in rows) == [0, 1, 2, 3, 4]
        assert rows[0]["driver"] == "SnapReference" and rows[0]["code_version"]
        assert rows[0]["core_s"] > 0 and rows[0]["steps"] == 3


def test_sequential_stopping_stops_once_the_error_bar_is_small_enough(tmp_path, be_slab, calc):
    # Nothing is sputtered, so the bar is the Wilson half-width z²/(2(N + z²)): 0.245 at
    # N = 4 and 0.195 at N = 6, so a 0.2 target stops after the third batch of 2.
    est = _sequential(tmp_path / "seq.sqlite", be_slab, calc, 0.2, n_max=10)
    assert est.n == 6 and est.n_sputtered == 0
    none_in_4 = estimate_yield(
        20.0, [{"n_sputtered": 0, "reflected": 0, "undecided": 0, "unphysical": 0}] * 4
    )
    assert est.wilson_half_width <= 0.2 < none_in_4.wilson_half_width


def test_a_shared_seed_label_pairs_two_campaigns_seed_by_seed(tmp_path, be_slab, calc):
    """The model campaign and its reference check run the same impacts: same seeds, same
    impact points; without a shared seed label the seeds differ."""
    settings = ImpactSettings(timestep_fs=1.0, duration_fs=2.0, max_extensions=0)
    db = tmp_path / "paired.sqlite"
    for surface, label in (("s/model", "s"), ("s/reference", "s"), ("s/alone", None)):
        run_campaign(
            db, be_slab, calc, surface=surface, energies_eV=[20.0], n_trajectories=3,
            campaign_seed=5, settings=settings, seed_label=label, quiet=True,
        )  # fmt: skip
    with ResultsDB(db) as rdb:
        rows = {s: rdb.rows(s, 20.0) for s in ("s/model", "s/reference", "s/alone")}
        assert rdb.campaign_meta("s/model")["seed_label"] == "s"
        assert "seed_label" not in rdb.campaign_meta("s/alone")
    for a, b in zip(rows["s/model"], rows["s/reference"], strict=True):
        assert a["seed"] == b["seed"] == trajectory_seed(5, "s", 20.0, a["idx"])
        assert (a["x_A"], a["y_A"]) == (b["x_A"], b["y_A"])
    assert not {r["seed"] for r in rows["s/alone"]} & {r["seed"] for r in rows["s/model"]}
    # resuming under another seed label is refused rather than mixing seeds
    with pytest.raises(ConfigError, match="seed_label"):
        run_campaign(
            db, be_slab, calc, surface="s/model", energies_eV=[20.0], n_trajectories=4,
            campaign_seed=5, settings=settings, seed_label="t", quiet=True,
        )  # fmt: skip
