"""Losses: values, normalisation, Poisson NLL = torch.distributions, names, bad kind."""

import pytest
import torch
from torch.distributions import Independent, Poisson

from ptychostab.physics.losses import LOSSES, get_loss, loss_names


def _pair(seed=0, shape=(4, 1, 8, 8)):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=g) * 3 + 0.1, torch.rand(shape, generator=g) * 3 + 0.1


def test_mae_is_mean_abs_over_mean_obs():
    pred, obs = _pair()
    expected = (pred - obs).abs().mean() / (obs.mean() + 1e-8)
    torch.testing.assert_close(LOSSES["mae"](pred, obs), expected)


def test_poisson_is_the_independent_poisson_nll_over_mean_obs():
    pred, obs = _pair(1)
    lam, k = pred**2, obs**2
    nll = -Independent(Poisson(lam, validate_args=False), 3).log_prob(k)
    torch.testing.assert_close(LOSSES["poisson"](pred, obs), nll.mean() / (obs.mean() + 1e-8))


def test_poisson_handles_zero_counts_and_zero_rate():
    pred, obs = _pair(2)
    pred[0, 0, 0, 0] = 0.0
    obs[0, 0, 0, 0] = 0.0
    assert torch.isfinite(LOSSES["poisson"](pred, obs))


@pytest.mark.parametrize("kind", ["mae", "poisson"])
def test_losses_are_zero_or_minimal_at_a_perfect_prediction(kind):
    pred, obs = _pair(3)
    perfect = get_loss(kind)(obs, obs)
    assert float(get_loss(kind)(pred, obs)) > float(perfect)
    if kind == "mae":
        assert float(perfect) == 0.0


def test_mae_is_invariant_to_a_common_amplitude_unit():
    pred, obs = _pair(4)
    torch.testing.assert_close(LOSSES["mae"](7 * pred, 7 * obs), LOSSES["mae"](pred, obs))


def test_normalisation_is_detached():
    pred, obs = _pair(5)
    obs.requires_grad_(True)
    LOSSES["mae"](pred, obs).backward()
    # d/dobs of mean|pred - obs| / const only: the sign of (obs - pred) / (n * mean)
    expected = torch.sign(obs.detach() - pred) / obs.numel() / (obs.detach().mean() + 1e-8)
    torch.testing.assert_close(obs.grad, expected)


def test_loss_names_and_bad_kind():
    assert loss_names("mae") == {"train": "mae_train_loss", "val": "mae_val_loss"}
    assert loss_names("poisson") == {"train": "poisson_train_loss", "val": "poisson_val_loss"}
    assert set(LOSSES) == {"mae", "poisson"}
    for bad in (loss_names, get_loss):
        with pytest.raises(ValueError, match=r"trainer.loss='mse'.*\['mae', 'poisson'\]"):
            bad("mse")
