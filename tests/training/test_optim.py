"""Optimizers and schedules: the learning rate actually follows the configured schedule."""

import math

import pytest
import torch

from ptychostab.training.optim import build_optimizer, build_scheduler, describe_optimizer
from ptychostab.training.settings import TrainerSettings


def lrs(settings, val_losses=None, epochs=None):
    """The lr of each epoch, stepping the scheduler at every epoch end as the module does."""
    p = torch.nn.Parameter(torch.zeros(3))
    opt = build_optimizer([p], settings)
    sched = build_scheduler(opt, settings)
    epochs = epochs or settings.max_epochs
    out = []
    for e in range(epochs):
        out.append(opt.param_groups[0]["lr"])
        opt.step()  # no grads: a no-op, but the order the module uses
        sched.step(val_losses[e] if val_losses else 1.0)
    return out


def test_constant():
    assert lrs(TrainerSettings(max_epochs=4, lr=0.01)) == [0.01] * 4


def test_exponential():
    got = lrs(TrainerSettings(max_epochs=5, lr=0.1, scheduler="exponential", exp_gamma=0.5))
    assert got == pytest.approx([0.1 * 0.5**e for e in range(5)])


def test_cosine_without_warmup_is_cosine_annealing():
    s = TrainerSettings(max_epochs=6, lr=0.1, scheduler="cosine", lr_min_ratio=0.2)
    p = torch.nn.Parameter(torch.zeros(1))
    ref_opt = torch.optim.SGD([p], lr=0.1)
    ref = torch.optim.lr_scheduler.CosineAnnealingLR(ref_opt, T_max=6, eta_min=0.02)
    expected = []
    for _ in range(6):
        expected.append(ref_opt.param_groups[0]["lr"])
        ref_opt.step()
        ref.step()
    assert lrs(s) == pytest.approx(expected)


def test_cosine_with_warmup():
    s = TrainerSettings(max_epochs=10, lr=1.0, scheduler="cosine", warmup_epochs=4,
                        lr_min_ratio=0.1)
    got = lrs(s)
    assert got[:5] == pytest.approx([0.1, 0.325, 0.55, 0.775, 1.0])
    cos = [0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t / 6)) for t in range(6)]
    assert got[4:] == pytest.approx(cos)
    assert got[-1] > 0.1  # reaches eta_min only after max_epochs


def test_plateau_reduces_after_patience():
    s = TrainerSettings(max_epochs=8, lr=1.0, scheduler="plateau", plateau_factor=0.5,
                        plateau_patience=2, plateau_min_lr=0.2)
    got = lrs(s, val_losses=[1.0, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9])
    # best 0.9 at epoch 1; 3 bad epochs (> patience 2) -> halve after epoch 4, again after 7
    assert got == pytest.approx([1.0, 1.0, 1.0, 1.0, 1.0, 0.5, 0.5, 0.5])
    got = lrs(s, val_losses=[1.0] + [2.0] * 20, epochs=21)
    assert min(got) == pytest.approx(0.2)


@pytest.mark.parametrize("name, cls", [("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW),
                                       ("sgd", torch.optim.SGD)])
def test_optimizers_and_their_knobs(name, cls):
    s = TrainerSettings(optimizer=name, lr=0.03, betas=(0.8, 0.95), weight_decay=0.01,
                        momentum=0.7)
    opt = build_optimizer([torch.nn.Parameter(torch.zeros(2, dtype=torch.cfloat))], s)
    d = describe_optimizer(opt)
    assert isinstance(opt, cls) and d["class"] == cls.__name__
    assert d["lr"] == 0.03 and d["weight_decay"] == 0.01
    if name == "sgd":
        assert d["momentum"] == 0.7 and d["nesterov"] is True
    else:
        assert d["betas"] == [0.8, 0.95]
    assert d["foreach"] is True  # complex weights rule out fused


def test_settings_refuse_unknown_and_bad_values():
    with pytest.raises(TypeError):
        TrainerSettings.from_config({"lr_typo": 1})
    with pytest.raises(ValueError, match="optimizer"):
        TrainerSettings(optimizer="lamb")
    with pytest.raises(ValueError, match="warmup"):
        TrainerSettings(max_epochs=3, warmup_epochs=3, scheduler="cosine")
