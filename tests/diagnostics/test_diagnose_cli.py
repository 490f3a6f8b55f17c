"""``python -m ptychostab.cli.diagnose``: JSON + PNG outputs, NPZ inputs, checkpoints."""

import json

import numpy as np
import pytest
import torch

from ptychostab.cli import diagnose
from ptychostab.models import build_generator

SMALL = ["--N", "16", "--hidden-channels", "4", "--n-modes", "4", "--samples", "2"]


@pytest.mark.parametrize("command", ["activations", "gradients"])
def test_synthetic_run_writes_json_and_png(tmp_path, command):
    assert diagnose.main([command, "--arch", "hybrid", "--depth", "2", *SMALL,
                          "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / f"{command}.json").read_text())
    assert len(report["blocks"]) == 3
    assert report["summary"]["weights"] == "untrained"
    assert report["summary"]["input_source"].startswith("synthetic")
    assert (tmp_path / f"{command}.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("key,shape",
                         [("train_amp", (3, 4, 16, 16)), ("diffraction", (3, 16, 16))])
def test_npz_input_sets_channels_and_size(tmp_path, key, shape):
    npz = tmp_path / "data.npz"
    np.savez(npz, **{key: np.random.default_rng(0).random(shape, dtype=np.float32)})
    diagnose.main(["activations", "--arch", "fno", "--depth", "2", "--hidden-channels", "4",
                   "--input", str(npz), "--out", str(tmp_path / "out")])
    summary = json.loads((tmp_path / "out" / "activations.json").read_text())["summary"]
    C = shape[1] if len(shape) == 4 else 1
    assert summary["input_shape"] == [3, C, 16, 16]  # --samples 4 > the 3 patches stored
    assert summary["config"]["in_channels"] == C and summary["config"]["N"] == 16


def test_lightning_style_checkpoint_is_loaded(tmp_path):
    torch.manual_seed(3)
    trained = build_generator("stable_hybrid", fno_blocks=2, N=16, hidden_channels=4,
                              n_modes=4, gamma_init=1.0)
    ckpt = tmp_path / "last.ckpt"
    torch.save({"state_dict": {f"generator.{k}": v for k, v in trained.state_dict().items()},
                "epoch": 3}, ckpt)
    diagnose.main(["activations", "--arch", "stable_hybrid", "--depth", "2", *SMALL,
                   "--checkpoint", str(ckpt), "--out", str(tmp_path)])
    report = json.loads((tmp_path / "activations.json").read_text())
    assert report["summary"]["weights"] == str(ckpt)
    assert any(abs(b["update_std"]) > 0 for b in report["blocks"])  # gamma 1 was loaded

    with pytest.raises(ValueError, match="prefix"):
        diagnose.main(["activations", "--arch", "hybrid", "--depth", "2", *SMALL,
                       "--checkpoint", str(ckpt), "--out", str(tmp_path)])
