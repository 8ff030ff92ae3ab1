"""Behler–Parrinello symmetry functions as small immutable values (n2p2 types 2, 3, 9).

Each function type converts to and from exactly one n2p2 ``symfunction_short`` line; a
:class:`SymmetryFunctionSet` holds the functions of every element, writes them as the
lines of an ``input.nn`` (preceded by one ``cutoff_type`` line) and reads them back.

Units: distances (``r_cut``, ``r_shift``) in Å, ``eta`` in Å⁻²; ``zeta`` and ``lambda_``
are dimensionless.

Cutoff functions (n2p2 ``cutoff_type <number> <alpha>``), with the inner radius
r_ci = α·r_c, fc(r) = 1 for r < r_ci, fc(r) = f(x) with x = (r − r_ci)/(r_c − r_ci) for
r_ci ≤ r < r_c, and 0 beyond r_c:

======= ===== ==============================================
name    n2p2  f(x)
======= ===== ==============================================
cos     1     ½[cos(πx) + 1]
poly1   5     (2x − 3)x² + 1
poly2   6     ((15 − 6x)x − 10)x³ + 1
poly3   7     (x(x(20x − 70) + 84) − 35)x⁴ + 1
poly4   8     (x(x((315 − 70x)x − 540) + 420) − 126)x⁵ + 1
======= ===== ==============================================
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ase.data import atomic_numbers

from nnprefine.errors import ConfigError, UnsupportedElementError

__all__ = [
    "CUTOFF_TYPES",
    "NarrowAngularG3",
    "RadialG2",
    "SymmetryFunction",
    "SymmetryFunctionSet",
    "WideAngularG9",
    "make_set",
    "paper_set",
]

#: Supported cutoff functions: name -> n2p2 ``cutoff_type`` number.
CUTOFF_TYPES: dict[str, int] = {"cos": 1, "poly1": 5, "poly2": 6, "poly3": 7, "poly4": 8}
_CUTOFF_BY_NUMBER = {v: k for k, v in CUTOFF_TYPES.items()}


def _cutoff_name(cutoff: str | int) -> str:
    """Normalise a cutoff given by name ("cos", "poly2") or n2p2 number (1, "6")."""
    key = str(cutoff).strip().lower()
    if key in CUTOFF_TYPES:
        return key
    if key.isdigit() and int(key) in _CUTOFF_BY_NUMBER:
        return _CUTOFF_BY_NUMBER[int(key)]
    options = ", ".join(f"{k!r} (n2p2 {v})" for k, v in CUTOFF_TYPES.items())
    raise ConfigError(f"cutoff {cutoff!r} is not supported; choose one of {options}")


def _z(symbol: str) -> int:
    try:
        return atomic_numbers[symbol]
    except KeyError:
        raise ConfigError(
            f"{symbol!r} is not a chemical element symbol; use e.g. 'Be' or 'W'"
        ) from None


def _parse_float(token: str, what: str, line: str) -> float:
    try:
        return float(token)
    except ValueError:
        raise ConfigError(f"{what} {token!r} in {line!r} is not a number") from None


@dataclass(frozen=True)
class SymmetryFunction:
    """Fields shared by every symmetry-function type (see the subclasses for formulas).

    element: symbol of the central atom; neighbours: symbols of the neighbour element(s);
    eta: Gaussian width η (Å⁻², ≥ 0); r_cut: cutoff radius r_c (Å, > 0); r_shift: Gaussian
    centre r_s (Å); cutoff: cutoff function name or n2p2 number; cutoff_alpha: α of the
    inner cutoff radius α·r_c, 0 ≤ α < 1.
    """

    element: str
    neighbours: tuple[str, ...]
    eta: float
    r_cut: float
    r_shift: float = 0.0
    cutoff: str = "cos"
    cutoff_alpha: float = 0.0

    n2p2_type: ClassVar[int] = 0
    n_neighbours: ClassVar[int] = 0

    def __post_init__(self) -> None:
        _z(self.element)
        nbs = (self.neighbours,) if isinstance(self.neighbours, str) else tuple(self.neighbours)
        if len(nbs) != self.n_neighbours:
            raise ConfigError(
                f"{type(self).__name__} needs {self.n_neighbours} neighbour element(s), got {nbs!r}"
            )
        nbs = tuple(sorted(nbs, key=_z))  # the pair (e1, e2) is unordered
        object.__setattr__(self, "neighbours", nbs)
        object.__setattr__(self, "cutoff", _cutoff_name(self.cutoff))
        for name in ("eta", "r_cut", "r_shift", "cutoff_alpha"):
            object.__setattr__(self, name, float(getattr(self, name)))
        if not (self.eta >= 0.0 and math.isfinite(self.eta)):
            raise ConfigError(f"eta must be a finite number ≥ 0 Å⁻², got {self.eta} in {self!r}")
        if not (self.r_cut > 0.0 and math.isfinite(self.r_cut)):
            raise ConfigError(f"r_cut must be a finite radius > 0 Å, got {self.r_cut} in {self!r}")
        if not math.isfinite(self.r_shift) or self.r_shift < 0.0:
            raise ConfigError(f"r_shift must be a finite distance ≥ 0 Å, got {self.r_shift}")
        if not 0.0 <= self.cutoff_alpha < 1.0:
            raise ConfigError(
                f"cutoff_alpha (inner cutoff r_ci = alpha·r_cut) must be in [0, 1), got "
                f"{self.cutoff_alpha}"
            )

    @property
    def elements(self) -> tuple[str, ...]:
        """Every element this function refers to (central first)."""
        return (self.element, *self.neighbours)


@dataclass(frozen=True)
class RadialG2(SymmetryFunction):
    """Radial symmetry function, n2p2 type 2.

    G2_i = Σ_{j≠i, el(j)=e1} exp(−η (r_ij − r_s)²) fc(r_ij)

    n2p2 line: ``symfunction_short <element> 2 <e1> <eta> <r_shift> <r_cut>``.
    """

    n2p2_type: ClassVar[int] = 2
    n_neighbours: ClassVar[int] = 1

    def to_n2p2_line(self) -> str:
        """The ``symfunction_short`` line (cutoff type is global: see the set's lines)."""
        e1 = self.neighbours[0]
        return (
            f"symfunction_short {self.element} 2 {e1} {self.eta!r} {self.r_shift!r} {self.r_cut!r}"
        )

    @classmethod
    def from_n2p2_line(
        cls, line: str, cutoff: str | int = "cos", cutoff_alpha: float = 0.0
    ) -> RadialG2:
        """Parse ``symfunction_short <el> 2 <e1> <eta> <r_shift> <r_cut>``."""
        p = _tokens(line, 2)
        if len(p) != 7:
            raise ConfigError(
                f"a type-2 line needs 'symfunction_short <element> 2 <e1> <eta> <r_shift> "
                f"<r_cut>', got {line!r}"
            )
        return cls(
            element=p[1],
            neighbours=(p[3],),
            eta=_parse_float(p[4], "eta", line),
            r_shift=_parse_float(p[5], "r_shift", line),
            r_cut=_parse_float(p[6], "r_cut", line),
            cutoff=cutoff,
            cutoff_alpha=cutoff_alpha,
        )


@dataclass(frozen=True)
class _Angular(SymmetryFunction):
    zeta: float = 1.0
    lambda_: float = 1.0
    n_neighbours: ClassVar[int] = 2

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "zeta", float(self.zeta))
        object.__setattr__(self, "lambda_", float(self.lambda_))
        if not (self.zeta >= 1.0 and math.isfinite(self.zeta)):
            raise ConfigError(f"zeta must be ≥ 1, got {self.zeta} in {self!r}")
        if self.lambda_ not in (-1.0, 1.0):
            raise ConfigError(f"lambda_ must be -1 or +1, got {self.lambda_} in {self!r}")

    def to_n2p2_line(self) -> str:
        """The ``symfunction_short`` line; r_shift is written only when non-zero."""
        e1, e2 = self.neighbours
        line = (
            f"symfunction_short {self.element} {self.n2p2_type} {e1} {e2} {self.eta!r} "
            f"{self.lambda_!r} {self.zeta!r} {self.r_cut!r}"
        )
        return line + (f" {self.r_shift!r}" if self.r_shift != 0.0 else "")

    @classmethod
    def from_n2p2_line(cls, line: str, cutoff: str | int = "cos", cutoff_alpha: float = 0.0):
        """Parse ``symfunction_short <el> <t> <e1> <e2> <eta> <lambda> <zeta> <r_cut> [<r_s>]``."""
        p = _tokens(line, cls.n2p2_type)
        if len(p) not in (9, 10):
            raise ConfigError(
                f"a type-{cls.n2p2_type} line needs 'symfunction_short <element> "
                f"{cls.n2p2_type} <e1> <e2> <eta> <lambda> <zeta> <r_cut> [<r_shift>]', got "
                f"{line!r}"
            )
        return cls(
            element=p[1],
            neighbours=(p[3], p[4]),
            eta=_parse_float(p[5], "eta", line),
            lambda_=_parse_float(p[6], "lambda", line),
            zeta=_parse_float(p[7], "zeta", line),
            r_cut=_parse_float(p[8], "r_cut", line),
            r_shift=_parse_float(p[9], "r_shift", line) if len(p) == 10 else 0.0,
            cutoff=cutoff,
            cutoff_alpha=cutoff_alpha,
        )


