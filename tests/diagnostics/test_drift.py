"""Per-epoch drift probe: statistics against a hand computation, the probe batch, the file."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from ptychostab.diagnostics.drift import (
    ACTIVATION_COLUMNS,
    ActivationLog,
    DriftProbe,
    probe_indices,
    read_activations,
    write_activations,
)
from ptychostab.models import PtychoBlock, build_generator


def _constant_update_block(channels: int, biases: list[float]) -> PtychoBlock:
    """A PtychoBlock whose branch is GELU(b_c): spectral and conv weights zero, conv bias b."""
    block = PtychoBlock(channels, n_modes=2)
    with torch.no_grad():
        for p in block.spectral.parameters():
            p.zero_()
        block.local_conv.weight.zero_()
        block.local_conv.bias.copy_(torch.tensor(biases))
    return block


class _Stack(nn.Module):
    def __init__(self, *blocks):
        super().__init__()
        self.blocks = nn.Sequential(*blocks)

    def forward(self, x):
        return self.blocks(x)


def test_statistics_equal_a_hand_computation():
    biases = [1.0, -4.0, 0.5, -5.0]
    block = _constant_update_block(4, biases)
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    rows = DriftProbe(_Stack(block), x).measure(epoch=3)
    assert len(rows) == 1
    row = rows[0]
    gelu = torch.nn.functional.gelu(torch.tensor(biases, dtype=torch.float64))
    upd = gelu.view(1, 4, 1, 1).expand(2, 4, 8, 8)
    y = x.double() + upd
    assert row["epoch"] == 3 and row["block"] == 0 and row["channels"] == 4
    assert row["resolution"] == 8 and row["level"] == 0
    assert row["update_mean"] == pytest.approx(float(gelu.mean()), abs=1e-6)
    assert row["update_abs_mean"] == pytest.approx(float(gelu.abs().mean()), abs=1e-6)
    assert row["update_std"] == pytest.approx(float(upd.std()), abs=1e-6)
    assert row["out_mean"] == pytest.approx(float(y.mean()), abs=1e-6)
    assert row["out_abs_mean"] == pytest.approx(float(y.abs().mean()), abs=1e-6)
    assert row["out_std"] == pytest.approx(float(y.std()), abs=1e-6)
    assert row["gelu_saturated"] == pytest.approx(0.5)  # two of four channels below -3


def test_levels_follow_resolution_and_the_bottleneck_is_the_coarsest_level():
    torch.manual_seed(0)
    model = build_generator("hybrid", hidden_channels=4, n_modes=4, fno_blocks=4, N=32)
    rows = DriftProbe(model, torch.rand(2, 1, 32, 32)).measure(epoch=-1)
    assert [r["name"] for r in rows][-1] == "bottleneck"
    assert [r["resolution"] for r in rows] == [32 >> r["level"] for r in rows]
    assert rows[-1]["level"] == max(r["level"] for r in rows) == len(model.blocks_per_level) - 1
    assert [r["channels"] for r in rows[:-1]] == [
        c for c, n in zip(model.channels, model.blocks_per_level, strict=False) for _ in range(n)]


def test_probe_leaves_mode_and_weights_untouched():
    torch.manual_seed(0)
    model = build_generator("stable_hybrid", hidden_channels=4, n_modes=4, fno_blocks=2, N=16)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    batch = torch.rand(3, 1, 16, 16)
    rng = torch.get_rng_state()
    rows = DriftProbe(model, batch).measure(epoch=0)
    assert model.training
    assert torch.equal(rng, torch.get_rng_state())
    for k, v in model.state_dict().items():
        assert torch.equal(before[k], v), k
    # zero-gamma InstanceNorm: the update is exactly zero at initialisation
    assert all(r["update_abs_mean"] == 0.0 for r in rows)


def test_probe_indices_depend_on_the_count_only():
    idx = probe_indices(1089)
    assert idx.tolist() == probe_indices(1089).tolist()
    assert len(idx) == 16 and idx[0] == 0 and idx[-1] == 1088
    assert np.all(np.diff(idx) > 0)
    assert probe_indices(5).tolist() == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="n_patterns"):
        probe_indices(0)


def _log(tmp_path, every=1):
    torch.manual_seed(0)
    model = build_generator("hybrid", hidden_channels=4, n_modes=4, fno_blocks=2, N=16)
    log = ActivationLog(tmp_path / "activations.csv", every_n_epochs=every)
    log.attach(model, torch.rand(40, 1, 16, 16), torch.device("cpu"))
    return log, model


def test_log_writes_init_and_epochs_and_keeps_completed_epochs_on_resume(tmp_path):
    log, model = _log(tmp_path)
    n_blocks = len(log.probe.blocks)
    log.start(completed_epochs=0)
    for e in range(3):
        log.epoch_end(e)
    rows = read_activations(log.path)
    assert sorted({r["epoch"] for r in rows}) == [-1, 0, 1, 2]
    assert len(rows) == 4 * n_blocks
    assert list(rows[0]) == list(ACTIVATION_COLUMNS)
    # killed after the file had epoch 2 but before the checkpoint of epoch 2: resume at 2
    log2, _ = _log(tmp_path)
    log2.start(completed_epochs=2)
    assert sorted({r["epoch"] for r in read_activations(log2.path)}) == [-1, 0, 1]
    log2.epoch_end(2)
    rows = read_activations(log2.path)
    assert [r["epoch"] for r in rows].count(2) == n_blocks
    assert len(rows) == 4 * n_blocks
    log2.reset()
    assert not log2.path.exists() and log2.rows == []


def test_every_n_epochs_and_off(tmp_path):
    log, _ = _log(tmp_path / "a", every=2)
    log.path.parent.mkdir()
    log.start(0)
    for e in range(4):
        log.epoch_end(e)
    assert sorted({r["epoch"] for r in read_activations(log.path)}) == [-1, 1, 3]
    off, _ = _log(tmp_path / "b", every=0)
    off.start(0)
    off.epoch_end(0)
    assert off.probe is None and not off.path.exists()


def test_reader_skips_a_truncated_row(tmp_path):
    log, _ = _log(tmp_path)
    log.start(0)
    text = log.path.read_text()
    log.path.write_text(text + "0,0,encoder.0.0,0,16\n")
    rows = read_activations(log.path)
    assert len(rows) == len(log.rows) and all(math.isfinite(r["out_mean"]) for r in rows)


# --- resume: lost rows measured again, the initialisation never replaced (issue 20) ---------
def _train_a_little(model):
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))


def test_lost_rows_of_a_due_epoch_are_measured_again_with_every_2(tmp_path):
    """every_n_epochs=2: epoch 1 is due; killed after its last.ckpt, before its rows: the
    resume from that epoch-end checkpoint (same weights) measures exactly those rows."""
    log, model = _log(tmp_path, every=2)
    log.start(0)
    log.epoch_end(0)
    log.epoch_end(1)
    want = read_activations(log.path)
    assert sorted({r["epoch"] for r in want}) == [-1, 1]
    write_activations(log.path, [r for r in want if r["epoch"] == -1])  # epoch 1's are lost
    again = ActivationLog(log.path, every_n_epochs=2)
    again.probe = log.probe  # the restored weights: those of the end of epoch 1
    again.start(completed_epochs=2, weights_at_epoch_end=True)
    assert read_activations(log.path) == want == again.rows


@pytest.mark.parametrize("completed, at_end", [(3, True), (2, False)])
def test_no_rows_are_measured_for_an_epoch_not_due_or_from_other_weights(tmp_path, completed,
                                                                         at_end):
    """(3, True): epoch 2 is not due with every 2; (2, False): a mid-epoch checkpoint holds
    weights of no epoch end. Either way nothing is measured: the rows stay as they were."""
    log, model = _log(tmp_path, every=2)
    log.start(0)
    init = read_activations(log.path)
    again = ActivationLog(log.path, every_n_epochs=2)
    again.probe = log.probe
    again.start(completed_epochs=completed, weights_at_epoch_end=at_end)
    assert read_activations(log.path) == init


@pytest.mark.parametrize("initial_weights", [None, False])
def test_a_resume_inside_epoch_0_keeps_the_initialisation_rows(tmp_path, initial_weights):
    """Preempted inside epoch 0 (completed 0, weights partly trained): the epoch -1 rows
    written at the start stay exactly as they were."""
    log, model = _log(tmp_path)
    log.start(0)
    init = read_activations(log.path)
    _train_a_little(model)
    assert log.probe.measure(-1) != init  # other weights now
    again = ActivationLog(log.path, every_n_epochs=1)
    again.probe = log.probe
    again.start(completed_epochs=0, weights_at_epoch_end=False,
                initial_weights=initial_weights)
    assert read_activations(log.path) == init == again.rows


def test_missing_initialisation_rows_are_never_measured_on_trained_weights(tmp_path):
    """The epoch -1 rows are gone (the probe was off in the first segment) and the weights
    are partly trained: a gap, never rows of other weights under epoch -1. With the initial
    weights (a resume before the first step) they are measured."""
    log, model = _log(tmp_path)
    log.start(0)
    init = read_activations(log.path)
    log.path.unlink()
    fresh = ActivationLog(log.path, every_n_epochs=1)
    fresh.probe = log.probe
    fresh.start(completed_epochs=0, weights_at_epoch_end=True, initial_weights=True)
    assert read_activations(log.path) == init
    log.path.unlink()
    _train_a_little(model)
    resumed = ActivationLog(log.path, every_n_epochs=1)
    resumed.probe = log.probe
    resumed.start(completed_epochs=0, weights_at_epoch_end=False, initial_weights=False)
    assert read_activations(log.path) == [] and resumed.rows == []
    resumed.epoch_end(0)
    assert {r["epoch"] for r in read_activations(log.path)} == {0}
