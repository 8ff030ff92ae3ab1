"""Import and export of n2p2 potentials (``input.nn``, ``scaling.data``, ``weights.XXX.data``).

:func:`write_n2p2` writes a trained :class:`~nnprefine.model.NNPotential` as the three
files that n2p2 (``nnp-predict``) and LAMMPS's ``pair_style hdnnp`` read;
:func:`read_n2p2` reads such a set back, so an existing n2p2 potential runs here.

Conventions (n2p2 documentation, "NNP configuration: keywords" and its example files):

- ``weights.XXX.data``: XXX is the atomic number, zero-padded to three digits. One value
  per line (further columns are informative): for each layer from the input, the weights
  a(l_s, n_s → l_e, n_e) with the start neuron n_s outer and the end neuron n_e inner,
  then the biases of the end layer.
- The network's input neurons follow n2p2's order of symmetry functions, not the order
  of the settings lines: per element sorted by type (2 < 3 < 9), cutoff radius, η, r_s,
  ζ, λ, then neighbour elements by atomic number. ``scaling.data`` rows (element index,
  function index, Gmin, Gmax, Gmean, Gsigma) use the same order; elements are indexed
  from 1 in order of atomic number.
- Activations: ``l`` linear, ``t`` tanh, ``s`` logistic, ``p`` softplus, ``r`` ReLU,
  ``g`` Gaussian. Cutoff types: 1 = cosine (``cutoff_type 1 0.0``).
- ``atom_energy`` is added per atom by n2p2 and by ``pair_style hdnnp``.

Supported ``input.nn`` keywords: ``number_of_elements``, ``elements``, ``atom_energy``,
``cutoff_type``, ``scale_symmetry_functions``, ``center_symmetry_functions``,
``scale_symmetry_functions_sigma``, ``scale_min_short``, ``scale_max_short``,
``global_hidden_layers_short``, ``global_nodes_short``, ``global_activation_short``,
``symfunction_short`` (types 2, 3, 9 as the descriptor supports them), ``nnp_type`` for
the short-range network only (``0`` in n2p2 ≤ 2.3, ``2``/``2G-HDNNP`` later; it is not
written, since every version defaults to it). Checked against n2p2 itself (master,
2026-11-25): ``nnp-predict`` on exported files gives our energies to 1e-15 eV/atom and
forces to 1e-14 eV/Å (docs/benchmarks.md, "n2p2 cross-check").
Training-only keywords of ``nnp-train`` (listed in ``TRAINING_KEYWORDS``) are ignored.
Anything else — e.g. data normalisation (``mean_energy``, ``conv_energy``,
``conv_length``), ``normalize_nodes``, per-element topologies, 4G/charge networks — is
rejected with an error naming the file and line.

With a ZBL baseline (:class:`~nnprefine.model.ZBLBaseline`) the exported networks hold
reference − ZBL; reproduce the model in LAMMPS with::

    pair_style hybrid/overlay hdnnp <rc> dir <dir>/ showew no showewsum 0 resetew no \
        maxew 1000 cflength 1.0 cfenergy 1.0 zbl <r_inner_A> <r_outer_A>
    pair_coeff * * hdnnp Be
    pair_coeff 1 1 zbl 4 4

LAMMPS's ``hdnnp`` takes the cutoff on the ``pair_style`` line and, in ``pair_coeff``,
``* *`` followed by one element per atom type (ML-HDNNP's ``PairHDNNP::coeff``); the
directory is joined to the file names as written, hence the trailing slash.

(``write_n2p2`` also writes these lines to ``lammps.in`` next to the files; without a
baseline, ``pair_style hdnnp ...`` and ``pair_coeff * * Be``; docs/lammps.md).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from ase.data import atomic_numbers

from nnprefine import __version__
from nnprefine.descriptors import SymmetryFunctionSet
from nnprefine.descriptors.scaling import N2P2_SCALING_KEYWORDS
from nnprefine.errors import ModelError
from nnprefine.model import (
    ACTIVATIONS,
    InputScaling,
    NNPotential,
    ZBLBaseline,
    activation_by_letter,
)

__all__ = ["SUPPORTED_KEYWORDS", "TRAINING_KEYWORDS", "read_model", "read_n2p2", "write_n2p2"]

SUPPORTED_KEYWORDS = (
    "number_of_elements",
    "elements",
    "atom_energy",
    "cutoff_type",
    "scale_symmetry_functions",
    "center_symmetry_functions",
    "scale_symmetry_functions_sigma",
    "scale_min_short",
    "scale_max_short",
    "global_hidden_layers_short",
    "global_nodes_short",
    "global_activation_short",
    "symfunction_short",
    "nnp_type",
)

#: nnp-train keywords that do not change the potential; read_n2p2 skips them.
TRAINING_KEYWORDS = frozenset(
    """
