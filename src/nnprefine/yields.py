"""Sputtering yields, their error bars, the Eckstein fit and a yield-vs-energy figure.

Yield Y(E) = sputtered atoms / impacts. The paper treats each impact as a Bernoulli
trial with success probability p = Y (exact when no impact sputters more than one atom,
which holds near threshold) and quotes D = 2σ/√N with σ = √(p(1−p)); we report that,
and beside it the 95 % Wilson score interval and the exact Clopper–Pearson interval
for k = min(sputtered atoms, N) successes in N impacts. Unphysical trajectories are
left out of N (and counted); undecided ones count as "not sputtered" (and are counted),
and :attr:`YieldEstimate.yield_upper` = Y + n_undecided/N is reported beside Y: the
yield if every undecided trajectory had sputtered one atom more.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import optimize, stats

from nnprefine.errors import ConfigError

__all__ = [
    "EcksteinFit",
    "PAPER_BE0001_NNP5",
    "YieldEstimate",
    "eckstein_yield",
    "estimate_yield",
    "eckstein_fit_skip_reason",
    "fit_campaign",
    "fit_eckstein",
    "plot_yields",
    "collision_pair",
    "reduced_energy",
    "threshold_bracket",
    "wilson_interval",
    "yield_error",
]

#: Published yields on Be(0001), NNP5, 490 atoms: (energy eV, yield, error bar D).
PAPER_BE0001_NNP5: tuple[tuple[float, float, float], ...] = (
    (50.0, 0.0, 0.0),
    (55.0, 0.003, 0.0015),
    (60.0, 0.0072, 0.0024),
    (65.0, 0.0086, 0.0026),
    (75.0, 0.026, 0.014),
    (100.0, 0.056, 0.021),
)

_E2_EV_A = 14.3996  # e²/(4πε0), eV·Å
_BOHR_A = 0.529177
_Z95 = 1.959964  # two-sided 95 % quantile of the normal distribution


def yield_error(p: float, n: int) -> float:
    """The paper's error bar D = 2σ/√N with σ = √(p(1−p)) (p = yield, N impacts)."""
    if n <= 0:
        raise ConfigError(f"the error bar needs N > 0 impacts, got {n}")
    p = min(max(p, 0.0), 1.0)
    return 2.0 * math.sqrt(p * (1.0 - p) / n)


def wilson_interval(k: int, n: int, z: float = _Z95) -> tuple[float, float]:
    """Wilson score interval for k successes in n trials (default 95 %)."""
    if n <= 0:
        return (0.0, 1.0)
    p = k / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def _clopper_pearson(k: int, n: int, conf: float = 0.95) -> tuple[float, float]:
    if n <= 0:
        return (0.0, 1.0)
    a = 1.0 - conf
    low = 0.0 if k == 0 else float(stats.beta.ppf(a / 2, k, n - k + 1))
    high = 1.0 if k == n else float(stats.beta.ppf(1 - a / 2, k + 1, n - k))
    return (low, high)


@dataclass(frozen=True)
class YieldEstimate:
    """Yield and reflection at one energy from N trajectories (see the module docstring)."""

    energy_eV: float
    n: int
    n_sputtered: int
    n_events: int
    yield_: float
    sigma: float
    error: float
    wilson_low: float
    wilson_high: float
    exact_low: float
    exact_high: float
    reflection: float
    reflection_error: float
    n_undecided: int
    n_unphysical: int

    @property
    def yield_upper(self) -> float:
        """Y + n_undecided/N: the yield had every undecided trajectory sputtered one atom.

        An upper bound beside Y for what the undecided trajectories could still add
        (trajectories sputter one atom at most near threshold); equal to Y when none is
        undecided, NaN without trajectories.
        """
        return self.yield_ + self.n_undecided / self.n if self.n else float("nan")

    @property
    def wilson_half_width(self) -> float:
        return 0.5 * (self.wilson_high - self.wilson_low)

    @property
    def fit_sigma(self) -> float:
        """One-standard-deviation uncertainty for fits, non-zero even at Y = 0.

        The larger of σ/√N (= D/2) and the 95 % Wilson half-width divided by 1.96: D and
        the Wilson interval are two-sigma bars, while a least-squares fit weighs each point
        by its one-sigma error and reports one-sigma parameter errors.
        """
        return max(0.5 * self.error, self.wilson_half_width / _Z95)


