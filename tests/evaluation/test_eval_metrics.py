"""Metrics: perfect scores for identical images, invariances, sensitivity, FRC, PSNR range."""

import logging

import numpy as np
import pytest
import torch

from ptychostab.evaluation.metrics import (
    evaluate,
    frc_crossing,
    frc_curve,
    phase_is_constant,
    remove_phase_plane,
)
from ptychostab.evaluation.reconstruction import evaluate_patches, truth_image

REQUIRED = ("amp_ssim", "phase_ssim", "amp_mae", "phase_mae", "amp_psnr", "phase_psnr",
            "amp_frc50", "phase_frc50", "amp_frc1over7", "phase_frc1over7")


def _plane(shape, a, b, c):
    y, x = np.mgrid[0:shape[0], 0:shape[1]]
    return a * y / shape[0] + b * x / shape[1] + c


@pytest.fixture(scope="module")
def truth(tiny_data):
    t = truth_image(tiny_data, 0).astype(np.complex128)
    # keep |phase| < 1 so that an added plane of +-1 rad never wraps (no unwrapping, by design)
    return np.abs(t) * np.exp(1j * np.angle(t) / np.pi)


def test_identical_images_score_perfectly(truth):
    m = evaluate(truth, truth)
    assert set(REQUIRED) <= set(m)
    assert m["amp_ssim"] == pytest.approx(1.0) and m["phase_ssim"] == pytest.approx(1.0)
    assert m["amp_mae"] == 0.0 and m["phase_mae"] == pytest.approx(0.0, abs=1e-12)
    assert m["amp_psnr"] == np.inf
    for k in ("amp_frc50", "phase_frc50", "amp_frc1over7", "phase_frc1over7"):
        assert m[k] == 1.0


def test_invariant_to_amplitude_scale_phase_plane_and_global_phase(truth):
    plane = _plane(truth.shape, 0.6, -0.4, 2.9)  # c = 2.9 rad would wrap without the gauge fix
    moved = 3.7 * truth * np.exp(1j * plane)
    m = evaluate(moved, truth)
    assert m["amp_ssim"] == pytest.approx(1.0, abs=1e-9)
    assert m["phase_ssim"] == pytest.approx(1.0, abs=1e-6)
    assert m["amp_mae"] == pytest.approx(0.0, abs=1e-9)
    assert m["phase_mae"] == pytest.approx(0.0, abs=1e-6)
    assert m["amp_scale"] == pytest.approx(1 / 3.7)
    assert m["phase_frc50"] == pytest.approx(1.0)


def test_scores_fall_with_noise(truth):
    rng = np.random.default_rng(0)
    scores = []
    for sigma in (0.02, 0.1, 0.4):
        noise = rng.normal(size=truth.shape) + 1j * rng.normal(size=truth.shape)
        scores.append(evaluate(truth + sigma * np.abs(truth).mean() * noise, truth))
    for key in ("amp_ssim", "phase_ssim", "amp_psnr", "phase_psnr", "amp_frc50"):
        assert scores[0][key] > scores[1][key] > scores[2][key], key
    for key in ("amp_mae", "phase_mae"):
        assert scores[0][key] < scores[1][key] < scores[2][key], key
    assert scores[2]["amp_ssim"] < 0.9


def test_psnr_uses_the_truth_range():
    t = np.linspace(0, 4, 20 * 20).reshape(20, 20).astype(complex) + 1.0  # amp range 4
    p = t.copy()
    p[0, 0] += 0.2
    m = evaluate(p, t, trim=0)
    err = np.abs(p) * (np.abs(t).mean() / np.abs(p).mean()) - np.abs(t)
    assert m["amp_psnr"] == pytest.approx(10 * np.log10(16 / np.mean(err**2)))


def test_frc_crossing_interpolates_and_reports_fraction_of_nyquist():
    curve = np.array([1.0, 0.8, 0.6, 0.4, 0.2])  # Nyquist ring 4
    assert frc_crossing(curve, 0.5) == pytest.approx(2.5 / 4)
    assert frc_crossing(curve, 0.1) == 1.0
    assert frc_crossing(np.array([1.0, 0.9, 0.3, 0.9, 0.9]), 0.5) == pytest.approx(
        (1 + 0.4 / 0.6) / 4)  # first crossing, not the last


def test_frc_of_independent_noise_is_low_and_of_a_copy_is_one():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(64, 64)), rng.normal(size=(64, 64))
    assert np.allclose(frc_curve(a, 2 * a + 1), 1.0)
    curve = frc_curve(a, b)
    assert np.abs(curve[4:]).mean() < 0.15
    assert frc_crossing(curve, 0.5) < 0.1