random_seed epochs updater_type parallel_mode jacobian_mode update_strategy selection_mode
task_batch_size_energy task_batch_size_force memorize_symfunc_results test_fraction
use_short_forces force_weight short_energy_fraction short_force_fraction
short_energy_error_threshold short_force_error_threshold rmse_threshold
rmse_threshold_trials use_old_weights_short weights_min weights_max
nguyen_widrow_weights_short precondition_weights repeated_energy_update
write_trainpoints write_trainforces write_weights_epoch write_neuronstats
write_trainlog main_error_metric kalman_type kalman_epsilon kalman_eta kalman_etatau
kalman_etamax kalman_q0 kalman_qtau kalman_qmin kalman_lambda_short kalman_nue_short
gradient_type gradient_eta gradient_adam_eta gradient_adam_beta1 gradient_adam_beta2
gradient_adam_epsilon energy_threshold bond_threshold
""".split()
)

#: scaling mode of each combination of ``input.nn`` scaling keywords.
_MODE_OF_KEYWORDS = {frozenset(kw): mode for mode, kw in N2P2_SCALING_KEYWORDS.items()}
_SCALING_FLAGS = frozenset().union(*_MODE_OF_KEYWORDS)


# --------------------------------------------------------------------------- ordering


def _z(symbol: str) -> int:
    try:
        return atomic_numbers[symbol]
    except KeyError:
        raise ModelError(f"unknown element symbol {symbol!r}") from None


def _sf_lines(sfset: SymmetryFunctionSet) -> dict[str, list[str]]:
    """The set's ``symfunction_short`` lines per central element, in the set's order."""
    out: dict[str, list[str]] = {el: [] for el in sfset.elements}
    for line in sfset.to_n2p2_lines():
        parts = line.split("#", 1)[0].split()
        if parts and parts[0] == "symfunction_short":
            out[parts[1]].append(" ".join(parts))
    for el in sfset.elements:
        if len(out[el]) != sfset.n_functions(el):
            raise ModelError(
                f"the symmetry-function set gave {len(out[el])} n2p2 lines for {el} but has "
                f"{sfset.n_functions(el)} functions"
            )
    return out


def _sort_key(line: str) -> tuple:
    """n2p2's order of symmetry functions of one element, from a settings line."""
    p = line.split()
    sf_type = int(p[2])
    if sf_type == 2:  # el 2 e1 eta rs rc
        return (2, float(p[6]), float(p[4]), float(p[5]), 0.0, 0.0, _z(p[3]), 0)
    if sf_type in (3, 9):  # el t e1 e2 eta lambda zeta rc [rs]
        rs = float(p[9]) if len(p) > 9 else 0.0
        z1, z2 = sorted((_z(p[3]), _z(p[4])))
        return (sf_type, float(p[8]), float(p[5]), rs, float(p[7]), float(p[6]), z1, z2)
    raise ModelError(f"symmetry-function type {sf_type} has no n2p2 export here: {line!r}")


def _n2p2_order(sfset: SymmetryFunctionSet) -> dict[str, np.ndarray]:
    """Per element, ``perm`` with n2p2 input k = the set's function ``perm[k]``."""
    return {
        el: np.array(sorted(range(len(lines)), key=lambda k, ls=lines: _sort_key(ls[k])), dtype=int)
        for el, lines in _sf_lines(sfset).items()
    }


def _cutoff_line(sfset: SymmetryFunctionSet) -> str | None:
    for line in sfset.to_n2p2_lines():
        if line.split("#", 1)[0].split()[:1] == ["cutoff_type"]:
            return line.split("#", 1)[0].strip()
    return None


# --------------------------------------------------------------------------- writing


