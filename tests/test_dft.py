"""The DFT reference: GPAW specs, the scratch-folder wrapper, and an end-to-end GPAW check.

The wrapper tests use ASE's EMT and small fake calculators and always run. The tests
marked ``dft`` run GPAW (the ``dft`` extra) and are skipped with the reason when it is
not installed.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import types

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk
from ase.calculators.calculator import Calculator, kpts2sizeandoffsets
from ase.calculators.emt import EMT

from nnprefine.dft import (
    GPAW_QUALITIES,
    ScratchDirCalculator,
    gpaw_kwargs,
    gpaw_spec,
    limit_threads,
)
from nnprefine.errors import ConfigError, ReferenceCalculationError
from nnprefine.reference import make_reference, reference_spec
from nnprefine.structures import be0001_slab

HAVE_GPAW = importlib.util.find_spec("gpaw") is not None
needs_gpaw = pytest.mark.skipif(
    not HAVE_GPAW,
    reason="GPAW is not installed; install the DFT extra as docs/dft.md says "
    "(apt-get install libxc-dev libopenblas-dev; pip install -e '.[dft]')",
)


def small_be_cell(seed: int, rattle_A: float = 0.05) -> Atoms:
    """8 atoms: hcp Be (experimental a = 2.29, c = 3.58 Å), 2×2×1, rattled (σ in Å)."""
    atoms = bulk("Be", "hcp", a=2.29, c=3.58).repeat((2, 2, 1))
    atoms.rattle(stdev=rattle_A, seed=seed)
    return atoms


# -- fake inner calculators, importable by name through a module in sys.modules ------------


class _NaNCalculator(Calculator):
    implemented_properties = ["energy", "forces"]

    def calculate(self, atoms=None, properties=("energy",), system_changes=None):
        super().calculate(atoms, properties, system_changes)
        n = len(self.atoms)
        self.results = {"energy": float("nan"), "forces": np.zeros((n, 3))}


class KohnShamConvergenceError(Exception):
    """Named like GPAW's, which is how the wrapper recognises SCF non-convergence."""


class _NotConvergingCalculator(Calculator):
    implemented_properties = ["energy", "forces"]

    def calculate(self, atoms=None, properties=("energy",), system_changes=None):
        raise KohnShamConvergenceError("did not converge in 3 iterations")


class _FileWritingCalculator(EMT):
    """EMT that writes a log file where its ``logfile`` kwarg says (like GPAW's txt)."""

    def __init__(self, logfile: str, **kwargs):
        super().__init__(**kwargs)
        self.logfile = logfile

    def calculate(self, atoms=None, properties=("energy",), system_changes=None):
        super().calculate(atoms, properties, system_changes)
        with open(self.logfile, "w") as fh:
            fh.write(f"cwd-independent log, directory={self.directory}\n")


@pytest.fixture
def fakes(monkeypatch):
    module = types.ModuleType("nnprefine_dft_fakes")
    module.NaN = _NaNCalculator
    module.NotConverging = _NotConvergingCalculator
    module.FileWriting = _FileWritingCalculator
    monkeypatch.setitem(sys.modules, "nnprefine_dft_fakes", module)
    return "nnprefine_dft_fakes"


def cu_cell() -> Atoms:
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True)
    atoms.rattle(stdev=0.05, seed=1)
    return atoms


# -- specs ----------------------------------------------------------------------------------


@pytest.mark.parametrize("quality", sorted(GPAW_QUALITIES))
def test_gpaw_spec_is_plain_data_with_the_paper_physics(quality):
    spec = gpaw_spec(quality)
    assert json.loads(json.dumps(spec)) == spec  # storable with every label, TOML-able
    assert reference_spec(spec) == spec
    assert spec["calculator"] == "nnprefine.dft:ScratchDirCalculator"
    inner = spec["kwargs"]["inner"]
    assert inner["calculator"] == "gpaw:GPAW"
    kw = inner["kwargs"]
    assert kw["xc"] == "PBE"
    assert kw["spinpol"] is False
    assert kw["mode"]["name"] == "pw"
    assert kw["kpts"] == {"density": GPAW_QUALITIES[quality]["kpoint_density_per_A"], "gamma": True}
    assert kw["txt"] == "{scratch}/gpaw.txt"


