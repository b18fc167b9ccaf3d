"""The Recurrent Inference Machine: a ConvGRU U-net fed preprocessed likelihood gradients.

(sections 2.3-2.4, appendix C, Table 7; SPEC section 5)

State x = (s, xi): the source s (identity link) and xi = log10 kappa (link kappa = 10^xi), both
on N x N grids. Step 0 sees only the data, x^(0) = g(0, y, 0); then
x^(t+1) = x^(t) + g(x^(t), y, grad log p(y | x^(t))) for T - 1 more steps, so a call returns T
estimates. The network sees the 5 channels [y, s, xi, g_s, g_xi] and outputs 2 (delta s,
delta xi) through a linear 1x1 convolution.

The likelihood gradient is computed by the forward model on detached inputs: it is an input to
the network, never differentiated through (Figure 1's dashed arrows). It is normalised by moments
accumulated over the steps of one call and reset at every call: by default RMSProp's,
g / (sqrt(v_hat) + eps) with decay 0.9, as the authors' published model did; Adam's (the paper's
text) and the raw gradient are options (``RIMConfig.gradient_preprocessing``; why:
``docs/rim_ab.md``). With ``step_gains`` each update is scaled by a learned gain per step and channel;
with ``gradient_skip`` a learned gain per step and channel times the preprocessed gradient is added
to it (the U-net's output layer then starts at zero: an untrained RIM is likelihood ascent), or,
with ``skip_normalisation="map"``, times the raw gradient over its map's root-mean-square.

U-net: an 11x11 input convolution; per level ``convs_per_level`` 3x3 convolutions, a ConvGRU on
the skip connection, a 3x3 stride-2 convolution to the next level's width; a ConvGRU at the
bottleneck; per level on the way up a 3x3 stride-2 transposed convolution, concatenation with
the skip GRU's state and ``convs_per_level`` 3x3 convolutions; tanh after every convolution but
the output. Each GRU carries its hidden state across the T steps. The paper preset (128 filters,
x2 per level capped at 1024, 5 levels) has exactly Table 7's 348,546,818 parameters in its U-net,
and 14 more for the gradient skip's gains (``gradient_skip`` 0: none).
"""

from __future__ import annotations

import functools
from dataclasses import replace
from typing import Protocol

import torch
from torch import nn
from torch.func import functional_call, vmap
from torch.utils.checkpoint import checkpoint

from lensrim.config import PRESETS, RIMConfig

__all__ = [
    "PRESETS",
    "RIM",
    "ConvGRU",
    "ForwardModel",
    "RIMConfig",
    "build_rim",
    "map_moment_step",
    "moment_step",
    "preprocess_gradients",
    "rim_loss",
    "rim_loss_terms",
]


class ForwardModel(Protocol):
    """What lensrim asks of a forward model, for a batch of B observations ``(B, 1, N, N)``.

    - ``simulate(source, xi)``: the noiseless image F(source, kappa = 10^xi), ``(B, 1, N, N)``;
    - ``gradient(y, source, xi)``: ``(grad_source, grad_xi)``, the gradient of
      log p(y | source, kappa = 10^xi), detached, each ``(B, 1, N, N)`` (the RIM's input);
    - ``chi2_nu(y, source, xi)``: chi^2 / N^2 per example, ``(B,)``, differentiable (training's
      and evaluation's goodness of fit, fine-tuning's data term);
    - ``add_noise(image, eps)``: ``image`` observed with the model's noise, given standard normal
      draws ``eps`` of its shape (fine-tuning's simulated tasks);
    - ``subset(index)``: the forward model of examples ``index`` (a long tensor, repeats allowed);
    - ``whitened_residual(y, source, xi)``: (y - F) / sigma, detached, ``(B, 1, N, N)``, asked for
      only by a RIM with ``residual_input``.

    :class:`lensrim.LensingPhysics` and the toy :class:`lensrim.LinearPhysics` implement it.
    """

    def simulate(self, source: torch.Tensor, xi: torch.Tensor) -> torch.Tensor: ...

    def gradient(
        self, y: torch.Tensor, source: torch.Tensor, xi: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]: ...

    def chi2_nu(self, y: torch.Tensor, source: torch.Tensor, xi: torch.Tensor) -> torch.Tensor: ...

    def add_noise(self, image: torch.Tensor, eps: torch.Tensor) -> torch.Tensor: ...

    def subset(self, index: torch.Tensor) -> ForwardModel: ...

    def whitened_residual(self, y: torch.Tensor, source: torch.Tensor, xi: torch.Tensor) -> torch.Tensor: ...


