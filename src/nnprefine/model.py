"""Behler–Parrinello neural-network potentials and committees of them.

The energy of a structure is a sum of atomic energies, one network per element,

    E = Σ_i [ NN_{Z_i}(x_i) + E_ref(Z_i) ]  (+ E_ZBL, optional short-range baseline),

where x_i are atom i's symmetry functions G_i after min/max scaling (n2p2 conventions,
statistics from the training set, stored with the model). Forces are exactly −∂E/∂r:
the networks give ∂E/∂G by backpropagation, the descriptor's second pass turns it into
forces without ever storing ∂G/∂r.

Public names:

- :class:`NNPotential` — one model; ``energy_forces(atoms)``, ``save``/``load``.
- :class:`Committee` — N models of identical topology, different seeded initial
  weights; ``evaluate(atoms)`` shares the descriptor values and neighbour list.
- :func:`disagreement` — the committee metrics, the one place they are computed.
- :class:`ZBLBaseline`, :class:`ElementNetwork`; :class:`InputScaling` (defined in
  :mod:`nnprefine.descriptors.scaling`, importable from here).

Units: eV, Å. Arrays are float64.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ase import Atoms
from ase.data import chemical_symbols

from nnprefine import __version__
from nnprefine.common import recover_directory_swap
from nnprefine.descriptors import Descriptor, Neighbours, SymmetryFunctionSet
from nnprefine.descriptors.scaling import InputScaling
from nnprefine.errors import ModelError, NonFiniteModelOutputError, UnsupportedElementError

__all__ = [
    "ACTIVATIONS",
    "Committee",
    "CommitteeResult",
    "Disagreement",
    "ElementNetwork",
    "InputScaling",
    "NNPotential",
    "ZBLBaseline",
    "disagreement",
    "load_model",
]

#: Version of the on-disk format written by :meth:`NNPotential.save`.
FORMAT_VERSION = 1


def _np_softplus(z: np.ndarray) -> np.ndarray:
    return np.logaddexp(0.0, z)


def _np_logistic(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def _torch_softplus(z: torch.Tensor) -> torch.Tensor:
    # torch's softplus switches to the identity above x = 20; numpy and n2p2 do not.
    return torch.logaddexp(torch.zeros((), dtype=z.dtype), z)


@dataclass(frozen=True)
class Activation:
    """One activation function: its name, n2p2 letter, and numpy/torch implementations."""

    name: str
    n2p2_letter: str
    f: Callable[[np.ndarray], np.ndarray]
    df: Callable[[np.ndarray], np.ndarray]
    torch_f: Callable[[torch.Tensor], torch.Tensor]


ACTIVATIONS: dict[str, Activation] = {
    a.name: a
    for a in (
        Activation("linear", "l", lambda z: z, np.ones_like, lambda z: z),
        Activation("tanh", "t", np.tanh, lambda z: 1.0 - np.tanh(z) ** 2, torch.tanh),
        Activation(
            "logistic",
            "s",
            _np_logistic,
            lambda z: _np_logistic(z) * _np_logistic(-z),
            torch.sigmoid,
        ),
        Activation("softplus", "p", _np_softplus, _np_logistic, _torch_softplus),
        Activation(
            "relu", "r", lambda z: np.maximum(z, 0.0), lambda z: (z > 0).astype(z.dtype), torch.relu
        ),
        Activation(
            "gaussian",
            "g",
            lambda z: np.exp(-0.5 * z * z),
            lambda z: -z * np.exp(-0.5 * z * z),
            lambda z: torch.exp(-0.5 * z * z),
        ),
    )
}


def activation_by_letter(letter: str) -> Activation:
    """The activation with n2p2 letter ``letter`` (``l t s p r g``)."""
    for a in ACTIVATIONS.values():
        if a.n2p2_letter == letter:
            return a
    supported = " ".join(a.n2p2_letter for a in ACTIVATIONS.values())
    raise ModelError(f"n2p2 activation {letter!r} is not supported; supported: {supported}")


def get_activation(name: str) -> Activation:
    """The activation called ``name`` (``softplus``, ``tanh``, ...)."""
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ModelError(
            f"unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}"
        ) from None


class ElementNetwork(torch.nn.Module):
    """A float64 multilayer perceptron n_inputs -> hidden... -> 1, linear output.

    Parameters
    ----------
    n_inputs: number of symmetry functions of the element.
    hidden: neurons per hidden layer, e.g. ``(30, 30)``.
    activation: name of the hidden-layer activation (see :data:`ACTIVATIONS`).
    rng: generator for the initial weights (uniform, Glorot-scaled, output layer
        scaled down so that untrained atomic energies are O(0.1 eV)).
    """

    def __init__(
        self,
        n_inputs: int,
        hidden: Sequence[int],
        activation: str,
        rng: np.random.Generator,
    ) -> None:
        super().__init__()
        if n_inputs < 1 or any(int(h) < 1 for h in hidden):
            raise ModelError(
                f"network sizes must be positive, got inputs={n_inputs}, hidden={tuple(hidden)}"
            )
        self.n_inputs = int(n_inputs)
        self.hidden = tuple(int(h) for h in hidden)
        self.activation = get_activation(activation)
        sizes = [self.n_inputs, *self.hidden, 1]
        self.layers = torch.nn.ModuleList()
        for k, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
            layer = torch.nn.Linear(n_in, n_out, dtype=torch.float64)
            limit = np.sqrt(6.0 / (n_in + n_out))
            if k == len(sizes) - 2:
                limit *= 0.1
            w = rng.uniform(-limit, limit, size=(n_out, n_in))
            with torch.no_grad():
                layer.weight.copy_(torch.from_numpy(w))
                layer.bias.zero_()
            self.layers.append(layer)

    @property
    def sizes(self) -> tuple[int, ...]:
        """Neurons per layer, input to output, e.g. (53, 30, 30, 1)."""
        return (self.n_inputs, *self.hidden, 1)

    @property
    def n_weights(self) -> int:
        """Number of weights and biases."""
        return sum(p.numel() for p in self.parameters())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Atomic energies (n_atoms,) eV of scaled inputs ``x`` (n_atoms, n_inputs)."""
        h = x
        last = len(self.layers) - 1
        for k, layer in enumerate(self.layers):
            h = layer(h)
            if k < last:
                h = self.activation.torch_f(h)
        return h[:, 0]

    def arrays(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """(W (n_out, n_in), b (n_out,)) per layer, float64 numpy views of the parameters."""
        return [
            (layer.weight.detach().numpy(), layer.bias.detach().numpy()) for layer in self.layers
        ]

    def set_arrays(self, arrays: Sequence[tuple[np.ndarray, np.ndarray]]) -> None:
        """Overwrite the parameters from (W, b) pairs of matching shapes."""
        if len(arrays) != len(self.layers):
            raise ModelError(f"expected {len(self.layers)} layers of weights, got {len(arrays)}")
        with torch.no_grad():
            for layer, (w, b) in zip(self.layers, arrays, strict=True):
                if tuple(np.shape(w)) != tuple(layer.weight.shape) or tuple(np.shape(b)) != tuple(
                    layer.bias.shape
                ):
                    raise ModelError(
                        f"weight shapes {np.shape(w)}, {np.shape(b)} do not fit layer "
                        f"{tuple(layer.weight.shape)}; the architecture differs"
                    )
                layer.weight.copy_(torch.as_tensor(np.asarray(w, dtype=np.float64)))
                layer.bias.copy_(torch.as_tensor(np.asarray(b, dtype=np.float64)))

    def energy_and_gradient(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Atomic energies and their gradient with respect to the inputs, in numpy.

        x: (n_atoms, n_inputs) float64, scaled symmetry functions.
        Returns E (n_atoms,) eV and dE/dx (n_atoms, n_inputs) eV.
        """
        arrays = self.arrays()
        act = self.activation
        h = x
        pre: list[np.ndarray] = []
        last = len(arrays) - 1
        for k, (w, b) in enumerate(arrays):
            z = h @ w.T + b
            if k < last:
                pre.append(z)
                h = act.f(z)
            else:
                h = z
        energies = h[:, 0].copy()
        g = np.broadcast_to(arrays[-1][0], (x.shape[0], arrays[-1][0].shape[1]))
        for k in range(last - 1, -1, -1):
            g = (g * act.df(pre[k])) @ arrays[k][0]
        return energies, np.ascontiguousarray(g)


# --------------------------------------------------------------------------- ZBL baseline

# LAMMPS `pair_style zbl` constants (metal units), so that `hybrid/overlay hdnnp ... zbl`
# reproduces this baseline exactly.
_QQR2E_EV_A = 14.399645
_ZBL_A0_A = 0.46850
_ZBL_C = np.array([0.02817, 0.28022, 0.50986, 0.18175])
_ZBL_D = np.array([0.20162, 0.40290, 0.94229, 3.19980])


@dataclass(frozen=True)
class ZBLBaseline:
    """ZBL screened-Coulomb pair repulsion, switched off exactly as LAMMPS's ``pair_style zbl``.

    E = Σ_{i<j} [φ(r_ij) + S(r_ij)] for r_ij < r_outer_A, with φ the ZBL universal
    potential and S LAMMPS's (GROMACS-type) switch: S = C for r < r_inner_A and
    S = A/3 (r − r1)³ + B/4 (r − r1)⁴ + C between r_inner_A and r_outer_A, chosen so that
    energy, force and curvature vanish at r_outer_A. With a baseline the networks learn
    reference − ZBL; in LAMMPS use ``pair_style hybrid/overlay hdnnp <rc> ... zbl
    <r_inner_A> <r_outer_A>`` with ``pair_coeff * * zbl Z Z`` per type pair.
    """

    r_inner_A: float = 1.0
    r_outer_A: float = 2.0

    def __post_init__(self) -> None:
        if not 0 < self.r_inner_A < self.r_outer_A:
            raise ModelError(
                f"ZBL switch needs 0 < r_inner_A < r_outer_A, got {self.r_inner_A}, "
                f"{self.r_outer_A}"
            )

    @staticmethod
    def _phi(r: np.ndarray, z1: np.ndarray, z2: np.ndarray) -> tuple[np.ndarray, ...]:
        """φ, φ', φ'' (eV, eV/Å, eV/Å²) at distances r (Å) for charges z1, z2."""
        a = _ZBL_A0_A / (z1**0.23 + z2**0.23)
        k = _QQR2E_EV_A * z1 * z2
        b = _ZBL_D[None, :] / a[..., None]
        e = _ZBL_C[None, :] * np.exp(-b * r[..., None])
        s0, s1, s2 = e.sum(-1), -(b * e).sum(-1), (b * b * e).sum(-1)
        phi = k * s0 / r
        dphi = k * (s1 / r - s0 / r**2)
        d2phi = k * (s2 / r - 2 * s1 / r**2 + 2 * s0 / r**3)
        return phi, dphi, d2phi

    def pair_energy_derivative(
        self, r: np.ndarray, z1: np.ndarray, z2: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Switched pair energy (eV) and its r-derivative (eV/Å); zero beyond r_outer_A."""
        r = np.asarray(r, dtype=np.float64)
        z1 = np.broadcast_to(np.asarray(z1, dtype=np.float64), r.shape)
        z2 = np.broadcast_to(np.asarray(z2, dtype=np.float64), r.shape)
        r1, rc = self.r_inner_A, self.r_outer_A
        d = rc - r1
        ec, dec, d2ec = self._phi(np.full(r.shape, rc), z1, z2)
        sa = (-3 * dec + d * d2ec) / d**2
        sb = (2 * dec - d * d2ec) / d**3
        sc = -ec + 0.5 * d * dec - d * d * d2ec / 12
        phi, dphi, _ = self._phi(np.maximum(r, 1e-6), z1, z2)
        x = np.clip(r - r1, 0.0, None)
        energy = phi + sa / 3 * x**3 + sb / 4 * x**4 + sc
        deriv = dphi + sa * x**2 + sb * x**3
        inside = r < rc
        return np.where(inside, energy, 0.0), np.where(inside, deriv, 0.0)

    def energy_forces(self, atoms: Atoms) -> tuple[float, np.ndarray]:
        """Baseline energy (eV) and forces (n_atoms, 3) eV/Å of ``atoms``."""
        energy, forces, _ = self.energy_forces_virial(atoms)
        return energy, forces

    def energy_forces_virial(self, atoms: Atoms) -> tuple[float, np.ndarray, np.ndarray]:
        """Energy (eV), forces (n_atoms, 3) eV/Å and Σ_pairs ∂E/∂ε (3, 3) eV of ``atoms``:
        the strain derivative, so that ASE's stress is it divided by the volume."""
        from vesin import NeighborList

        n = len(atoms)
        forces = np.zeros((n, 3))
        strain = np.zeros((3, 3))
        if n < 2:
            return 0.0, forces, strain
        pbc = atoms.pbc
        box = atoms.cell.array if np.any(pbc) else np.zeros((3, 3))
        i, j, vec = NeighborList(cutoff=self.r_outer_A, full_list=False).compute(
            points=atoms.positions,
            box=box,
            periodic=np.asarray(pbc, dtype=bool),
            quantities="ijD",
        )
        if len(i) == 0:
            return 0.0, forces, strain
        r = np.linalg.norm(vec, axis=1)
        z = atoms.numbers.astype(np.float64)
        e, de = self.pair_energy_derivative(r, z[i], z[j])
        fij = (de / r)[:, None] * vec  # vec = r_j − r_i: force on i is +dE/dr · vec/r
        np.add.at(forces, i, fij)
        np.add.at(forces, j, -fij)
        # ∂r/∂ε_ab = vec_a vec_b / r
        return float(e.sum()), forces, vec.T @ fij

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "zbl", "r_inner_A": self.r_inner_A, "r_outer_A": self.r_outer_A}


# --------------------------------------------------------------------------- potential


_SYMBOLS = np.array(chemical_symbols)


def _symbols_check(atoms: Atoms, elements: Sequence[str]) -> np.ndarray:
    """Element symbols (n_atoms,) of ``atoms``; error if one is not covered."""
    symbols = _SYMBOLS[atoms.numbers]  # vectorised: no Python list of n_atoms strings
    unknown = sorted(set(_SYMBOLS[np.unique(atoms.numbers)].tolist()) - set(elements))
    if unknown:
        raise UnsupportedElementError(
            f"the model covers {list(elements)} but the structure holds {unknown}; "
            "train a model that includes these elements"
        )
    return symbols


def _fsum(x: np.ndarray) -> float:
    return float(math.fsum(np.asarray(x, dtype=np.float64).ravel()))


class NNPotential:
    """A Behler–Parrinello potential: one :class:`ElementNetwork` per element.

    Parameters
    ----------
    sfset: the symmetry-function set (defines elements, inputs and cutoff).
    hidden: neurons per hidden layer; the paper's network is 53-30-30-1, ``(30, 30)``.
    activation: hidden-layer activation name (``softplus`` as in the paper).
    seed: seed of the initial weights (numpy ``default_rng``).
    scaling: input scaling; ``None`` until :mod:`nnprefine.training` fits it.
    energy_offsets_eV: per-element reference energy added per atom (eV), e.g. ≈ −3.3
        for Be with SNAP labels, so the networks only learn the remainder.
    baseline: optional :class:`ZBLBaseline`, added to the network energy.
    skin_A: Verlet skin of the descriptor's neighbour list (Å).
    """

    def __init__(
        self,
        sfset: SymmetryFunctionSet,
        hidden: Sequence[int] = (30, 30),
        activation: str = "softplus",
        seed: int = 0,
        *,
        scaling: InputScaling | None = None,
        energy_offsets_eV: Mapping[str, float] | None = None,
        baseline: ZBLBaseline | None = None,
        skin_A: float = 1.0,
    ) -> None:
        self.sfset = sfset
        self.elements: tuple[str, ...] = tuple(sfset.elements)
        self.hidden = tuple(int(h) for h in hidden)
        self.activation = get_activation(activation).name
        self.seed = int(seed)
        rng = np.random.default_rng(self.seed)
        self.networks: dict[str, ElementNetwork] = {
            el: ElementNetwork(sfset.n_functions(el), self.hidden, self.activation, rng)
            for el in self.elements
        }
        self.scaling = scaling if scaling is not None else InputScaling(mode="none")
        self.energy_offsets_eV = {el: 0.0 for el in self.elements}
        if energy_offsets_eV:
            self.set_energy_offsets(energy_offsets_eV)
        self.baseline = baseline
        self.skin_A = float(skin_A)
        self.descriptor = Descriptor(sfset, skin_A=self.skin_A)
        #: free-form record (training history, provenance) saved with the model.
        self.metadata: dict[str, Any] = {}

    # ---- configuration -------------------------------------------------------------
    def set_energy_offsets(self, offsets_eV: Mapping[str, float]) -> None:
        """Set per-element reference energies (eV/atom)."""
        for el, v in offsets_eV.items():
            if el not in self.elements:
                raise ModelError(f"energy offset for {el}, which the model does not cover")
            self.energy_offsets_eV[el] = float(v)

    def input_affine(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Per element (a, c), each (max_functions,): x = a·G + c, zero-padded."""
        n_max = self.sfset.max_functions
        out = {}
        for el in self.elements:
            n = self.sfset.n_functions(el)
            a, c = self.scaling.affine(el, n)
            a_pad, c_pad = np.zeros(n_max), np.zeros(n_max)
            a_pad[:n], c_pad[:n] = a, c
            out[el] = (a_pad, c_pad)
        return out

    @property
    def architecture(self) -> dict[str, Any]:
        """Layer sizes per element and activation, e.g. {'Be': [53, 30, 30, 1], ...}."""
        return {
            "hidden": list(self.hidden),
            "activation": self.activation,
            "sizes": {el: list(net.sizes) for el, net in self.networks.items()},
        }

    @property
    def r_cut_A(self) -> float:
        """Interaction range (Å): the symmetry-function cutoff."""
        return float(self.sfset.r_cut)

    # ---- evaluation ----------------------------------------------------------------
    def atomic_energies_from_values(
        self, symbols: np.ndarray, values: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Network atomic energies and ∂E/∂G from unscaled symmetry functions.

        symbols: (n_atoms,) element symbols; values: (n_atoms, max_functions) float64 G.
        Returns E_i (n_atoms,) eV (offsets included, baseline not) and ∂E/∂G
        (n_atoms, max_functions) eV.
        """
        n_atoms = values.shape[0]
        energies = np.zeros(n_atoms)
        dedg = np.zeros_like(values)
        affine = self.input_affine()
        for el in self.elements:
            mask = symbols == el
            if not mask.any():
                continue
            n = self.sfset.n_functions(el)
            a, c = affine[el]
            x = values[mask, :n] * a[:n] + c[:n]
            e, g = self.networks[el].energy_and_gradient(x)
            energies[mask] = e + self.energy_offsets_eV[el]
            dedg[mask, :n] = g * a[:n]
        return energies, dedg

    def evaluate(
        self, atoms: Atoms, neighbours: Neighbours | None = None, *, forces: bool = True
    ) -> dict[str, Any]:
        """Energy (eV), atomic energies (n_atoms,) eV, forces (n_atoms, 3) eV/Å, and the
        unscaled symmetry-function values they came from (``values``, (n_atoms,
        max_functions)).

        ``neighbours`` from ``self.descriptor.neighbours(atoms)`` may be passed to reuse a
        neighbour list; otherwise one is built.
        """
        symbols = _symbols_check(atoms, self.elements)
        if neighbours is None:
            neighbours = self.descriptor.neighbours(atoms)
        values = self.descriptor.values(atoms, neighbours=neighbours)
        energies, dedg = self.atomic_energies_from_values(symbols, values)
        out: dict[str, Any] = {"energies": energies, "values": values}
        if forces:
            out["forces"], out["virial"] = self.descriptor.forces(
                atoms, dedg, neighbours=neighbours
            )
        if self.baseline is not None:
            e_b, f_b = self.baseline.energy_forces(atoms)
            out["baseline_energy"] = e_b
            if forces:
                out["forces"] = out["forces"] + f_b
        else:
            e_b = 0.0
        out["energy"] = _fsum(energies) + e_b
        _check_finite(out, atoms)
        return out

    def energy(self, atoms: Atoms) -> float:
        """Total energy (eV)."""
        return self.evaluate(atoms, forces=False)["energy"]

    def energy_forces(
        self, atoms: Atoms, neighbours: Neighbours | None = None
    ) -> tuple[float, np.ndarray]:
        """Total energy (eV) and forces (n_atoms, 3) eV/Å."""
        out = self.evaluate(atoms, neighbours)
        return out["energy"], out["forces"]

    # ---- persistence ---------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description of everything but the weights."""
        return {
            "format_version": FORMAT_VERSION,
            "kind": "nnprefine.NNPotential",
            "nnprefine_version": __version__,
            "elements": list(self.elements),
            "symmetry_functions": self.sfset.to_dict(),
            "architecture": self.architecture,
            "seed": self.seed,
            "scaling": self.scaling.to_dict(),
            "energy_offsets_eV": dict(self.energy_offsets_eV),
            "baseline": None if self.baseline is None else self.baseline.to_dict(),
            "skin_A": self.skin_A,
            "metadata": self.metadata,
        }

    def fingerprint(self) -> str:
        """sha256 (hex, 16 characters) of what determines the potential's output.

        Covers the weights, symmetry functions, scaling, energy offsets and baseline, not
        the metadata or the code version: equal fingerprints give equal energies.
        """
        d = self.to_dict()
        for k in ("nnprefine_version", "metadata", "seed"):
            d.pop(k)
        h = hashlib.sha256(json.dumps(_as_floats(d), sort_keys=True, default=str).encode())
        for name, arr in sorted(self.weight_arrays().items()):
            h.update(name.encode())
            h.update(np.ascontiguousarray(arr, dtype=np.float64).tobytes())
        return h.hexdigest()[:16]

    def weight_arrays(self) -> dict[str, np.ndarray]:
        """Weights keyed ``"<element>/W<k>"``, ``"<element>/b<k>"`` (layer k from 0)."""
        out = {}
        for el, net in self.networks.items():
            for k, (w, b) in enumerate(net.arrays()):
                out[f"{el}/W{k}"] = w.copy()
                out[f"{el}/b{k}"] = b.copy()
        return out

    def set_weight_arrays(self, arrays: Mapping[str, np.ndarray]) -> None:
        """Inverse of :meth:`weight_arrays`."""
        for el, net in self.networks.items():
            try:
                pairs = [
                    (arrays[f"{el}/W{k}"], arrays[f"{el}/b{k}"]) for k in range(len(net.layers))
                ]
            except KeyError as exc:
                raise ModelError(f"weights for {el} are missing: no {exc.args[0]}") from None
            net.set_arrays(pairs)

    def copy(self) -> NNPotential:
        """An independent copy (weights, scaling, offsets and metadata)."""
        return NNPotential.from_dict(self.to_dict(), self.weight_arrays())

    @classmethod
    def from_dict(
        cls, d: Mapping[str, Any], weights: Mapping[str, np.ndarray] | None = None
    ) -> NNPotential:
        """Build from :meth:`to_dict` output (and weights, else freshly seeded)."""
        if d.get("kind") != "nnprefine.NNPotential":
            raise ModelError(f"not an nnprefine model description (kind={d.get('kind')!r})")
        if int(d.get("format_version", -1)) > FORMAT_VERSION:
            raise ModelError(
                f"model format version {d['format_version']} is newer than this nnprefine "
                f"reads ({FORMAT_VERSION}); upgrade nnprefine"
            )
        sfset = SymmetryFunctionSet.from_dict(d["symmetry_functions"])
        base = d.get("baseline")
        pot = cls(
            sfset,
            hidden=d["architecture"]["hidden"],
            activation=d["architecture"]["activation"],
            seed=d["seed"],
            scaling=InputScaling.from_dict(d["scaling"]),
            energy_offsets_eV=d["energy_offsets_eV"],
            baseline=None if base is None else ZBLBaseline(base["r_inner_A"], base["r_outer_A"]),
            skin_A=d.get("skin_A", 1.0),
        )
        pot.metadata = dict(d.get("metadata", {}))
        if weights is not None:
            pot.set_weight_arrays(weights)
        return pot

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write ``model.json`` + ``weights.npz`` into ``directory`` (replaced atomically)."""
        directory = Path(directory)

        meta = {**self.to_dict(), "self_check": {"energy_eV": self._self_check_energy()}}

        def write(tmp: Path) -> None:
            (tmp / "model.json").write_text(json.dumps(meta, indent=1) + "\n")
            np.savez(tmp / "weights.npz", **self.weight_arrays())

        _atomic_dir_write(directory, write)
        return directory

    def _self_check_energy(self) -> float:
        """Energy (eV) of a fixed small cluster of the model's elements: stored with the
        model, recomputed at load, so weights that are not the saved ones are refused."""
        return float(self.evaluate(_check_cluster(self.elements), forces=False)["energy"])

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> NNPotential:
        """Read a directory written by :meth:`save`."""
        directory = Path(directory)
        recover_directory_swap(directory)
        meta = _read_json(directory / "model.json")
        try:
            with np.load(directory / "weights.npz") as z:
                weights = {k: z[k] for k in z.files}
        except FileNotFoundError:
            raise ModelError(
                f"{directory / 'weights.npz'} is missing; the model is incomplete"
            ) from None
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
            raise ModelError(
                f"{directory / 'weights.npz'} is not a readable weights file ({exc}); the "
                "model is damaged: retrain it, or restore the folder from a backup"
            ) from None
        try:
            pot = cls.from_dict(meta, weights)
        except (KeyError, TypeError) as exc:
            raise ModelError(
                f"{directory / 'model.json'} lacks or garbles {exc} (e.g. its symmetry "
                "functions); the model is damaged: retrain it, or restore the folder"
            ) from None
        check = meta.get("self_check")
        if check is not None:
            e_saved = float(check["energy_eV"])
            e_now = pot._self_check_energy()
            if not abs(e_now - e_saved) <= 1e-6 + 1e-9 * abs(e_saved):
                raise ModelError(
                    f"{directory} does not reproduce its own check: the saved weights gave "
                    f"{e_saved:.9g} eV on the check cluster, these give {e_now:.9g} eV; "
                    "weights.npz was changed or belongs to another model — retrain it, or "
                    "restore the folder from a backup"
                )
        return pot


def _check_cluster(elements: Sequence[str]) -> Atoms:
    """A fixed non-periodic cluster of two atoms per element, 2.0–2.6 Å apart (within
    every cutoff), the same on every machine: the structure of a model's self-check."""
    symbols = [el for el in elements for _ in range(2)]
    positions = [(2.3 * k, 0.3 * (k % 2), 0.2 * (k % 3)) for k in range(len(symbols))]
    return Atoms(symbols=symbols, positions=positions)


def _check_finite(out: Mapping[str, Any], atoms: Atoms) -> None:
    if not np.isfinite(out["energy"]) or (
        "forces" in out and not np.all(np.isfinite(out["forces"]))
    ):
        raise NonFiniteModelOutputError(
            f"the model gave a non-finite energy or force for {atoms.get_chemical_formula()}; "
            "check for overlapping atoms or inputs far outside the training range"
        )


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ModelError(f"{path} does not exist; pass a directory written by save()") from None
    except json.JSONDecodeError as exc:
        raise ModelError(f"{path} is not valid JSON (line {exc.lineno}): {exc.msg}") from None


def _atomic_dir_write(directory: Path, write: Callable[[Path], None]) -> None:
    """Write a directory via a temporary sibling, then swap it in place (two renames; a
    kill between them is repaired by :func:`~nnprefine.common.recover_directory_swap` on
    the next read or write)."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    recover_directory_swap(directory)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        write(tmp)
        if directory.exists():
            old = directory.with_name(f".{directory.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(directory, old)
            os.replace(tmp, directory)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, directory)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# --------------------------------------------------------------------------- committee


@dataclass(frozen=True)
class Disagreement:
    """Committee disagreement of one structure.

    energy_disagreement_eV_per_atom: max over member pairs of |E_a − E_b| / n_atoms
        (for two members, the paper's |E(NNP1) − E(NNP2)| per atom).
    force_disagreement_eV_per_A: max over member pairs, atoms and x, y, z of
        |F_a − F_b| (the paper's force criterion).
    force_std_eV_per_A: DP-GEN's max over atoms of sqrt(mean over members of |F_m − F̄|²).
    energy_std_eV_per_atom: standard deviation of the member energies, per atom.
    """

    energy_disagreement_eV_per_atom: float
    force_disagreement_eV_per_A: float
    force_std_eV_per_A: float
    energy_std_eV_per_atom: float

    def as_dict(self) -> dict[str, float]:
        return {k: float(getattr(self, k)) for k in self.__dataclass_fields__}


def disagreement(energies_eV: np.ndarray, forces_eV_per_A: np.ndarray) -> Disagreement:
    """Committee metrics from member predictions — the one place they are computed.

    energies_eV: (n_members,) total energies, eV.
    forces_eV_per_A: (n_members, n_atoms, 3) forces, eV/Å.
    """
    e = np.asarray(energies_eV, dtype=np.float64)
    f = np.asarray(forces_eV_per_A, dtype=np.float64)
    if e.ndim != 1 or f.ndim != 3 or f.shape[0] != e.shape[0] or f.shape[2] != 3:
        raise ModelError(
            f"disagreement needs energies (M,) and forces (M, n_atoms, 3); got {e.shape}, {f.shape}"
        )
    n_atoms = max(f.shape[1], 1)
    if e.shape[0] < 2:
        return Disagreement(0.0, 0.0, 0.0, 0.0)
    de = float(e.max() - e.min()) / n_atoms  # max pairwise |E_a − E_b|
    df = float((f.max(axis=0) - f.min(axis=0)).max()) if f.shape[1] else 0.0
    dev = f - f.mean(axis=0)
    std = float(np.sqrt((dev**2).sum(axis=2).mean(axis=0)).max()) if f.shape[1] else 0.0
    return Disagreement(de, df, std, float(e.std()) / n_atoms)


@dataclass(frozen=True)
class CommitteeResult:
    """Every member's prediction for one structure, and their disagreement.

    energies_eV: (n_members,); forces_eV_per_A: (n_members, n_atoms, 3);
    atomic_energies_eV: (n_members, n_atoms).
    """

    energies_eV: np.ndarray
    forces_eV_per_A: np.ndarray
    atomic_energies_eV: np.ndarray
    metrics: Disagreement


def _as_floats(obj: Any) -> Any:
    """``obj`` with every number as a float (a loaded -1.0 and a fresh -1 hash alike)."""
    if isinstance(obj, dict):
        return {k: _as_floats(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_as_floats(v) for v in obj]
    if isinstance(obj, int | float | np.number) and not isinstance(obj, bool):
        return float(obj)
    return obj


class Committee:
    """N ≥ 2 potentials with identical topology and symmetry functions.

    Members differ by their initial weights (seeded) and training. ``evaluate`` computes
    the descriptor once and runs every member on it.
    """

    def __init__(self, members: Sequence[NNPotential]) -> None:
        members = list(members)
        if len(members) < 2:
            raise ModelError(f"a committee needs at least 2 members, got {len(members)}")
        ref = members[0]
        for m in members[1:]:
            if m.sfset.to_dict() != ref.sfset.to_dict():
                raise ModelError("committee members must share one symmetry-function set")
            if m.architecture != ref.architecture:
                raise ModelError(
                    f"committee members must share the architecture: {m.architecture} vs "
                    f"{ref.architecture}"
                )
            if (m.baseline is None) != (ref.baseline is None) or (
                m.baseline is not None and m.baseline != ref.baseline
            ):
                raise ModelError("committee members must share the short-range baseline")
        self.members = members

    @classmethod
    def create(
        cls,
        sfset: SymmetryFunctionSet,
        n_members: int = 2,
        hidden: Sequence[int] = (30, 30),
        activation: str = "softplus",
        seed: int = 0,
        **kwargs: Any,
    ) -> Committee:
        """``n_members`` fresh models; member m is seeded with ``seed + m``."""
        return cls(
            [NNPotential(sfset, hidden, activation, seed + m, **kwargs) for m in range(n_members)]
        )

    def __len__(self) -> int:
        return len(self.members)

    def __getitem__(self, index: int) -> NNPotential:
        return self.members[index]

    @property
    def descriptor(self) -> Descriptor:
        """The shared descriptor (member 0's)."""
        return self.members[0].descriptor

    @property
    def elements(self) -> tuple[str, ...]:
        return self.members[0].elements

    def fingerprint(self) -> str:
        """sha256 (hex, 16 characters) of the members' fingerprints, in order."""
        text = "|".join(m.fingerprint() for m in self.members)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def evaluate(self, atoms: Atoms, neighbours: Neighbours | None = None) -> CommitteeResult:
        """All members on ``atoms``, sharing neighbour list and symmetry functions."""
        symbols = _symbols_check(atoms, self.elements)
        d = self.descriptor
        if neighbours is None:
            neighbours = d.neighbours(atoms)
        values = d.values(atoms, neighbours=neighbours)
        base = self.members[0].baseline
        e_b, f_b = base.energy_forces(atoms) if base is not None else (0.0, 0.0)
        energies, forces, atomic = [], [], []
        for m in self.members:
            ei, dedg = m.atomic_energies_from_values(symbols, values)
            f, _ = d.forces(atoms, dedg, neighbours=neighbours)
            out = {"energy": _fsum(ei) + e_b, "forces": f + f_b}
            _check_finite(out, atoms)
            energies.append(out["energy"])
            forces.append(out["forces"])
            atomic.append(ei)
        e_arr, f_arr = np.array(energies), np.array(forces)
        return CommitteeResult(e_arr, f_arr, np.array(atomic), disagreement(e_arr, f_arr))

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """``committee.json`` plus one ``member_XXX`` model directory per member."""
        directory = Path(directory)

        def write(tmp: Path) -> None:
            meta = {
                "format_version": FORMAT_VERSION,
                "kind": "nnprefine.Committee",
                "nnprefine_version": __version__,
                "n_members": len(self.members),
                "members": [f"member_{k:03d}" for k in range(len(self.members))],
            }
            (tmp / "committee.json").write_text(json.dumps(meta, indent=1) + "\n")
            for name, m in zip(meta["members"], self.members, strict=True):
                m.save(tmp / name)

        _atomic_dir_write(directory, write)
        return directory

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> Committee:
        """Read a directory written by :meth:`save`."""
        directory = Path(directory)
        recover_directory_swap(directory)
        meta = _read_json(directory / "committee.json")
        if meta.get("kind") != "nnprefine.Committee":
            raise ModelError(f"{directory / 'committee.json'} does not describe a committee")
        return cls([NNPotential.load(directory / name) for name in meta["members"]])


def load_model(directory: str | os.PathLike[str]) -> NNPotential | Committee:
    """Load a model or a committee directory, whichever it holds."""
    directory = Path(directory)
    recover_directory_swap(directory)
    if (directory / "committee.json").exists():
        return Committee.load(directory)
    return NNPotential.load(directory)