def write_n2p2(pot: NNPotential, directory: str | os.PathLike[str]) -> Path:
    """Write ``input.nn``, ``scaling.data`` and ``weights.XXX.data`` into ``directory``.

    Values are written with 17 significant digits, so :func:`read_n2p2` gives back the
    same predictions to round-off (1e-12 eV).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    sfset = pot.sfset
    elements = sorted(pot.elements, key=_z)
    order = _n2p2_order(sfset)
    lines_by_el = _sf_lines(sfset)
    letter = ACTIVATIONS[pot.activation].n2p2_letter
    out = [
        f"# n2p2 potential written by nnprefine {__version__}",
        "# units: eV, Angstrom (pair_style hdnnp ... cflength 1.0 cfenergy 1.0)",
        # No nnp_type line: every n2p2 version defaults to the short-range (2G) network,
        # while the values differ between versions (releases <= 2.3: 0; master: 2/2G-HDNNP).
        f"number_of_elements {len(elements)}",
        "elements " + " ".join(elements),
    ]
    out += [f"atom_energy {el} {pot.energy_offsets_eV[el]:.17g}" for el in elements]
    out.append(_cutoff_line(sfset) or "cutoff_type 1 0.0")
    out += N2P2_SCALING_KEYWORDS[pot.scaling.mode]
    out += [
        f"scale_min_short {pot.scaling.s_min:.17g}",
        f"scale_max_short {pot.scaling.s_max:.17g}",
    ]
    out += [
        f"global_hidden_layers_short {len(pot.hidden)}",
        "global_nodes_short " + " ".join(str(h) for h in pot.hidden),
        "global_activation_short " + " ".join([letter] * len(pot.hidden) + ["l"]),
    ]
    for el in elements:
        out += [lines_by_el[el][k] for k in order[el]]
    (directory / "input.nn").write_text("\n".join(out) + "\n")

    rows = pot.scaling.scaling_data_lines(elements, order)
    (directory / "scaling.data").write_text("\n".join(rows) + "\n")

    for el in elements:
        _write_weights(directory / f"weights.{_z(el):03d}.data", pot, el, order[el])
    _write_lammps_snippet(directory, pot, elements, pot.baseline)
    return directory


def _write_weights(path: Path, pot: NNPotential, el: str, perm: np.ndarray) -> None:
    arrays = pot.networks[el].arrays()
    lines = [
        "# Neural network connection values (nnprefine); columns: connection t index "
        "l_s n_s l_e n_e"
    ]
    index = 0
    for layer, (w, b) in enumerate(arrays):
        if layer == 0:
            w = w[:, perm]
        n_out, n_in = w.shape
        for i in range(n_in):
            for j in range(n_out):
                index += 1
                lines.append(
                    f"{w[j, i]:24.16E} a {index:9d} {layer:5d} {i + 1:5d} {layer + 1:5d} {j + 1:5d}"
                )
        for j in range(n_out):
            index += 1
            lines.append(f"{b[j]:24.16E} b {index:9d} {layer + 1:5d} {j + 1:5d}")
    path.write_text("\n".join(lines) + "\n")


def _write_lammps_snippet(
    directory: Path, pot: NNPotential, elements: Sequence[str], base: ZBLBaseline | None
) -> None:
    """``lammps.in``: the pair lines of ML-HDNNP's ``pair_style hdnnp`` (docs/lammps.md),
    overlaid with ``pair_style zbl`` when the model has the baseline."""
    hdnnp = (
        f"hdnnp {pot.r_cut_A:g} dir {str(directory.resolve()).rstrip('/')}/ showew no showewsum 0 "
        "resetew no maxew 1000 cflength 1.0 cfenergy 1.0"
    )
    types = " ".join(elements)  # one element per atom type, in type order
    if base is None:
        lines = [
            f"# LAMMPS: the exported networks (types in this order: {types})",
            f"pair_style {hdnnp}",
            f"pair_coeff * * {types}",
        ]
    else:
        lines = [
            f"# LAMMPS: the exported networks plus the ZBL baseline (types in this order: {types})",
            f"pair_style hybrid/overlay {hdnnp} zbl {base.r_inner_A:g} {base.r_outer_A:g}",
            f"pair_coeff * * hdnnp {types}",
        ]
        for a, ea in enumerate(elements, start=1):
            for b, eb in enumerate(elements, start=1):
                if b >= a:
                    lines.append(f"pair_coeff {a} {b} zbl {_z(ea)} {_z(eb)}")
    (directory / "lammps.in").write_text("\n".join(lines) + "\n")


# --------------------------------------------------------------------------- reading


def _content_lines(path: Path) -> list[tuple[int, list[str]]]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ModelError(f"{path} is missing; an n2p2 potential needs it") from None
    out = []
    for number, raw in enumerate(text.splitlines(), start=1):
        parts = raw.split("#", 1)[0].split()
        if parts:
            out.append((number, parts))
    return out


def _fail(path: Path, line: int, msg: str) -> ModelError:
    return ModelError(f"{path}, line {line}: {msg}")


def read_n2p2(
    directory: str | os.PathLike[str], skin_A: float = 1.0, baseline: ZBLBaseline | None = None
) -> NNPotential:
    """Read an n2p2 potential directory into an :class:`~nnprefine.model.NNPotential`.

    ``baseline``: a ZBL baseline to add (n2p2 files do not record one).
    """
    directory = Path(directory)
    path = directory / "input.nn"
    seen: dict[str, tuple[int, list[str]]] = {}
    offsets: dict[str, float] = {}
    sf_lines: list[tuple[int, str]] = []
    scaling_flags: set[str] = set()
    cutoff_line = None
    for number, parts in _content_lines(path):
        key, args = parts[0], parts[1:]
        if key in TRAINING_KEYWORDS:
            continue
        if key not in SUPPORTED_KEYWORDS:
            raise _fail(
                path,
                number,
                f"keyword {key!r} is not supported by nnprefine "
                f"(supported: {', '.join(SUPPORTED_KEYWORDS)})",
            )
        if key == "symfunction_short":
            sf_lines.append((number, " ".join(parts)))
        elif key == "atom_energy":
            try:
                offsets[args[0]] = float(args[1])
            except (IndexError, ValueError):
                raise _fail(path, number, "atom_energy needs '<element> <energy>'") from None
        elif key in _SCALING_FLAGS:
            scaling_flags.add(key)
        else:
            if key == "cutoff_type":
                cutoff_line = " ".join(parts)
            if key == "nnp_type" and args not in (["0"], ["2"], ["2G-HDNNP"]):
                raise _fail(
                    path,
                    number,
                    f"nnp_type {' '.join(args)} is not supported; only short-range networks "
                    "(nnp_type 0 in n2p2 <= 2.3, 2 or 2G-HDNNP in later versions, or no "
                    "nnp_type line)",
                )
            if key in seen:
                raise _fail(
                    path, number, f"keyword {key!r} repeated (first on line {seen[key][0]})"
                )
            seen[key] = (number, args)

    def need(key: str) -> tuple[int, list[str]]:
        if key not in seen:
            raise ModelError(f"{path}: keyword {key!r} is missing")
        return seen[key]

    ln, args = need("elements")
    elements = args
    ln_n, n_el = need("number_of_elements")
    if [str(len(elements))] != n_el:
        raise _fail(
            path, ln_n, f"number_of_elements {' '.join(n_el)} but {len(elements)} elements listed"
        )
    mode = _MODE_OF_KEYWORDS.get(frozenset(scaling_flags))
    if mode is None:
        raise ModelError(f"{path}: scaling keywords {sorted(scaling_flags)} cannot be combined")
    ln_h, n_hidden = need("global_hidden_layers_short")
    ln_nodes, nodes = need("global_nodes_short")
    ln_act, acts = need("global_activation_short")
    try:
        hidden = [int(x) for x in nodes]
        if int(n_hidden[0]) != len(hidden):
            raise _fail(path, ln_h, f"{n_hidden[0]} hidden layers but {len(hidden)} node counts")
    except ValueError:
        raise _fail(path, ln_nodes, "global_nodes_short needs integers") from None
    if len(acts) != len(hidden) + 1 or acts[-1] != "l" or len(set(acts[:-1])) != 1:
        raise _fail(
            path,
            ln_act,
            "global_activation_short must give one activation for all "
            "hidden layers and 'l' for the output, e.g. 'p p l'",
        )
    try:
        activation = activation_by_letter(acts[0]).name
    except ModelError as exc:
        raise _fail(path, ln_act, str(exc)) from None
    s_min = float(seen.get("scale_min_short", (0, ["0.0"]))[1][0])
    s_max = float(seen.get("scale_max_short", (0, ["1.0"]))[1][0])

    lines = ([cutoff_line] if cutoff_line else []) + [text for _, text in sf_lines]
    try:
        sfset = SymmetryFunctionSet.from_n2p2_lines(lines, elements=elements)
    except Exception as whole:  # find the offending line for the message
        for number, text in sf_lines:
            try:
                SymmetryFunctionSet.from_n2p2_lines(
                    ([cutoff_line] if cutoff_line else []) + [text], elements=elements
                )
            except Exception as exc:  # noqa: BLE001
                raise _fail(path, number, f"symmetry function not accepted: {exc}") from exc
        raise ModelError(f"{path}: the symmetry functions are not accepted: {whole}") from whole

    order = _n2p2_order(sfset)
    stats = _read_scaling(directory / "scaling.data", sfset, elements, order)
    scaling = InputScaling(mode=mode, s_min=s_min, s_max=s_max, stats=stats)
    pot = NNPotential(
        sfset,
        hidden=hidden,
        activation=activation,
        seed=0,
        scaling=scaling,
        energy_offsets_eV={el: offsets.get(el, 0.0) for el in elements},
        baseline=baseline,
        skin_A=skin_A,
    )
    for el in elements:
        pot.networks[el].set_arrays(
            _read_weights(
                directory / f"weights.{_z(el):03d}.data", pot.networks[el].sizes, order[el]
            )
        )
    pot.metadata["imported_from_n2p2"] = str(directory)
    return pot


def _read_scaling(
    path: Path, sfset: SymmetryFunctionSet, elements: Sequence[str], order: dict[str, np.ndarray]
) -> dict[str, np.ndarray]:
    by_z = sorted(elements, key=_z)
    stats = {el: np.full((4, sfset.n_functions(el)), np.nan) for el in elements}
    for number, parts in _content_lines(path):
        try:
            e_index, k = int(parts[0]), int(parts[1])
            values = [float(x) for x in parts[2:6]]
            el = by_z[e_index - 1]
            if len(values) != 4 or not 1 <= k <= len(order[el]):
                raise IndexError
        except (ValueError, IndexError):
            raise _fail(
                path, number, "expected 'e_index sf_index min max mean sigma' with indices in range"
            ) from None
        stats[el][:, order[el][k - 1]] = values
    for el, s in stats.items():
        if np.isnan(s).any():
            raise ModelError(f"{path}: scaling rows for {el} are missing")
    return stats


def _read_weights(
    path: Path,
    sizes: Sequence[int],
    perm: np.ndarray,
) -> list[tuple[np.ndarray, np.ndarray]]:
    rows = _content_lines(path)
    expected = sum(n_in * n_out + n_out for n_in, n_out in zip(sizes[:-1], sizes[1:], strict=True))
    if len(rows) != expected:
        where = rows[-1][0] if rows else 1
        raise _fail(
            path,
            where,
            f"{len(rows)} connection values, the network "
            f"{'-'.join(map(str, sizes))} needs {expected}",
        )
    kinds = []
    for n_in, n_out in zip(sizes[:-1], sizes[1:], strict=True):
        kinds += ["a"] * (n_in * n_out) + ["b"] * n_out
    values = np.empty(expected)
    for k, (number, parts) in enumerate(rows):
        try:
            values[k] = float(parts[0])
        except ValueError:
            raise _fail(path, number, f"{parts[0]!r} is not a number") from None
        if len(parts) >= 2 and parts[1] != kinds[k]:
            raise _fail(
                path,
                number,
                f"connection type {parts[1]!r} where n2p2's order "
                f"puts {'a weight' if kinds[k] == 'a' else 'a bias'} ({kinds[k]!r})",
            )
    out, pos = [], 0
    for layer, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        w = values[pos : pos + n_in * n_out].reshape(n_in, n_out).T.copy()
        pos += n_in * n_out
        b = values[pos : pos + n_out].copy()
        pos += n_out
        if layer == 0:
            w_ours = np.empty_like(w)
            w_ours[:, perm] = w
            w = w_ours
        out.append((w, b))
    return out


def read_model(
    directory: str | os.PathLike[str], baseline: ZBLBaseline | None = None
) -> NNPotential:
    """The potential a directory holds: an nnprefine committee (its member 0, the one that
    drives MD), an nnprefine model, or an n2p2 set (``input.nn``; ``baseline`` is added, as
    n2p2 files record none). A :class:`~nnprefine.errors.ModelError` names what is missing."""
    from nnprefine.model import Committee

    directory = Path(directory)
    if (directory / "committee.json").is_file():
        return Committee.load(directory).members[0]
    if (directory / "model.json").is_file():
        return NNPotential.load(directory)
    if (directory / "input.nn").is_file():
        return read_n2p2(directory, baseline=baseline)
    raise ModelError(
        f"{directory} holds no model: expected an nnprefine committee (committee.json), an "
        "nnprefine model (model.json) or an n2p2 set (input.nn, scaling.data, weights.XXX.data)"
    )
