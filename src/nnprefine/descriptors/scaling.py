"""n2p2's input scaling of symmetry functions: :class:`InputScaling`, the one implementation.

n2p2's variants (``input.nn`` keywords), with S_min, S_max the target range:

============== ================================================ ===========================
mode           x(G)                                             n2p2 keywords
============== ================================================ ===========================
none           G                                                (none)
scale          S_min + (S_max − S_min)(G − G_min)/(G_max − G_min) scale_symmetry_functions
center         G − G_mean                                       center_symmetry_functions
scalecenter    S_min + (S_max − S_min)(G − G_mean)/(G_max − G_min) both of the above
scalesigma     S_min + (S_max − S_min)(G − G_mean)/σ_G            scale_symmetry_functions_sigma
============== ================================================ ===========================

A function that is constant over the training data is stored with G_max = G_min + 1 and
σ = 1, so its scaled input stays finite, here and in n2p2 reading ``scaling.data``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from nnprefine.errors import ModelError

__all__ = ["N2P2_SCALING_KEYWORDS", "SCALING_MODES", "InputScaling"]

#: ``input.nn`` keywords of each scaling mode.
N2P2_SCALING_KEYWORDS: dict[str, tuple[str, ...]] = {
    "none": (),
    "scale": ("scale_symmetry_functions",),
    "center": ("center_symmetry_functions",),
    "scalecenter": ("scale_symmetry_functions", "center_symmetry_functions"),
    "scalesigma": ("scale_symmetry_functions_sigma",),
}

#: The scaling modes, see the module docstring.
SCALING_MODES: tuple[str, ...] = tuple(N2P2_SCALING_KEYWORDS)

_STAT_NAMES = ("min", "max", "mean", "sigma")


@dataclass
class InputScaling:
    """n2p2's symmetry-function scaling, per element, as an affine map x = a·G + c.

    mode: one of :data:`SCALING_MODES` (formulas in the module docstring).
    s_min, s_max: target range S_min < S_max (dimensionless; unused by ``none``, ``center``).
    stats: element → (4, n_functions) float64 rows G_min, G_max, G_mean, σ_G (population)
        over the training atoms of that element, in the units of G. A function constant
        over the training set has G_max = G_min + 1 and σ_G = 1 (see :meth:`from_values`).
    """

    mode: str = "scale"
    s_min: float = 0.0
    s_max: float = 1.0
    stats: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.mode not in SCALING_MODES:
            raise ModelError(f"scaling mode {self.mode!r} unknown; choose one of {SCALING_MODES}")
        if self.mode not in ("none", "center") and not self.s_max > self.s_min:
            raise ModelError(f"scaling needs s_max > s_min, got {self.s_min}, {self.s_max}")
        self.stats = {el: np.asarray(s, dtype=np.float64) for el, s in self.stats.items()}

    @classmethod
    def from_values(
        cls,
        values_by_element: Mapping[str, np.ndarray],
        mode: str = "scale",
        s_min: float = 0.0,
        s_max: float = 1.0,
    ) -> InputScaling:
        """Statistics from G: element → (n_atoms_el, n_functions_el) float64 array."""
        stats = {}
        for el, rows in values_by_element.items():
            rows = np.asarray(rows, dtype=np.float64)
            if rows.ndim != 2 or rows.shape[0] == 0:
                raise ModelError(
                    f"no symmetry-function values for {el}: the training set has no {el} atoms"
                )
            if not np.isfinite(rows).all():
                raise ModelError(f"the symmetry-function values of {el} hold NaN or infinities")
            g_min, g_max = rows.min(axis=0), rows.max(axis=0)
            g_sigma = rows.std(axis=0)
            flat = g_max - g_min <= 1e-12 * np.maximum(1.0, np.abs(g_max))
            g_max = np.where(flat, g_min + 1.0, g_max)
            g_sigma = np.where(g_sigma > 0, g_sigma, 1.0)
            stats[el] = np.stack([g_min, g_max, rows.mean(axis=0), g_sigma])
        return cls(mode=mode, s_min=s_min, s_max=s_max, stats=stats)

    def affine(self, element: str, n_functions: int) -> tuple[np.ndarray, np.ndarray]:
        """(a, c), each (n_functions,) float64, with x = a·G + c for ``element``.

        ``a`` is also ∂x/∂G, the factor of the chain rule for forces.
        """
        if self.mode == "none":
            return np.ones(n_functions), np.zeros(n_functions)
        if element not in self.stats:
            raise ModelError(f"no scaling statistics for {element}; fit the scaling first")
        g_min, g_max, g_mean, g_sigma = self.stats[element]
        if g_min.shape[0] != n_functions:
            raise ModelError(
                f"scaling of {element} has {g_min.shape[0]} functions, the set has {n_functions}"
            )
        span = self.s_max - self.s_min
        if self.mode == "scale":
            a = span / (g_max - g_min)
            return a, self.s_min - a * g_min
        if self.mode == "center":
            return np.ones(n_functions), -g_mean
        a = span / (g_max - g_min) if self.mode == "scalecenter" else span / g_sigma
        return a, self.s_min - a * g_mean

    def scaling_data_lines(
        self, elements: Sequence[str], order: Mapping[str, Sequence[int]]
    ) -> list[str]:
        """The lines of n2p2's ``scaling.data``, a header comment first.

        Rows are ``e_index sf_index G_min G_max G_mean σ_G``: element ``elements[e − 1]``
        (n2p2 lists them by atomic number), its function ``order[el][k − 1]`` as
        sf_index k. An element without statistics (mode ``none``) gets rows 0 1 0 1.
        """
        lines = [
            "# Symmetry function scaling data (nnprefine); columns: e_index sf_index "
            "sf_min sf_max sf_mean sf_sigma"
        ]
        for e_index, el in enumerate(elements, start=1):
            n = len(order[el])
            stats = self.stats.get(el)
            if stats is None:
                stats = np.stack([np.zeros(n), np.ones(n), np.zeros(n), np.ones(n)])
            for k, src in enumerate(order[el], start=1):
                g = stats[:, src]
                lines.append(f"{e_index:10d} {k:10d} " + " ".join(f"{v:24.16E}" for v in g))
        return lines

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description (the ``scaling`` entry of a saved model)."""
        return {
            "mode": self.mode,
            "s_min": self.s_min,
            "s_max": self.s_max,
            "stats": {
                el: {k: s[i].tolist() for i, k in enumerate(_STAT_NAMES)}
                for el, s in self.stats.items()
            },
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> InputScaling:
        """Inverse of :meth:`to_dict`."""
        stats = {
            el: np.array([s[k] for k in _STAT_NAMES], dtype=np.float64)
            for el, s in d.get("stats", {}).items()
        }
        return cls(mode=d["mode"], s_min=float(d["s_min"]), s_max=float(d["s_max"]), stats=stats)
