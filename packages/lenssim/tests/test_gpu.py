"""CUDA gives the same results as the CPU (skipped without a GPU)."""

import pytest
import torch

import lenssim

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def _case(dtype):
    g = torch.Generator().manual_seed(0)
    p = lenssim.sample_sie_parameters(4, generator=g, dtype=dtype)
    kappa = lenssim.sie_convergence(p)
    source = torch.rand(4, 1, 128, 128, generator=g, dtype=dtype)
    psf = lenssim.gaussian_psf(lenssim.sample_psf_fwhm(4, generator=g, dtype=dtype), 7.69 / 128, 21)
    sigma = lenssim.sample_noise_sigma(4, generator=g, dtype=dtype)
    obs = lenssim.lens_image(source, kappa, psf=psf) + 0.01
    return obs, source, kappa, sigma, psf


def _physics(obs, source, kappa, sigma, psf, device="cpu"):
    """The likelihood's three gradients and the deflection field, computed on ``device``."""
    obs, source, kappa, sigma, psf = (t.to(device) for t in (obs, source, kappa, sigma, psf))
    grads = lenssim.likelihood_gradient(obs, source, kappa, sigma, psf=psf)
    return [t.cpu() for t in (*grads, lenssim.deflection_angles(kappa[:, 0], 7.69))]


def test_cuda_equals_cpu_in_float64():
    case = _case(torch.float64)
    for a, b in zip(_physics(*case), _physics(*case, device="cuda"), strict=True):
        assert ((a - b).abs().max() / a.abs().max().clamp_min(1e-30)) < 1e-10


def test_cuda_float32_is_as_accurate_as_cpu_float32():
    """Two float32 computations cannot agree better than each is accurate (the CPU's own error
    on these gradients is ~1e-4 of their maximum, measured against float64), so both are
    measured against the float64 result of the same inputs: CUDA must be as accurate as the CPU.
    TF32 anywhere in the chain (a 10-bit mantissa, ~1e-3 per operation) would break the bound."""
    case = _case(torch.float32)
    exact = _physics(*(t.double() for t in case))
    cpu, gpu = _physics(*case), _physics(*case, device="cuda")
    for ref, a, b in zip(exact, cpu, gpu, strict=True):
        scale = ref.abs().max()
        err_cpu = float((a.double() - ref).abs().max() / scale)
        err_gpu = float((b.double() - ref).abs().max() / scale)
        assert err_gpu < max(3 * err_cpu, 1e-6), (err_gpu, err_cpu)
