"""Shared helpers of lensrim's tests (imported by name: ``from conftest import sie_lenses``)."""

import torch
from torch.utils._python_dispatch import TorchDispatchMode

import lenssim


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA device")
    config.addinivalue_line("markers", "slow: slow test")


def sie_lenses(n=6, pixels=32, seed=0):
    """``n`` SIE + Sersic lenses with a 0.15" Gaussian PSF and noise 0.02, as a fields dict."""
    g = torch.Generator().manual_seed(seed)
    kappa = lenssim.sie_convergence(lenssim.sample_sie_parameters(n, generator=g), n=pixels, fov=7.69)
    src = lenssim.sersic_sources(n, pixels=pixels, fov=3.0, generator=g)
    psf = lenssim.gaussian_psf(torch.full((n,), 0.15), 7.69 / pixels, 5)
    sig = torch.full((n,), 0.02)
    obs = lenssim.add_noise(lenssim.lens_image(src, kappa, psf=psf), sig, generator=g)
    return {"observation": obs, "source": src, "kappa": kappa, "psf": psf, "noise_sigma": sig}


class ConvolutionDtypes(TorchDispatchMode):
    """Records the dtype of every convolution's input (forward and backward) run inside it."""

    def __init__(self) -> None:
        super().__init__()
        self.dtypes: set[torch.dtype] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket in (torch.ops.aten.convolution, torch.ops.aten.convolution_backward):
            self.dtypes.add(args[0].dtype)
        return func(*args, **(kwargs or {}))
