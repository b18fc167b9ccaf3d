import numpy as np
import pytest
import torch

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA device")
    config.addinivalue_line("markers", "slow: slow test")


@pytest.fixture(params=DEVICES)
def device(request):
    return torch.device(request.param)


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(12345)


def direct_deflection(kappa: np.ndarray, fov: float) -> np.ndarray:
    """Eq. 5 by explicit summation over every pair of pixels, in numpy float64.

    An implementation independent of lenssim's: no FFT, no kernel layout, its own grid.
    kappa (..., N, N) -> (..., 2, N, N).
    """
    n = kappa.shape[-1]
    h = fov / n
    c = -fov / 2 + h * (np.arange(n) + 0.5)
    X, Y = np.meshgrid(c, c)  # X varies along columns
    xs, ys = X.ravel(), Y.ravel()
    dx = xs[:, None] - xs[None, :]
    dy = ys[:, None] - ys[None, :]
    r2 = dx**2 + dy**2
    np.fill_diagonal(r2, np.inf)
    flat = kappa.reshape(*kappa.shape[:-2], n * n)
    ax = flat @ (dx / r2).T * h * h / np.pi
    ay = flat @ (dy / r2).T * h * h / np.pi
    return np.stack([ax, ay], axis=-2).reshape(*kappa.shape[:-2], 2, n, n)


def shared_cosmos_dir():
    """../shared/data/cosmos beside the repository (or $LENS_SHARED_DATA/cosmos)."""
    import os
    from pathlib import Path

    root = os.environ.get("LENS_SHARED_DATA")
    d = Path(root) / "cosmos" if root else Path(__file__).resolve().parents[3].parent / "shared" / "data" / "cosmos"
    return d if d.is_dir() else None