def test_phase_plane_removal():
    plane = _plane((30, 40), 1.5, -0.7, 0.3)
    np.testing.assert_allclose(remove_phase_plane(plane), 0, atol=1e-12)


def test_phase_is_constant_flags_vacuous_phase(tiny_data, caplog):
    amp_only = np.abs(truth_image(tiny_data, 0))
    assert phase_is_constant(amp_only)
    assert phase_is_constant(amp_only * np.exp(1j * _plane(amp_only.shape, 0.5, 0.2, 1.0)))
    assert not phase_is_constant(truth_image(tiny_data, 0))
    with caplog.at_level(logging.WARNING, logger="ptychostab.evaluation.metrics"):
        evaluate(amp_only, amp_only.astype(complex))
    assert "vacuous" in caplog.text


def test_bad_inputs(truth):
    with pytest.raises(ValueError, match="equal shape"):
        evaluate(truth[:-1], truth)
    with pytest.raises(ValueError, match="window"):
        evaluate(truth, truth, trim=32)


def test_evaluate_patches_scores_ground_truth_patches_perfectly(tiny_data):
    for image in (0, 1):
        m = evaluate_patches(tiny_data.test_truth, tiny_data, image=image)
        assert m["amp_ssim"] == pytest.approx(1.0) and m["phase_ssim"] == pytest.approx(1.0)
    # torch input (as the trainer holds it), and the other image's patches score worse
    pred = torch.from_numpy(tiny_data.test_truth)
    assert evaluate_patches(pred, tiny_data)["amp_mae"] == pytest.approx(0.0, abs=1e-7)
    per = tiny_data.meta["n_side_test"] ** 2
    swapped = np.concatenate([tiny_data.test_truth[per:], tiny_data.test_truth[:per]])
    assert evaluate_patches(swapped, tiny_data)["amp_ssim"] < 0.9


def test_evaluate_patches_refuses_wrong_shapes(tiny_data):
    with pytest.raises(ValueError, match="pred_patches has shape"):
        evaluate_patches(tiny_data.test_truth[:-1], tiny_data)
    with pytest.raises(ValueError, match="out of range"):
        evaluate_patches(tiny_data.test_truth, tiny_data, image=2)


def test_match_gauge_removes_scale_and_global_phase():
    from ptychostab.evaluation.metrics import match_gauge

    rng = np.random.default_rng(0)
    truth = (1 + rng.random((16, 16))) * np.exp(1j * rng.uniform(-1, 1, (16, 16)))
    shown = match_gauge(3.0 * np.exp(1j * 2.5) * truth, truth)
    np.testing.assert_allclose(shown, truth, rtol=1e-5, atol=1e-5)


def test_ssim_uses_the_truths_data_range_not_a_fixed_one():
    """Amplitude SSIM uses the truth's own range (max - min); phase SSIM the full phase range
    (2 pi, i.e. 1 on (phi + pi) / (2 pi)). A fixed range of 1.0 on either gives other numbers."""
    from skimage.metrics import structural_similarity

    from ptychostab.evaluation.metrics import align, evaluate

    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:48, 0:48] / 48.0
    amp = 1.0 + 0.1 * np.sin(6 * x) * np.cos(5 * y)  # range ~0.2, far from 1.0
    phase = 0.3 * np.sin(4 * y) + 0.2 * x
    truth = amp * np.exp(1j * phase)
    pred = (amp + 0.01 * rng.standard_normal(amp.shape)) * np.exp(
        1j * (phase + 0.05 * rng.standard_normal(amp.shape)))
    got = evaluate(pred, truth)
    al = align(pred, truth, 2)
    a_t, a_p, p_t, p_p = al["amp_true"], al["amp_pred"], al["phase_true"], al["phase_pred"]
    want_amp = structural_similarity(a_t, a_p, data_range=float(a_t.max() - a_t.min()))
    fixed_amp = structural_similarity(a_t, a_p, data_range=1.0)
    assert got["amp_ssim"] == pytest.approx(want_amp, abs=1e-12)
    assert abs(want_amp - fixed_amp) > 0.05
    def norm(v):
        return (v + np.pi) / (2 * np.pi)

    want_ph = structural_similarity(norm(p_t), norm(p_p), data_range=1.0)
    fixed_ph = structural_similarity(p_t, p_p, data_range=1.0)
    assert got["phase_ssim"] == pytest.approx(want_ph, abs=1e-6)
    assert abs(want_ph - fixed_ph) > 0.05
