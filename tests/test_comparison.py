"""The paired comparison of two drivers' campaigns: yields, z, Fisher's p, same fate."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from nnprefine.comparison import (
    compare_drivers,
    compare_one,
    flag_table,
    plot_sputtered_distributions,
)


def _rows(counts, seeds=None, reflected=None, unphysical=None, energy=100.0):
    n = len(counts)
    seeds = range(n) if seeds is None else seeds
    reflected = [0] * n if reflected is None else reflected
    unphysical = [0] * n if unphysical is None else unphysical
    return [
        {
            "energy_eV": energy,
            "seed": s,
            "n_sputtered": int(c),
            "reflected": int(r),
            "undecided": 0,
            "unphysical": int(u),
            "sputtered_json": json.dumps(
                [{"kinetic_eV": 2.0 + k, "polar_deg": 30.0 + k} for k in range(int(c))]
            ),
        }
        for c, s, r, u in zip(counts, seeds, reflected, unphysical, strict=True)
    ]


def test_identical_campaigns_agree_completely():
    counts = [0] * 180 + [1] * 18 + [2] * 2
    c = compare_one(100.0, _rows(counts), _rows(counts))
    assert c.difference == 0 and c.z == 0 and c.within
    assert c.fisher_p == pytest.approx(1.0)
    assert c.n_paired == 200 and c.same_fate == 1.0
    assert c.model.yield_ == pytest.approx(22 / 200)


def test_combined_standard_error_uses_the_sample_spread_of_the_counts():
    m, r = [0] * 90 + [1] * 8 + [3] * 2, [0] * 95 + [1] * 5
    c = compare_one(100.0, _rows(m), _rows(r))
    se = math.sqrt(np.var(m, ddof=1) / 100 + np.var(r, ddof=1) / 100)
    assert c.combined_se == pytest.approx(se)
    assert c.z == pytest.approx((14 / 100 - 5 / 100) / se)
    # with at most one atom per impact s² = N/(N−1)·p(1−p): the paper's σ up to N/(N−1)
    b = compare_one(100.0, _rows([0] * 95 + [1] * 5), _rows([0] * 95 + [1] * 5))
    assert b.combined_se == pytest.approx(math.sqrt(2 * 0.05 * 0.95 / 99))


def test_z_has_the_nominal_false_alarm_rate_for_equal_yields():
    """Two drivers with one true yield: |z| > 2 in about 5 % of campaign pairs."""
    rng = np.random.default_rng(3)
    n, p, trials = 200, 0.1, 1500
    zs = [
        compare_one(50.0, _rows(rng.random(n) < p), _rows(rng.random(n) < p)).z
        for _ in range(trials)
    ]
    rate = np.mean(np.abs(zs) > 2.0)
    assert 0.025 < rate < 0.08
    # a real difference (0.1 against 0.2 at N = 200, ~2.7 standard errors) is seen mostly
    z = [
        compare_one(50.0, _rows(rng.random(n) < 0.2), _rows(rng.random(n) < p)).z
        for _ in range(300)
    ]
    assert np.mean(np.array(z) > 2.0) > 0.6


def test_fates_are_paired_by_seed_and_unphysical_runs_are_left_out():
    m = _rows([1, 0, 0, 2], seeds=[10, 11, 12, 13], reflected=[0, 1, 0, 0], unphysical=[0, 0, 0, 1])
    r = _rows([1, 0, 1], seeds=[11, 10, 14], reflected=[0, 0, 0])
    c = compare_one(75.0, m, r)
    # pairs: seed 10 (1 vs 0 sputtered: differ), seed 11 (reflected vs not: differ); 13 is
    # unphysical for the model, 12 and 14 have no partner
    assert c.n_paired == 2 and c.same_fate == 0.0
    assert c.model.n == 3 and c.model.n_unphysical == 0  # left out before estimating


def test_compare_drivers_takes_the_energies_both_ran():
    m = _rows([0, 1], energy=100.0) + _rows([1, 1], energy=200.0)
    r = _rows([0, 0], energy=100.0) + _rows([0], energy=300.0)
    out = compare_drivers(m, r)
    assert [c.energy_eV for c in out] == [100.0]
    d = out[0].as_dict()
    assert d["model"]["sputtered"] == 1 and d["reference"]["n"] == 2
    assert d["within_2_se"] in (True, False)


def test_sputtered_distribution_plot(tmp_path):
    path = plot_sputtered_distributions(
        tmp_path / "h.png", _rows([0, 1, 2]), _rows([1, 0, 0]), title="test"
    )
    assert path.stat().st_size > 5000
    # a campaign without a reference check: the model's histograms alone
    alone = plot_sputtered_distributions(tmp_path / "m.png", _rows([0, 1, 2]), [], title="m")
    assert alone.stat().st_size > 5000


def test_the_flag_table_counts_watched_seeds_by_flag_and_fate():
    model = _rows([0, 1, 2, 0, 1], seeds=[0, 1, 2, 3, 9], unphysical=[0, 0, 0, 1, 0])
    for row, (watched, flagged) in zip(
        model, [(1, 1), (1, 0), (1, 1), (1, 1), (1, 1)], strict=True
    ):
        row.update(watched=watched, flagged=flagged)
    model.append({**_rows([1], seeds=[4])[0], "watched": 0, "flagged": 0})
    reference = _rows([0, 1, 0, 0, 1], seeds=[0, 1, 2, 3, 4])
    # seed 3 unphysical, seed 4 not watched, seed 9 unpaired: left out
    assert flag_table(model, reference) == {
        "flagged": {"same": 1, "differ": 1},
        "not_flagged": {"same": 1, "differ": 0},
    }
