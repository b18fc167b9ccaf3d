import math

import pytest
import torch

import lenssim


def test_unit_sum_centred_and_right_width():
    fwhm = torch.tensor([0.08, 0.2, 0.3], dtype=torch.float64)
    pix = 7.69 / 128
    psf = lenssim.gaussian_psf(fwhm, pix, 31)
    assert psf.shape == (3, 1, 31, 31)
    assert torch.allclose(psf.sum(dim=(-1, -2)), torch.ones(3, 1, dtype=torch.float64))
    off = (torch.arange(31, dtype=torch.float64) - 15) * pix
    for b in range(3):
        p = psf[b, 0]
        assert p.argmax().item() == 15 * 31 + 15  # peak on the central pixel
        assert (p * off[None, :]).sum().abs() < 1e-15 and (p * off[:, None]).sum().abs() < 1e-15
        assert torch.allclose(p, p.flip(0)) and torch.allclose(p, p.T)
    # second moment of a well-sampled wide PSF is sigma^2
    var = (psf[2, 0] * off[None, :] ** 2).sum()
    assert var.item() == pytest.approx((0.3 / (2 * math.sqrt(2 * math.log(2)))) ** 2, rel=1e-3)


def test_half_maximum_at_half_the_fwhm():
    # Sample finely so that the profile crosses 1/2 of its peak at fwhm / 2.
    fwhm, pix = 0.3, 0.001
    g = lenssim.gaussian_psf_1d(fwhm, pix, 601, dtype=torch.float64)[0]
    half_index = round(fwhm / 2 / pix)
    assert (g[300 + half_index] / g[300]).item() == pytest.approx(0.5, rel=1e-3)


@pytest.mark.parametrize("size", [0, 4, 20, -3])
def test_even_or_bad_sizes_are_refused(size):
    with pytest.raises(ValueError, match="odd"):
        lenssim.gaussian_psf(0.1, 0.06, size)


def test_bad_fwhm_is_refused():
    with pytest.raises(ValueError, match="FWHM"):
        lenssim.gaussian_psf(torch.tensor([0.1, -0.1]), 0.06, 11)


def test_convolution_places_the_kernel_at_a_point_source():
    # An asymmetric kernel catches a flipped (correlation instead of convolution) or shifted
    # implementation: the image of a delta at (i, j) is the kernel centred at (i, j).
    g = torch.Generator().manual_seed(0)
    kernel = torch.rand(2, 1, 5, 5, generator=g, dtype=torch.float64)
    image = torch.zeros(2, 1, 16, 16, dtype=torch.float64)
    image[0, 0, 6, 9] = 1.0
    image[1, 0, 3, 4] = 2.0
    out = lenssim.convolve_psf(image, kernel)
    assert torch.allclose(out[0, 0, 4:9, 7:12], kernel[0, 0])
    assert torch.allclose(out[1, 0, 1:6, 2:7], 2 * kernel[1, 0])
    assert out[0, 0].sum().item() == pytest.approx(kernel[0].sum().item())


