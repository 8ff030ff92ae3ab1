"""Training of potentials and committees on reference energies and forces.

Loss per batch (energies per atom, force components; weights in ``TrainingSettings``):

    L = energy_weight · mean_frames[((E − E_ref)/n_atoms)²] + force_weight · mean_components[(F − F_ref)²]

in eV²/atom² and eV²/Å². Optimisers: ``"adam"`` (mini-batches of frames, learning rate
decaying per epoch) and ``"kalman"`` (n2p2-style global extended Kalman filter, one update
per frame on its energy and one on a random ``kalman_force_fraction`` of all force
components per epoch; n2p2's standard filter by default, its fading-memory one with
``kalman_type = "fading"``). With ``kalman_force_error_threshold`` t > 0 the force
components are chosen as n2p2's ``short_force_error_threshold`` does: among
``kalman_threshold_trials`` random candidates per component, those whose error is at
least t × the RMSE of the candidates seen so far in the epoch go first. With
``stress_weight`` > 0 every training frame periodic in 3D whose labels hold a stress
adds one Kalman update on its strain derivative per atom, V·σ/N (6 Voigt components,
eV/atom, the units of the energy per atom; for Adam the loss term stress_weight ·
mean[(V·σ/N − V·σ_ref/N)²]): that pins the slope of E(V) and so the
lattice constants, which energies alone leave to a fit of a few meV/atom.

Forces are F = −Jᵀ ∂E/∂G with J = ∂G/∂r; ∂E/∂G comes from the networks with
``create_graph=True``, so force-loss gradients reach the weights by ordinary backprop.
Two paths give the same numbers (to rounding):

- cached (the default while the budget lasts): each frame's per-pair Jacobian blocks
  ∂G_i/∂d_p (n_functions × 3 per centre–neighbour pair, ``jacobian_dtype``) are computed
  once by the descriptor kernel; small periodic cells keep them summed over images as
  one dense matrix (smaller there, and forces become one matrix-vector product), larger
  frames as the sparse blocks; every step is then a few products in torch.
  ``jacobian_cache_GiB`` bounds their memory (≈ 6 MiB per 96-atom frame of the paper set
  in float32); frames beyond it use
- on the fly: a custom autograd function whose forward pass is the descriptor's force pass
  and whose backward pass is its Jacobian-vector product (≈ 20× slower per step).

Symmetry functions G are cached per frame; neighbour lists of on-the-fly frames are
cached when they are small (``neighbour_cache_mib_per_frame``), else rebuilt per step.

Model selection: best-on-test weights and early stopping need a test set of at least
``MIN_TEST_FRAMES`` frames and a 10 % split (at least ``MIN_TEST_FRACTION`` of the data
realised); with fewer, training keeps the last weights, runs every epoch, and says so.

Adam's learning rate decays by a factor per epoch (``"exponential"``) or halves when the
monitored loss stalls (``"plateau"``, MACE's choice); ``energy_weight_late`` raises the
energy weight for the last part of training, as MACE and DeePMD users do.

Checkpoints and resume: with ``log_dir``, each member writes ``member_XXX/log.csv``
(one row per epoch), ``member_XXX/best`` (best test loss so far, a model directory) and
``member_XXX/last`` (model + optimiser state). Calling :func:`train` again with the same
``log_dir`` continues where it stopped: it re-reads weights, scaling, energy offsets,
optimiser state and random-number state from the checkpoint; ``epochs`` and ``quiet``
may change between runs, any other changed setting is an error (start a new log_dir).
Finished members are not retrained. At the end each member holds its best-on-test weights.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import hashlib
import json
import math
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse
import torch
from ase import Atoms
from ase.stress import full_3x3_to_voigt_6_stress

from nnprefine._kalman import KALMAN_TYPES, GlobalKalmanFilter
from nnprefine.common import atomic_path
from nnprefine.descriptors import SCALING_MODES, Descriptor, Neighbours, build_neighbours
from nnprefine.errors import ConfigError, DatasetError, ModelError
from nnprefine.model import Committee, InputScaling, NNPotential

__all__ = ["TrainingHistory", "TrainingSettings", "rmse", "split_frames", "train"]


@dataclass(frozen=True)
class TrainingSettings:
    """Settings of :func:`train`. Units in names; weights multiply eV² terms."""

    #: "kalman" or "adam" (docs/benchmarks.md: Kalman reached half Adam's force error)
    optimizer: str = "kalman"
    epochs: int = 60
    energy_weight: float = 1.0
    force_weight: float = 1.0
    #: weight of the strain derivative per atom, V·σ/N (eV/atom), of frames periodic in
    #: all three directions whose labels hold a stress (0: stress not used). It pins the
    #: slope of E(V), so the lattice constants. Not part of the test loss (model selection
    #: and early stop judge energies and forces)
    stress_weight: float = 0.0
    seed: int = 0
    #: stop when the test loss has not improved for this many epochs
    patience_epochs: int = 20
    # Adam
    batch_size_frames: int = 4
    learning_rate: float = 2e-3
    learning_rate_decay_per_epoch: float = 0.95
    learning_rate_min: float = 1e-5
    #: "exponential" (× learning_rate_decay_per_epoch every epoch) or "plateau" (× plateau_factor
    #: when the monitored loss has not improved for plateau_patience_epochs; MACE's schedule)
    learning_rate_schedule: str = "exponential"
    plateau_factor: float = 0.5
    plateau_patience_epochs: int = 5
    #: Adam: energy weight from epoch ⌈late_start_fraction · epochs⌉ on (None: energy_weight)
    energy_weight_late: float | None = None
    late_start_fraction: float = 0.75
    # Kalman filter (n2p2 names: kalman_type, kalman_epsilon, kalman_q0, kalman_qtau,
    # kalman_qmin, kalman_eta, kalman_etatau, kalman_etamax, kalman_lambda_short,
    # kalman_nue_short, short_force_fraction); "standard" or "fading" (nnprefine._kalman)
    kalman_type: str = "standard"
    kalman_force_fraction: float = 0.02
    #: n2p2's short_force_error_threshold (0: components at random) and
    #: rmse_threshold_trials: force components with |error| ≥ threshold × RMSE go first
    kalman_force_error_threshold: float = 0.0
    kalman_threshold_trials: int = 3
    kalman_epsilon: float = 1e-2
    kalman_q0: float = 1e-2
    kalman_q_tau_epochs: float = 2.302
    kalman_q_min: float = 1e-6
    kalman_eta0: float = 0.01
    kalman_eta_tau_epochs: float = 2.302
    kalman_eta_max: float = 1.0
    kalman_lambda0: float = 0.96
    kalman_nu: float = 0.9995
    # inputs
    scaling_mode: str = "scalecenter"
    scale_min: float = -1.0
    scale_max: float = 1.0
    fit_energy_offsets: bool = True
    #: continue a trained model: keep its input scaling, energy offsets and output bias
    #: (refitting them would shift the inputs under the trained weights)
    warm_start: bool = False
    neighbour_cache_mib_per_frame: float = 0.5
    #: memory for the per-frame Jacobian cache (GiB); frames beyond it train on the fly
    jacobian_cache_GiB: float = 6.0
    #: "float32" (half the memory; forces to ~1e-7 relative) or "float64"
    jacobian_dtype: str = "float32"
    #: what each committee member learns from: "bootstrap" (member 1, which drives MD,
    #: all training frames; every other member its own bootstrap resample, drawn from
    #: ``seed``, so members disagree where data are thin) or "all" (every member all frames)
    member_frames: str = "bootstrap"
    #: committee members trained at once, each in its own process on one thread (0: as
    #: many as the machine has cores; 1: one after another in this process)
    parallel_members: int = 0
    quiet: bool = False

    def __post_init__(self) -> None:
        if self.optimizer not in ("adam", "kalman"):
            raise ConfigError(f"optimizer must be 'adam' or 'kalman', got {self.optimizer!r}")
        if not (isinstance(self.parallel_members, int) and self.parallel_members >= 0):
            raise ConfigError(
                f"parallel_members must be a whole number ≥ 0 (0: one per core), got "
                f"{self.parallel_members!r}"
            )
        for name in ("epochs", "batch_size_frames", "patience_epochs"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.energy_weight < 0 or self.force_weight < 0:
            raise ConfigError("energy_weight and force_weight must be non-negative")
        if self.kalman_type not in KALMAN_TYPES:
            raise ConfigError(
                f"kalman_type must be 'standard' or 'fading', got {self.kalman_type!r}"
            )
        if not self.jacobian_cache_GiB >= 0.0:
            raise ConfigError(
                f"jacobian_cache_GiB must be ≥ 0 (0: no cache), got {self.jacobian_cache_GiB}"
            )
        if self.learning_rate_schedule not in LR_SCHEDULES:
            raise ConfigError(
                f"learning_rate_schedule must be one of {LR_SCHEDULES}, "
                f"got {self.learning_rate_schedule!r}"
            )
        if not 0.0 < self.plateau_factor < 1.0 or self.plateau_patience_epochs < 1:
            raise ConfigError("plateau_factor must lie in (0, 1) and plateau_patience_epochs ≥ 1")
        if self.energy_weight_late is not None and self.energy_weight_late < 0:
            raise ConfigError(f"energy_weight_late must be ≥ 0, got {self.energy_weight_late}")
        if self.jacobian_dtype not in JACOBIAN_DTYPES:
            raise ConfigError(
                f"jacobian_dtype must be one of {JACOBIAN_DTYPES}, got {self.jacobian_dtype!r}"
            )
        if self.scaling_mode not in SCALING_MODES:
            raise ConfigError(
                f"scaling_mode must be one of {SCALING_MODES}, got {self.scaling_mode!r}"
            )
        if not self.learning_rate > 0:
            raise ConfigError(f"learning_rate must be positive, got {self.learning_rate}")
        if self.learning_rate_min < 0:
            raise ConfigError(f"learning_rate_min must be ≥ 0, got {self.learning_rate_min}")
        if self.member_frames not in MEMBER_FRAMES:
            raise ConfigError(
                f"member_frames must be one of {MEMBER_FRAMES}, got {self.member_frames!r}"
            )
        if not self.stress_weight >= 0.0:
            raise ConfigError(f"stress_weight must be ≥ 0 (0: no stress), got {self.stress_weight}")
        if not self.kalman_force_error_threshold >= 0.0 or self.kalman_threshold_trials < 1:
            raise ConfigError(
                "kalman_force_error_threshold must be ≥ 0 (0: force components at random) and "
                f"kalman_threshold_trials ≥ 1, got {self.kalman_force_error_threshold} and "
                f"{self.kalman_threshold_trials}"
            )
        if not 0.0 <= self.kalman_force_fraction <= 1.0:
            raise ConfigError(
                f"kalman_force_fraction must lie in [0, 1], got {self.kalman_force_fraction}"
            )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


JACOBIAN_DTYPES = ("float32", "float64")
MEMBER_FRAMES = ("bootstrap", "all")
LR_SCHEDULES = ("exponential", "plateau")
#: a smaller test set is too noisy to pick weights or stop on: at least 10 frames and
#: a 10 % split, which a split by hash realises only to within its binomial spread
#: (29 of 300 frames is a 10 % split), so the floor on the realised share is 8 %
MIN_TEST_FRAMES = 10
MIN_TEST_FRACTION = 0.08

#: settings that may change between a run and its resumption
_RESUMABLE_CHANGES = {
    "epochs",
    "quiet",
    "patience_epochs",
    "jacobian_cache_GiB",
    "jacobian_dtype",
    "neighbour_cache_mib_per_frame",
}


@dataclass
class TrainingHistory:
    """Per-epoch log of one member: rows of the CSV log, and the best epoch."""

    rows: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = -1
    best_test_loss: float = math.inf
    finished: bool = False

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------- data


def _hash_is_test(atoms: Atoms, test_fraction: float) -> bool:
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(atoms.numbers, dtype=np.int64).tobytes())
    h.update(np.round(np.asarray(atoms.positions, dtype=np.float64), 8).tobytes())
    h.update(np.round(atoms.cell.array, 8).tobytes())
    return int.from_bytes(h.digest()[:8], "little") / 2.0**64 < test_fraction


def split_frames(
    frames: Sequence[Atoms], test_fraction: float = 0.1
) -> tuple[list[Atoms], list[Atoms]]:
    """Train and test frames: ``atoms.info["split"]`` ("train"/"test") where present, else a
    stable hash of numbers, positions and cell puts ≈ ``test_fraction`` into the test set."""
    train_set, test_set = [], []
    for atoms in frames:
        split = atoms.info.get("split")
        if split is None:
            split = "test" if _hash_is_test(atoms, test_fraction) else "train"
        if split not in ("train", "test"):
            raise DatasetError(f"atoms.info['split'] must be 'train' or 'test', got {split!r}")
        (test_set if split == "test" else train_set).append(atoms)
    return train_set, test_set


def _labels(atoms: Atoms, k: int) -> tuple[float, np.ndarray]:
    if atoms.calc is None:
        raise DatasetError(
            f"frame {k} ({atoms.get_chemical_formula()}) has no labels; attach a "
            "SinglePointCalculator with energy and forces"
        )
    try:
        energy = float(atoms.get_potential_energy())
        forces = np.array(atoms.get_forces(), dtype=np.float64)
    except Exception as exc:  # noqa: BLE001 - any calculator failure is a data problem here
        raise DatasetError(f"frame {k} has no usable energy/forces labels: {exc}") from exc
    if not np.isfinite(energy) or not np.all(np.isfinite(forces)):
        raise DatasetError(f"frame {k} has a NaN or infinite label; remove it from the set")
    return energy, forces


#: Voigt order of ASE's stress: xx, yy, zz, yz, xz, xy
_VOIGT = ((0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1))


@dataclass(frozen=True)
class _PairJacobian:
    """∂G/∂r of one frame, in whichever of two layouts is smaller.

    - dense (small periodic cells, where a neighbour appears through several images):
      ``matrix`` (n_atoms · max_functions, n_atoms · 3), ∂G_ig/∂r_kα with the images summed;
      forces are one matrix-vector product;
    - pairs: ``centre``, ``neighbour`` (n_pairs,) int64 and ``blocks`` (n_pairs, 3,
      max_functions), ∂G_i/∂d_p of each neighbour entry p (d_p = r_j − r_i + S·cell);
      entries beyond every cutoff are dropped.

    In Å⁻¹ times the unit of G; dtype float32 or float64 (``jacobian_dtype``).
    """

    n_atoms: int
    matrix: torch.Tensor | None = None
    centre: torch.Tensor | None = None
    neighbour: torch.Tensor | None = None
    blocks: torch.Tensor | None = None

    @classmethod
    def of(
        cls, d: Descriptor, atoms: Atoms, nb: Neighbours, dtype: str, layout: str = "auto"
    ) -> tuple[np.ndarray, _PairJacobian]:
        """G (n_atoms, max_functions) float64 and the cached Jacobian of ``atoms``.

        layout: "dense", "pairs", or "auto" (the smaller: dense when n_atoms² ≤ pairs).
        """
        values, blocks = d.jacobian(atoms, neighbours=nb)
        n, nf = values.shape
        centre = np.repeat(np.arange(n), np.diff(nb.offsets))
        keep = np.flatnonzero(np.abs(blocks).reshape(len(blocks), -1).max(axis=1) > 0.0)
        centre, neighbour, blocks = centre[keep], nb.j[keep], blocks[keep]
        if layout == "dense" or (layout == "auto" and n * n <= len(keep)):
            # ∂G_i/∂r_j = Σ_{p: i→j} B_p, ∂G_i/∂r_i = −Σ_p B_p: one sparse one-hot product
            p = len(keep)
            rows = np.concatenate([centre * n + neighbour, centre * n + centre])
            onehot = scipy.sparse.csr_matrix(
                (np.repeat([1.0, -1.0], p), (rows, np.tile(np.arange(p), 2))), shape=(n * n, p)
            )
            dense = (onehot @ blocks.reshape(p, -1)).reshape(n, n, nf, 3).transpose(0, 2, 1, 3)
            matrix = torch.from_numpy(dense.reshape(n * nf, 3 * n).astype(dtype))
            return values, cls(n, matrix=matrix)
        return values, cls(
            n,
            centre=torch.from_numpy(centre),
            neighbour=torch.from_numpy(np.ascontiguousarray(neighbour)),
            blocks=torch.from_numpy(np.ascontiguousarray(blocks.transpose(0, 2, 1), dtype=dtype)),
        )

    @property
    def nbytes(self) -> int:
        parts = (self.matrix, self.centre, self.neighbour, self.blocks)
        return sum(t.numel() * t.element_size() for t in parts if t is not None)

    def rows(self, components: torch.Tensor, n_functions: int) -> torch.Tensor:
        """∂F_c/∂(dedg) (m, n_atoms, n_functions) float64 of the force components
        ``components`` (m,) (flat index 3·atom + α): F_c is their dot product with dedg.

        Sparse in the pairs layout: only the pairs that touch atom k of c contribute.
        """
        n, m = self.n_atoms, len(components)
        if self.matrix is not None:
            cols = self.matrix[:, components].T.to(torch.float64)  # (m, n·nf)
            return -cols.reshape(m, n, -1)[:, :, :n_functions]
        atom, alpha = components // 3, components % 3
        # F_k gets +h_p where k is p's centre and −h_p where k is its neighbour
        sign = (self.centre[None, :] == atom[:, None]).to(torch.int8) - (
            self.neighbour[None, :] == atom[:, None]
        ).to(torch.int8)
        c, p = torch.nonzero(sign, as_tuple=True)
        vals = sign[c, p, None].to(torch.float64) * self.blocks[p, alpha[c], :n_functions]
        out = torch.zeros((m, n, n_functions), dtype=torch.float64)
        return out.index_put_((c, self.centre[p]), vals, accumulate=True)

    def forces(self, dedg: torch.Tensor) -> torch.Tensor:
        """F (n_atoms, 3) float64, eV/Å, from dedg = ∂E/∂G (n_atoms, max_functions), eV.

        F_k = −Σ_ig dedg_ig ∂G_ig/∂r_k; differentiable in dedg.
        """
        n = self.n_atoms
        if self.matrix is not None:
            w = dedg.to(self.matrix.dtype).reshape(1, -1)
            return -(w @ self.matrix).reshape(n, 3).to(torch.float64)
        # per pair h_p = B_pᵀ w_i = ∂E/∂d_p; F_i += h_p, F_j −= h_p
        w = torch.index_select(dedg.to(self.blocks.dtype), 0, self.centre)
        h = (self.blocks * w.unsqueeze(1)).sum(-1).to(torch.float64)
        zeros = torch.zeros((n, 3), dtype=torch.float64)
        return zeros.index_add(0, self.centre, h).index_add(0, self.neighbour, -h)


def _strain_rows(d: Descriptor, atoms: Atoms, nb: Neighbours) -> torch.Tensor:
    """∂G_ig/∂ε_c (6, n_atoms, max_functions) float64 for the Voigt strains c = xx, yy, zz,
    yz, xz, xy: Σ_p d_p,a ∂G_i/∂d_p,b over i's neighbour entries p (d_p = r_j − r_i +
    S·cell), so that ∂E/∂ε_c = Σ_ig dedg_ig rows_cig and ASE's stress is that over the
    volume. One Jacobian pass; meant for the few small periodic frames with a stress."""
    values, blocks = d.jacobian(atoms, neighbours=nb)
    n, nf = values.shape
    centre = np.repeat(np.arange(n), np.diff(nb.offsets))
    pos = np.asarray(atoms.positions, dtype=np.float64)
    vec = pos[nb.j] - pos[centre] + nb.shift @ atoms.cell.array
    rows = np.zeros((6, n, nf))
    for c, (a, b) in enumerate(_VOIGT):
        np.add.at(rows[c], centre, vec[:, a, None] * blocks[:, :, b])
    return torch.from_numpy(rows)


@dataclass
class _Frame:
    """A training frame: cached G (n_atoms, max_functions), labels minus baseline, and
    either the cached Jacobian or (for the on-the-fly path) maybe its neighbour list."""

    atoms: Atoms
    symbols: np.ndarray
    values: np.ndarray
    energy_eV: float
    forces_eV_per_A: np.ndarray
    neighbours: Neighbours | None
    offset_eV: float = 0.0
    jacobian: _PairJacobian | None = None
    #: target ∂E/∂ε per atom (6,) eV/atom, Voigt (V·σ/N of the label minus the baseline's)
    #: and the strain rows (:func:`_strain_rows`), for training frames with a stress label
    strain_eV_per_atom: np.ndarray | None = None
    strain_rows: torch.Tensor | None = None

    @property
    def n_atoms(self) -> int:
        return len(self.atoms)

    def get_neighbours(self, descriptor: Descriptor) -> Neighbours:
        return self.neighbours if self.neighbours is not None else descriptor.neighbours(self.atoms)


def _nbytes(obj: Any) -> int:
    """Bytes held in numpy arrays of ``obj`` (and one level of containers)."""
    if isinstance(obj, np.ndarray):
        return obj.nbytes
    total = 0
    items = vars(obj).values() if hasattr(obj, "__dict__") else ()
    if dataclasses.is_dataclass(obj) and not hasattr(obj, "__dict__"):
        items = [getattr(obj, f.name) for f in dataclasses.fields(obj)]
    for v in items:
        if isinstance(v, np.ndarray):
            total += v.nbytes
        elif isinstance(v, list | tuple):
            total += sum(x.nbytes for x in v if isinstance(x, np.ndarray))
    return total


@dataclass
class _JacobianBudget:
    """Bytes left for cached Jacobians, and what happened to the frames that asked."""

    bytes_left: float
    dtype: str = "float32"
    layout: str = "auto"
    cached: int = 0
    on_the_fly: int = 0
    bytes_used: int = 0

    def estimate(self, nb: Neighbours, n_functions: int) -> int:
        """Upper bound of one frame's cache (see ``_PairJacobian.of`` for the layouts)."""
        blocks = {"dense": nb.n_atoms**2, "pairs": nb.n_pairs}.get(
            self.layout, min(nb.n_atoms**2, nb.n_pairs)
        )
        return blocks * (n_functions * 3 * np.dtype(self.dtype).itemsize + 16)