def estimate_yield(energy_eV: float, rows: Iterable[Mapping[str, Any]]) -> YieldEstimate:
    """Yield estimate from trajectory rows (keys n_sputtered, reflected, undecided, unphysical)."""
    rows = list(rows)
    good = [r for r in rows if not r.get("unphysical")]
    n = len(good)
    n_sp = int(sum(int(r["n_sputtered"]) for r in good))
    n_ev = sum(1 for r in good if int(r["n_sputtered"]) > 0)
    n_ref = sum(1 for r in good if r["reflected"])
    y = n_sp / n if n else float("nan")
    sigma = math.sqrt(min(max(y, 0.0), 1.0) * (1 - min(max(y, 0.0), 1.0))) if n else float("nan")
    k = min(n_sp, n)
    wl, wh = wilson_interval(k, n)
    el, eh = _clopper_pearson(k, n)
    refl = n_ref / n if n else float("nan")
    return YieldEstimate(
        energy_eV=float(energy_eV),
        n=n,
        n_sputtered=n_sp,
        n_events=n_ev,
        yield_=y,
        sigma=sigma,
        error=yield_error(y, n) if n else float("nan"),
        wilson_low=wl,
        wilson_high=wh,
        exact_low=el,
        exact_high=eh,
        reflection=refl,
        reflection_error=yield_error(refl, n) if n else float("nan"),
        n_undecided=sum(1 for r in good if r["undecided"]),
        n_unphysical=len(rows) - n,
    )


def threshold_bracket(estimates: Sequence[YieldEstimate]) -> tuple[float | None, float | None]:
    """(highest energy with zero yield below the first non-zero one, lowest non-zero energy), eV.

    The sputtering threshold lies between the two (paper: 50–55 eV on Be(0001)); either
    is None when no energy of that kind was run.
    """
    est = [e for e in estimates if e.n > 0]
    return _bracket([e.energy_eV for e in est], [e.n_sputtered > 0 for e in est])


def _bracket(
    energies_eV: Sequence[float], sputtered: Sequence[bool]
) -> tuple[float | None, float | None]:
    """(highest energy without sputtering below the lowest with it, that lowest), eV."""
    hits = [e for e, hit in zip(energies_eV, sputtered, strict=True) if hit]
    first = min(hits) if hits else None
    zeros = [
        e
        for e, hit in zip(energies_eV, sputtered, strict=True)
        if not hit and (first is None or e < first)
    ]
    return (max(zeros) if zeros else None, first)


def reduced_energy(
    energy_eV: np.ndarray | float,
    z1: int = 4,
    z2: int = 4,
    m1_amu: float = 9.012,
    m2_amu: float = 9.012,
) -> np.ndarray:
    """Lindhard reduced energy ε = E0 · M2/(M1+M2) · a_L/(Z1 Z2 e²), with the Lindhard
    screening length a_L = (9π²/128)^(1/3) a_B (Z1^(2/3) + Z2^(2/3))^(−1/2)."""
    a_l = (9 * math.pi**2 / 128) ** (1 / 3) * _BOHR_A / math.sqrt(z1 ** (2 / 3) + z2 ** (2 / 3))
    return (
        np.asarray(energy_eV, dtype=float) * m2_amu / (m1_amu + m2_amu) * a_l / (z1 * z2 * _E2_EV_A)
    )


