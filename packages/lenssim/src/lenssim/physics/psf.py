"""Point spread functions and their convolution with images (SPEC section 1).

PSFs are sampled on the image grid in odd-sized kernels centred on a pixel (an even kernel has
no central pixel and shifts the image by half a pixel) and normalised to unit sum. A sampled
Gaussian is exactly the outer product of two sampled 1-D Gaussians, each normalised to unit sum,
so :class:`SeparablePSF` convolves with two 1-D passes (2k instead of k^2 multiplies per pixel)
with the same result as the 2-D kernel from :func:`gaussian_psf`.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import NamedTuple

import torch
import torch.nn.functional as F

from lenssim._checks import check_bchw, check_positive

__all__ = [
    "FFT_FROM_SIDE",
    "SeparablePSF",
    "convolve_psf",
    "convolve_psf_adjoint",
    "fft_convolve",
    "fwhm_to_sigma",
    "gaussian_psf",
    "gaussian_psf_1d",
]

_FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))


def fwhm_to_sigma(fwhm: torch.Tensor | float) -> torch.Tensor | float:
    """Standard deviation of a Gaussian of full width at half maximum ``fwhm``."""
    return fwhm / _FWHM_PER_SIGMA


def _check_odd(size: int) -> None:
    if isinstance(size, bool) or not isinstance(size, int) or size < 1 or size % 2 == 0:
        raise ValueError(f"PSF size must be an odd positive integer (centred on a pixel), got {size!r}")


def _as_fwhm(fwhm, dtype, device) -> torch.Tensor:
    f = torch.as_tensor(fwhm, dtype=dtype, device=device).reshape(-1)
    if f.numel() == 0 or not bool(torch.all(torch.isfinite(f) & (f > 0))):
        raise ValueError(f"PSF FWHM must be positive and finite, got {fwhm!r}")
    return f


def gaussian_psf_1d(
    fwhm: torch.Tensor | float,
    pixel_scale: float,
    size: int,
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """A Gaussian sampled at ``size`` pixel centres about the central pixel, unit sum.

    Parameters
    ----------
    fwhm
        Scalar or ``(B,)`` full width at half maximum, arcsec.
    pixel_scale
        Arcsec per pixel.
    size
        Odd number of pixels.

    Returns
    -------
    torch.Tensor
        ``(B, size)``.
    """
    _check_odd(size)
    check_positive("pixel_scale", pixel_scale)
    if isinstance(fwhm, torch.Tensor):
        dtype = dtype or (fwhm.dtype if fwhm.is_floating_point() else None)
        device = device or fwhm.device
    dtype = dtype or torch.float32
    f = _as_fwhm(fwhm, dtype, device)
    half = size // 2
    x = torch.arange(-half, half + 1, dtype=dtype, device=device) * pixel_scale
    sigma = fwhm_to_sigma(f)[:, None]
    g = torch.exp(-0.5 * (x[None, :] / sigma) ** 2)
    return g / g.sum(dim=-1, keepdim=True)


def gaussian_psf(
    fwhm: torch.Tensor | float,
    pixel_scale: float,
    size: int,
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """A circular Gaussian PSF per example, ``(B, 1, size, size)``, unit sum.

    ``fwhm`` (arcsec) is a scalar or a ``(B,)`` tensor; ``size`` must be odd so that the PSF is
    centred on a pixel.
    """
    g = gaussian_psf_1d(fwhm, pixel_scale, size, dtype=dtype, device=device)
    return (g[:, :, None] * g[:, None, :]).unsqueeze(1)


class SeparablePSF(NamedTuple):
    """A PSF that is the outer product ``column_kernel[:, :, None] * row_kernel[:, None, :]``.

    Each field is ``(B, k)`` or ``(1, k)`` with ``k`` odd; ``row_kernel`` acts along columns
    (x) and ``column_kernel`` along rows (y).
    """

    row_kernel: torch.Tensor
    column_kernel: torch.Tensor

    @classmethod
    def gaussian(
        cls,
        fwhm: torch.Tensor | float,
        pixel_scale: float,
        size: int,
        *,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> SeparablePSF:
        """The separable form of :func:`gaussian_psf` with the same arguments."""
        g = gaussian_psf_1d(fwhm, pixel_scale, size, dtype=dtype, device=device)
        return cls(g, g)

    def kernel(self) -> torch.Tensor:
        """The equivalent 2-D kernel, ``(B, 1, k, k)``."""
        return (self.column_kernel[:, :, None] * self.row_kernel[:, None, :]).unsqueeze(1)

    def to(self, *args, **kwargs) -> SeparablePSF:
        return SeparablePSF(self.row_kernel.to(*args, **kwargs), self.column_kernel.to(*args, **kwargs))


@contextlib.contextmanager
def ieee_float32(device: torch.device) -> Iterator[None]:
    """Full float32 precision for cuDNN convolutions on ``device`` while inside.

    cuDNN may run float32 convolutions in TF32 (a 10-bit mantissa) by default, which makes a
    PSF convolution on the GPU differ from the CPU's by ~1e-4 relative: physics in float32
    must be float32 on every device. Nothing changes on other devices. (The flag is global:
    the RIM's own convolutions outside this block keep whatever the user chose.)
    """
    if device.type != "cuda":
        yield
        return
    conv = getattr(torch.backends.cudnn, "conv", None)
    if conv is not None and hasattr(conv, "fp32_precision"):
        old = conv.fp32_precision
        conv.fp32_precision = "ieee"
        try:
            yield
        finally:
            conv.fp32_precision = old
    else:  # older torch
        old = torch.backends.cudnn.allow_tf32
        torch.backends.cudnn.allow_tf32 = False
        try:
            yield
        finally:
            torch.backends.cudnn.allow_tf32 = old


def _conv(image: torch.Tensor, weight: torch.Tensor, padding: tuple[int, int]) -> torch.Tensor:
    """Cross-correlate each example of ``image (B, 1, H, W)`` with its own kernel
    ``(B or 1, 1, kh, kw)``, keeping the size, in full float32 precision on every device."""
    b = image.shape[0]
    if weight.shape[0] == 1 and b > 1 and image.device.type == "cpu":
        # oneDNN's per-example (grouped) path is the fast one on a CPU: a shared 11x11 kernel on
        # 16 images of 128^2 takes 5.0 ms as one kernel and 0.57 ms repeated per image
        weight = weight.expand(b, *weight.shape[1:])
    with ieee_float32(image.device):
        if weight.shape[0] == 1:
            return F.conv2d(image, weight, padding=padding)
        out = F.conv2d(image.reshape(1, b, *image.shape[-2:]), weight, padding=padding, groups=b)
    return out.reshape(image.shape)


class _Blur(torch.autograd.Function):
    """Convolution with a fixed PSF whose backward pass is the same convolution with the
    flipped kernel. (torch's own conv2d backward takes a slow path for one-channel images:
    about 15x the forward's time at batch 1.)"""

    @staticmethod
    def forward(ctx, image: torch.Tensor, flipped: torch.Tensor, padding: tuple[int, int]) -> torch.Tensor:
        ctx.save_for_backward(flipped)
        ctx.padding = padding
        return _conv(image, flipped, padding)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (flipped,) = ctx.saved_tensors
        return _Blur.apply(grad, flipped.flip(-2, -1), ctx.padding), None, None


def _cpu_fft_from_side() -> int:
    """The CPU's entry of :data:`FFT_FROM_SIDE`: 13 where torch dispatches AVX-512 kernels, else 11.

    oneDNN's direct convolution of one-channel images keeps a fast path up to 11 x 11 kernels with
    AVX-512 and only up to 7-9 without: on 2 cores of an AMD EPYC with AVX2 alone, forward and
    backward of an 11 x 11 PSF took 6.5 ms against 0.8 by FFT for one 64^2 image, 8.6 against 1.3
    for 8, and 58 against 6.2 ms for 16 images of 128^2, where on one with AVX-512 the direct path
    took 0.57 ms against 1.1 by FFT for the 16. (9 x 9 was mixed there: faster by FFT for one
    image, up to 3x slower for 8-16; 7 x 7 and smaller direct was as fast or faster.) Other CPUs,
    ARM ones included (not measured), take the FFT path from 11 too: exact either way, and the
    FFT's cost grows with the image, not with a kernel's fall from a fast path."""
    return 13 if torch.backends.cpu.get_cpu_capability().startswith("AVX512") else 11


FFT_FROM_SIDE: dict[str, int] = {"cpu": _cpu_fft_from_side()}
"""Per device type, the smallest PSF side that is convolved as a product of FFTs
(:func:`fft_convolve`) instead of directly; a device type not listed (CUDA: not yet measured)
always convolves directly. On a CPU, beyond 11 pixels (with AVX-512; 9 without, see
:func:`_cpu_fft_from_side`) oneDNN's per-example convolution leaves its fast path: on 2 cores with
AVX-512, 16 images of 64^2 take 0.24 ms with an 11x11 PSF, 4.5 ms with a 15x15 and 8.7 ms with
Table 1's 21x21, where the FFT product takes 0.3-0.6 ms for any of them (at 128^2: 0.57 ms direct
against 1.1 ms by FFT for 11x11, 36 ms against 1.1 ms for 21x21). Both paths are exact to float32
rounding, so a machine's choice changes results by rounding only, and always the same way on that
machine; ``benchmarks/bench_lenssim.py`` times them against each other."""


def _fft_length(n: int) -> int:
    """The smallest multiple of 8 that is at least ``n`` and has no prime factor above 5 (80 for a
    64^2 image and a 21x21 PSF, 144 at 128^2): of the lengths tried on 2 cores, these were the
    fastest or within 10 % of it (at 128^2, 133 took 4.7 times as long as 144)."""
    m = n + (-n) % 8
    while True:
        rest = m
        for p in (2, 3, 5):
            while rest % p == 0:
                rest //= p
        if rest == 1:
            return m
        m += 8


def fft_convolve(image: torch.Tensor, psf: torch.Tensor) -> torch.Tensor:
    """:func:`convolve_psf` of ``image (B, 1, H, W)`` with a ``(B or 1, 1, kh, kw)`` PSF as a
    product of zero-padded FFTs: the same linear convolution, zero beyond the edge (the padding
    of at least half the PSF keeps the wrap-around out of the kept pixels), differentiable in both
    arguments. In float32 its error is a few 1e-7 of the image's peak, as the direct path's."""
    kh, kw = psf.shape[-2:]
    h, w = image.shape[-2:]
    size = (_fft_length(h + kh // 2), _fft_length(w + kw // 2))
    product = torch.fft.rfft2(image, s=size) * torch.fft.rfft2(psf.to(image.dtype), s=size)
    return torch.fft.irfft2(product, s=size)[..., kh // 2 : kh // 2 + h, kw // 2 : kw // 2 + w]


def _convolve(image: torch.Tensor, weight: torch.Tensor, padding: tuple[int, int]) -> torch.Tensor:
    if weight.shape[0] not in (1, image.shape[0]):
        raise ValueError(f"PSF batch {weight.shape[0]} does not match image batch {image.shape[0]}")
    if image.dtype in (torch.float32, torch.float64) and min(weight.shape[-2:]) >= FFT_FROM_SIDE.get(
        image.device.type, math.inf
    ):
        return fft_convolve(image, weight)
    # conv2d computes a cross-correlation, so the kernel is flipped to convolve.
    flipped = weight.flip(-2, -1)
    if flipped.requires_grad:  # a PSF being fitted: let autograd differentiate both inputs
        return _conv(image, flipped, padding)
    return _Blur.apply(image, without_subnormals(flipped), padding)


def without_subnormals(kernel: torch.Tensor) -> torch.Tensor:
    """``kernel`` with its subnormal values (below ``finfo(dtype).tiny``, e.g. a Gaussian PSF's far
    tail) set to zero, on the CPU. They change no convolution's value (each product lies far
    below the precision of any sum it joins), but CPUs compute with them tens of times slower: a
    Table 1 PSF at 128^2 holds a dozen, which made the CPU convolution 5x slower. GPUs take them
    at full speed: there the kernel is returned as it is (no extra kernels in the hot path)."""
    if not kernel.is_floating_point() or kernel.device.type != "cpu":
        return kernel
    return kernel.masked_fill(kernel.abs() < torch.finfo(kernel.dtype).tiny, 0.0)


def convolve_psf(image: torch.Tensor, psf: torch.Tensor | SeparablePSF) -> torch.Tensor:
    """Convolve ``image (B, 1, N, N)`` with a PSF, keeping its size (zero beyond the edge).

    ``psf`` is a ``(B, 1, k, k)`` or ``(1, 1, k, k)`` tensor with ``k`` odd, or a
    :class:`SeparablePSF`.
    """
    check_bchw("image", image)
    if isinstance(psf, SeparablePSF):
        rk, ck = psf.row_kernel, psf.column_kernel
        for name, k in (("row_kernel", rk), ("column_kernel", ck)):
            if k.dim() != 2:
                raise ValueError(f"SeparablePSF.{name} must be (B, k), got {tuple(k.shape)}")
            _check_odd(int(k.shape[-1]))
        out = _convolve(image, rk[:, None, None, :], (0, rk.shape[-1] // 2))
        return _convolve(out, ck[:, None, :, None], (ck.shape[-1] // 2, 0))
    if not isinstance(psf, torch.Tensor) or psf.dim() != 4 or psf.shape[1] != 1 or psf.shape[-1] != psf.shape[-2]:
        shape = tuple(psf.shape) if isinstance(psf, torch.Tensor) else type(psf).__name__
        raise ValueError(f"psf must have shape (B, 1, k, k) or (1, 1, k, k), got {shape}")
    _check_odd(int(psf.shape[-1]))
    k = psf.shape[-1] // 2
    return _convolve(image, psf, (k, k))


def convolve_psf_adjoint(image: torch.Tensor, psf: torch.Tensor | SeparablePSF) -> torch.Tensor:
    """The transpose of :func:`convolve_psf`: correlation with the PSF (the convolution with the
    PSF turned by 180 degrees), same size, zero beyond the edge, by the same paths.

    For any ``a`` and ``b``, ``sum(b * convolve_psf(a, psf)) == sum(a * convolve_psf_adjoint(b,
    psf))``: the gradient of a loss of the blurred image with respect to the sharp one.
    """
    if isinstance(psf, SeparablePSF):
        # the two 1-D passes act on different axes and commute, so each is turned in place
        return convolve_psf(image, SeparablePSF(psf.row_kernel.flip(-1), psf.column_kernel.flip(-1)))
    if not isinstance(psf, torch.Tensor):
        raise ValueError(f"psf must be a (B, 1, k, k) tensor or a SeparablePSF, got {type(psf).__name__}")
    return convolve_psf(image, psf.flip(-2, -1))
