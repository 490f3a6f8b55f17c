"""The forward model: FFT convention, Parseval, DC position, broadcasting, safe gradients."""

import numpy as np
import pytest
import torch

from ptychostab.physics.forward import far_field_amplitude, illuminate, predict_amplitude
from ptychostab.physics.losses import mae_loss


def _random_wave(shape, seed=0, dtype=torch.complex128):
    rng = np.random.default_rng(seed)
    wave = rng.normal(size=shape) + 1j * rng.normal(size=shape)
    return torch.from_numpy(wave).to(dtype)


def test_parseval_holds_per_pattern():
    psi = _random_wave((5, 1, 16, 16))
    amp = far_field_amplitude(psi)
    per_pattern_far = (amp**2).sum(dim=(-2, -1))
    per_pattern_near = (psi.abs() ** 2).sum(dim=(-2, -1))
    torch.testing.assert_close(per_pattern_far, per_pattern_near, rtol=1e-12, atol=0)


@pytest.mark.parametrize("N", [8, 16, 32])
def test_dc_of_shifted_pattern_is_at_n_over_2(N):
    psi = torch.full((N, N), 0.5 + 0.25j, dtype=torch.complex128)
    amp = far_field_amplitude(psi)
    peak = divmod(int(torch.argmax(amp)), N)
    assert peak == (N // 2, N // 2)
    # A constant wave has all its energy at DC: |sum psi| / N = |c| N.
    assert float(amp[N // 2, N // 2]) == pytest.approx(abs(0.5 + 0.25j) * N, rel=1e-12)
    off_dc = amp.clone()
    off_dc[N // 2, N // 2] = 0
    assert float(off_dc.abs().max()) < 1e-12


def test_matches_direct_numpy_formula():
    psi = _random_wave((3, 2, 16, 16), seed=1)
    x = psi.numpy()
    expected = np.sqrt(np.fft.fftshift(np.abs(np.fft.fft2(x)) ** 2, axes=(-2, -1)) / 16**2)
    np.testing.assert_allclose(far_field_amplitude(psi).numpy(), expected, rtol=1e-12, atol=1e-12)


def test_complex64_gives_float32():
    amp = far_field_amplitude(_random_wave((2, 1, 8, 8), dtype=torch.complex64))
    assert amp.dtype == torch.float32 and amp.shape == (2, 1, 8, 8)


def test_predict_amplitude_broadcasts_the_probe():
    obj = _random_wave((4, 1, 16, 16), seed=2)
    probe = _random_wave((16, 16), seed=3)
    got = predict_amplitude(obj, probe)
    for b in range(4):
        torch.testing.assert_close(got[b, 0], far_field_amplitude(obj[b, 0] * probe))
    # numpy probe is accepted too (the dataset stores numpy)
    torch.testing.assert_close(predict_amplitude(obj, probe.numpy()), got)


def test_illuminate_scales_the_exit_wave():
    obj, probe = _random_wave((1, 1, 8, 8), 4), _random_wave((8, 8), 5)
    torch.testing.assert_close(illuminate(obj, probe, scale=3.0), 3.0 * obj * probe)
    # Amplitude is linear in s: the simulator's s * A equals A of the s-scaled wave.
    torch.testing.assert_close(far_field_amplitude(illuminate(obj, probe, 3.0)),
                               3.0 * predict_amplitude(obj, probe))


def test_gradient_is_finite_for_a_zero_object():
    # A zero-initialised or collapsed generator must not turn into NaN through the physics.
    obj = torch.zeros((2, 1, 8, 8), dtype=torch.complex64, requires_grad=True)
    probe = _random_wave((8, 8), dtype=torch.complex64)
    obs = torch.rand((2, 1, 8, 8))
    mae_loss(predict_amplitude(obj, probe), obs).backward()
    assert torch.isfinite(torch.view_as_real(obj.grad)).all()
