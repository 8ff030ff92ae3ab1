"""Global extended Kalman filter over all weights of a potential, in the manner of n2p2.

For an observation vector with error ξ = y_ref − y (m,) and Jacobian H = ∂y/∂w (n_w, m),
n2p2's two filter types:

``"standard"`` (n2p2's ``kalman_type 0``, its default)::

    A = Hᵀ P H + (1/η) I      K = P H A⁻¹
    w ← w + K ξ               P ← P − K Hᵀ P + q I

The measurement noise 1/η starts at 1/η₀ = 100 and falls as η grows by a factor
exp(τ_η) per epoch up to η_max = 1: the first epochs take small, damped steps, which is
what keeps the filter stable on data with a wide spread of errors (impact frames next
to thermal ones).

``"fading"`` (n2p2's ``kalman_type 1``)::

    A = Hᵀ P H + λ I          K = P H A⁻¹
    w ← w + K ξ               P ← (P − K Hᵀ P) / λ + q I
    λ ← ν λ + 1 − ν           (forgetting factor → 1)

P starts as I/ε; the process noise q decays per epoch, q = max(q0 exp(−epoch/τ_q), q_min).
The covariance spans every weight of every element network (for one element, ≈ 2600
weights for 53-30-30-1: P is 53 MB).
"""

from __future__ import annotations

import math
from typing import Any

import torch

__all__ = ["KALMAN_TYPES", "GlobalKalmanFilter"]

#: n2p2's filter types by name: ``kalman_type`` 0 and 1
KALMAN_TYPES = ("standard", "fading")


#: updates between two symmetrisations of P (round-off makes it drift from symmetry)
SYMMETRISE_EVERY = 50


class GlobalKalmanFilter:
    """State of the filter: P (n_w, n_w) float64, η or λ, q. See the module docstring."""

    def __init__(
        self,
        n_weights: int,
        epsilon: float,
        q0: float,
        q_tau_epochs: float,
        q_min: float,
        lambda0: float,
        nu: float,
        kind: str = "standard",
        eta0: float = 0.01,
        eta_tau_epochs: float = 2.302,
        eta_max: float = 1.0,
    ) -> None:
        if kind not in KALMAN_TYPES:
            raise ValueError(f"kind must be 'standard' or 'fading', got {kind!r}")
        self.kind = kind
        self.P = torch.eye(n_weights, dtype=torch.float64) / epsilon
        self.lambda_ = float(lambda0)
        self.nu = float(nu)
        self.q0, self.q_tau_epochs, self.q_min = float(q0), float(q_tau_epochs), float(q_min)
        self.q = float(q0)
        self.eta0, self.eta_tau_epochs, self.eta_max = float(eta0), float(eta_tau_epochs), eta_max
        self.eta = float(eta0)
        self._eta_step = 1.0  # growth of η per update, set by start_epoch
        self._updates = 0

    def start_epoch(self, epoch: int, updates_per_epoch: int = 1) -> None:
        """Set the process noise for ``epoch`` (0-based) and η's growth per update."""
        self.q = max(self.q0 * math.exp(-epoch / self.q_tau_epochs), self.q_min)
        self._eta_step = math.exp(self.eta_tau_epochs / max(1, updates_per_epoch))

    @torch.no_grad()
    def update(self, weights: torch.Tensor, error: torch.Tensor, jacobian: torch.Tensor) -> None:
        """One update; ``weights`` (n_w,) in place, error (m,), jacobian H (n_w, m)."""
        ph = self.P @ jacobian  # (n_w, m)
        a = jacobian.T @ ph
        if self.kind == "standard":
            self.eta = min(self.eta * self._eta_step, self.eta_max)
            a.diagonal().add_(1.0 / self.eta)
        else:
            a.diagonal().add_(self.lambda_)
        k = torch.linalg.solve(a, ph.T).T  # P H A⁻¹ (A symmetric)
        weights.add_(k @ error)
        self.P.addmm_(k, ph.T, alpha=-1.0)  # P −= P H A⁻¹ Hᵀ P, in place
        if self.kind == "fading":
            self.P.div_(self.lambda_)
            self.lambda_ = self.nu * self.lambda_ + 1.0 - self.nu
        self.P.diagonal().add_(self.q)
        self._updates += 1
        if self._updates % SYMMETRISE_EVERY == 0:
            # P stays symmetric up to round-off; a full transpose per update cost ~60 % of it
            self.P.add_(self.P.T.clone()).mul_(0.5)

    def state_dict(self) -> dict[str, Any]:
        return {
            "P": self.P,
            "lambda": self.lambda_,
            "q": self.q,
            "eta": self.eta,
            "updates": self._updates,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.P = state["P"].to(torch.float64)
        self.lambda_ = float(state["lambda"])
        self.q = float(state["q"])
        self.eta = float(state.get("eta", self.eta0))
        self._updates = int(state.get("updates", 0))