def test_gpaw_spec_overrides_and_checks():
    kw = gpaw_kwargs("fast", ecut_eV=300, kpoint_density_per_A=2.5, width_eV=0.05, maxiter=7)
    assert kw["mode"]["ecut"] == 300.0
    assert kw["kpts"]["density"] == 2.5
    assert kw["occupations"] == {"name": "fermi-dirac", "width": 0.05}
    assert kw["maxiter"] == 7
    assert gpaw_kwargs("fast")["mode"]["ecut"] < gpaw_kwargs("paper")["mode"]["ecut"]
    with pytest.raises(ConfigError, match="quality"):
        gpaw_spec("medium")
    with pytest.raises(ConfigError, match="kpoint_density_per_A"):
        gpaw_spec("fast", kpoint_density_per_A=0.0)
    spec = gpaw_spec("fast", scratch_root="/tmp/x", keep_scratch=True, threads=2)
    assert spec["kwargs"]["scratch_root"] == "/tmp/x"
    assert spec["kwargs"]["keep_scratch"] is True
    assert spec["kwargs"]["threads"] == 2


def test_kpoint_density_gives_consistent_meshes():
    """One density in Å⁻¹: 1 k-point per 2π/(density) of reciprocal length, any cell."""
    slab = be0001_slab(a_A=2.29, c_A=3.58)  # 96 atoms, 9.16 × 9.16 Å, pbc (T, T, F)
    small = small_be_cell(seed=0)  # 4.58 × 4.58 × 3.58 Å
    meshes = {}
    for quality in ("fast", "paper"):
        kpts = gpaw_kwargs(quality)["kpts"]
        meshes[quality] = [
            tuple(int(n) for n in kpts2sizeandoffsets(atoms=a, **kpts)[0]) for a in (slab, small)
        ]
    assert meshes["fast"] == [(1, 1, 1), (2, 2, 2)]
    assert meshes["paper"] == [(3, 3, 1), (6, 6, 7)]


# -- the wrapper, with ASE calculators -----------------------------------------------------


def test_wrapper_gives_the_inner_results_and_cleans_up(tmp_path):
    atoms = cu_cell()
    direct = atoms.copy()
    direct.calc = EMT()
    calc = make_reference(
        {
            "calculator": "nnprefine.dft:ScratchDirCalculator",
            "kwargs": {
                "inner": {"calculator": "ase.calculators.emt:EMT"},
                "scratch_root": str(tmp_path),
            },
        }
    )
    atoms.calc = calc
    np.testing.assert_allclose(atoms.get_forces(), direct.get_forces(), rtol=0, atol=1e-12)
    assert atoms.get_potential_energy() == pytest.approx(direct.get_potential_energy(), abs=1e-12)
    assert calc.results["free_energy"] == calc.results["energy"]
    assert calc.results["label_wall_s"] > 0.0
    assert calc.last_label_wall_s == calc.results["label_wall_s"]
    assert calc.converged is True
    assert list(tmp_path.iterdir()) == []  # the label's folder is gone after success
    # Cached like any ASE calculator: no second label for the same positions.
    folder_before = calc.last_scratch_dir
    atoms.get_potential_energy()
    assert calc.last_scratch_dir == folder_before


def test_wrapper_keeps_scratch_on_request_and_fills_placeholders(tmp_path, fakes):
    calc = ScratchDirCalculator(
        {"calculator": f"{fakes}:FileWriting", "kwargs": {"logfile": "{scratch}/inner.log"}},
        scratch_root=tmp_path,
        keep_scratch=True,
    )
    atoms = cu_cell()
    atoms.calc = calc
    atoms.get_forces()
    folder = calc.last_scratch_dir
    assert folder.parent == tmp_path and folder.name.startswith("Cu4-")
    assert (folder / "input.extxyz").exists()
    log = (folder / "inner.log").read_text()
    assert f"directory={folder}" in log  # an inner with a `directory` gets the folder