def test_separable_equals_full_kernel():
    fwhm = torch.tensor([0.1, 0.25], dtype=torch.float64)
    full = lenssim.gaussian_psf(fwhm, 0.06, 11)
    sep = lenssim.SeparablePSF.gaussian(fwhm, 0.06, 11)
    assert torch.allclose(sep.kernel(), full)
    image = torch.rand(2, 1, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(lenssim.convolve_psf(image, sep), lenssim.convolve_psf(image, full), atol=1e-14)


def test_shared_psf_and_gradients():
    image = torch.rand(3, 1, 12, 12, dtype=torch.float64, requires_grad=True)
    psf = torch.rand(1, 1, 3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda i, p: lenssim.convolve_psf(i, p), (image, psf))
    fixed = torch.rand(3, 1, 5, 5, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda i: lenssim.convolve_psf(i, fixed), (image,))
    assert torch.autograd.gradgradcheck(lambda i: lenssim.convolve_psf(i, fixed), (image,))


def test_psf_shape_errors():
    image = torch.zeros(2, 1, 8, 8)
    with pytest.raises(ValueError, match="psf must have shape"):
        lenssim.convolve_psf(image, torch.zeros(2, 3, 3))
    with pytest.raises(ValueError, match="batch"):
        lenssim.convolve_psf(image, torch.zeros(3, 1, 3, 3))
    with pytest.raises(ValueError, match="odd"):
        lenssim.convolve_psf(image, torch.zeros(2, 1, 4, 4))


def test_ieee_float32_switches_tf32_off_for_cuda_only_and_restores_it():
    from lenssim.physics.psf import ieee_float32

    conv = torch.backends.cudnn.conv
    before = conv.fp32_precision
    conv.fp32_precision = "tf32"  # cuDNN's default for convolutions
    try:
        with ieee_float32(torch.device("cuda")):
            assert conv.fp32_precision == "ieee"
        assert conv.fp32_precision == "tf32"
        with ieee_float32(torch.device("cpu")):
            assert conv.fp32_precision == "tf32"  # nothing changes off the GPU
        with pytest.raises(RuntimeError), ieee_float32(torch.device("cuda")):
            raise RuntimeError("restored on errors too")
        assert conv.fp32_precision == "tf32"
    finally:
        conv.fp32_precision = before


def test_subnormal_psf_values_are_dropped_without_changing_a_convolution():
    from lenssim.physics.psf import without_subnormals

    tiny = torch.finfo(torch.float32).tiny
    psf = lenssim.gaussian_psf(torch.tensor([0.06, 0.08]), 7.69 / 128, 11)  # Table 1's narrowest: far tails
    assert ((psf > 0) & (psf < tiny)).any(), "the test needs a PSF with subnormal values"
    clean = without_subnormals(psf)
    assert not ((clean > 0) & (clean < tiny)).any()
    assert torch.equal(clean[psf >= tiny], psf[psf >= tiny])  # every normal value kept, bit for bit
    image = torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    reference = lenssim.convolve_psf(image.double(), psf.double())  # float64: subnormals of float32 are normal
    out = lenssim.convolve_psf(image, psf)
    assert (out.double() - reference).abs().max() < 1e-6  # float32 accuracy, the subnormals made no difference
    assert torch.equal(without_subnormals(torch.tensor([1, 2])), torch.tensor([1, 2]))  # integers untouched


def _direct_convolution(image: torch.Tensor, psf: torch.Tensor) -> torch.Tensor:
    """An independent reference: out[y, x] = sum_ij psf[i, j] image[y + c - i, x + c - j] (c the
    kernel's centre), zero beyond the edge, as a loop over the kernel's pixels (no FFT, no conv2d)."""
    kh, kw = psf.shape[-2:]
    h, w = image.shape[-2:]
    padded = torch.nn.functional.pad(image, (kw // 2, kw // 2, kh // 2, kh // 2))
    out = torch.zeros_like(image)
    for i in range(kh):
        for j in range(kw):
            shifted = padded[..., kh - 1 - i : kh - 1 - i + h, kw - 1 - j : kw - 1 - j + w]
            out = out + psf[..., i : i + 1, j : j + 1] * shifted
    return out


@pytest.mark.parametrize("shared", [False, True])
def test_large_psfs_take_the_fft_path_and_convolve_exactly(shared, monkeypatch):
    import lenssim.physics.psf as psf_module

    g = torch.Generator().manual_seed(2)
    k = 21  # Table 1's size
    assert k >= psf_module.FFT_FROM_SIDE["cpu"] > 9
    psf = torch.rand(1 if shared else 3, 1, k, k, generator=g, dtype=torch.float64)  # asymmetric
    image = torch.rand(3, 1, 40, 40, generator=g, dtype=torch.float64)
    image[0, 0, 0, 0] = 50.0  # a bright corner: any wrap-around would light the far edges
    seen = []
    real = psf_module.fft_convolve
    monkeypatch.setattr(psf_module, "fft_convolve", lambda *a: seen.append(1) or real(*a))
    out = lenssim.convolve_psf(image, psf)
    assert seen, "a 21x21 PSF on the CPU must take the FFT path"
    assert torch.allclose(out, _direct_convolution(image, psf), rtol=0, atol=1e-12)
    for side, fft in ((11, False), (11, True), (9, False)):  # each path, on any CPU, exact
        seen.clear()
        small = psf[..., (k - side) // 2 : (k + side) // 2, (k - side) // 2 : (k + side) // 2]
        monkeypatch.setitem(psf_module.FFT_FROM_SIDE, "cpu", side if fft else side + 2)
        got = lenssim.convolve_psf(image, small)
        assert torch.allclose(got, _direct_convolution(image, small), rtol=0, atol=1e-12)
        assert bool(seen) is fft


@pytest.mark.parametrize(("capability", "side"), [("AVX512", 13), ("AVX2", 11), ("DEFAULT", 11)])
def test_an_11x11_psf_takes_the_fft_path_on_a_cpu_without_avx512(capability, side, monkeypatch):
    """oneDNN's direct one-channel convolution keeps its fast path for an 11 x 11 kernel with
    AVX-512 only (without it, forward and backward took 6-30 times the FFT product's time for 1-16
    images of 64^2 and 128^2 on a 2-core AVX2 CPU)."""
    import lenssim.physics.psf as psf_module

    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    assert psf_module._cpu_fft_from_side() == side


def test_fft_path_in_float32_is_as_accurate_as_the_direct_path_and_differentiable():
    from lenssim.physics.psf import fft_convolve

    fwhm = torch.tensor([0.1, 0.3])
    image = torch.rand(2, 1, 64, 64, generator=torch.Generator().manual_seed(3))
    psf = lenssim.gaussian_psf(fwhm, 7.69 / 64, 21)
    reference = _direct_convolution(image.double(), psf.double())
    assert (lenssim.convolve_psf(image, psf).double() - reference).abs().max() < 1e-6  # as the 11x11 test above
    small = psf[..., 5:-5, 5:-5] / psf[..., 5:-5, 5:-5].sum(dim=(-1, -2), keepdim=True)
    direct_error = lenssim.convolve_psf(image, small).double() - _direct_convolution(image.double(), small.double())
    fft_error = fft_convolve(image, small).double() - _direct_convolution(image.double(), small.double())
    assert fft_error.abs().max() < 5 * direct_error.abs().max() + 1e-7  # same order as the direct path
    i = torch.rand(2, 1, 14, 14, dtype=torch.float64, requires_grad=True)
    p = torch.rand(2, 1, 13, 13, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda i, p: lenssim.convolve_psf(i, p), (i, p))
    assert torch.autograd.gradgradcheck(lambda i: lenssim.convolve_psf(i, p.detach()), (i,))


def test_a_shared_psf_equals_the_same_psf_per_image():
    g = torch.Generator().manual_seed(4)
    image = torch.rand(4, 1, 24, 24, generator=g, dtype=torch.float64)
    for k in (5, 11, 15):
        psf = torch.rand(1, 1, k, k, generator=g, dtype=torch.float64)
        shared = lenssim.convolve_psf(image, psf)
        assert torch.allclose(shared, lenssim.convolve_psf(image, psf.expand(4, 1, k, k)), rtol=0, atol=1e-13)
        assert torch.allclose(shared, _direct_convolution(image, psf), rtol=0, atol=1e-13)


@pytest.mark.parametrize("size", [5, 21])  # the direct path and (on a CPU) the FFT path
@pytest.mark.parametrize("shared", [False, True])
def test_adjoint_is_the_transpose(size, shared):
    # <b, P a> == <P^T b, a> for an asymmetric kernel, with P from the independent loop reference
    g = torch.Generator().manual_seed(7)
    psf = torch.rand(1 if shared else 3, 1, size, size, generator=g, dtype=torch.float64)
    a = torch.rand(3, 1, 30, 30, generator=g, dtype=torch.float64)
    b = torch.rand(3, 1, 30, 30, generator=g, dtype=torch.float64)
    lhs = (b * _direct_convolution(a, psf)).flatten(1).sum(1)
    rhs = (lenssim.convolve_psf_adjoint(b, psf) * a).flatten(1).sum(1)
    assert torch.allclose(lhs, rhs, rtol=1e-12)


def test_separable_adjoint_is_the_transpose():
    g = torch.Generator().manual_seed(8)
    rk, ck = (torch.rand(3, 7, generator=g, dtype=torch.float64) for _ in range(2))  # asymmetric
    sep = lenssim.SeparablePSF(rk, ck)
    a = torch.rand(3, 1, 24, 24, generator=g, dtype=torch.float64)
    b = torch.rand(3, 1, 24, 24, generator=g, dtype=torch.float64)
    lhs = (b * _direct_convolution(a, sep.kernel())).flatten(1).sum(1)
    rhs = (lenssim.convolve_psf_adjoint(b, sep) * a).flatten(1).sum(1)
    assert torch.allclose(lhs, rhs, rtol=1e-12)
    with pytest.raises(ValueError, match="psf must"):
        lenssim.convolve_psf_adjoint(b, [[1.0]])