@functools.cache
def native_bf16_cpu() -> bool:
    """Whether this CPU computes bfloat16 natively (AMX or AVX-512 BF16, as oneDNN sees it):
    where it does not, bfloat16 convolutions are emulated and slower than float32."""
    try:  # a private oneDNN query: a build without it has no native bfloat16 path we can use
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def bf16_enabled(config: RIMConfig, x: torch.Tensor) -> bool:
    """Whether the U-net computes in bfloat16 for inputs like ``x``: with ``config.bf16``, on a
    GPU and on a CPU that computes bfloat16 natively (:func:`native_bf16_cpu`)."""
    return config.bf16 and (x.is_cuda or (x.device.type == "cpu" and native_bf16_cpu()))


def bf16_autocast(config: RIMConfig, x: torch.Tensor) -> torch.autocast:
    """The U-net's bfloat16 autocast where :func:`bf16_enabled`; elsewhere float32."""
    return torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16_enabled(config, x))


class _Cast(torch.autograd.Function):
    """``weight`` as ``low``, its copy in a lower precision made once for all of the RIM's steps.
    Each step's gradient comes back to ``weight`` in ``weight``'s precision, as through a
    ``weight.to(low.dtype)`` in every step (so the steps' gradients add up in float32, and the
    result is the same to the bit), without a cast of every weight in every step."""

    @staticmethod
    def forward(ctx, weight: torch.Tensor, low: torch.Tensor) -> torch.Tensor:
        ctx.dtype = weight.dtype
        return low.view_as(low)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad.to(ctx.dtype), None


def input_conv_before_vmap(x: torch.Tensor) -> bool:
    """Whether per-example U-nets run their input convolution before :func:`torch.func.vmap`, as
    one channels-last grouped convolution (:func:`_per_example_conv`): on a CPU. A GPU keeps
    vmap's own layout (not measured there). Both layouts compute the same function
    (``tests/test_rim.py`` runs the GPU's on the CPU)."""
    return x.device.type == "cpu"


def _per_example_conv(conv: nn.Conv2d, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``conv`` applied to each example of ``x (B, C, H, W)`` with its own ``weight (B, *shape)``
    and ``bias (B, out)``: the grouped convolution vmap would make, but channels-last. For the
    U-net's 11 x 11 input convolution oneDNN runs that layout 3.3 times faster on the 2-core CPU
    (bfloat16, forward and backward: 12 ms against 39 ms for 8 lenses at 64^2; a fine-tuning step
    10-15 % shorter); for its other layers the layout gains nothing there."""
    b, c = x.shape[:2]
    out = nn.functional.conv2d(
        x.reshape(1, b * c, *x.shape[2:]).contiguous(memory_format=torch.channels_last),
        weight.flatten(0, 1).contiguous(memory_format=torch.channels_last),
        bias.flatten(),
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        groups=b * conv.groups,
    )
    return out.reshape(b, -1, *out.shape[2:])


def build_rim(preset: str = "small", **overrides) -> RIM:
    """A RIM from a named preset, with keyword overrides of any :class:`RIMConfig` field."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose from {sorted(PRESETS)}")
    return RIM(replace(PRESETS[preset], **overrides))


