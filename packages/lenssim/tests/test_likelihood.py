import math

import numpy as np
import pytest
import torch

import lenssim


def _problem(b=3, n=16, ns=12, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    p = lenssim.sample_sie_parameters(b, generator=g, dtype=dtype)
    p = p._replace(theta_e=p.theta_e * 0.5)
    kappa = lenssim.sie_convergence(p, n=n, fov=3.0)
    source = torch.rand(b, 1, ns, ns, generator=g, dtype=dtype)
    psf = lenssim.gaussian_psf(torch.full((b,), 0.3, dtype=dtype), 3.0 / n, 5)
    sigma = torch.linspace(0.05, 0.1, b, dtype=dtype)
    kw = dict(image_fov=3.0, source_fov=2.0, psf=psf)
    obs = lenssim.add_noise(lenssim.lens_image(source, kappa, **kw), sigma, generator=g)
    return obs, source, kappa, sigma, kw


def test_chi2_and_loglikelihood_against_numpy():
    obs, source, kappa, sigma, kw = _problem()
    model = lenssim.lens_image(source, kappa, **kw)
    ref = (((obs - model).numpy() / sigma.numpy()[:, None, None, None]) ** 2).sum(axis=(1, 2, 3))
    assert np.allclose(lenssim.chi_squared(obs, model, sigma).numpy(), ref)
    assert np.allclose(lenssim.log_likelihood(obs, model, sigma).numpy(), -ref / 2)
    assert np.allclose(lenssim.chi2_nu(obs, model, sigma).numpy(), ref / 16**2)


def test_a_noise_map_weights_each_pixel():
    obs, source, kappa, sigma, kw = _problem()
    model = lenssim.lens_image(source, kappa, **kw)
    g = torch.Generator().manual_seed(3)
    noise_map = 0.05 + torch.rand(obs.shape, generator=g, dtype=obs.dtype)
    ref = (((obs - model).numpy() / noise_map.numpy()) ** 2).sum(axis=(1, 2, 3))
    assert np.allclose(lenssim.chi_squared(obs, model, noise_map).numpy(), ref)
    flat = sigma.view(-1, 1, 1, 1).expand_as(obs)
    assert np.allclose(lenssim.chi_squared(obs, model, flat).numpy(), lenssim.chi_squared(obs, model, sigma).numpy())
    with pytest.raises(ValueError, match="noise map"):
        lenssim.chi_squared(obs, model, noise_map[..., :-1, :-1])


def test_masked_pixels_weigh_nothing_and_chi2_nu_counts_the_others():
    obs, source, kappa, sigma, kw = _problem()
    g = torch.Generator().manual_seed(4)
    noise_map = 0.05 + torch.rand(obs.shape, generator=g, dtype=obs.dtype)
    masked = torch.rand(obs.shape, generator=g, dtype=obs.dtype) < 0.2
    masked[0] = False  # one lens with every pixel
    noise_map[masked] = math.inf
    obs = obs.clone()
    obs[masked] = 0.0  # no data there
    model = lenssim.lens_image(source, kappa, **kw)
    r = ((obs - model).numpy() / noise_map.numpy().clip(None, 1e300)) ** 2
    good = ~masked.numpy()
    ref = (r * good).sum(axis=(1, 2, 3))
    assert np.allclose(lenssim.chi_squared(obs, model, noise_map).numpy(), ref)
    count = good.sum(axis=(1, 2, 3))
    assert count[0] == 256 and count[1] < 256
    assert np.allclose(lenssim.data_pixels(noise_map, obs).numpy(), count)
    assert np.allclose(lenssim.chi2_nu(obs, model, noise_map).numpy(), ref / count)
    # the gradient is the one of the likelihood of the unmasked pixels alone (autograd, masked sum)
    gs, gk, logp = lenssim.likelihood_gradient(obs, source, kappa, noise_map, **kw)
    s, k = source.clone().requires_grad_(True), kappa.clone().requires_grad_(True)
    finite = torch.where(masked, 1.0, noise_map)
    logp_ref = -0.5 * (((obs - lenssim.lens_image(s, k, **kw)) / finite).pow(2) * ~masked).flatten(1).sum(1)
    gs_ref, gk_ref = torch.autograd.grad(logp_ref.sum(), (s, k))
    assert torch.allclose(logp, logp_ref.detach()) and torch.isfinite(gs).all() and torch.isfinite(gk).all()
    assert torch.allclose(gs, gs_ref) and torch.allclose(gk, gk_ref)
    # noise goes only where there are data
    noisy = lenssim.add_noise(model, noise_map, generator=g)
    assert torch.equal(noisy[masked], model[masked]) and (noisy[~masked] != model[~masked]).all()


def test_noise_has_the_requested_sigma_and_chi2_nu_is_one():
    g = torch.Generator().manual_seed(1)
    clean = torch.zeros(3, 1, 128, 128, dtype=torch.float64)
    sigma = torch.tensor([0.01, 0.03, 0.1], dtype=torch.float64)
    noisy = lenssim.add_noise(clean, sigma, generator=g)
    std = noisy.flatten(1).std(dim=1)
    assert torch.allclose(std, sigma, rtol=0.02)
    chi2_nu = lenssim.chi2_nu(noisy, clean, sigma)
    # chi2 of 16384 unit normals: mean 1, std sqrt(2 / 16384) ~ 0.011
    assert torch.all((chi2_nu - 1).abs() < 0.05)
    again = lenssim.add_noise(clean, sigma, generator=torch.Generator().manual_seed(1))
    assert torch.equal(noisy, again)


def test_binned_chi2_nu_is_one_for_white_noise_of_any_sigma_map():
    g = torch.Generator().manual_seed(5)
    clean = torch.zeros(8, 1, 64, 64, dtype=torch.float64)
    noise_map = 0.02 + 0.2 * torch.rand(clean.shape, generator=g, dtype=clean.dtype)
    noisy = lenssim.add_noise(clean, noise_map, generator=g)
    for block in (2, 4, 8):
        binned = lenssim.binned_chi2_nu(noisy, clean, noise_map, block=block)
        # (64 / block)^2 blocks per lens, 8 lenses: the mean of chi^2_1 draws, std sqrt(2 / count)
        count = 8 * (64 // block) ** 2
        assert abs(float(binned.mean()) - 1) < 4 * math.sqrt(2 / count), (block, binned)
    # a noise level wrong by one factor moves chi2_nu and the binned chi2_nu alike: white residuals
    assert torch.allclose(
        lenssim.binned_chi2_nu(noisy, clean, noise_map / 2).mean(),
        4 * lenssim.binned_chi2_nu(noisy, clean, noise_map).mean(),
    )
    assert torch.allclose(
        lenssim.binned_chi2_nu(noisy, clean, noise_map, block=1), lenssim.chi2_nu(noisy, clean, noise_map)
    )


def test_binned_chi2_nu_adds_up_smooth_structure_and_cancels_a_checkerboard():
    sigma, d = 0.5, 0.1
    model = torch.zeros(2, 1, 10, 10, dtype=torch.float64)
    offset = model + d  # a residual of d everywhere: chi2_nu (d / sigma)^2
    assert torch.allclose(lenssim.chi2_nu(offset, model, sigma), torch.tensor(0.04, dtype=torch.float64))
    # 4 x 4 blocks of 10 x 10 pixels: block sides 4, 4, 2, so blocks of 16, 8, 8, 16, 16, 8, 8, 8, 4 pixels;
    # each adds (n d)^2 / (n sigma^2) = n (d / sigma)^2: the mean block size 100 / 9 times chi2_nu
    assert torch.allclose(
        lenssim.binned_chi2_nu(offset, model, sigma), torch.full((2,), 0.04 * 100 / 9, dtype=torch.float64)
    )
    i = torch.arange(10)
    checker = model + d * (-1.0) ** (i[:, None] + i[None, :])
    assert torch.allclose(lenssim.chi2_nu(checker, model, sigma), torch.tensor(0.04, dtype=torch.float64))
    assert torch.allclose(lenssim.binned_chi2_nu(checker, model, sigma, block=2), torch.zeros(2, dtype=torch.float64))


def test_binned_chi2_nu_leaves_out_masked_pixels_and_blocks_without_data():
    sigma = torch.full((1, 1, 8, 8), 0.5, dtype=torch.float64)
    model = torch.zeros_like(sigma)
    obs = model + 0.1
    sigma[..., :4, :4] = math.inf  # one 4 x 4 block without data, its observation garbage
    obs[..., :4, :4] = math.nan
    sigma[..., 4, 4] = math.inf  # one pixel of another block: that block sums 15 pixels
    obs[..., 4, 4] = 1e6
    # the three blocks with data: 16, 16 and 15 pixels, each adding n (0.1 / 0.5)^2
    expected = 0.04 * (16 + 16 + 15) / 3
    assert torch.allclose(lenssim.binned_chi2_nu(obs, model, sigma), torch.tensor([expected], dtype=torch.float64))


@pytest.mark.parametrize("block", [0, -1, 2.5, True, 17])
def test_binned_chi2_nu_refuses_a_block_that_is_no_block(block):
    y = torch.zeros(1, 1, 16, 16)
    with pytest.raises(ValueError, match="block must be"):
        lenssim.binned_chi2_nu(y, y, 1.0, block=block)


@pytest.mark.parametrize("kappa_param", ["kappa", "log10"])
def test_gradient_against_finite_differences(kappa_param):
    obs, source, kappa, sigma, kw = _problem(b=2, n=10, ns=8)
    k = kappa.log10() if kappa_param == "log10" else kappa
    gs, gk, logp = lenssim.likelihood_gradient(obs, source, k, sigma, kappa_param=kappa_param, **kw)

    def f(s, kk):
        conv = 10**kk if kappa_param == "log10" else kk
        return lenssim.log_likelihood(obs, lenssim.lens_image(s, conv, **kw), sigma).sum()

    eps = 1e-6
    g = torch.Generator().manual_seed(5)
    for _ in range(6):
        b, i, j = (int(torch.randint(0, m, (1,), generator=g)) for m in (2, 8, 8))
        d = torch.zeros_like(source)
        d[b, 0, i, j] = eps
        fd = (f(source + d, k) - f(source - d, k)) / (2 * eps)
        assert gs[b, 0, i, j].item() == pytest.approx(fd.item(), rel=1e-5, abs=1e-6)
        i, j = (int(torch.randint(0, 10, (1,), generator=g)) for _ in range(2))
        d = torch.zeros_like(k)
        d[b, 0, i, j] = eps
        fd = (f(source, k + d) - f(source, k - d)) / (2 * eps)
        assert gk[b, 0, i, j].item() == pytest.approx(fd.item(), rel=1e-5, abs=1e-6)
    assert torch.allclose(logp, lenssim.log_likelihood(obs, lenssim.lens_image(source, kappa, **kw), sigma))


def test_log10_gradient_is_the_chain_rule():
    obs, source, kappa, sigma, kw = _problem()
    _, gk, _ = lenssim.likelihood_gradient(obs, source, kappa, sigma, **kw)
    _, gxi, _ = lenssim.likelihood_gradient(obs, source, kappa.log10(), sigma, kappa_param="log10", **kw)
    assert torch.allclose(gxi, gk * kappa * math.log(10), rtol=1e-8, atol=1e-10)


def test_gradient_vanishes_at_the_truth_without_noise():
    obs, source, kappa, sigma, kw = _problem()
    clean = lenssim.lens_image(source, kappa, **kw)
    gs, gk, logp = lenssim.likelihood_gradient(clean, source, kappa, sigma, **kw)
    assert gs.abs().max() == 0 and gk.abs().max() == 0 and torch.all(logp == 0)


def test_per_example_gradients_are_independent():
    obs, source, kappa, sigma, kw = _problem(b=3)
    gs, gk, _ = lenssim.likelihood_gradient(obs, source, kappa, sigma, **kw)
    kw1 = dict(kw, psf=kw["psf"][1:2])
    gs1, gk1, _ = lenssim.likelihood_gradient(obs[1:2], source[1:2], kappa[1:2], sigma[1:2], **kw1)
    assert torch.allclose(gs[1:2], gs1, atol=1e-12) and torch.allclose(gk[1:2], gk1, atol=1e-12)


def test_gradients_are_detached_unless_asked():
    obs, source, kappa, sigma, kw = _problem()
    s = source.clone().requires_grad_(True)
    gs, gk, logp = lenssim.likelihood_gradient(obs, s, kappa, sigma, **kw)
    assert not gs.requires_grad and not gk.requires_grad and not logp.requires_grad
    gs, _, _ = lenssim.likelihood_gradient(obs, s, kappa, sigma, create_graph=True, **kw)
    assert gs.requires_grad


def test_bad_sigma_and_shapes():
    obs, source, kappa, sigma, kw = _problem()
    model = lenssim.lens_image(source, kappa, **kw)
    with pytest.raises(ValueError, match="sigma"):
        lenssim.chi_squared(obs, model, torch.ones(2))
    with pytest.raises(ValueError, match="shape"):
        lenssim.chi_squared(obs, model[:, :, :8], sigma)
    with pytest.raises(ValueError, match="kappa_param"):
        lenssim.likelihood_gradient(obs, source, kappa, sigma, kappa_param="ln", **kw)


@pytest.mark.parametrize("psf_kind", ["none", "per_example", "shared", "separable", "table1_fft"])
@pytest.mark.parametrize("sigma_kind", ["scalar", "per_example", "map"])
@pytest.mark.parametrize("kappa_param", ["kappa", "log10"])
def test_written_out_gradient_equals_autograd(psf_kind, sigma_kind, kappa_param):
    # Without create_graph the gradient comes from the transposes written out; with it, from
    # autograd through lens_image: two independent computations of the same numbers.
    obs, source, kappa, sigma, kw = _problem(b=3, n=24, ns=20)
    g = torch.Generator().manual_seed(4)
    fwhm = torch.tensor([0.25, 0.3, 0.4], dtype=torch.float64)
    psf = {
        "none": None,
        "per_example": kw["psf"],
        "shared": kw["psf"][:1],
        "separable": lenssim.SeparablePSF.gaussian(fwhm, 3.0 / 24, 7),
        "table1_fft": torch.rand(3, 1, 21, 21, generator=g, dtype=torch.float64),  # asymmetric, FFT path
    }[psf_kind]
    sig = {"scalar": 0.07, "per_example": sigma, "map": 0.05 + torch.rand(obs.shape, generator=g, dtype=obs.dtype)}[
        sigma_kind
    ]
    k = kappa.log10() if kappa_param == "log10" else kappa
    args = dict(image_fov=3.0, source_fov=2.0, psf=psf, kappa_param=kappa_param)
    fast = lenssim.likelihood_gradient(obs, source, k, sig, **args)
    ref = lenssim.likelihood_gradient(obs, source, k, sig, create_graph=True, **args)
    for a, r in zip(fast, ref, strict=True):
        assert a.shape == r.shape and not a.requires_grad
        assert torch.allclose(a, r.detach(), rtol=1e-9, atol=1e-9 * r.abs().max().item())


def test_written_out_gradient_sums_a_shared_source():
    obs, source, kappa, sigma, kw = _problem(b=3)
    shared = source[:1]
    gs, gk, _ = lenssim.likelihood_gradient(obs, shared, kappa, sigma, **kw)
    ref_s, ref_k, _ = lenssim.likelihood_gradient(obs, shared, kappa, sigma, create_graph=True, **kw)
    assert gs.shape == (1, 1, 12, 12)
    assert torch.allclose(gs, ref_s.detach()) and torch.allclose(gk, ref_k.detach())


def _autocorrelation(kernel: torch.Tensor, lags: int) -> torch.Tensor:
    """The correlation coefficient between pixels (dy, dx) apart of white noise convolved with
    ``kernel``, offsets up to ``lags``: sum_u k(u) k(u + d) over sum_u k(u)^2, by explicit sums."""
    k = kernel.shape[0]
    rho = torch.zeros(2 * lags + 1, 2 * lags + 1, dtype=torch.float64)
    for dy in range(-lags, lags + 1):
        for dx in range(-lags, lags + 1):
            total = 0.0
            for y in range(k):
                for x in range(k):
                    if 0 <= y + dy < k and 0 <= x + dx < k:
                        total += float(kernel[y, x] * kernel[y + dy, x + dx])
            rho[lags + dy, lags + dx] = total
    return rho / rho[lags, lags]


def _correlated_noise(shape, kernel, generator):
    """Unit-variance noise: white noise convolved with ``kernel`` (normalised to unit sum of squares)."""
    k = kernel.shape[0]
    white = torch.randn(shape[0], 1, shape[-2] + k - 1, shape[-1] + k - 1, generator=generator, dtype=torch.float64)
    return torch.nn.functional.conv2d(white, (kernel / kernel.pow(2).sum().sqrt())[None, None])


def test_binned_chi2_nu_allows_for_correlated_noise():
    """Noise correlated over 3x3 pixels (as drizzling leaves it) sums in 4x4 blocks to 4.7 times
    the variance of white noise (the sum over offsets d of rho(d) (4 - |dy|)(4 - |dx|) / 16):
    read as white it looks like structure. Given its correlation, the binned chi2_nu of that
    noise is 1 again, under a uniform sigma and a varying sigma map alike, at every block side."""
    g = torch.Generator().manual_seed(11)
    kernel = torch.tensor([[0.5, 1.0, 0.5], [1.0, 2.0, 1.0], [0.5, 1.0, 0.5]], dtype=torch.float64)
    rho = _autocorrelation(kernel, 3)  # 0 beyond 2 pixels
    assert rho[3, 4] == pytest.approx(2 / 3) and rho[3, 6] == 0
    noise = _correlated_noise((8, 1, 64, 64), kernel, g)
    clean = torch.zeros_like(noise)
    white = lenssim.binned_chi2_nu(0.1 * noise, clean, 0.1, block=4)
    d = torch.arange(-3, 4, dtype=torch.float64).abs()
    factor = float((rho * torch.outer(4 - d, 4 - d)).sum() / 16)
    assert factor == pytest.approx(169 / 36)  # 1 + 4 (2/3)(3/4) + 4 (4/9)(9/16) + ...
    count = 8 * 16**2  # blocks
    assert abs(float(white.mean()) - factor) < 5 * factor * math.sqrt(2 / count)
    noise_map = 0.02 + 0.2 * torch.rand(noise.shape, generator=g, dtype=torch.float64)
    for block in (2, 4, 8):
        count = 8 * (64 // block) ** 2
        for sigma in (torch.tensor(0.1, dtype=torch.float64), noise_map):
            binned = lenssim.binned_chi2_nu(sigma * noise, clean, sigma, block=block, correlation=rho)
            assert abs(float(binned.mean()) - 1) < 5 * math.sqrt(2 / count), (block, binned)
    # the pixels alone do not see it (chi2_nu), and white noise's own correlation changes nothing
    y = 0.1 * noise
    assert torch.allclose(
        lenssim.binned_chi2_nu(y, clean, 0.1, block=1, correlation=rho), lenssim.chi2_nu(y, clean, 0.1)
    )
    delta = torch.zeros(3, 3, dtype=torch.float64)
    delta[1, 1] = 1
    assert torch.allclose(lenssim.binned_chi2_nu(y, clean, 0.1, correlation=delta), white)
    # one correlation per lens: white lenses and correlated lenses side by side
    per_lens = torch.stack([torch.nn.functional.pad(delta, (2, 2, 2, 2)), rho] * 4)
    mixed = lenssim.binned_chi2_nu(y, clean, 0.1, correlation=per_lens)
    assert torch.allclose(mixed[0::2], white[0::2])
    assert torch.allclose(mixed[1::2], lenssim.binned_chi2_nu(y, clean, 0.1, correlation=rho)[1::2])


@pytest.mark.parametrize(
    ("correlation", "message"),
    [
        (torch.ones(2, 2), r"must be \(2L \+ 1, 2L \+ 1\)"),
        (torch.ones(3, 3, 3), r"or \(2, 2L \+ 1, 2L \+ 1\)"),
        (torch.full((3, 3), 0.5), "1 at the centre"),
        (torch.tensor([[0, 0, 0], [0, 1, 2.0], [0, 0, 0]]), r"in \[-1, 1\]"),
        (torch.tensor([[0, 0, 0], [0, 1, math.nan], [0, 0, 0]]), r"in \[-1, 1\]"),
    ],
)
def test_binned_chi2_nu_refuses_a_correlation_that_is_none(correlation, message):
    y = torch.zeros(2, 1, 16, 16)
    with pytest.raises(ValueError, match=message):
        lenssim.binned_chi2_nu(y, y, 1.0, correlation=correlation)
