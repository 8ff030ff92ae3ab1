"""Per-function statistics of symmetry-function values and n2p2's input scalings.

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

A function that is constant over the data (G_max = G_min, or σ = 0) gets factor 0: its
input is then the constant S_min (or 0 for ``center``), and a warning-free, finite value.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from ase.data import atomic_numbers

from nnprefine.errors import DatasetError, ModelError, UnsupportedElementError

__all__ = ["SCALING_MODES", "ScalingStats"]

SCALING_MODES = ("none", "scale", "center", "scalecenter", "scalesigma")


@dataclass(frozen=True)
class ScalingStats:
    """min, max, mean and σ (population) of every function, per element.

    stats: element → (4, n_functions) float64 rows (G_min, G_max, G_mean, σ), in the units
    of G; n_samples: element → number of atoms the statistics come from.
    """

    stats: Mapping[str, np.ndarray]
    n_samples: Mapping[str, int]

    @classmethod
    def from_values(cls, G_per_element: Mapping[str, np.ndarray]) -> ScalingStats:
        """Statistics from values: element → (n_atoms, n_functions) float64 array of G."""
        stats, counts = {}, {}
        for el, G in G_per_element.items():
            a = np.asarray(G, dtype=np.float64)
            if a.ndim != 2 or a.shape[0] == 0:
                raise DatasetError(
                    f"values of {el} must be a non-empty (n_atoms, n_functions) array, got "
                    f"shape {a.shape}"
                )
            if not np.isfinite(a).all():
                raise DatasetError(f"values of {el} hold NaN or infinite entries")
            stats[el] = np.stack([a.min(0), a.max(0), a.mean(0), a.std(0)])
            counts[el] = int(a.shape[0])
        return cls(stats, counts)

    @property
    def elements(self) -> tuple[str, ...]:
        return tuple(sorted(self.stats, key=lambda e: atomic_numbers.get(e, 0)))

    def _row(self, element: str) -> np.ndarray:
        try:
            return self.stats[element]
        except KeyError:
            raise UnsupportedElementError(
                f"no scaling statistics for {element!r}; they cover {list(self.elements)}"
            ) from None

    def affine(
        self, element: str, mode: str = "scalecenter", s_min: float = 0.0, s_max: float = 1.0
    ) -> tuple[np.ndarray, np.ndarray]:
        """(a, c), each (n_functions,) float64, with scaled x = a·G + c.

        ``a`` is also the derivative factor ∂x/∂G for the chain rule.
        """
        if mode not in SCALING_MODES:
            raise ModelError(f"scaling mode {mode!r} unknown; choose one of {SCALING_MODES}")
        if mode in ("scale", "scalecenter", "scalesigma") and not s_max > s_min:
            raise ModelError(f"scaling needs s_max > s_min, got {s_min}, {s_max}")
        g_min, g_max, g_mean, sigma = self._row(element)
        one = np.ones_like(g_min)
        if mode == "none":
            return one, np.zeros_like(g_min)
        if mode == "center":
            return one, -g_mean
        width = sigma if mode == "scalesigma" else g_max - g_min
        with np.errstate(divide="ignore", invalid="ignore"):
            a = np.where(width > 0.0, (s_max - s_min) / width, 0.0)
        shift = g_min if mode == "scale" else g_mean
        return a, s_min - a * shift

    def scale(
        self,
        element: str,
        G: np.ndarray,
        mode: str = "scalecenter",
        s_min: float = 0.0,
        s_max: float = 1.0,
    ) -> np.ndarray:
        """Scaled inputs x = a·G + c; G: (..., n_functions) float64 of ``element``."""
        a, c = self.affine(element, mode, s_min, s_max)
        return np.asarray(G, dtype=np.float64) * a + c

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (lists of floats)."""
        return {
            "format": "nnprefine.ScalingStats/1",
            "stats": {el: np.asarray(v).tolist() for el, v in self.stats.items()},
            "n_samples": dict(self.n_samples),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ScalingStats:
        """Inverse of :meth:`to_dict`."""
        if d.get("format") != "nnprefine.ScalingStats/1":
            raise ModelError(f"not a ScalingStats description (format {d.get('format')!r})")
        stats = {el: np.asarray(v, dtype=np.float64) for el, v in d["stats"].items()}
        for el, v in stats.items():
            if v.ndim != 2 or v.shape[0] != 4:
                raise ModelError(f"scaling statistics of {el} must be 4 rows, got {v.shape}")
        return cls(stats, {el: int(n) for el, n in d.get("n_samples", {}).items()})

    def to_scaling_data_lines(
        self,
        elements: Sequence[str] | None = None,
        order: Mapping[str, Sequence[int]] | None = None,
    ) -> list[str]:
        """Rows of n2p2's ``scaling.data``: ``e_index sf_index G_min G_max G_mean σ``.

        Elements are numbered from 1 in order of atomic number (or of ``elements``),
        functions from 1; ``order[el]`` optionally permutes the functions (n2p2 sorts
        them, see ``nnprefine.n2p2``), so row k is the set's function ``order[el][k]``.
        """
        els = list(elements) if elements is not None else list(self.elements)
        lines = []
        for ne, el in enumerate(els, start=1):
            rows = self._row(el)
            perm = list(order[el]) if order and el in order else range(rows.shape[1])
            for nf, k in enumerate(perm, start=1):
                g = rows[:, k]
                lines.append(f"{ne:4d} {nf:4d} {g[0]: .17e} {g[1]: .17e} {g[2]: .17e} {g[3]: .17e}")
        return lines