class ConvGRU(nn.Module):
    """Convolutional GRU: z = sigma(W_z [x, h]), r = sigma(W_r [x, h]),
    h~ = tanh(W_h [x, r * h]), h' = z * h + (1 - z) * h~."""

    def __init__(self, channels: int, hidden: int, kernel: int = 3) -> None:
        super().__init__()
        pad = kernel // 2
        self.gates = nn.Conv2d(channels + hidden, 2 * hidden, kernel, padding=pad)  # z and r together
        self.candidate = nn.Conv2d(channels + hidden, hidden, kernel, padding=pad)
        self.hidden = hidden

    def forward(self, x: torch.Tensor, h: torch.Tensor | None) -> torch.Tensor:
        if h is None:
            h = torch.zeros(x.shape[0], self.hidden, *x.shape[-2:], dtype=x.dtype, device=x.device)
        z, r = torch.sigmoid(self.gates(torch.cat([x, h], dim=1))).chunk(2, dim=1)
        cand = torch.tanh(self.candidate(torch.cat([x, r * h], dim=1)))
        return z * h + (1 - z) * cand


class _UNet(nn.Module):
    def __init__(self, c: RIMConfig) -> None:
        super().__init__()
        w = c.widths()
        self.inp = nn.Conv2d(5 + c.residual_input, w[0], c.input_kernel, padding=c.input_kernel // 2)
        self.enc = nn.ModuleList()
        self.skip_gru = nn.ModuleList()
        self.down = nn.ModuleList()
        ch = w[0]
        for i in range(c.levels):
            convs = []
            for _ in range(c.convs_per_level):
                convs.append(nn.Conv2d(ch, w[i], 3, padding=1))
                ch = w[i]
            self.enc.append(nn.ModuleList(convs))
            self.skip_gru.append(ConvGRU(ch, ch))
            self.down.append(nn.Conv2d(ch, w[i + 1], 3, stride=2, padding=1))
            ch = w[i + 1]
        self.bottleneck_gru = ConvGRU(ch, ch)
        self.up = nn.ModuleList()
        self.dec = nn.ModuleList()
        for i in reversed(range(c.levels)):
            self.up.append(nn.ConvTranspose2d(ch, w[i], 3, stride=2, padding=1, output_padding=1))
            convs, cin = [], 2 * w[i]
            for _ in range(c.convs_per_level):
                convs.append(nn.Conv2d(cin, w[i], 3, padding=1))
                cin = w[i]
            self.dec.append(nn.ModuleList(convs))
            ch = w[i]
        self.out = nn.Conv2d(ch, 2, 1)

    def forward(
        self, x: torch.Tensor, hidden: list[torch.Tensor | None], *, embedded: bool = False
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """``embedded``: ``x`` is already the input convolution's output (see :func:`_per_example_conv`)."""
        h = torch.tanh(x if embedded else self.inp(x))
        new_hidden = []
        skips = []
        for convs, gru, down, state in zip(self.enc, self.skip_gru, self.down, hidden, strict=False):
            for conv in convs:
                h = torch.tanh(conv(h))
            s = gru(h, state)
            new_hidden.append(s)
            skips.append(s)
            h = torch.tanh(down(h))
        b = self.bottleneck_gru(h, hidden[-1])
        new_hidden.append(b)
        h = b
        for up, convs in zip(self.up, self.dec, strict=True):
            h = torch.cat([torch.tanh(up(h)), skips.pop()], dim=1)
            for conv in convs:
                h = torch.tanh(conv(h))
        return self.out(h), new_hidden


def moment_step(
    m: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    t: int,
    *,
    beta1: float,
    beta2: float,
    eps: float,
    method: str = "adam",
    step_size: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One step of Adam's moments, written once for the RIM's gradient preprocessing, the plain
    Adam reference (:mod:`lensrim.baseline`) and :func:`preprocess_gradients`.

    m_t = b1 m + (1 - b1) g, v_t = b2 v + (1 - b2) g^2 (both start at zero); returns m_t, v_t and
    the step: ``adam``, step_size (m_t / (1 - b1^t)) / (sqrt(v_t / (1 - b2^t)) + eps);
    ``rmsprop``, step_size g / (sqrt(v_t / (1 - b2^t)) + eps).
    """
    m = beta1 * m + (1 - beta1) * g
    v = beta2 * v + (1 - beta2) * g * g
    denom = torch.sqrt(v / (1 - beta2**t)) + eps
    return m, v, step_size * (m / (1 - beta1**t) if method == "adam" else g) / denom


def map_moment_step(
    v: torch.Tensor | None, g: torch.Tensor, t: int, *, beta2: float, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """RMSProp over each map's mean square: the skip path's ``map`` normalisation and the
    reference :func:`lensrim.baseline.ascend_source`.

    ``g`` is ``(B, C, N, N)``; v_t = b2 v + (1 - b2) mean(g^2) per example and channel (``v`` None
    at t = 1); returns v_t and g / (sqrt(v_t / (1 - b2^t)) + eps), a steepest-ascent direction
    of root-mean-square about 1 whose pixels keep their relative sizes.
    """
    mean_square = g.pow(2).mean(dim=(-1, -2), keepdim=True)
    v = (1 - beta2) * mean_square if v is None else beta2 * v + (1 - beta2) * mean_square
    return v, g / (torch.sqrt(v / (1 - beta2**t)) + eps)


def preprocess_gradients(
    grads: list[torch.Tensor], method: str, beta1: float = 0.9, beta2: float = 0.99, eps: float = 1e-8
) -> torch.Tensor:
    """The preprocessed gradient of the last step, given the raw gradients of steps 1..t
    (:func:`moment_step` over the whole history; ``raw``: g_t). A reference: the RIM updates its
    moments incrementally."""
    if method == "raw":
        return grads[-1]
    m = v = torch.zeros_like(grads[0])
    for t, g in enumerate(grads, start=1):
        m, v, direction = moment_step(m, v, g, t, beta1=beta1, beta2=beta2, eps=eps, method=method)
    return direction


class RIM(nn.Module):
    """The recurrent inference machine; call it with an observation and a :class:`ForwardModel`."""

    def __init__(self, config: RIMConfig = RIMConfig()) -> None:
        super().__init__()
        self.config = config
        self.unet = _UNet(config)
        if config.step_gains:  # a_t of each update t = 1..T-1 and channel (source, log10 kappa)
            self.gains = nn.Parameter(torch.ones(max(config.steps - 1, 1), 2))
        if config.gradient_skip:  # b_t on the gradient path of each update t = 1..T-1 and channel
            self.skip = nn.Parameter(torch.full((max(config.steps - 1, 1), 2), float(config.gradient_skip)))
        if config.init == "glorot":
            for m in self.unet.modules():
                if isinstance(m, nn.Conv2d | nn.ConvTranspose2d):
                    nn.init.xavier_uniform_(m.weight)
                    if m.bias is not None:
                        nn.init.zeros_(m.bias)
        if config.gradient_skip:  # the network's part starts at zero: an untrained RIM is likelihood ascent
            nn.init.zeros_(self.unet.out.weight)
            nn.init.zeros_(self.unet.out.bias)

    def _step(self, inputs: torch.Tensor, hidden: list[torch.Tensor | None]):
        c = self.config
        use_ckpt = c.activation_checkpointing and self.training and torch.is_grad_enabled()
        with bf16_autocast(c, inputs):
            if use_ckpt:
                # recompute each step's activations in the backward pass instead of storing them
                flat = [h for h in hidden if h is not None]
                n_none = len(hidden) - len(flat)

                def run(x, *hs):
                    return self.unet(x, [None] * n_none + list(hs) if n_none else list(hs))

                out, new_hidden = checkpoint(run, inputs, *flat, use_reentrant=False)
            else:
                out, new_hidden = self.unet(inputs, hidden)
        return out.float(), new_hidden

    def hidden_shapes(self) -> list[tuple[int, int, int]]:
        """``(channels, height, width)`` of each GRU's hidden state, skips first, bottleneck last."""
        c = self.config
        w = c.widths()
        return [(w[i], c.pixels >> i, c.pixels >> i) for i in range(c.levels)] + [
            (w[-1], c.pixels >> c.levels, c.pixels >> c.levels)
        ]

    def _functional_step(
        self,
        params: dict[str, torch.Tensor],
        low: dict[str, torch.Tensor] | None,
        inputs: torch.Tensor,
        hidden: list[torch.Tensor | None],
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """One U-net step with one set of weights per example: ``params[name]`` is ``(B, *shape)``.

        The U-net runs under :func:`torch.func.vmap` over (weights, inputs, hidden states), so B
        independent networks (e.g. one per lens being fine-tuned) take one batched call. It
        computes in the precision of :meth:`_step`: autocast does not reach convolutions under
        vmap (on the CPU they stay float32), so where :func:`bf16_enabled` the inputs and hidden
        states are cast to bfloat16 here, and the weights come as ``low``, cast by :meth:`forward`
        once for all the steps (each step's weight gradients come back in float32 through
        :class:`_Cast`). On a CPU the input convolution runs before vmap, channels-last
        (:func:`_per_example_conv`).
        """
        b = inputs.shape[0]
        dtype = inputs.dtype if low is None else torch.bfloat16  # forward decided (bf16_enabled)
        hs = [
            torch.zeros(b, *shape, dtype=dtype, device=inputs.device) if h is None else h.to(dtype)
            for h, shape in zip(hidden, self.hidden_shapes(), strict=True)
        ]

        weights = dict(params) if low is None else {k: _Cast.apply(v, low[k]) for k, v in params.items()}
        x, embedded = inputs.to(dtype), input_conv_before_vmap(inputs)
        if embedded:  # see _per_example_conv
            x = _per_example_conv(self.unet.inp, x, weights.pop("inp.weight"), weights.pop("inp.bias"))

        def one(p, x, *h):
            args = (x.unsqueeze(0), [t.unsqueeze(0) for t in h])
            out, new = functional_call(self.unet, p, args, {"embedded": embedded}, strict=not embedded)
            return out.squeeze(0), tuple(t.squeeze(0) for t in new)

        out, new_hidden = vmap(one)(weights, x, *hs)
        return out.float(), list(new_hidden)

    def forward(
        self,
        y: torch.Tensor,
        physics: ForwardModel,
        *,
        steps: int | None = None,
        params: dict[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Estimates of (s, xi) after each of the ``T`` steps: ``(T, B, 2, N, N)``.

        ``y`` is ``(B, 1, N, N)``; channel 0 of the result is the source, channel 1 is log10 kappa.
        ``params`` (optional) gives every example its own U-net weights: a dict from the names of
        ``self.unet.named_parameters()`` to tensors ``(B, *shape)`` (see :mod:`lensrim.finetune`).
        """
        c = self.config
        n = c.pixels
        if y.dim() != 4 or y.shape[1:] != (1, n, n):
            raise ValueError(f"observation must be (B, 1, {n}, {n}), got {tuple(y.shape)}")
        steps = c.steps if steps is None else steps
        zeros = torch.zeros_like(y)
        hidden: list[torch.Tensor | None] = [None] * (c.levels + 1)
        if params is not None:
            low = None  # the weights in bfloat16, cast once for the T steps (see _Cast)
            if bf16_enabled(c, y):
                low = {k: v.detach().to(torch.bfloat16) for k, v in params.items()}
            step = functools.partial(self._functional_step, params, low)
        else:
            step = self._step
        extra = []
        if c.residual_input:  # the empty model's residual: y in units of its noise
            extra = [torch.asinh(physics.whitened_residual(y, zeros, zeros))]
        out, hidden = step(torch.cat([y, zeros, zeros, zeros, zeros, *extra], dim=1), hidden)
        x = out  # x^(0) = g(0, y, 0) (+ the constant log10 kappa offset)
        if c.initial_log10_kappa:  # filled on the device: a tensor from the host would wait for it
            offset = torch.zeros_like(x[:1, :, :1, :1])
            offset[:, 1] = c.initial_log10_kappa
            x = x + offset
        estimates = [x]
        m = v = vm = None
        for t in range(1, steps):
            s, xi = x[:, :1], x[:, 1:]
            gs, gxi = physics.gradient(y, s.detach(), xi.detach())
            g = torch.cat([gs, gxi], dim=1).detach()
            raw = g
            if c.gradient_preprocessing != "raw":
                if m is None:
                    m, v = torch.zeros_like(g), torch.zeros_like(g)
                m, v, g = moment_step(
                    m, v, g, t, beta1=c.beta1, beta2=c.beta2, eps=c.epsilon, method=c.gradient_preprocessing
                )
            if c.residual_input:
                extra = [torch.asinh(physics.whitened_residual(y, s.detach(), xi.detach()))]
            delta, hidden = step(torch.cat([y, x, g, *extra], dim=1), hidden)
            if c.step_gains:
                delta = delta * self.gains[t - 1].view(1, 2, 1, 1)
            if c.gradient_skip:
                direction = g
                if c.skip_normalisation == "map":
                    vm, direction = map_moment_step(vm, raw, t, beta2=c.beta2, eps=c.epsilon)
                delta = delta + self.skip[t - 1].view(1, 2, 1, 1) * direction
            x = x + delta
            estimates.append(x)
        return torch.stack(estimates)


def rim_loss(estimates: torch.Tensor, source: torch.Tensor, kappa: torch.Tensor, *, check: bool = True) -> torch.Tensor:
    """Eq. 7 with uniform time weights, per example ``(B,)``.

    mean over t of [ sum_i (s_t - s)^2 / N^2 + sum_i w_i (xi_t - log10 kappa)^2 ] with
    w_i = sqrt(kappa_i) / sum_j sqrt(kappa_j) (computed in the xi space, appendix C).
    ``check`` as in :func:`rim_loss_terms`.
    """
    ls, lk = rim_loss_terms(estimates, source, kappa, check=check)
    return (ls + lk).mean(dim=0)


def rim_loss_terms(
    estimates: torch.Tensor, source: torch.Tensor, kappa: torch.Tensor, *, check: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """The source and kappa terms of eq. 7 at every time step, each ``(T, B)``:
    ``sum_i (s_t - s)^2 / N^2`` and ``sum_i w_i (xi_t - log10 kappa)^2``.

    A kappa that is not positive everywhere is refused; the check reads a value back from the
    device, so a training loop whose kappa is positive by construction (clamped, or a VAE's
    ``10**xi``) passes ``check=False`` and never waits for the GPU here."""
    if estimates.dim() != 5 or estimates.shape[2] != 2:
        raise ValueError(f"estimates must be (T, B, 2, N, N), got {tuple(estimates.shape)}")
    if check and (kappa <= 0).any():
        raise ValueError("kappa must be positive for the log10 link")
    s_true = source[:, 0]
    xi_true = torch.log10(kappa[:, 0])
    w = torch.sqrt(kappa[:, 0])
    w = w / w.sum(dim=(-1, -2), keepdim=True)
    n2 = s_true[0].numel()
    ls = (estimates[:, :, 0] - s_true).pow(2).sum(dim=(-1, -2)) / n2
    lk = (w * (estimates[:, :, 1] - xi_true).pow(2)).sum(dim=(-1, -2))
    return ls, lk