def _strain_label(atoms: Atoms) -> np.ndarray | None:
    """V·σ (6,) eV, Voigt, of a frame periodic in 3D whose labels hold a stress, else None."""
    results = getattr(atoms.calc, "results", None) or {}
    stress = results.get("stress")
    if stress is None or not atoms.pbc.all():
        return None
    stress = np.asarray(stress, dtype=np.float64)
    if stress.shape == (3, 3):
        stress = full_3x3_to_voigt_6_stress(stress)
    if stress.shape != (6,) or not np.isfinite(stress).all():
        return None
    return stress * atoms.get_volume()


def _prepare(
    frames: Sequence[Atoms],
    pot: NNPotential,
    cache_limit_mib: float,
    budget: _JacobianBudget | None = None,
    with_stress: bool = False,
) -> list[_Frame]:
    """Labels (minus the baseline), G, and a cached Jacobian while ``budget`` lasts; with
    ``with_stress``, the strain target and rows of the frames that have a stress (cached
    or not)."""
    from nnprefine.model import _symbols_check

    d = pot.descriptor
    out = []
    for k, atoms in enumerate(frames):
        energy, forces = _labels(atoms, k)
        symbols = _symbols_check(atoms, pot.elements)
        plain = Atoms(atoms.numbers, atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
        strain = _strain_label(atoms) if with_stress else None
        if pot.baseline is not None:
            e_b, f_b, s_b = pot.baseline.energy_forces_virial(plain)
            energy, forces = energy - e_b, forces - f_b
            if strain is not None:
                strain = strain - full_3x3_to_voigt_6_stress(s_b)
        if budget is not None:
            nb0 = build_neighbours(plain, d.sfset.r_cut)
            if budget.estimate(nb0, d.n_functions_max) <= budget.bytes_left:
                values, jac = _PairJacobian.of(d, plain, nb0, budget.dtype, budget.layout)
                budget.bytes_left -= jac.nbytes
                budget.bytes_used += jac.nbytes
                budget.cached += 1
                out.append(_Frame(plain, symbols, values, energy, forces, None, jacobian=jac))
                _add_strain(out[-1], strain, d, nb0)
                continue
            budget.on_the_fly += 1
        nb = d.neighbours(plain)
        values = d.values(plain, neighbours=nb)
        keep = nb if _nbytes(nb) <= cache_limit_mib * 2**20 else None
        out.append(_Frame(plain, symbols, values, energy, forces, keep))
        _add_strain(out[-1], strain, d, nb)
    return out


def _add_strain(frame: _Frame, strain: np.ndarray | None, d: Descriptor, nb: Neighbours) -> None:
    """Set the strain target (``strain`` = V·σ − ∂E_baseline/∂ε, eV) and rows of a frame."""
    if strain is not None:
        frame.strain_eV_per_atom = strain / frame.n_atoms
        frame.strain_rows = _strain_rows(d, frame.atoms, nb)


def _prepare_sets(
    train_frames: Sequence[Atoms],
    test_frames: Sequence[Atoms],
    pot: NNPotential,
    s: TrainingSettings,
) -> tuple[list[_Frame], list[_Frame], _JacobianBudget]:
    """The training and test frames of :func:`_prepare` under one Jacobian budget (strain
    targets for the training frames when ``s.stress_weight`` > 0), and that budget."""
    budget = _JacobianBudget(s.jacobian_cache_GiB * 2**30, s.jacobian_dtype)
    limit = s.neighbour_cache_mib_per_frame
    train_set = _prepare(train_frames, pot, limit, budget, s.stress_weight > 0)
    return train_set, _prepare(test_frames, pot, limit, budget), budget


def _fit_inputs(pot: NNPotential, frames: list[_Frame], settings: TrainingSettings) -> None:
    """Scaling statistics and per-element energy offsets from the training frames."""
    rows = {el: [] for el in pot.elements}
    for f in frames:
        for el in pot.elements:
            m = f.symbols == el
            if m.any():
                rows[el].append(f.values[m, : pot.sfset.n_functions(el)])
    missing = [el for el, r in rows.items() if not r]
    if missing:
        raise DatasetError(f"the training frames hold no {missing} atoms; add such frames")
    pot.scaling = InputScaling.from_values(
        {el: np.concatenate(r) for el, r in rows.items()},
        mode=settings.scaling_mode,
        s_min=settings.scale_min,
        s_max=settings.scale_max,
    )
    if settings.fit_energy_offsets:
        counts = np.array(
            [[np.sum(f.symbols == el) for el in pot.elements] for f in frames], dtype=np.float64
        )
        energies = np.array([f.energy_eV for f in frames])
        coef, *_ = np.linalg.lstsq(counts, energies, rcond=None)
        pot.set_energy_offsets(dict(zip(pot.elements, coef.tolist(), strict=True)))


def _center_outputs(pot: NNPotential, frames: list[_Frame]) -> None:
    """Shift each network's output bias so its mean atomic energy on the training set is 0.

    The per-element offsets carry the mean energy; fresh networks would otherwise add
    an arbitrary O(0.1 eV/atom) constant that the first epochs spend removing.
    """
    for el in pot.elements:
        rows = [f.values[f.symbols == el] for f in frames if (f.symbols == el).any()]
        if not rows:
            continue
        energies, _ = pot.atomic_energies_from_values(
            np.full(sum(len(r) for r in rows), el), np.concatenate(rows)
        )
        mean_nn = float(energies.mean()) - pot.energy_offsets_eV[el]
        with torch.no_grad():
            pot.networks[el].layers[-1].bias.sub_(mean_nn)


def _set_offsets(frames: list[_Frame], pot: NNPotential) -> None:
    for f in frames:
        f.offset_eV = float(sum(pot.energy_offsets_eV[s] for s in f.symbols))


# --------------------------------------------------------------------------- torch pieces


class _DescriptorForces(torch.autograd.Function):
    """F = −Jᵀ g (descriptor force pass) with backward −J v (descriptor JVP)."""

    @staticmethod
    def forward(ctx: Any, dedg: torch.Tensor, frame: _Frame, d: Descriptor) -> torch.Tensor:
        nb = frame.get_neighbours(d)
        ctx.frame, ctx.d, ctx.nb = frame, d, nb
        forces, _ = d.forces(frame.atoms, dedg.detach().numpy(), neighbours=nb)
        return torch.from_numpy(np.ascontiguousarray(forces, dtype=np.float64))

    @staticmethod
    def backward(ctx: Any, grad_forces: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        jv = ctx.d.jvp(
            ctx.frame.atoms, grad_forces.detach().numpy().astype(np.float64), neighbours=ctx.nb
        )
        return -torch.from_numpy(np.ascontiguousarray(jv)), None, None


class _TorchModel:
    """Torch view of an NNPotential for training: parameters and a batched forward."""

    def __init__(self, pot: NNPotential) -> None:
        self.pot = pot
        self.params = [p for el in pot.elements for p in pot.networks[el].parameters()]
        affine = pot.input_affine()
        self.affine = {
            el: (torch.from_numpy(a), torch.from_numpy(c)) for el, (a, c) in affine.items()
        }

    def forward(
        self, frames: Sequence[_Frame], with_forces: bool, create_graph: bool = True
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Frame energies (B,) eV and, if asked, forces [(n_b, 3)] eV/Å (differentiable in
        the weights unless ``create_graph`` is False)."""
        g = torch.from_numpy(np.concatenate([f.values for f in frames]))
        g.requires_grad_(with_forces)
        frame_of_atom = torch.from_numpy(
            np.repeat(np.arange(len(frames)), [f.n_atoms for f in frames])
        )
        atom_e = self._atom_energies(g, np.concatenate([f.symbols for f in frames]))
        offsets = torch.tensor([f.offset_eV for f in frames], dtype=torch.float64)
        energies = (
            torch.zeros(len(frames), dtype=torch.float64).index_add(0, frame_of_atom, atom_e)
            + offsets
        )
        forces: list[torch.Tensor] = []
        if with_forces:
            (dedg,) = torch.autograd.grad(atom_e.sum(), g, create_graph=create_graph)
            start = 0
            for f in frames:
                w = dedg[start : start + f.n_atoms]
                if f.jacobian is not None:
                    forces.append(f.jacobian.forces(w))
                else:
                    forces.append(_DescriptorForces.apply(w, f, self.pot.descriptor))
                start += f.n_atoms
        return energies, forces

    def _atom_energies(self, g: torch.Tensor, symbols: np.ndarray) -> torch.Tensor:
        """Atomic energies (n,) eV of the networks on G (n, max_functions)."""
        atom_e = torch.zeros(g.shape[0], dtype=torch.float64)
        for el in self.pot.elements:
            idx = np.flatnonzero(symbols == el)
            if idx.size == 0:
                continue
            n = self.pot.sfset.n_functions(el)
            a, c = self.affine[el]
            ti = torch.from_numpy(idx)
            x = g[ti, :n] * a[:n] + c[:n]
            atom_e = atom_e.index_put((ti,), self.pot.networks[el](x))
        return atom_e

    def force_components(
        self, frame: _Frame, components: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Force components F_c (m,) eV/Å of ``frame`` and their weight Jacobian
        ∂F_c/∂w (n_w, m), for a frame with a cached Jacobian.

        F_c = v_c · dedg with v_c a sparse row of ∂G/∂r (:meth:`_PairJacobian.rows`), so
        ∂F_c/∂w is one batched backward pass of dedg through the networks (vmap over the m
        rows): the descriptor's sparse product is not differentiated m times.
        """
        return self._linear_in_dedg(frame, lambda n: frame.jacobian.rows(components, n))

    def strain_components(self, frame: _Frame) -> tuple[torch.Tensor, torch.Tensor]:
        """∂E/∂ε per atom (6,) eV/atom, Voigt, of a frame with strain rows, and its weight
        Jacobian (n_w, 6), as :meth:`force_components` does for forces."""
        strain = frame.strain_rows / frame.n_atoms
        return self._linear_in_dedg(frame, lambda n: strain[:, :, :n])

    def strains(self, frame: _Frame) -> torch.Tensor:
        """∂E/∂ε per atom (6,) eV/atom, Voigt, of a frame with strain rows, differentiable
        in the weights (Adam's stress term)."""
        dedg = self._dedg(frame)
        strain = frame.strain_rows[:, :, : dedg.shape[1]] / frame.n_atoms
        return (strain * dedg).sum(dim=(1, 2))

    def _dedg(self, frame: _Frame) -> torch.Tensor:
        """∂E/∂G (n_atoms, n_functions) eV of one frame, with its graph in the weights."""
        g = torch.from_numpy(frame.values).requires_grad_(True)
        atom_e = self._atom_energies(g, frame.symbols)
        (dedg,) = torch.autograd.grad(atom_e.sum(), g, create_graph=True)
        return dedg

    def _linear_in_dedg(self, frame: _Frame, rows_of: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """y = Σ v·dedg for the m rows v = rows_of(n) (m, n_atoms, n) and ∂y/∂w (n_w, m),
        in one batched backward pass of dedg through the networks."""
        dedg = self._dedg(frame)
        v = rows_of(dedg.shape[1])
        values = (v * dedg.detach()).sum(dim=(1, 2))
        gs = torch.autograd.grad(
            dedg, self.params, grad_outputs=v, allow_unused=True, is_grads_batched=True
        )
        return values, self._flat(gs, v.shape[0]).T

    def force_components_per_pass(
        self, frame: _Frame, components: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """As :meth:`force_components`, for any frame: the forces with their graph, then one
        backward pass per component (the on-the-fly path, and the benchmark's baseline)."""
        _, forces = self.forward([frame], True)
        flat = forces[0].reshape(-1)
        h = torch.stack([self.flat_grad(flat[int(c)], retain_graph=True) for c in components], 1)
        return flat.detach()[components], h

    def flat_grad(self, y: torch.Tensor, retain_graph: bool) -> torch.Tensor:
        gs = torch.autograd.grad(y, self.params, retain_graph=retain_graph, allow_unused=True)
        return self._flat(gs)

    def _flat(self, grads: Sequence[torch.Tensor | None], batch: int | None = None) -> torch.Tensor:
        """Parameter gradients as one vector (n_w,), or (batch, n_w) for batched ones;
        a parameter the output does not depend on gives zeros."""
        lead = () if batch is None else (batch,)
        return torch.cat(
            [
                torch.zeros((*lead, p.numel()), dtype=p.dtype)
                if gr is None
                else gr.reshape(*lead, -1)
                for gr, p in zip(grads, self.params, strict=True)
            ],
            dim=-1,
        )

    def flat_params(self) -> torch.Tensor:
        return torch.cat([p.detach().reshape(-1) for p in self.params])

    @torch.no_grad()
    def set_flat_params(self, flat: torch.Tensor) -> None:
        start = 0
        for p in self.params:
            p.copy_(flat[start : start + p.numel()].view_as(p))
            start += p.numel()


# --------------------------------------------------------------------------- metrics


def _errors(pot: NNPotential, frames: Sequence[_Frame]) -> tuple[float, float, int]:
    """Σ (ΔE/atom)², Σ ΔF_component², number of frames (cached frames through torch,
    the others through the descriptor's force pass)."""
    se, sf = 0.0, 0.0
    cached = [f for f in frames if f.jacobian is not None]
    if cached:
        tm = _TorchModel(pot)
        for start in range(0, len(cached), 16):
            batch = cached[start : start + 16]
            energies, forces = tm.forward(batch, True, create_graph=False)
            for f, e, fo in zip(batch, energies.detach(), forces, strict=True):
                se += ((float(e) - f.energy_eV) / f.n_atoms) ** 2
                sf += float(((fo.detach().numpy() - f.forces_eV_per_A) ** 2).sum())
    for f in frames:
        if f.jacobian is not None:
            continue
        ei, dedg = pot.atomic_energies_from_values(f.symbols, f.values)
        forces, _ = pot.descriptor.forces(
            f.atoms, dedg, neighbours=f.get_neighbours(pot.descriptor)
        )
        se += ((ei.sum() - f.energy_eV) / f.n_atoms) ** 2
        sf += float(((forces - f.forces_eV_per_A) ** 2).sum())
    return se, sf, len(frames)


def _rmse_of(pot: NNPotential, frames: Sequence[_Frame]) -> tuple[float, float]:
    if not frames:
        return math.nan, math.nan
    se, sf, n = _errors(pot, frames)
    n_comp = sum(3 * f.n_atoms for f in frames)
    return 1e3 * math.sqrt(se / n), 1e3 * math.sqrt(sf / n_comp)


def rmse(model: NNPotential | Committee, frames: Sequence[Atoms]) -> dict[str, Any]:
    """Energy RMSE (meV/atom) and force-component RMSE (meV/Å) of labelled frames.

    For a committee, lists of per-member values.
    """
    members = model.members if isinstance(model, Committee) else [model]
    res = [_rmse_of(pot, _prepare(frames, pot, 0.0)) for pot in members]
    if isinstance(model, Committee):
        return {"energy_meV_per_atom": [r[0] for r in res], "force_meV_per_A": [r[1] for r in res]}
    return {"energy_meV_per_atom": res[0][0], "force_meV_per_A": res[0][1]}


# --------------------------------------------------------------------------- loop


def _loss_of(settings: TrainingSettings, rmse_e_mev: float, rmse_f_mev: float) -> float:
    e = 0.0 if math.isnan(rmse_e_mev) else (rmse_e_mev * 1e-3) ** 2
    f = 0.0 if math.isnan(rmse_f_mev) else (rmse_f_mev * 1e-3) ** 2
    return settings.energy_weight * e + settings.force_weight * f


def _epoch_adam(
    tm: _TorchModel,
    frames: list[_Frame],
    s: TrainingSettings,
    opt: torch.optim.Optimizer,
    rng: np.random.Generator,
    epoch: int,
    advance: Any,
    lr: float,
) -> tuple[float, float]:
    """One Adam epoch at learning rate ``lr``; train RMSEs (meV/atom, meV/Å) seen on the way."""
    for group in opt.param_groups:
        group["lr"] = lr
    energy_weight = s.energy_weight
    if s.energy_weight_late is not None and epoch >= math.ceil(s.late_start_fraction * s.epochs):
        energy_weight = s.energy_weight_late
    with_forces = s.force_weight > 0
    se = sf = 0.0
    n_comp = 0
    order = rng.permutation(len(frames))
    for start in range(0, len(order), s.batch_size_frames):
        batch = [frames[i] for i in order[start : start + s.batch_size_frames]]
        energies, forces = tm.forward(batch, with_forces)
        n = torch.tensor([f.n_atoms for f in batch], dtype=torch.float64)
        e_ref = torch.tensor([f.energy_eV for f in batch], dtype=torch.float64)
        de = (energies - e_ref) / n
        loss = energy_weight * (de**2).mean()
        se += float((de.detach() ** 2).sum())
        if with_forces:
            df = torch.cat(forces) - torch.from_numpy(
                np.concatenate([f.forces_eV_per_A for f in batch])
            )
            loss = loss + s.force_weight * (df**2).mean()
            sf += float((df.detach() ** 2).sum())
            n_comp += df.numel()
        strained = [f for f in batch if f.strain_eV_per_atom is not None] if s.stress_weight else []
        if strained:
            ds = torch.stack(
                [tm.strains(f) - torch.from_numpy(f.strain_eV_per_atom) for f in strained]
            )
            loss = loss + s.stress_weight * (ds**2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        advance(len(batch))
    return 1e3 * math.sqrt(se / len(frames)), (1e3 * math.sqrt(sf / n_comp) if n_comp else math.nan)


def _learning_rate(s: TrainingSettings, epoch: int, rows: list[dict[str, float]]) -> float:
    """Adam's learning rate in ``epoch``; "plateau" replays the logged monitored losses, so a
    resumed run continues the same schedule."""
    if s.learning_rate_schedule == "exponential":
        lr = s.learning_rate * s.learning_rate_decay_per_epoch**epoch
    else:
        lr, best, since = s.learning_rate, math.inf, 0
        for row in rows[:epoch]:
            if row["monitor_loss"] < best * (1.0 - 1e-4):
                best, since = row["monitor_loss"], 0
            else:
                since += 1
                if since >= s.plateau_patience_epochs:
                    lr, since = lr * s.plateau_factor, 0
    return max(lr, s.learning_rate_min)


def _epoch_kalman(
    tm: _TorchModel,
    frames: list[_Frame],
    s: TrainingSettings,
    kf: GlobalKalmanFilter,
    rng: np.random.Generator,
    epoch: int,
    advance: Any,
) -> tuple[float, float]:
    sizes = np.array([3 * f.n_atoms for f in frames])
    n_pick = int(round(s.kalman_force_fraction * sizes.sum())) if s.force_weight > 0 else 0
    picked = np.sort(rng.choice(sizes.sum(), size=n_pick, replace=False))
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    force_updates = int(np.count_nonzero(np.diff(np.searchsorted(picked, bounds))))
    strain_updates = sum(f.strain_eV_per_atom is not None for f in frames) if s.stress_weight else 0
    kf.start_epoch(epoch, len(frames) * (s.energy_weight > 0) + force_updates + strain_updates)
    se = sf = 0.0
    n_comp = 0
    seen = [0.0, 0]  # Σ error², count of the threshold's candidates (eV²/Å²)
    for i in rng.permutation(len(frames)):
        f = frames[i]
        if s.energy_weight > 0:
            energies, _ = tm.forward([f], False)
            y = energies[0] / f.n_atoms
            h = tm.flat_grad(y, retain_graph=False) * s.energy_weight
            err = (f.energy_eV / f.n_atoms - y.item()) * s.energy_weight
            se += (err / s.energy_weight) ** 2
            w = tm.flat_params()
            kf.update(w, torch.tensor([err], dtype=torch.float64), h[:, None])
            tm.set_flat_params(w)
        comps = picked[(picked >= bounds[i]) & (picked < bounds[i + 1])] - bounds[i]
        if comps.size and s.kalman_force_error_threshold > 0:
            comps = _over_threshold(tm, f, comps.size, s, rng, seen)
        if comps.size:
            picked_c = torch.from_numpy(comps)
            if f.jacobian is not None:
                values, h = tm.force_components(f, picked_c)
            else:
                values, h = tm.force_components_per_pass(f, picked_c)
            h = h * s.force_weight
            err = (torch.from_numpy(f.forces_eV_per_A.reshape(-1)[comps]) - values) * s.force_weight
            sf += float(((err / s.force_weight) ** 2).sum())
            n_comp += comps.size
            w = tm.flat_params()
            kf.update(w, err, h)
            tm.set_flat_params(w)
        if s.stress_weight > 0 and f.strain_eV_per_atom is not None:
            values, h = tm.strain_components(f)
            err = (torch.from_numpy(f.strain_eV_per_atom) - values) * s.stress_weight
            w = tm.flat_params()
            kf.update(w, err, h * s.stress_weight)
            tm.set_flat_params(w)
        advance(1)
    if seen[1]:  # the selected components' errors are biased high: report the candidates'
        sf, n_comp = seen
    return 1e3 * math.sqrt(se / len(frames)) if s.energy_weight > 0 else math.nan, (
        1e3 * math.sqrt(sf / n_comp) if n_comp else math.nan
    )


def _over_threshold(
    tm: _TorchModel,
    f: _Frame,
    n: int,
    s: TrainingSettings,
    rng: np.random.Generator,
    seen: list,
) -> np.ndarray:
    """n force components of frame ``f`` (sorted flat indices), n2p2's error-threshold way.

    Draws n × trials candidates at random; those with |F − F_ref| ≥ threshold × RMSE go
    first, the rest fill up in their random order. The RMSE is that of every candidate
    seen so far in the epoch, these included (``seen`` = [Σ error², count], updated), so
    the rule needs no state across epochs.
    """
    size = 3 * f.n_atoms
    cand = rng.choice(size, size=min(size, n * s.kalman_threshold_trials), replace=False)
    _, forces = tm.forward([f], True, create_graph=False)
    predicted = forces[0].detach().numpy().reshape(-1)[cand]
    err = np.abs(f.forces_eV_per_A.reshape(-1)[cand] - predicted)
    seen[0] += float((err**2).sum())
    seen[1] += err.size
    above = err >= s.kalman_force_error_threshold * math.sqrt(seen[0] / seen[1])
    order = np.concatenate([np.flatnonzero(above), np.flatnonzero(~above)])
    return np.sort(cand[order[:n]])


def _diverged(epoch: int, s: TrainingSettings) -> str:
    """The message for weights or loss that became NaN or infinite."""
    if s.optimizer == "kalman":
        hint = (
            "the Kalman filter's steps grow with energy_weight and force_weight (they multiply "
            f"its errors and gradients; now {s.energy_weight:g} and {s.force_weight:g}) and "
            f"with 1/kalman_epsilon (now {s.kalman_epsilon:g}): keep the weights near 1 and "
            "kalman_epsilon near n2p2's 1e-2"
        )
    else:
        hint = f"lower the learning rate (now {s.learning_rate:g})"
    return f"training diverged in epoch {epoch} (NaN or infinite weights or loss): {hint}, or check the labels"


def _test_set_selects(n_train: int, n_test: int) -> bool:
    """Whether a test set is large enough to pick best weights and stop early on."""
    return n_test >= max(MIN_TEST_FRAMES, MIN_TEST_FRACTION * (n_train + n_test) - 1e-9)


def _log(s: TrainingSettings, log_dir: Path | None, message: str) -> None:
    """A line for the user (unless quiet) and for ``log_dir/training.log``."""
    if not s.quiet:
        print(f"training: {message}", flush=True)
    if log_dir is not None:
        with (log_dir / "training.log").open("a") as fh:
            fh.write(time.strftime("%Y-%m-%d %H:%M:%S ") + message + "\n")


def _write_csv(path: Path, rows: list[dict[str, float]]) -> None:
    if not rows:
        return
    with atomic_path(path) as tmp, tmp.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def _check_resume_settings(saved: dict[str, Any], settings: TrainingSettings, where: Path) -> None:
    now = settings.to_dict()
    default = TrainingSettings().to_dict()  # a key saved before it existed had its default
    changed = sorted(
        k for k in now if k not in _RESUMABLE_CHANGES and saved.get(k, default[k]) != now[k]
    )
    if changed:
        details = ", ".join(f"{k}: {saved.get(k, default[k])!r} -> {now[k]!r}" for k in changed)
        raise ConfigError(
            f"cannot resume from {where}: settings changed ({details}); restore them or use a "
            "new log_dir (only epochs, patience_epochs and quiet may change on resume)"
        )


def member_frame_indices(n_frames: int, member_index: int, s: TrainingSettings) -> np.ndarray:
    """Indices into the training frames that member ``member_index`` trains on (n_frames,).

    Member 0 and every member with ``member_frames = "all"``: each frame once. Otherwise a
    bootstrap resample (n_frames draws with replacement, from ``[seed, member_index]``),
    sorted; about 63 % of the frames appear, some more than once.
    """
    if member_index == 0 or s.member_frames == "all":
        return np.arange(n_frames)
    rng = np.random.default_rng([s.seed, member_index, 0xB007])
    return np.sort(rng.integers(0, n_frames, size=n_frames))


def _train_member(
    pot: NNPotential,
    train_set: list[_Frame],
    test_set: list[_Frame],
    s: TrainingSettings,
    member_dir: Path | None,
    member_index: int,
    progress: Any,
    warm: bool = False,
    select: bool = True,
) -> TrainingHistory:
    rng = np.random.default_rng([s.seed, member_index])
    history = TrainingHistory()
    state: dict[str, Any] | None = None
    if member_dir is not None and (member_dir / "last" / "state.pt").exists():
        ck = NNPotential.load(member_dir / "last")
        state = torch.load(member_dir / "last" / "state.pt", weights_only=False)
        _check_resume_settings(state["settings"], s, member_dir)
        pot.scaling, pot.energy_offsets_eV = ck.scaling, dict(ck.energy_offsets_eV)
        pot.set_weight_arrays(ck.weight_arrays())
        history = TrainingHistory(**state["history"])
        rng.bit_generator.state = state["rng"]
    elif not warm:
        _center_outputs(pot, train_set)
    _set_offsets(train_set, pot)
    _set_offsets(test_set, pot)
    tm = _TorchModel(pot)
    if s.optimizer == "adam":
        opt: Any = torch.optim.Adam(tm.params, lr=s.learning_rate)
    else:
        opt = GlobalKalmanFilter(
            sum(p.numel() for p in tm.params),
            s.kalman_epsilon,
            s.kalman_q0,
            s.kalman_q_tau_epochs,
            s.kalman_q_min,
            s.kalman_lambda0,
            s.kalman_nu,
            kind=s.kalman_type,
            eta0=s.kalman_eta0,
            eta_tau_epochs=s.kalman_eta_tau_epochs,
            eta_max=s.kalman_eta_max,
        )
    if state is not None:
        opt.load_state_dict(state["optimizer"])
    best_weights = pot.weight_arrays() if history.best_epoch < 0 else None
    if best_weights is None and member_dir is not None:
        best_weights = NNPotential.load(member_dir / "best").weight_arrays()
    start = len(history.rows)
    for epoch in range(start, s.epochs):
        if history.finished:
            break
        t0 = time.perf_counter()
        task = (
            progress.add_task(
                f"member {member_index} epoch {epoch + 1}/{s.epochs}", total=len(train_set)
            )
            if progress is not None
            else None
        )

        def advance(n: int, task: Any = task) -> None:
            if progress is not None:
                progress.advance(task, n)

        try:
            if s.optimizer == "adam":
                lr = _learning_rate(s, epoch, history.rows)
                tr_e, tr_f = _epoch_adam(tm, train_set, s, opt, rng, epoch, advance, lr)
            else:
                tr_e, tr_f = _epoch_kalman(tm, train_set, s, opt, rng, epoch, advance)
        except ModelError as exc:  # NaN weights surface as NaN inputs to the descriptor
            if all(np.isfinite(w).all() for w in pot.weight_arrays().values()):
                raise
            raise ModelError(_diverged(epoch, s)) from exc
        if progress is not None:
            progress.remove_task(task)
        te_e, te_f = _rmse_of(pot, test_set)
        seconds = time.perf_counter() - t0
        test_loss = _loss_of(s, te_e, te_f) if test_set else _loss_of(s, tr_e, tr_f)
        finite_weights = all(np.isfinite(w).all() for w in pot.weight_arrays().values())
        nan_test = bool(test_set) and (math.isnan(te_e) or math.isnan(te_f))
        if not (math.isfinite(test_loss) and finite_weights) or nan_test:
            raise ModelError(_diverged(epoch, s))
        row = {
            "epoch": epoch,
            "seconds": round(seconds, 3),
            "learning_rate": (
                _learning_rate(s, epoch, history.rows) if s.optimizer == "adam" else math.nan
            ),
            "train_rmse_energy_meV_per_atom": tr_e,
            "train_rmse_force_meV_per_A": tr_f,
            "test_rmse_energy_meV_per_atom": te_e,
            "test_rmse_force_meV_per_A": te_f,
            "test_loss": test_loss,
            # what the plateau schedule watches: the test loss if it may select, else train
            "monitor_loss": test_loss if select else _loss_of(s, tr_e, tr_f),
        }
        history.rows.append(row)
        if not select or test_loss < history.best_test_loss:
            history.best_test_loss, history.best_epoch = test_loss, epoch
            best_weights = pot.weight_arrays()
            if member_dir is not None:
                pot.save(member_dir / "best")
        if select and epoch - history.best_epoch >= s.patience_epochs:
            history.finished = True  # early stop: no test improvement for patience_epochs
        if member_dir is not None:
            _checkpoint(pot, opt, rng, history, s, member_dir)
        if progress is not None:
            progress.console.print(
                f"m{member_index} ep{epoch:4d} RMSE train {tr_e:7.2f} {tr_f:7.1f} | test "
                f"{te_e:7.2f} meV/atom {te_f:7.1f} meV/Å {seconds:5.1f}s"
                f"{' *' if history.best_epoch == epoch else ''}",
                soft_wrap=True,
            )
    if best_weights is not None:
        pot.set_weight_arrays(best_weights)
    started = (pot.metadata.get("training") or {}).get("initial_model")
    pot.metadata["training"] = {
        **({"initial_model": started} if started else {}),
        "settings": s.to_dict(),
        "member_index": member_index,
        "best_epoch": history.best_epoch,
        "log": history.rows,
    }
    return history


def _checkpoint(
    pot: NNPotential,
    opt: Any,
    rng: np.random.Generator,
    history: TrainingHistory,
    s: TrainingSettings,
    member_dir: Path,
) -> None:
    pot.save(member_dir / "last")
    state = {
        "settings": s.to_dict(),
        "history": history.to_dict(),
        "rng": rng.bit_generator.state,
        "optimizer": opt.state_dict(),
    }
    with atomic_path(member_dir / "last" / "state.pt") as tmp:
        torch.save(state, tmp)
    _write_csv(member_dir / "log.csv", history.rows)


def _member_pool(n: int) -> Any:
    """``n`` worker processes for committee members (spawned: no state shared by fork)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    return ProcessPoolExecutor(max_workers=n, mp_context=multiprocessing.get_context("spawn"))


@contextlib.contextmanager
def _torch_threads(n: int | None) -> Iterator[None]:
    """Torch on ``n`` threads inside the block (None: unchanged)."""
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _train_member_task(
    pot: NNPotential,
    train_frames: list[Atoms],
    test_frames: list[Atoms],
    s: TrainingSettings,
    member_dir: Path | None,
    k: int,
    warm: bool,
    select: bool,
) -> tuple[NNPotential, TrainingHistory]:
    """One member trained in a worker process on one thread: its own descriptor cache of
    the same frames (the parent's is not shared), then :func:`_train_member`. It ends at
    once when the parent dies (a killed run must not leave a writer of its checkpoints)."""
    from nnprefine.parallel import _limit_threads  # torch and numba: what a worker needs

    _exit_with(os.getppid())
    _limit_threads(1)
    train_set, test_set, _ = _prepare_sets(train_frames, test_frames, pot, s)
    history = _train_own_frames(pot, train_set, test_set, s, member_dir, k, None, warm, select)
    return pot, history


def _train_own_frames(
    pot: NNPotential,
    train_set: list[_Frame],
    test_set: list[_Frame],
    s: TrainingSettings,
    member_dir: Path | None,
    k: int,
    progress: Any,
    warm: bool,
    select: bool,
) -> TrainingHistory:
    """Member ``k`` on its own frames of ``train_set`` (:func:`member_frame_indices`)."""
    own = [train_set[i] for i in member_frame_indices(len(train_set), k, s)]
    history = _train_member(pot, own, test_set, s, member_dir, k, progress, warm, select)
    pot.metadata["training"]["distinct_frames"] = len({id(f) for f in own})
    return history


def _exit_with(parent: int) -> None:
    """Exit this process as soon as ``parent`` is no longer its parent (polled, 0.5 s)."""
    import threading

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def _take_weights(pot: NNPotential, trained: NNPotential) -> None:
    """Copy a worker's trained member into the committee's own object."""
    pot.set_weight_arrays(trained.weight_arrays())
    pot.scaling, pot.energy_offsets_eV = trained.scaling, dict(trained.energy_offsets_eV)
    pot.metadata = trained.metadata


def train(
    model: NNPotential | Committee,
    train_frames: Sequence[Atoms],
    test_frames: Sequence[Atoms],
    settings: TrainingSettings | None = None,
    log_dir: str | Path | None = None,
) -> TrainingHistory | list[TrainingHistory]:
    """Fit scaling and energy offsets on ``train_frames``, then train every member.

    With ``settings.warm_start`` and a member 1 that was trained before, scaling and
    offsets are kept and every member trained before continues from its weights (output
    bias included); a fresh member beside it starts from new weights on member 1's
    scaling.

    train_frames, test_frames: labelled ``Atoms`` (energy eV, forces eV/Å on ``.calc``);
    see :func:`split_frames`. Returns the history (a list for a committee). The model is
    changed in place and ends with its best-on-test weights. See the module docstring for
    checkpoints and resuming.
    """
    s = settings or TrainingSettings()
    members = model.members if isinstance(model, Committee) else [model]
    if not train_frames:
        raise DatasetError("no training frames; label some structures first")
    torch.manual_seed(s.seed)
    pot0 = members[0]
    train_set, test_set, budget = _prepare_sets(train_frames, test_frames, pot0, s)
    select = _test_set_selects(len(train_set), len(test_set))
    log_path = Path(log_dir) if log_dir is not None else None
    notes = [
        f"Jacobian cache: {budget.cached} frames ({budget.bytes_used / 2**20:.0f} MiB, "
        f"{s.jacobian_dtype}), {budget.on_the_fly} on the fly"
        + (
            f" (jacobian_cache_GiB = {s.jacobian_cache_GiB:g} is full; raise it for faster epochs)"
            if budget.on_the_fly
            else ""
        )
    ]
    if not select:
        notes.append(
            f"test set of {len(test_set)} frames is below {MIN_TEST_FRAMES} frames or "
            f"{MIN_TEST_FRACTION:.0%} of the data: keeping the last weights, no early stop"
        )
    if log_path is not None:
        log_path.mkdir(parents=True, exist_ok=True)
        (log_path / "settings.json").write_text(json.dumps(s.to_dict(), indent=1) + "\n")
    for note in notes:
        _log(s, log_path, note)
    # a member continues when it was trained before; inputs are kept when member 1 was
    # (a fresh member beside it, as with network.initial_model, takes member 1's scaling)
    warm = [s.warm_start and "training" in pot.metadata for pot in members]
    warm = [warm[0] and w for w in warm]
    if not warm[0]:
        _fit_inputs(pot0, train_set, s)
    for pot in members[1:]:
        pot.scaling, pot.energy_offsets_eV = pot0.scaling, dict(pot0.energy_offsets_eV)
    histories = []
    progress = None
    if not s.quiet:
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

        progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total} frames"),
            TimeRemainingColumn(),
            transient=True,
        )
        progress.start()
    member_dirs = [
        None if log_path is None else log_path / f"member_{k:03d}" for k in range(len(members))
    ]
    for d in member_dirs:
        if d is not None:
            d.mkdir(exist_ok=True)
    import multiprocessing

    workers = min(len(members), s.parallel_members or (os.cpu_count() or 1))
    if multiprocessing.current_process().daemon:
        workers = 1  # a daemonic process (a pool's worker) may not start processes
    # members 1.. in worker processes, member 0 here meanwhile (see _train_member_task)
    pool = _member_pool(workers - 1) if workers > 1 else None
    try:
        pending = {}
        if pool is not None:
            quiet = dataclasses.replace(s, quiet=True)
            for k in range(1, len(members)):
                pending[k] = pool.submit(
                    _train_member_task,
                    members[k],
                    list(train_frames),
                    list(test_frames),
                    quiet,
                    member_dirs[k],
                    k,
                    warm[k],
                    select,
                )
        with _torch_threads(1 if pool is not None else None):
            for k, pot in enumerate(members):
                if k in pending:
                    continue
                histories.append(
                    _train_own_frames(
                        pot, train_set, test_set, s, member_dirs[k], k, progress, warm[k], select
                    )
                )
        for k, future in pending.items():
            trained, history = future.result()
            _take_weights(members[k], trained)
            histories.insert(k, history)
            _log(s, log_path, f"member {k + 1} trained in a worker process")
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
        if progress is not None:
            progress.stop()
    cache = {"frames": budget.cached, "on_the_fly": budget.on_the_fly, "bytes": budget.bytes_used}
    for pot in members:
        pot.metadata["training"]["jacobian_cache"] = cache
    return histories if isinstance(model, Committee) else histories[0]