def eckstein_yield(
    energy_eV: np.ndarray | float,
    threshold_eV: float,
    q: float,
    mu: float,
    lambda_: float,
    z1: int = 4,
    z2: int = 4,
    m1_amu: float = 9.012,
    m2_amu: float = 9.012,
) -> np.ndarray:
    """Eckstein (revised Bohdansky) yield at normal incidence, DESIGN.md §2:

    Y = q s_n(ε) x^μ / (λ/w(ε) + x^μ), x = E0/Eth − 1 (Y = 0 for E0 ≤ Eth),
    w(ε) = ε + 0.1728 √ε + 0.008 ε^0.1504, s_n(ε) = ½ ln(1 + 1.2288 ε) / w(ε).
    """
    e = np.asarray(energy_eV, dtype=float)
    eps = reduced_energy(e, z1, z2, m1_amu, m2_amu)
    w = eps + 0.1728 * np.sqrt(eps) + 0.008 * eps**0.1504
    sn = 0.5 * np.log1p(1.2288 * eps) / w
    x = np.clip(e / threshold_eV - 1.0, 0.0, None)
    xm = x**mu
    return q * sn * xm / (lambda_ / w + xm)


_PARAMS = ("threshold_eV", "q", "mu", "lambda_")
#: μ and λ of the paper's Be(0001) fits, held fixed when fitting a campaign
PAPER_MU, PAPER_LAMBDA = 1.34, 2.03
#: The paper's published Be(0001) fit. In the standard (IAEA) form :func:`eckstein_yield`
#: uses, these values give Y(100 eV) = 0.009 against the paper's own 0.056 ± 0.021; they
#: reproduce its yields only with ε ten times larger (Y(100 eV) = 0.061), i.e. a unit slip
#: in the paper. They are a reference point, never a fit's start.
PAPER_BE0001_FIT = {"threshold_eV": 53.0, "q": 0.82, "mu": PAPER_MU, "lambda_": PAPER_LAMBDA}


def collision_pair(projectile: str = "Be", target: str = "Be") -> dict[str, Any]:
    """Atomic numbers and masses (amu) of a projectile–target pair, as
    :func:`eckstein_yield` takes them (``z1``, ``m1_amu``: the projectile's)."""
    from ase.data import atomic_masses, atomic_numbers

    z1, z2 = atomic_numbers[projectile], atomic_numbers[target]
    return {
        "z1": z1,
        "z2": z2,
        "m1_amu": float(atomic_masses[z1]),
        "m2_amu": float(atomic_masses[z2]),
    }


@dataclass(frozen=True)
class EcksteinFit:
    """Fitted Eckstein parameters with 1σ uncertainties (0 for fixed ones) and χ²."""

    params: dict[str, float]
    errors: dict[str, float]
    fixed: tuple[str, ...]
    chi2: float
    dof: int
    #: (projectile, target) elements: the reduced energy's atomic numbers and masses
    pair: tuple[str, str] = ("Be", "Be")

    def __call__(self, energy_eV: np.ndarray | float) -> np.ndarray:
        return eckstein_yield(energy_eV, **self.params, **collision_pair(*self.pair))


def _start_from_data(
    e: np.ndarray, y: np.ndarray, s: np.ndarray, fixed: Mapping[str, float], pair: dict[str, Any]
) -> dict[str, float]:
    """Start values from the yields themselves: E_th halfway between the highest energy
    without sputtering below the first with it (or 0.8× that first energy), q the
    weighted least-squares scale of the curve with that E_th (closed form, Y ∝ q)."""
    zero, first = _bracket(e.tolist(), (y > 0).tolist())
    first = float(e.max()) if first is None else first
    threshold = fixed.get("threshold_eV", (zero + first) / 2 if zero is not None else 0.8 * first)
    mu, lam = fixed.get("mu", PAPER_MU), fixed.get("lambda_", PAPER_LAMBDA)
    g = eckstein_yield(e, threshold, 1.0, mu, lam, **pair)
    den = float((g**2 / s**2).sum())
    q = float((g * y / s**2).sum()) / den if den > 0 else 1.0
    return {"threshold_eV": float(threshold), "q": max(q, 1e-3), "mu": mu, "lambda_": lam}


