"""Unsupervised amplitude losses, torch.

Both losses are divided by ``mean(obs_amp) + 1e-8`` (detached), as the reference does, so
their size does not depend on the arbitrary amplitude units of a dataset.

- ``mae``: ``mean|A_pred - A_obs| / mean(A_obs)``.
- ``poisson``: Poisson NLL of the observed counts ``k = A_obs^2`` at rate ``lam = A_pred^2``,
  ``sum_{C,H,W} [lam - k log lam + lgamma(k + 1)]`` per sample, mean over the batch, divided by
  ``mean(A_obs)``. This equals ``-Independent(Poisson(lam), 3).log_prob(k)`` for (B, C, N, N)
  inputs; the lgamma term makes it a true NLL (>= 0 in expectation), not a shifted one.
  No epsilon on ``lam`` (as the reference): ``xlogy`` gives 0 where k = 0.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

NORM_EPS = 1e-8


def _norm(obs_amp: torch.Tensor) -> torch.Tensor:
    return obs_amp.detach().mean() + NORM_EPS


def mae_loss(pred_amp: torch.Tensor, obs_amp: torch.Tensor) -> torch.Tensor:
    """``mean|pred - obs| / mean(obs)``; tensors of equal shape (B, C, N, N)."""
    return (pred_amp - obs_amp).abs().mean() / _norm(obs_amp)


def poisson_loss(pred_amp: torch.Tensor, obs_amp: torch.Tensor) -> torch.Tensor:
    """Poisson NLL on intensities, summed per sample, mean over the batch, / mean(obs)."""
    lam = pred_amp.square()
    k = obs_amp.square()
    nll = lam - torch.xlogy(k, lam) + torch.lgamma(k + 1.0)
    per_sample = nll.reshape(nll.shape[0], -1).sum(dim=1)
    return per_sample.mean() / _norm(obs_amp)


LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

LOSSES: dict[str, LossFn] = {"mae": mae_loss, "poisson": poisson_loss}


def _check_kind(kind: str) -> str:
    if kind not in LOSSES:
        raise ValueError(f"trainer.loss={kind!r} is unknown; allowed: {sorted(LOSSES)}")
    return kind


def get_loss(kind: str) -> LossFn:
    """The loss function for ``kind`` (``"mae"`` or ``"poisson"``)."""
    return LOSSES[_check_kind(kind)]


def loss_names(kind: str) -> dict[str, str]:
    """Logged names: ``{"train": f"{kind}_train_loss", "val": f"{kind}_val_loss"}``."""
    _check_kind(kind)
    return {"train": f"{kind}_train_loss", "val": f"{kind}_val_loss"}
