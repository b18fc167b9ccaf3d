"""CUDA gives the same results as the CPU (skipped without a GPU)."""

import pytest
import torch

import lenssim

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-10), (torch.float32, 2e-5)])
def test_cuda_equals_cpu(dtype, tol):
    g = torch.Generator().manual_seed(0)
    p = lenssim.sample_sie_parameters(4, generator=g, dtype=dtype)
    kappa = lenssim.sie_convergence(p)
    source = torch.rand(4, 1, 128, 128, generator=g, dtype=dtype)
    psf = lenssim.gaussian_psf(lenssim.sample_psf_fwhm(4, generator=g, dtype=dtype), 7.69 / 128, 21)
    sigma = lenssim.sample_noise_sigma(4, generator=g, dtype=dtype)
    obs = lenssim.lens_image(source, kappa, psf=psf) + 0.01
    cpu = lenssim.likelihood_gradient(obs, source, kappa, sigma, psf=psf)
    gpu = lenssim.likelihood_gradient(obs.cuda(), source.cuda(), kappa.cuda(), sigma.cuda(), psf=psf.cuda())
    for a, b in zip(cpu, gpu, strict=True):
        scale = a.abs().max().clamp_min(1e-30)
        assert ((a - b.cpu()).abs().max() / scale) < tol
    assert torch.allclose(
        lenssim.deflection_angles(kappa[:, 0], 7.69),
        lenssim.deflection_angles(kappa[:, 0].cuda(), 7.69).cpu(),
        rtol=tol,
        atol=tol,
    )