def test_nan_becomes_reference_error_and_scratch_is_kept(tmp_path, fakes):
    calc = ScratchDirCalculator(f"{fakes}:NaN", scratch_root=tmp_path)
    atoms = cu_cell()
    atoms.calc = calc
    with pytest.raises(ReferenceCalculationError, match="NaN or inf in energy") as info:
        atoms.get_potential_energy()
    folder = calc.last_scratch_dir
    assert str(folder) in str(info.value)
    assert (folder / "FAILED.txt").exists() and (folder / "input.extxyz").exists()
    assert "energy" not in calc.results  # nothing to store
    assert calc.converged is False


def test_non_convergence_becomes_reference_error(tmp_path, fakes):
    calc = ScratchDirCalculator(f"{fakes}:NotConverging", scratch_root=tmp_path)
    atoms = cu_cell()
    atoms.calc = calc
    with pytest.raises(ReferenceCalculationError, match="did not converge"):
        atoms.get_forces()
    assert "KohnShamConvergenceError" in (calc.last_scratch_dir / "FAILED.txt").read_text()
    assert calc.last_label_wall_s is not None


def test_wrapper_rejects_bad_settings(tmp_path, fakes):
    with pytest.raises(ConfigError, match="unknown keyword"):
        ScratchDirCalculator("ase.calculators.emt:EMT", ecut=400)
    with pytest.raises(ConfigError, match="threads"):
        ScratchDirCalculator("ase.calculators.emt:EMT", threads=0)
    with pytest.raises(ConfigError, match="energy_kind"):
        ScratchDirCalculator("ase.calculators.emt:EMT", energy_kind="zero")
    with pytest.raises(ConfigError, match="cannot import"):
        ScratchDirCalculator("no_such_module_xyz:Calc", scratch_root=tmp_path)
    calc = ScratchDirCalculator(
        {"calculator": f"{fakes}:FileWriting", "kwargs": {"log_file": "x.log"}},
        scratch_root=tmp_path,
    )
    atoms = cu_cell()
    atoms.calc = calc
    with pytest.raises(ConfigError, match="do not fit"):  # not quarantined as the frame's fault
        atoms.get_potential_energy()


def test_limit_threads_sets_and_restores_the_environment(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "7")
    monkeypatch.delenv("OPENBLAS_NUM_THREADS", raising=False)
    with limit_threads(1):
        assert os.environ["OMP_NUM_THREADS"] == "1"
        assert os.environ["OPENBLAS_NUM_THREADS"] == "1"
    assert os.environ["OMP_NUM_THREADS"] == "7"
    assert "OPENBLAS_NUM_THREADS" not in os.environ
    with pytest.raises(ConfigError):
        with limit_threads(0):
            pass


# -- GPAW end to end ----------------------------------------------------------------------


@pytest.mark.dft
@needs_gpaw
def test_gpaw_fast_labels_have_forces_equal_to_minus_the_energy_gradient(tmp_path):
    """Three rattled 8-atom hcp Be frames labelled with the fast spec.

    For each frame the force component of largest magnitude is compared with the central
    difference −[E(x+h) − E(x−h)]/2h of the (free) energy, h = 0.01 Å. Tolerance 2e-3 eV/Å:
    the truncation error h²/6·|∂³E/∂x³| and the SCF noise (energy converged to 1e-7 eV per
    electron, 16 electrons → ~2e-6 eV, /2h ≈ 1e-4 eV/Å; force criterion 1e-4 eV/Å) add up
    to a few 1e-4 eV/Å — measured up to 3e-4 eV/Å — while forces here are 0.1–0.9 eV/Å
    and the paper's force RMSE is 32 meV/Å.
    """
    h_A = 0.01
    tol_eV_per_A = 2e-3
    calc = make_reference(gpaw_spec("fast", scratch_root=str(tmp_path)))
    for seed in range(3):
        atoms = small_be_cell(seed)
        atoms.calc = calc
        forces = atoms.get_forces()
        energy = atoms.get_potential_energy()
        assert np.isfinite(energy) and forces.shape == (8, 3)
        assert energy == calc.results["free_energy"]  # force-consistent energy
        assert -3.8 < energy / len(atoms) < -3.0  # PBE hcp Be, ≈ −3.4 eV/atom at 250 eV
        assert calc.results["label_wall_s"] > 0.0
        np.testing.assert_allclose(forces.sum(axis=0), 0.0, atol=1e-3)  # periodic cell
        i, d = np.unravel_index(np.argmax(np.abs(forces)), forces.shape)
        assert abs(forces[i, d]) > 0.05  # the check must not compare two zeros
        e_pm = []
        for sign in (1.0, -1.0):
            moved = atoms.copy()
            moved.positions[i, d] += sign * h_A
            moved.calc = calc
            e_pm.append(moved.get_potential_energy())
        f_numeric = -(e_pm[0] - e_pm[1]) / (2 * h_A)
        assert forces[i, d] == pytest.approx(f_numeric, abs=tol_eV_per_A), (seed, i, d)
    assert list(tmp_path.iterdir()) == []  # every successful label cleaned its folder


