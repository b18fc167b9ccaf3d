"""Pixel-centred coordinate grids (SPEC section 1).

Pixel ``i`` of an ``n``-pixel axis spanning ``fov`` arcsec sits at
``(i + 0.5) * fov / n - fov / 2``. Images are indexed ``[..., row, col]`` with
x growing along columns and y growing along rows.
"""

from __future__ import annotations

import torch

from lenssim._checks import check_positive, check_size

__all__ = ["pixel_coordinates", "pixel_grid", "pixel_scale"]


def pixel_scale(n: int, fov: float) -> float:
    """Angular size of one pixel, ``fov / n`` (arcsec for ``fov`` in arcsec)."""
    check_size("n", n)
    check_positive("fov", fov)
    return float(fov) / n


def pixel_coordinates(
    n: int, fov: float, *, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None
) -> torch.Tensor:
    """Coordinates of the ``n`` pixel centres of one axis of side ``fov``.

    Returns
    -------
    torch.Tensor
        ``(n,)``, symmetric about 0, spacing ``fov / n``.
    """
    step = pixel_scale(n, fov)
    idx = torch.arange(n, dtype=torch.float64, device=device)
    return ((idx + 0.5) * step - float(fov) / 2).to(dtype)


def pixel_grid(
    n: int, fov: float, *, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel-centre coordinates ``(x, y)`` of an ``n x n`` grid, each ``(n, n)``.

    ``x[row, col]`` depends on ``col`` only and ``y[row, col]`` on ``row`` only.
    """
    c = pixel_coordinates(n, fov, dtype=dtype, device=device)
    y, x = torch.meshgrid(c, c, indexing="ij")
    return x, y