def fit_eckstein(
    energies_eV: Sequence[float],
    yields: Sequence[float],
    sigma: Sequence[float],
    fixed: Mapping[str, float] | None = None,
    start: Mapping[str, float] | None = None,
    pair: tuple[str, str] = ("Be", "Be"),
) -> EcksteinFit:
    """Weighted least-squares fit of :func:`eckstein_yield` to measured yields of the
    ``pair`` (projectile, target) elements.

    ``sigma``: the yields' uncertainties (> 0; for campaign estimates use
    :attr:`YieldEstimate.fit_sigma`, which is non-zero at Y = 0). ``fixed`` holds
    parameters kept constant (names: threshold_eV, q, mu, lambda_); the rest are free,
    started from ``start`` or from values derived from the data (:func:`_start_from_data`).
    Uncertainties are from ``scipy.optimize.curve_fit`` with ``absolute_sigma=True``.
    """
    fixed = dict(fixed or {})
    unknown = set(fixed) - set(_PARAMS) | set(start or {}) - set(_PARAMS)
    if unknown:
        raise ConfigError(f"unknown Eckstein parameter(s) {sorted(unknown)}; use {list(_PARAMS)}")
    e, y, s = (np.asarray(a, dtype=float) for a in (energies_eV, yields, sigma))
    if not (e.shape == y.shape == s.shape) or (s <= 0).any() or not np.isfinite(y).all():
        raise ConfigError(
            "fit_eckstein needs equally long energies, finite yields and sigma > 0 everywhere "
            "(use YieldEstimate.fit_sigma for points with zero yield)"
        )
    free = [p for p in _PARAMS if p not in fixed]
    if len(e) <= len(free):
        raise ConfigError(
            f"{len(e)} points cannot determine {len(free)} free parameters; fix some "
            "(e.g. fixed={'mu': 1.34, 'lambda_': 2.03}) or add energies"
        )
    z_m = collision_pair(*pair)
    p0 = [dict(_start_from_data(e, y, s, fixed, z_m), **(start or {}))[p] for p in free]
    lower = {"threshold_eV": 1e-3, "q": 0.0, "mu": 0.05, "lambda_": 1e-6}
    upper = {"threshold_eV": float(e.max()), "q": np.inf, "mu": 10.0, "lambda_": np.inf}
    p0 = [
        min(max(v, lower[p] * 1.01 + 1e-9), upper[p] * 0.99) for v, p in zip(p0, free, strict=True)
    ]

    def model(x: np.ndarray, *vals: float) -> np.ndarray:
        return eckstein_yield(x, **fixed, **dict(zip(free, vals, strict=True)), **z_m)

    popt, pcov = optimize.curve_fit(
        model,
        e,
        y,
        p0=p0,
        sigma=s,
        absolute_sigma=True,
        bounds=([lower[p] for p in free], [upper[p] for p in free]),
        maxfev=20000,
    )
    params = dict(fixed, **dict(zip(free, map(float, popt), strict=True)))
    errs = {p: 0.0 for p in fixed} | {
        p: float(math.sqrt(pcov[i, i])) if np.isfinite(pcov[i, i]) else float("inf")
        for i, p in enumerate(free)
    }
    chi2 = float((((model(e, *popt) - y) / s) ** 2).sum())
    return EcksteinFit(
        params={p: params[p] for p in _PARAMS},
        errors={p: errs[p] for p in _PARAMS},
        fixed=tuple(sorted(fixed)),
        chi2=chi2,
        dof=len(e) - len(free),
        pair=(pair[0], pair[1]),
    )


#: the least data an Eckstein fit (free E_th and q) is attempted on: energies, energies
#: with sputtering, sputtered atoms in all. With fewer, q and E_th are not determined.
MIN_FIT_ENERGIES, MIN_FIT_ENERGIES_WITH_EVENTS, MIN_FIT_EVENTS = 3, 2, 5


def eckstein_fit_skip_reason(estimates: Sequence[YieldEstimate]) -> str | None:
    """Why a campaign's yields are too few to fit (None when they suffice)."""
    with_events = [e for e in estimates if e.n_sputtered > 0]
    events = sum(e.n_sputtered for e in estimates)
    if (
        len(estimates) >= MIN_FIT_ENERGIES
        and len(with_events) >= MIN_FIT_ENERGIES_WITH_EVENTS
        and events >= MIN_FIT_EVENTS
    ):
        return None
    return (
        f"{len(estimates)} energies, {len(with_events)} with sputtering, {events} sputtered "
        f"atoms; a fit needs at least {MIN_FIT_ENERGIES}, {MIN_FIT_ENERGIES_WITH_EVENTS} and "
        f"{MIN_FIT_EVENTS} (run more trajectories per energy)"
    )