@pytest.mark.dft
@needs_gpaw
def test_gpaw_scf_non_convergence_is_raised_and_the_scratch_kept(tmp_path):
    calc = make_reference(gpaw_spec("fast", maxiter=3, scratch_root=str(tmp_path)))
    atoms = small_be_cell(seed=0)
    atoms.calc = calc
    with pytest.raises(ReferenceCalculationError, match="did not converge"):
        atoms.get_forces()
    folder = calc.last_scratch_dir
    assert (folder / "FAILED.txt").exists()
    assert "Did not converge" in (folder / "gpaw.txt").read_text()  # GPAW's own log
    assert "energy" not in calc.results


@pytest.mark.dft
@needs_gpaw
def test_one_refinement_iteration_with_gpaw_labels(tmp_path):
    """Initial labels and the iteration's selected frames all come from GPAW (fast spec).

    A 2×2×2 Be(0001) slab (8 atoms) with tiny networks: the committee is trained on four
    rattled DFT-labelled frames, explores one 50 eV impact, and the frames it selects are
    labelled by GPAW and stored with their provenance.
    """
    import tomllib

    from _tiny import tiny_config_text
    from ase.io import write

    from nnprefine.config import config_from_dict
    from nnprefine.reference import label_frame
    from nnprefine.stages import Project, refine_iteration
    from nnprefine.structures import make_slab

    scratch = tmp_path / "scratch"
    spec = gpaw_spec("fast", scratch_root=str(scratch))
    data = tomllib.loads(tiny_config_text(tmp_path / "out"))
    data["reference"] = spec
    data["descriptor"]["r_cut_A"] = 3.5
    data["initial_data"]["slab"] = {"surface": "0001", "size": [2, 2, 2], "vacuum_A": 4.0}
    data["production"][0]["slab"] = data["initial_data"]["slab"]
    data["refine"].update(max_selected_per_iteration=2, exploration_duration_fs=3.0)
    project = Project(config_from_dict(data, base_dir=tmp_path))
    slab_cfg = project.config.initial_data.slab
    slab = make_slab("0001", (2, 2, 2), a_A=2.29, c_A=3.58, vacuum_A=4.0, fixed_layers=1)
    project.slab_path(slab_cfg.file_key).parent.mkdir(parents=True)
    write(project.slab_path(slab_cfg.file_key), slab)
    initial = []
    for seed in range(4):
        frame = slab.copy()
        frame.rattle(stdev=0.05, seed=seed)
        initial.append(label_frame(frame, spec))
    with project.store() as store:
        store.add_many(initial, origin="initial", iteration=0, reference=spec, seed=0)
    s = refine_iteration(project, 1, slab, slab_cfg.label)
    assert s["frames_selected"] >= 1
    assert s["frames_labelled"] == s["frames_selected"] and s["labels_failed"] == 0
    with project.store() as store:
        frames = store.frames(iteration=1)
        assert len(frames) == s["frames_labelled"]
        for frame in frames:
            assert frame.info["reference"]["calculator"] == spec["calculator"]
            assert frame.info["origin"] == "refine" and frame.info["selection"] is not None
            assert len(frame) == 9  # the slab and the projectile
            assert -4.0 < frame.get_potential_energy() / len(frame) < 0.0
            assert np.isfinite(frame.get_forces()).all()
    assert not any(scratch.iterdir())  # every label cleaned its scratch folder
