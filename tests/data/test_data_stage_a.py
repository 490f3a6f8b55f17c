"""One modest real build: the Stage A geometry with one object per split (~3 s)."""

import numpy as np
import pytest
import torch

from ptychostab.data.simulate import load_or_build
from ptychostab.data.spec import DataConfig
from ptychostab.evaluation.reconstruction import evaluate_patches, stitch_test_image
from ptychostab.physics.forward import predict_amplitude
from ptychostab.physics.losses import LOSSES


def test_grid_lines_n64_small(tmp_path):
    spec = DataConfig(name="grid_lines_n64_small", N=64, size=392, n_lines=400, nimgs_train=1,
                      nimgs_test=1, nphotons=1e9, set_phi=True)
    data = load_or_build(spec, tmp_path)
    assert data.train_amp.shape == (6889, 1, 64, 64)
    assert data.test_amp.shape == (1089, 1, 64, 64)
    assert data.meta["mean_photons_train"] == pytest.approx(1e9, rel=1e-3)
    # the ground truth stitches into the reference's 330 x 330 crop and scores perfectly
    assert stitch_test_image(data.test_truth, data).shape == (330, 330)
    m = evaluate_patches(data.test_truth, data)
    assert m["amp_ssim"] == pytest.approx(1.0) and m["phase_ssim"] == pytest.approx(1.0)
    # at 1e9 photons the truth fits the noisy data to the noise level (~1e-3 relative)
    pred = predict_amplitude(torch.from_numpy(data.test_truth[:64]), data.probe)
    assert float(LOSSES["mae"](pred, torch.from_numpy(data.test_amp[:64]))) < 5e-3
    assert np.isfinite(data.train_amp).all() and (data.train_amp >= 0).all()
    assert load_or_build(spec, tmp_path).meta["cache_status"] == "hit"
