"""Scoring against the reference on unseen frames: calibration, rank correlation, verdict,
and the validation stage's promises (never trained on; a clear error without frames)."""

from __future__ import annotations

import numpy as np
import pytest
from ase.calculators.singlepoint import SinglePointCalculator

from nnprefine.descriptors import make_set
from nnprefine.errors import NnprefineError
from nnprefine.model import Committee
from nnprefine.structures import be0001_slab, hcp_bulk
from nnprefine.validation import Targets, calibration_scale, score, verdict


@pytest.mark.parametrize("alpha", [0.3, 1.0, 4.0])
def test_calibration_recovers_a_known_scale(alpha):
    rng = np.random.default_rng(1)
    d = rng.lognormal(mean=-1.0, sigma=1.0, size=20_000)  # disagreements spanning decades
    error = alpha * d * rng.normal(size=d.size)  # errors of spread α·d
    fitted = calibration_scale(d, np.abs(error))
    assert fitted == pytest.approx(alpha, rel=0.02)
    # frames without disagreement carry no information and are left out, and so are
    # frames whose disagreement and error are both rounding noise (a perfect crystal)
    assert calibration_scale(np.r_[d, 0.0], np.r_[np.abs(error), 5.0]) == fitted
    noise = np.r_[d, 1e-9, 3e-9], np.r_[np.abs(error), 4e-7, 1e-8]
    assert calibration_scale(*noise) == pytest.approx(fitted)
    assert np.isnan(calibration_scale(np.zeros(3), np.ones(3)))


def _labelled_frames(n: int, seed: int):
    """Rattled 24-atom slabs labelled by an arbitrary smooth function (the 'reference')."""
    rng = np.random.default_rng(seed)
    frames = []
    for i in range(n):
        atoms = be0001_slab(size=(2, 2, 3), vacuum_A=5.0)
        atoms.positions += rng.normal(scale=0.1, size=atoms.positions.shape)
        z = atoms.positions[:, 2]
        forces = np.zeros_like(atoms.positions)
        forces[:, 2] = -0.5 * (z - z.mean())
        energy = -3.2 * len(atoms) + 0.25 * ((z - z.mean()) ** 2).sum()
        atoms.calc = SinglePointCalculator(atoms, energy=energy, forces=forces)
        atoms.info["trajectory"] = f"validation-impact-20eV-{i:04d}"
        frames.append(atoms)
    bulk = hcp_bulk("Be", 2.24, 3.6)
    bulk.calc = SinglePointCalculator(bulk, energy=-6.56, forces=np.zeros((2, 3)))
    bulk.info["trajectory"] = "validation-bulk-+0.000"
    return [*frames, bulk]


def test_the_verdict_turns_red_for_an_untrained_model():
    committee = Committee.create(make_set(("Be",), 4, 2, 2, 4.0), hidden=(4,), seed=3)
    result = score(committee, _labelled_frames(6, seed=2))
    summary = result.summary()
    assert set(summary["groups"]) == {"impact", "bulk"}
    assert summary["groups"]["impact"]["frames"] == 6 and summary["groups"]["bulk"]["frames"] == 1
    # an untrained network is off by far more than the targets
    assert summary["all"]["energy_rmse_meV_per_atom"] > 100
    lattice = {
        "model": {"a": 2.30, "c": 3.60, "energy_eV_per_atom": -3.0},
        "reference": {"a": 2.24, "c": 3.60, "energy_eV_per_atom": -3.28},
    }
    v = verdict(summary, lattice, Targets())
    assert not v["ok"] and v["line"].startswith("misses")
    failed = {c["name"] for c in v["checks"] if not c["ok"]}
    assert {"energy RMSE (meV/atom)", "lattice a |NNP − ref| (%)"} <= failed
    assert "lattice c |NNP − ref| (%)" not in failed
    # the same figures against targets it meets (a deliberately loose bar) pass
    loose = Targets(1e9, 1e9, 1e9, 1e9, -1.0)
    assert verdict(summary, lattice, loose)["ok"]


def test_validate_without_validation_frames_says_how_to_make_them(tmp_path):
    from nnprefine.config import config_from_dict
    from nnprefine.stages import Project
    from nnprefine.stages.validation import validation_frames

    project = Project(config_from_dict({"project": {"output_dir": str(tmp_path / "out")}}))
    with pytest.raises(NnprefineError, match="no validation frames.*nnprefine init"):
        validation_frames(project)


def test_rank_correlation_ignores_the_zero_forces_of_a_perfect_crystal():
    from nnprefine.validation import ValidationScore

    rng = np.random.default_rng(3)
    n = 200
    d = np.r_[rng.uniform(0.5, 2.0, n), np.full(20, 1e-15)]  # 20 bulk frames: noise
    err = np.r_[rng.uniform(0.5, 2.0, n), np.full(20, 3e-15)]  # unrelated to d above
    s = ValidationScore(
        groups=np.array(["impact"] * n + ["bulk"] * 20),
        n_atoms=np.full(n + 20, 96),
        energy_error=np.zeros(n + 20),
        max_force_error=err,
        energy_disagreement=np.full(n + 20, 1e-3),
        force_disagreement=d,
    )
    # with the noise frames, both rankings would share their 20 lowest places: ρ ≈ 0.27
    assert abs(s.rank_correlation()) < 0.15