@dataclass(frozen=True)
class NarrowAngularG3(_Angular):
    """Narrow angular symmetry function, n2p2 type 3.

    G3_i = 2^(1−ζ) Σ_{j<k} (1 + λ cos θ_ijk)^ζ exp(−η [(r_ij − r_s)² + (r_ik − r_s)²
    + (r_jk − r_s)²]) fc(r_ij) fc(r_ik) fc(r_jk), over unordered neighbour pairs {j, k}
    whose elements are {e1, e2}.

    n2p2 line: ``symfunction_short <el> 3 <e1> <e2> <eta> <lambda> <zeta> <r_cut> [<r_s>]``.
    """

    n2p2_type: ClassVar[int] = 3


@dataclass(frozen=True)
class WideAngularG9(_Angular):
    """Wide angular symmetry function, n2p2 type 9 (no r_jk terms).

    G9_i = 2^(1−ζ) Σ_{j<k} (1 + λ cos θ_ijk)^ζ exp(−η [(r_ij − r_s)² + (r_ik − r_s)²])
    fc(r_ij) fc(r_ik), over unordered neighbour pairs {j, k} whose elements are {e1, e2}.

    n2p2 line: ``symfunction_short <el> 9 <e1> <e2> <eta> <lambda> <zeta> <r_cut> [<r_s>]``.
    """

    n2p2_type: ClassVar[int] = 9


