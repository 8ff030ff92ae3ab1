"""A tiny project config and a reference that counts, slows or fails its calls, for tests.

The reference wraps the real built-in SNAP potential; it is importable by name
(``_tiny:TestReference``) so that configs, worker processes and subprocesses can build it.
"""

from __future__ import annotations

import hashlib
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
from ase.calculators.calculator import Calculator, all_changes

from nnprefine.reference import SnapReference

TESTS_DIR = Path(__file__).resolve().parent


def position_hash(positions: np.ndarray) -> str:
    """A short fingerprint of positions (Å), rounded to 1e-8 Å."""
    return hashlib.sha1(np.round(np.asarray(positions, float), 8).tobytes()).hexdigest()


class TestReference(Calculator):
    """The built-in SNAP, with a log line per call and optional delays and failures.

    ``log_path``: append one line per call ("ok", "raise" or "nan", then with
    ``position_hashes`` a hash of the positions rounded to 1e-8 Å); ``delay_s``: sleep
    per call (or the environment's ``TINY_REFERENCE_DELAY_S``, which leaves the spec
    and so the frames' content hashes unchanged); ``fail_after``: calls before failures start; ``fail_pattern``: a string
    cycled over the calls after that, "." = fine, "r" = raise, "n" = NaN energy.
    """

    __test__ = False  # not a pytest test class
    implemented_properties = ["energy", "free_energy", "forces"]

    def __init__(
        self,
        log_path: str = "",
        delay_s: float = 0.0,
        fail_after: int = 0,
        fail_pattern: str = ".",
        position_hashes: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.log_path, self.delay_s = log_path, delay_s
        self.fail_after, self.fail_pattern = fail_after, fail_pattern
        self.position_hashes = position_hashes
        self.calls = 0
        self._snap = SnapReference()

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        n = self.calls
        self.calls += 1
        mode = "."
        if n >= self.fail_after:
            mode = self.fail_pattern[(n - self.fail_after) % len(self.fail_pattern)]
        if self.log_path:
            with open(self.log_path, "a") as fh:
                word = {"r": "raise", "n": "nan"}.get(mode, "ok")
                if self.position_hashes:
                    word += " " + position_hash(self.atoms.positions)
                fh.write(word + "\n")
        delay = self.delay_s or float(os.environ.get("TINY_REFERENCE_DELAY_S", "0"))
        if delay:
            time.sleep(delay)
        if mode == "r":
            raise RuntimeError("SCF did not converge (simulated)")
        frame = self.atoms.copy()
        frame.calc = self._snap
        energy = frame.get_potential_energy()
        self.results = {
            "energy": math.nan if mode == "n" else energy,
            "free_energy": energy,
            "forces": frame.get_forces(),
        }


def tiny_config_text(output_dir: Path, reference: str = "", **sections: str) -> str:
    """TOML of a project small enough to run end to end in well under a minute.

    ``reference`` replaces the [reference] table body; ``sections`` replace or add whole
    tables by name (their TOML body).
    """
    tables = {
        "project": f'name = "tiny"\noutput_dir = "{output_dir}"\nelement = "Be"\nseed = 3',
        "reference": reference or 'calculator = "builtin-snap"',
        "structures": (
            "relax_fmax_eV_per_A = 0.05\nequilibration_fs = 20.0\nequilibration_timestep_fs = 1.0\n"
            'thermostat = "langevin"\nfixed_layers = 1'
        ),
        "descriptor": 'preset = "generated"\nr_cut_A = 4.0\nn_radial = 4\nn_narrow = 2\nn_wide = 2',
        "network": 'hidden = [6]\nactivation = "softplus"\ncommittee_size = 2',
        "training": (
            'optimizer = "adam"\nepochs = 4\nbatch_size_frames = 4\nlearning_rate = 1e-2\n'
            "patience_epochs = 4"
        ),
        "initial_data": (
            'slab = { surface = "0001", size = [3, 3, 3], vacuum_A = 5.0 }\n'
            "energies_eV = [50.0]\nruns_per_energy = 1\ntimestep_fs = 0.5\nduration_fs = 10.0\n"
            "snapshots_per_run = 6\nthermal_frames = 6\nthermal_interval_fs = 2.0"
        ),
        "validation": (
            "impact_energies_eV = [50.0]\nimpact_runs_per_energy = 1\nimpact_snapshots_per_run = 3\n"
            "impact_duration_fs = 10.0\nhot_temperatures_K = [2000.0]\n"
            "hot_snapshots_per_temperature = 2\nhot_duration_fs = 6.0\nbulk_strains = [0.0, 0.01]"
        ),
        "refine": (
            "max_iterations = 2\nexploration_energies_eV = [50.0]\nexploration_runs_per_energy = 1\n"
            "exploration_duration_fs = 6.0\nexploration_timestep_fs = 0.5\nframe_interval_fs = 0.5\n"
            "max_selected_per_iteration = 4\nmin_frame_separation_fs = 1.0\n"
            "upper_trust_force_eV_per_A = 1000.0\nstop_fraction = 0.0\nadaptive_count = 4\n"
            "[[refine.thresholds]]\nenergy_meV_per_atom = 20.0\nforce_eV_per_A = 2.0"
        ),
        "production": (
            'slab = { surface = "0001", size = [3, 3, 3], vacuum_A = 5.0 }\n'
            "energies_eV = [100.0, 300.0]\ntrajectories_per_energy = 2\ntimestep_fs = 0.5\n"
            "duration_fs = 8.0\nextension_fs = 4.0\nmax_extensions = 1\n"
            "reference_energies_eV = [300.0]\nreference_trajectories = 1"
        ),
        "executor": 'kind = "in-process"',
    }
    tables.update(sections)
    out = []
    for name, body in tables.items():
        header = f"[[{name}]]" if name == "production" else f"[{name}]"
        out.append(f"{header}\n{body}\n")
    return "\n".join(out)


def write_tiny_config(folder: Path, reference: str = "", **sections: str) -> Path:
    path = folder / "tiny.toml"
    path.write_text(tiny_config_text(folder / "out", reference, **sections))
    return path


def scaled_potential(sfset: Any, seed: int = 0, skin_A: float = 0.6, baseline: Any = None) -> Any:
    """A small (6-5) model with input scaling fitted on rattled hcp Be, so its inputs are
    O(1), and an energy offset near Be's cohesive energy."""
    from ase.build import bulk

    from nnprefine.model import InputScaling, NNPotential

    pot = NNPotential(sfset, hidden=(6, 5), seed=seed, skin_A=skin_A, baseline=baseline)
    cells = []
    for s in range(3):
        cell = bulk("Be", "hcp", a=2.24, c=3.60).repeat((2, 2, 2))
        cell.rattle(0.1, seed=s)
        cells.append(pot.descriptor.values(cell))
    pot.scaling = InputScaling.from_values(
        {"Be": np.concatenate(cells)}, mode="scalecenter", s_min=-1, s_max=1
    )
    pot.set_energy_offsets({"Be": -3.3})
    return pot
