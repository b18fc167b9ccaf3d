import math

import numpy as np
import pytest
import torch

from lensrim.metrics import chi2_summary, coherence_bands, coherence_spectrum, log_loss_moments, median, snr


def _blob(n=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 1, n, n, generator=g, dtype=torch.float64)
    # smooth it so that every radial bin has power
    k = torch.fft.fftfreq(n, dtype=torch.float64)
    filt = torch.exp(-(k[:, None] ** 2 + k[None, :] ** 2) / 0.05)
    return torch.fft.ifft2(torch.fft.fft2(x) * filt).real


def test_a_map_is_perfectly_coherent_with_itself_and_anticoherent_with_its_negative():
    a = _blob()
    k, g = coherence_spectrum(a, a)
    assert g.shape == (1, 16) and np.allclose(g, 1.0)
    _, g_neg = coherence_spectrum(-a, a)
    assert np.allclose(g_neg, -1.0)  # a modulus would report +1 here
    _, g_scaled = coherence_spectrum(3.0 * a + 2.0, a)  # scale and offset (k = 0 is left out)
    assert np.allclose(g_scaled, 1.0)
    assert np.isclose(k[0], 0.5) and np.isclose(k[-1], 15.5)


def test_a_shifted_copy_loses_coherence_as_the_phase_shift_grows_with_k():
    a = _blob()
    shifted = torch.roll(a, shifts=1, dims=-1)
    _, g = coherence_spectrum(shifted, a)
    assert (g < 1 - 1e-6).all()
    assert g[0, 0] > g[0, 8]  # a one-pixel shift is a small phase at low k, a large one at high k
    # against a hand computation of one bin: modes with 0 < |k| <= 1 are the four axis neighbours
    fa, fb = np.fft.fft2(shifted[0, 0].numpy()), np.fft.fft2(a[0, 0].numpy())
    modes = [(0, 1), (1, 0), (0, -1), (-1, 0)]
    cross = sum((fa[m] * np.conj(fb[m])).real for m in modes)
    p11 = sum(abs(fa[m]) ** 2 for m in modes)
    p22 = sum(abs(fb[m]) ** 2 for m in modes)
    assert np.isclose(g[0, 0], cross / math.sqrt(p11 * p22))


def test_independent_noise_is_incoherent_and_units_follow_the_fov():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(200, 1, 32, 32, generator=g), torch.randn(200, 1, 32, 32, generator=g)
    k, gamma = coherence_spectrum(a, b, fov=7.69, bins=8)
    assert abs(gamma.mean()) < 0.02
    assert np.isclose(k[-1], (16 - 1) / 7.69)
    bands = coherence_bands(gamma)
    assert all(lo <= m <= hi for lo, m, hi in zip(bands["low"], bands["mean"], bands["high"], strict=True))
    with pytest.raises(ValueError, match="differ in shape"):
        coherence_spectrum(a[:, :, :16, :16], b)


def test_loss_moments_and_chi2_summary_against_hand_computations():
    loss = np.array([1e-2, 1e-3, 1e-1])
    m = log_loss_moments(loss)
    assert np.isclose(m["mu"], -2.0) and np.isclose(m["sigma"], 1.0)  # std of (-2, -3, -1), ddof 1
    with pytest.raises(ValueError, match="positive"):
        log_loss_moments([1.0, 0.0])
    s = chi2_summary([0.9, 1.0, 1.05, 3.0])
    assert s["median"] == pytest.approx(1.025) and s["fraction_at_or_below_1"] == 0.5
    assert s["fraction_at_or_below_1.1"] == 0.75
    assert np.allclose(snr([0.01, 0.1]), [100, 10])


def test_median_is_the_reports_median_for_even_and_odd_counts():
    even = torch.tensor([3.0, 0.9, 10.0, 1.0])  # the middle two are 1.0 and 3.0
    assert float(median(even)) == 2.0 == float(np.median(even.numpy())) == chi2_summary(even)["median"]
    assert float(even.median()) == 1.0  # torch's own: the lower middle value
    assert float(median(torch.tensor([5.0, 2.0, 4.0]))) == 4.0


def test_adam_on_the_likelihood_reaches_the_optimum_of_a_linear_problem():
    from lensrim import LinearPhysics
    from lensrim.baseline import optimise_likelihood

    g = torch.Generator().manual_seed(0)
    physics = LinearPhysics(a=1.0, b=0.0, sigma=0.1)
    truth = torch.rand(2, 1, 8, 8, generator=g)
    y = truth + 0.1 * torch.randn(truth.shape, generator=g)
    zeros = torch.zeros_like(y)
    s, xi = optimise_likelihood(y, physics, zeros, zeros, steps=400, learning_rate=0.02)
    assert (s - y).abs().max() < 1e-2  # the maximum-likelihood source is the data itself
    assert torch.equal(xi, zeros)  # no gradient, no move
    s0, _ = optimise_likelihood(y, physics, zeros, zeros, steps=0, learning_rate=0.02)
    assert torch.equal(s0, zeros)
    # compare against torch.optim.Adam on the same objective
    p = zeros.clone().requires_grad_(True)
    opt = torch.optim.Adam([p], lr=0.02)
    for _ in range(5):
        opt.zero_grad()
        (0.5 * ((y - p) / 0.1) ** 2).sum().backward()
        opt.step()
    s5, _ = optimise_likelihood(y, physics, zeros, zeros, steps=5, learning_rate=0.02)
    torch.testing.assert_close(s5, p.detach(), rtol=1e-5, atol=1e-6)


def test_steepest_ascent_in_the_source_keeps_kappa_and_reaches_the_least_squares_source():
    from lensrim import LinearPhysics
    from lensrim.baseline import ascend_source

    g = torch.Generator().manual_seed(0)
    physics = LinearPhysics(a=1.0, b=0.5, sigma=0.1)
    truth = torch.rand(2, 1, 8, 8, generator=g)
    xi = torch.full_like(truth, 0.2)
    y = truth + 0.5 * xi + 0.1 * torch.randn(truth.shape, generator=g)
    zeros = torch.zeros_like(y)
    # the first step: the gradient (y - 0.5 xi) / sigma^2 over its map's root-mean-square, times the step size
    first = ascend_source(y, physics, zeros, xi, steps=1, step_size=0.05)
    r = y - 0.5 * xi
    expected = 0.05 * r / r.pow(2).mean(dim=(-1, -2), keepdim=True).sqrt()
    torch.testing.assert_close(first, expected, rtol=1e-5, atol=1e-7)
    # many short steps: the least-squares source, y - b xi (within about a step)
    s = ascend_source(y, physics, zeros, xi, steps=300, step_size=0.01)
    assert (s - r).pow(2).mean().sqrt() < 0.02 < (zeros - r).pow(2).mean().sqrt()
    assert torch.equal(ascend_source(y, physics, zeros, xi, steps=0, step_size=0.01), zeros)
    with pytest.raises(ValueError, match="positive step size"):
        ascend_source(y, physics, zeros, xi, steps=3, step_size=0.0)