_TYPES: dict[int, type[SymmetryFunction]] = {2: RadialG2, 3: NarrowAngularG3, 9: WideAngularG9}


def _tokens(line: str, expected_type: int | None = None) -> list[str]:
    p = line.split("#", 1)[0].split()
    if len(p) < 3 or p[0] != "symfunction_short":
        raise ConfigError(f"not a 'symfunction_short' line: {line!r}")
    if expected_type is not None and p[2] != str(expected_type):
        raise ConfigError(f"expected a type-{expected_type} line, got {line!r}")
    return p


def _function_from_line(line: str, cutoff: str, alpha: float) -> SymmetryFunction:
    p = _tokens(line)
    try:
        cls = _TYPES[int(p[2])]
    except (KeyError, ValueError):
        raise ConfigError(
            f"symmetry-function type {p[2]!r} is not supported (types 2, 3, 9 are): {line!r}"
        ) from None
    return cls.from_n2p2_line(line, cutoff=cutoff, cutoff_alpha=alpha)


@dataclass(frozen=True)
class SymmetryFunctionSet:
    """The symmetry functions of every element, in a fixed order.

    ``functions_for(el)`` lists the inputs of element ``el``'s network in set order; all
    functions share one cutoff function and α (n2p2 has one global ``cutoff_type``), but
    may have different cutoff radii. ``elements`` is sorted by atomic number and every
    element needs at least one function.
    """

    functions: tuple[SymmetryFunction, ...]
    elements: tuple[str, ...] = field(default=())
    _by_element: dict[str, tuple[SymmetryFunction, ...]] = field(
        init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        funcs = tuple(self.functions)
        if not funcs:
            raise ConfigError("a symmetry-function set needs at least one function")
        for f in funcs:
            if not isinstance(f, SymmetryFunction):
                raise ConfigError(f"{f!r} is not a symmetry function (RadialG2, ...)")
        kinds = {(f.cutoff, f.cutoff_alpha) for f in funcs}
        if len(kinds) > 1:
            raise ConfigError(
                f"all functions of a set must share one cutoff function and alpha (n2p2 has "
                f"one cutoff_type), got {sorted(kinds)}"
            )
        used = {el for f in funcs for el in f.elements}
        els = set(self.elements) if self.elements else used
        for el in els:
            _z(el)
        missing = used - els
        if missing:
            raise ConfigError(
                f"functions refer to {sorted(missing, key=_z)} which are not among the set's "
                f"elements {sorted(els, key=_z)}; add them to elements"
            )
        by_el = {el: tuple(f for f in funcs if f.element == el) for el in sorted(els, key=_z)}
        empty = [el for el, fs in by_el.items() if not fs]
        if empty:
            raise ConfigError(
                f"element(s) {empty} have no symmetry function of their own; every element "
                f"needs at least one (add functions centred on them)"
            )
        object.__setattr__(self, "functions", funcs)
        object.__setattr__(self, "elements", tuple(by_el))
        object.__setattr__(self, "_by_element", by_el)

    def functions_for(self, element: str) -> tuple[SymmetryFunction, ...]:
        """The functions of ``element`` in set order (its network's inputs)."""
        try:
            return self._by_element[element]
        except KeyError:
            raise UnsupportedElementError(
                f"element {element!r} is not covered by the symmetry-function set, whose "
                f"elements are {list(self.elements)}"
            ) from None

    def n_functions(self, element: str) -> int:
        """Number of functions (network inputs) of ``element``."""
        return len(self.functions_for(element))

    @property
    def max_functions(self) -> int:
        """The largest number of functions of any element (width of value arrays)."""
        return max(len(fs) for fs in self._by_element.values())

    @property
    def r_cut(self) -> float:
        """The largest cutoff radius of the set (Å)."""
        return max(f.r_cut for f in self.functions)

    @property
    def cutoff(self) -> str:
        """Name of the shared cutoff function."""
        return self.functions[0].cutoff

    @property
    def cutoff_alpha(self) -> float:
        """The shared α of the inner cutoff radius α·r_c."""
        return self.functions[0].cutoff_alpha

    def to_n2p2_lines(self) -> list[str]:
        """``cutoff_type <n> <alpha>`` followed by one ``symfunction_short`` line per function."""
        head = f"cutoff_type {CUTOFF_TYPES[self.cutoff]} {self.cutoff_alpha!r}"
        return [head] + [f.to_n2p2_line() for f in self.functions]

    @classmethod
    def from_n2p2_lines(
        cls, lines: Iterable[str], elements: Sequence[str] | None = None
    ) -> SymmetryFunctionSet:
        """Read ``symfunction_short`` lines (and an optional ``cutoff_type`` line).

        Other lines, blank lines and comments are ignored. Without a ``cutoff_type`` line
        the cosine cutoff with α = 0 is assumed.
        """
        cutoff, alpha = "cos", 0.0
        sf_lines = []
        for raw in lines:
            p = raw.split("#", 1)[0].split()
            if not p:
                continue
            if p[0] == "cutoff_type":
                if len(p) not in (2, 3):
                    raise ConfigError(f"'cutoff_type <n> [<alpha>]' expected, got {raw!r}")
                cutoff = _cutoff_name(p[1])
                alpha = _parse_float(p[2], "cutoff alpha", raw) if len(p) == 3 else 0.0
            elif p[0] == "symfunction_short":
                sf_lines.append(raw)
        funcs = tuple(_function_from_line(line, cutoff, alpha) for line in sf_lines)
        return cls(funcs, tuple(elements) if elements else ())

    def to_dict(self) -> dict[str, Any]:
        """JSON-able description (exact: floats are written as their shortest repr)."""
        return {
            "format": "nnprefine.SymmetryFunctionSet/1",
            "elements": list(self.elements),
            "lines": self.to_n2p2_lines(),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SymmetryFunctionSet:
        """Inverse of :meth:`to_dict`."""
        if d.get("format") != "nnprefine.SymmetryFunctionSet/1" or "lines" not in d:
            raise ConfigError(
                "not a symmetry-function set description (expected format "
                f"'nnprefine.SymmetryFunctionSet/1' with 'lines'), got keys {sorted(d)}"
            )
        return cls.from_n2p2_lines(d["lines"], elements=d.get("elements"))


# ---------------------------------------------------------------------------- generators

#: The paper-shaped set at r_c = 7 Å (η in Å⁻²): 9 G2 (r_s = 0), 24 G3 (3 η × λ ± 1 ×
#: ζ ∈ {1, 2, 4, 16}), 20 G9 (5 η × λ ± 1 × ζ ∈ {1, 4}).
PAPER_RADIAL_ETA = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5)
PAPER_NARROW_ETA = (0.001, 0.01, 0.03)
PAPER_NARROW_ZETA = (1.0, 2.0, 4.0, 16.0)
PAPER_WIDE_ETA = (0.001, 0.01, 0.02, 0.05, 0.1)
PAPER_WIDE_ZETA = (1.0, 4.0)


def paper_set(
    element: str = "Be", r_cut_A: float = 7.0, cutoff: str = "cos"
) -> SymmetryFunctionSet:
    """The paper's shape for one element: 9 G2 + 24 G3 + 20 G9, cutoff ``r_cut_A`` (Å).

    At 7 Å the η are :data:`PAPER_RADIAL_ETA`, :data:`PAPER_NARROW_ETA` and
    :data:`PAPER_WIDE_ETA`; for another cutoff every η is scaled by (7 Å / r_cut_A)² so
    the Gaussians keep their shape relative to the cutoff sphere.
    """
    s = (7.0 / float(r_cut_A)) ** 2
    el, nb, rc = element, (element,), float(r_cut_A)
    funcs: list[SymmetryFunction] = [
        RadialG2(el, nb, eta=eta * s, r_cut=rc, cutoff=cutoff) for eta in PAPER_RADIAL_ETA
    ]
    for cls, etas, zetas in (
        (NarrowAngularG3, PAPER_NARROW_ETA, PAPER_NARROW_ZETA),
        (WideAngularG9, PAPER_WIDE_ETA, PAPER_WIDE_ZETA),
    ):
        funcs += [
            cls(el, (el, el), eta=eta * s, r_cut=rc, zeta=z, lambda_=lam, cutoff=cutoff)
            for eta in etas
            for lam in (-1.0, 1.0)
            for z in zetas
        ]
    return SymmetryFunctionSet(tuple(funcs))


def _geometric(lo: float, hi: float, n: int) -> list[float]:
    if n == 1:
        return [lo]
    return [lo * (hi / lo) ** (k / (n - 1)) for k in range(n)]


def _angular_grid(n: int, zetas: Sequence[float], eta_lo: float, eta_hi: float):
    """``n`` (η, λ, ζ) triples: λ = ±1, the first few ζ, then as many η levels as needed."""
    if n == 0:
        return []
    n_zeta = min(len(zetas), max(1, math.ceil(n / 2)))
    n_eta = math.ceil(n / (2 * n_zeta))
    grid = [
        (eta, lam, z)
        for eta in _geometric(eta_lo, eta_hi, n_eta)
        for lam in (-1.0, 1.0)
        for z in zetas[:n_zeta]
    ]
    return grid[:n]


def make_set(
    elements: Sequence[str],
    n_radial: int,
    n_narrow: int,
    n_wide: int,
    r_cut_A: float,
    *,
    cutoff: str = "cos",
    cutoff_alpha: float = 0.0,
) -> SymmetryFunctionSet:
    """A generated, element-resolved set with cutoff ``r_cut_A`` (Å).

    For every central element: ``n_radial`` G2 per neighbour element, ``n_narrow`` G3 and
    ``n_wide`` G9 per unordered pair of neighbour elements. The grid, with u = 1/r_c²:

    - G2: r_s = 0, η geometric from 0.05·u to 25·u (0.001 … 0.5 Å⁻² at 7 Å);
    - G3: λ = ±1, ζ from (1, 2, 4, 16), η geometric from 0.05·u to 1.5·u;
    - G9: λ = ±1, ζ from (1, 4, 2, 8), η geometric from 0.05·u to 5·u.

    Angular functions take ζ values first (as many as fit in n/2), then η levels; e.g.
    ``make_set(["Be"], 6, 4, 4, 5.0)`` gives 14 functions for a quick run.
    """
    if not elements:
        raise ConfigError("make_set needs at least one element")
    for name, n in (("n_radial", n_radial), ("n_narrow", n_narrow), ("n_wide", n_wide)):
        if int(n) != n or n < 0:
            raise ConfigError(f"{name} must be an integer ≥ 0, got {n!r}")
    if n_radial + n_narrow + n_wide == 0:
        raise ConfigError("make_set needs at least one function (all counts are zero)")
    rc = float(r_cut_A)
    if not rc > 0:
        raise ConfigError(f"r_cut_A must be > 0 Å, got {r_cut_A}")
    els = sorted(set(elements), key=_z)
    pairs = [(a, b) for n, a in enumerate(els) for b in els[n:]]
    u = 1.0 / rc**2
    common = dict(r_cut=rc, cutoff=cutoff, cutoff_alpha=cutoff_alpha)
    funcs: list[SymmetryFunction] = []
    for el in els:
        for nb in els:
            funcs += [
                RadialG2(el, (nb,), eta=eta, **common)
                for eta in _geometric(0.05 * u, 25.0 * u, n_radial)
            ]
        for cls, n, zetas, hi in (
            (NarrowAngularG3, n_narrow, (1.0, 2.0, 4.0, 16.0), 1.5),
            (WideAngularG9, n_wide, (1.0, 4.0, 2.0, 8.0), 5.0),
        ):
            for pair in pairs:
                funcs += [
                    cls(el, pair, eta=eta, lambda_=lam, zeta=z, **common)
                    for eta, lam, z in _angular_grid(n, zetas, 0.05 * u, hi * u)
                ]
    return SymmetryFunctionSet(tuple(funcs))