def fit_campaign(
    estimates: Sequence[YieldEstimate], pair: tuple[str, str] = ("Be", "Be")
) -> EcksteinFit | None:
    """Eckstein fit of a campaign's yields (``pair``: projectile, target), μ and λ fixed at
    the paper's values, E_th and q free.

    None when the data are too few (:func:`eckstein_fit_skip_reason`).
    """
    if eckstein_fit_skip_reason(estimates) is not None:
        return None
    return fit_eckstein(
        [e.energy_eV for e in estimates],
        [e.yield_ for e in estimates],
        [e.fit_sigma for e in estimates],
        fixed={"mu": PAPER_MU, "lambda_": PAPER_LAMBDA},
        pair=pair,
    )


def plot_yields(
    path: str | Path,
    estimates: Sequence[YieldEstimate],
    fit: EcksteinFit | None = None,
    published: Sequence[tuple[float, float, float]] | None = PAPER_BE0001_NNP5,
    label: str = "this work",
    title: str = "Be self-sputtering, Be(0001)",
    more: Sequence[tuple[str, Sequence[YieldEstimate], EcksteinFit | None]] = (),
) -> Path:
    """Yield vs energy with error bars D, the Eckstein fit and published points; a PNG.

    Where trajectories stayed undecided, an open triangle marks Y + n_undecided/N.

    ``more``: further series (label, estimates, fit or None), e.g. other surfaces or slab
    sizes, drawn with their own markers and fits.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4.0), dpi=120)
    est = [x for x in estimates if x.n > 0]
    ax.errorbar(
        [x.energy_eV for x in est],
        [x.yield_ for x in est],
        yerr=[x.error for x in est],
        fmt="o",
        capsize=3,
        label=f"{label} (N = {', '.join(str(x.n) for x in est)})",
    )
    upper = [(x.energy_eV, x.yield_upper) for x in est if x.n_undecided > 0]
    if upper:  # Y + n_undecided/N: what the undecided trajectories could still add
        ax.plot(
            *zip(*upper, strict=True), "v", mfc="none", color="0.4",
            label="upper bound with undecided runs",
        )  # fmt: skip
    if published:
        pe, py, pd = zip(*published, strict=True)
        ax.errorbar(
            pe,
            py,
            yerr=pd,
            fmt="s",
            mfc="none",
            capsize=3,
            label="paper, NNP5 (490 atoms; its fit q = 0.82 matches these only with ε ×10)",
        )
    energies = [x.energy_eV for x in est] + ([p[0] for p in published] if published else [])
    if fit is not None and energies:
        grid = np.linspace(min(energies) * 0.9, max(energies) * 1.1, 300)
        p = fit.params
        ax.plot(
            grid,
            fit(grid),
            "-",
            label=f"Eckstein fit: $E_{{th}}$ = {p['threshold_eV']:.1f} eV, q = {p['q']:.2f}, "
            f"μ = {p['mu']:.2f}, λ = {p['lambda_']:.2f}",
        )
    for k, (more_label, more_est, more_fit) in enumerate(more):
        pts = [x for x in more_est if x.n > 0]
        if not pts:
            continue
        bars = ax.errorbar(
            [x.energy_eV for x in pts],
            [x.yield_ for x in pts],
            yerr=[x.error for x in pts],
            fmt="^v<>dp"[k % 6],
            capsize=3,
            label=f"{more_label} (N = {', '.join(str(x.n) for x in pts)})",
        )
        if more_fit is not None:
            e = [x.energy_eV for x in pts]
            grid = np.linspace(min(e) * 0.9, max(e) * 1.1, 300)
            ax.plot(grid, more_fit(grid), "--", color=bars[0].get_color())
    ax.set_xlabel("projectile energy (eV)")
    ax.set_ylabel("sputtering yield (atoms/ion)")
    ax.set_title(title)
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
