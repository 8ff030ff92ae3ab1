"""Global extended Kalman filter over all weights of a potential, in the manner of n2p2.

For an observation vector with error ξ = y_ref − y (m,) and Jacobian H = ∂y/∂w (n_w, m):

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

__all__ = ["GlobalKalmanFilter"]


class GlobalKalmanFilter:
    """State of the filter: P (n_w, n_w) float64, λ, q. See the module docstring."""

    def __init__(
        self,
        n_weights: int,
        epsilon: float,
        q0: float,
        q_tau_epochs: float,
        q_min: float,
        lambda0: float,
        nu: float,
    ) -> None:
        self.P = torch.eye(n_weights, dtype=torch.float64) / epsilon
        self.lambda_ = float(lambda0)
        self.nu = float(nu)
        self.q0, self.q_tau_epochs, self.q_min = float(q0), float(q_tau_epochs), float(q_min)
        self.q = float(q0)

    def start_epoch(self, epoch: int) -> None:
        """Set the process noise for ``epoch`` (0-based)."""
        self.q = max(self.q0 * math.exp(-epoch / self.q_tau_epochs), self.q_min)

    @torch.no_grad()
    def update(self, weights: torch.Tensor, error: torch.Tensor, jacobian: torch.Tensor) -> None:
        """One update; ``weights`` (n_w,) in place, error (m,), jacobian H (n_w, m)."""
        ph = self.P @ jacobian  # (n_w, m)
        a = jacobian.T @ ph
        a.diagonal().add_(self.lambda_)
        k = torch.linalg.solve(a, ph.T).T  # P H A⁻¹ (A symmetric)
        weights.add_(k @ error)
        self.P.sub_(k @ ph.T)
        self.P.div_(self.lambda_)
        self.P.diagonal().add_(self.q)
        self.P.add_(self.P.T.clone()).mul_(0.5)  # keep P symmetric against round-off
        self.lambda_ = self.nu * self.lambda_ + 1.0 - self.nu

    def state_dict(self) -> dict[str, Any]:
        return {"P": self.P, "lambda": self.lambda_, "q": self.q}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.P = state["P"].to(torch.float64)
        self.lambda_ = float(state["lambda"])
        self.q = float(state["q"])
