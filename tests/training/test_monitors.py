"""Failure monitors and per-epoch statistics, on the device, read in one transfer."""

import math

import numpy as np
import pytest
import torch

from ptychostab.training.monitors import CollapseMeter, FailureSettings, StepMonitor

T = torch.tensor


def feed(monitor, losses, pres=None, posts=None):
    pres = pres or [1.0] * len(losses)
    posts = posts or pres
    for loss, pre, post in zip(losses, pres, posts, strict=True):
        monitor.record(T(loss), T(pre), T(post))


def test_nonfinite_is_attributed_to_its_step():
    m = StepMonitor(10, FailureSettings())
    feed(m, [1.0, 0.9, 0.8])
    assert m.poll() == {"nonfinite": None, "diverged": None}
    feed(m, [math.nan, 0.5, math.inf])  # steps 3, 4, 5
    assert m.poll()["nonfinite"] == 3
    m2 = StepMonitor(10, FailureSettings())
    feed(m2, [1.0, 1.0], pres=[1.0, math.inf])
    assert m2.poll()["nonfinite"] == 1


def test_diverged_needs_patience_consecutive_steps():
    s = FailureSettings(loss_factor=2.0, patience_steps=3)
    m = StepMonitor(20, s)
    # min so far 1.0; 2.5 > 2 x 1.0 three times in a row first completes at step 7
    feed(m, [1.0, 2.5, 2.5, 1.5, 2.5, 2.5, 2.5, 2.5])
    assert m.poll()["diverged"] == 6
    m = StepMonitor(20, s)
    feed(m, [1.0, 2.5, 2.5, 1.5, 2.5, 2.5, 1.9])
    assert m.poll()["diverged"] is None


def test_diverged_by_grad_norm_bound():
    m = StepMonitor(10, FailureSettings(grad_norm_bound=10.0, patience_steps=2))
    feed(m, [1.0] * 5, pres=[1.0, 11.0, 5.0, 11.0, 12.0])
    assert m.poll()["diverged"] == 4


def test_epoch_summary_matches_numpy_and_resets():
    m = StepMonitor(8, FailureSettings())
    rng = np.random.default_rng(0)
    loss, pre = rng.random(5), rng.random(5) * 10
    post = np.minimum(pre, 5.0)
    feed(m, loss.tolist(), pre.tolist(), post.tolist())
    s = m.epoch_summary({"val_loss": T(0.25)})
    assert s["steps"] == 5 and s["val_loss"] == 0.25
    for name, v in (("grad_norm_pre", pre), ("grad_norm_post", post)):
        assert s[f"{name}_mean"] == pytest.approx(v.mean(), rel=1e-6)
        assert s[f"{name}_median"] == pytest.approx(np.median(v), rel=1e-6)
        assert s[f"{name}_max"] == pytest.approx(v.max(), rel=1e-6)
    assert s["train_loss"] == pytest.approx(loss.mean(), rel=1e-6)
    assert s["clip_fraction"] == pytest.approx(np.mean(post < pre))
    m.start_epoch()
    feed(m, [0.1])
    assert m.epoch_summary()["steps"] == 1
    assert int(m.step) == 6  # the global step carries over epochs


def test_state_dict_round_trip():
    m = StepMonitor(4, FailureSettings(patience_steps=2, loss_factor=1.5))
    feed(m, [1.0, 2.0])
    m2 = StepMonitor(4, FailureSettings(patience_steps=2, loss_factor=1.5))
    m2.load_state_dict(m.state_dict())
    feed(m, [2.0])
    feed(m2, [2.0])
    assert m.poll() == m2.poll() == {"nonfinite": None, "diverged": 2}
    assert m.epoch_summary() == m2.epoch_summary()


@pytest.mark.parametrize("field, value", [("loss_factor", 1.0), ("grad_norm_bound", 0),
                                          ("patience_steps", 0)])
def test_bad_failure_settings(field, value):
    with pytest.raises(ValueError, match=field):
        FailureSettings(**{field: value})


def test_collapse_meter():
    m = CollapseMeter()
    m.update(torch.full((4, 1, 8, 8), 0.7))
    assert m.value().item() == 0.0
    m = CollapseMeter()
    a = torch.rand(4, 1, 8, 8)
    m.update(a[:2])
    m.update(a[2:])
    expected = a.double().std(dim=(-2, -1), correction=0).mean() / a.double().mean()
    assert m.value().item() == pytest.approx(expected.item())
    assert math.isnan(CollapseMeter().value().item())
