"""The LightningModule under a Trainer: the step as defined, no host sync, sync cadence."""

import math
import sys
from pathlib import Path

import lightning as L
import pytest
import torch

from ptychostab.data.simulate import load_or_build
from ptychostab.models import build_generator
from ptychostab.physics.forward import predict_amplitude
from ptychostab.physics.losses import LOSSES
from ptychostab.training import (
    FailureSettings,
    GradientClipper,
    PtychoModule,
    StepMonitor,
    TrainerSettings,
)

SRC = str(Path(__file__).resolve().parents[2] / "src" / "ptychostab")


def make_module(cfg, **trainer):
    data = load_or_build(dict(cfg.data), cache_dir=cfg.paths.cache_dir)
    torch.manual_seed(0)
    arch = dict(cfg.arch)
    gen = build_generator(arch.pop("name"), in_channels=1, N=cfg.data.N,
                          **{**arch, "fno_blocks": cfg.depth})
    settings = TrainerSettings(**{**dict(cfg.trainer), **trainer})
    return PtychoModule(gen, torch.as_tensor(data.probe), torch.as_tensor(data.train_amp),
                        torch.as_tensor(data.test_amp), settings=settings,
                        clipper=GradientClipper.from_config(cfg.clip),
                        failure=FailureSettings.from_config(cfg.failure), seed=0)


def fit(module):
    trainer = L.Trainer(accelerator="cpu", devices=1, max_epochs=module.settings.max_epochs,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False)
    trainer.fit(module)
    return trainer


def test_loss_is_the_physics_loss(make_cfg):
    m = make_module(make_cfg(**{"trainer.loss": "poisson"}))
    x = m.train_data[:3]
    loss, obj = m.compute_loss(x)
    expected = LOSSES["poisson"](predict_amplitude(m.generator(x), m.probe), x)
    torch.testing.assert_close(loss, expected)
    assert obj.is_complex() and obj.shape == x.shape


SYNCS = ("item", "tolist", "numpy", "__bool__", "__float__", "__int__", "__index__")
SANCTIONED = {"poll", "epoch_summary"}  # the monitor's scheduled reads


def test_training_steps_do_not_read_tensors_on_the_host(make_cfg, monkeypatch):
    """No ``.item()``, ``if tensor``, ``float(tensor)``... from our code inside a step, except
    the monitor's scheduled reads (here: at the last step of each epoch only)."""
    m = make_module(make_cfg(**{"clip.algorithm": "agc", "clip.value": 0.01,
                                "trainer.scheduler": "plateau", "trainer.sync_every": 1000}))
    in_step, offenders, polls = [False], [], []

    def spy(name):
        original = getattr(torch.Tensor, name)

        def wrapped(self, *a, **k):
            caller = sys._getframe(1)
            if in_step[0] and caller.f_code.co_filename.startswith(SRC) \
                    and caller.f_code.co_name not in SANCTIONED:
                offenders.append(f"{name} in {caller.f_code.co_name} "
                                 f"({caller.f_code.co_filename}:{caller.f_lineno})")
            return original(self, *a, **k)
        return wrapped

    for name in SYNCS:
        monkeypatch.setattr(torch.Tensor, name, spy(name))
    real_step, real_poll = PtychoModule.training_step, StepMonitor.poll

    def step(self, batch, batch_idx):
        in_step[0] = True
        try:
            return real_step(self, batch, batch_idx)
        finally:
            in_step[0] = False

    def poll(self, with_last=False):
        polls.append(self.count)
        return real_poll(self, with_last)

    monkeypatch.setattr(PtychoModule, "training_step", step)
    monkeypatch.setattr(StepMonitor, "poll", poll)
    fit(m)
    assert offenders == []
    assert polls == [4, 4]  # one read per epoch (4 steps each), at its last step
    assert m.global_step_count == 8 and len(m.history) == 2


def test_sync_every_sets_the_read_cadence(make_cfg, monkeypatch):
    m = make_module(make_cfg(**{"trainer.sync_every": 3, "trainer.max_epochs": 3}))
    steps = []
    real_poll = StepMonitor.poll
    monkeypatch.setattr(StepMonitor, "poll",
                        lambda self, with_last=False: steps.append(int(self.step))
                        or real_poll(self, with_last))
    fit(m)
    assert steps == [3, 4, 6, 8, 9, 12]  # multiples of 3 and each epoch's last step


def test_eval_batch_size_sets_validation_batches(make_cfg, monkeypatch):
    m = make_module(make_cfg(**{"trainer.eval_batch_size": 4, "trainer.max_epochs": 1}))
    sizes = []
    real = m.compute_loss
    monkeypatch.setattr(m, "compute_loss", lambda x: sizes.append(len(x)) or real(x))
    m.validate()
    assert sizes == [4, 4, 1]  # 9 validation patterns


def test_lr_changes_during_training_as_scheduled(make_cfg):
    m = make_module(make_cfg(**{"trainer.scheduler": "exponential", "trainer.exp_gamma": 0.5,
                                "trainer.max_epochs": 3}))
    fit(m)
    assert [r["lr"] for r in m.history] == pytest.approx([1e-3, 5e-4, 2.5e-4])


@pytest.mark.slow
def test_compile_gives_the_eager_losses(make_cfg):
    """torch.compile on CPU (inductor; > 60 s here, hence slow)."""
    losses = []
    for compile_ in (False, True):
        m = make_module(make_cfg(**{"trainer.compile": compile_, "trainer.max_epochs": 1}))
        fit(m)
        losses.append([v for r in m.history for v in (r["train_loss"], r["val_loss"])])
    assert losses[1] == pytest.approx(losses[0], rel=1e-5)


def test_on_sync_gets_the_last_step_values_from_the_sync_transfer(make_cfg, monkeypatch):
    """Per-step values for trackers ride on the sync point's read: the same cadence as the
    monitor's polls, and the values of the step just taken."""
    m = make_module(make_cfg(**{"trainer.sync_every": 2}))
    seen, transfers = [], []
    m.on_sync = lambda mod, step, values: seen.append((step, dict(values)))
    real_tolist = torch.Tensor.tolist
    monkeypatch.setattr(torch.Tensor, "tolist",
                        lambda self: transfers.append(1) or real_tolist(self))
    fit(m)
    assert [s for s, _ in seen] == [2, 4, 6, 8]  # 4 steps per epoch, every 2 steps
    assert len(transfers) == len(seen) + 2  # one per sync point, plus the 2 epoch summaries
    for _step, values in seen:
        assert set(values) == {"train_loss", "grad_norm_pre", "grad_norm_post"}
        assert all(math.isfinite(v) for v in values.values())
    # the last step of each epoch: its loss is the buffer's last entry of that epoch
    assert seen[-1][1]["train_loss"] > 0
