"""Convolutional VAEs for background sources and convergence maps (section 4.1, appendix B).

Architecture (a *level* is a resolution; Tables 5 and 6):

* encoder: 7x7 input convolution to ``filters`` channels; per level, ``convs_per_level`` 3x3
  convolutions to ``filters * scaling^i`` channels, then a 3x3 stride-2 convolution that halves
  the resolution and doubles the channels; flatten; one dense layer to the mean and log-variance
  of the latent Gaussian.
* decoder: a dense layer from the latent space back to the bottleneck's shape; per level, a 3x3
  stride-2 transposed convolution to that level's channels and ``convs_per_level`` 3x3
  convolutions; a 3x3 output convolution to one channel, then the output activation.

LeakyReLU after every convolution and dense layer except the heads and the output. With the
paper's settings this has exactly 3,567,361 (source) and 1,980,033 (kappa) parameters.

The kappa VAE works in log10 kappa ("input preprocessing log10"): ``encode`` takes kappa,
``decode`` returns kappa, and the loss is computed on log10 kappa. The source VAE takes and
returns images in [0, 1] (sigmoid output).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from lensprior.config import VAEConfig, kappa_vae_config, source_vae_config

__all__ = ["VAE", "VAEConfig", "kappa_vae", "source_vae"]

KAPPA_FLOOR = 1e-4
"""Convergence is clamped to at least this before log10 (maps are positive; this guards zeros)."""


class VAE(nn.Module):
    """A convolutional VAE; build with :func:`source_vae` or :func:`kappa_vae`."""

    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        self.config = c = config
        act = nn.LeakyReLU(c.leaky_slope)
        widths = [c.filters * c.filter_scaling**i for i in range(c.levels)]
        enc: list[nn.Module] = [nn.Conv2d(1, c.filters, 7, padding=3), act]
        ch = c.filters
        for w in widths:
            for _ in range(c.convs_per_level):
                enc += [nn.Conv2d(ch, w, 3, padding=1), act]
                ch = w
            enc += [nn.Conv2d(ch, 2 * w, 3, stride=2, padding=1), act]
            ch = 2 * w
        self.encoder_convs = nn.Sequential(*enc)
        self.bottleneck_shape = (ch, c.pixels // 2**c.levels, c.pixels // 2**c.levels)
        flat = math.prod(self.bottleneck_shape)
        self.encoder_dense = nn.Linear(flat, 2 * c.latent_dim)
        self.decoder_dense = nn.Linear(c.latent_dim, flat)
        dec: list[nn.Module] = []
        for w in reversed(widths):
            dec += [nn.ConvTranspose2d(ch, w, 3, stride=2, padding=1, output_padding=1), act]
            ch = w
            for _ in range(c.convs_per_level):
                dec += [nn.Conv2d(ch, w, 3, padding=1), act]
        dec += [nn.Conv2d(ch, 1, 3, padding=1)]
        self.decoder_convs = nn.Sequential(*dec)
        self.act = act
        with torch.no_grad():
            # Start near an empty sky (sigmoid(-4) = 0.018) with small latent codes. A source decoder
            # that starts at 0.5 everywhere is driven by its first steps into a saturated sigmoid
            # on sparse galaxy images and never leaves it: the decoder outputs zeros, ignores z, and
            # KL falls to zero (posterior collapse), whatever the learning rate or beta.
            if c.kind == "source":
                self.decoder_convs[-1].bias.fill_(-4.0)
            self.encoder_dense.weight.mul_(0.1)
            self.encoder_dense.bias.zero_()

    # --- data space <-> network space ---------------------------------------------------------
    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """Data (source in [0, 1] or kappa) to the network's input space."""
        if self.config.kind == "kappa":
            return torch.log10(x.clamp_min(KAPPA_FLOOR))
        return x

    def postprocess(self, y: torch.Tensor) -> torch.Tensor:
        """Network output (pre-activation) to data space."""
        if self.config.kind == "kappa":
            return torch.pow(10.0, y)
        return torch.sigmoid(y)

    def _check(self, x: torch.Tensor) -> None:
        p = self.config.pixels
        if x.dim() != 4 or x.shape[1:] != (1, p, p):
            raise ValueError(f"expected a (B, 1, {p}, {p}) batch, got {tuple(x.shape)}")

    # --- the model ------------------------------------------------------------------------------
    def _features(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x)
        return self.encoder_convs(self.preprocess(x)).flatten(1)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and log-variance of q(z | x), each ``(B, latent_dim)``; ``x`` in data space."""
        mu, logvar = self.encoder_dense(self._features(x)).chunk(2, dim=1)
        return mu, logvar

    def _decode_features(self, z: torch.Tensor) -> torch.Tensor:
        return self.act(self.decoder_dense(z))

    def decode_logits(self, z: torch.Tensor) -> torch.Tensor:
        """Decoder output before the output activation (log10 kappa for the kappa VAE)."""
        h = self._decode_features(z).view(-1, *self.bottleneck_shape)
        return self.decoder_convs(h)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Images in data space ``(B, 1, P, P)`` from latent codes ``(B, latent_dim)``."""
        if z.dim() != 2 or z.shape[1] != self.config.latent_dim:
            raise ValueError(f"expected latent codes (B, {self.config.latent_dim}), got {tuple(z.shape)}")
        return self.postprocess(self.decode_logits(z))

    @torch.no_grad()
    def sample(self, n: int, *, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` draws from the prior, decoded: ``(n, 1, P, P)`` in data space."""
        device = next(self.parameters()).device
        z = torch.randn(n, self.config.latent_dim, generator=generator, device="cpu").to(device)
        return self.decode(z)

    @torch.no_grad()
    def sample_near(
        self, z: torch.Tensor, sigma: float, n: int | None = None, *, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Decoded draws from N(z, sigma^2 I) around latent codes ``z (B, latent_dim)``.

        With ``n``, ``n`` draws around each code: ``(B * n, 1, P, P)`` (code-major); else one each.
        """
        if z.dim() == 1:
            z = z.unsqueeze(0)
        if n is not None:
            z = z.repeat_interleave(n, dim=0)
        eps = torch.randn(z.shape, generator=generator, device="cpu").to(z.device, z.dtype)
        return self.decode(z + sigma * eps)

    def forward(self, x: torch.Tensor, *, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Encode, sample by reparameterisation, decode. Returns the terms the loss needs."""
        h = self._features(x)
        mu, logvar = self.encoder_dense(h).chunk(2, dim=1)
        eps = torch.randn(mu.shape, generator=generator, device="cpu").to(mu.device, mu.dtype)
        z = mu + torch.exp(0.5 * logvar) * eps
        h_back = self._decode_features(mu)  # the bottleneck pair should act as an identity on h
        logits = self.decoder_convs(self._decode_features(z).view(-1, *self.bottleneck_shape))
        return {"mu": mu, "logvar": logvar, "logits": logits, "features": h, "features_back": h_back}

    def loss(
        self, x: torch.Tensor, step: int, *, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Reconstruction + beta(step) KL + (annealed) bottleneck identity penalty.

        The reconstruction is the squared error summed over pixels, in the network's space
        (log10 kappa for the kappa VAE), averaged over the batch; KL is summed over latent
        dimensions. Returns the loss and its terms as floats.
        """
        c = self.config
        out = self.forward(x, generator=generator)
        target = self.preprocess(x)
        pred = out["logits"] if c.kind == "kappa" else torch.sigmoid(out["logits"])
        recon = (pred - target).pow(2).flatten(1).sum(1).mean()
        mu, logvar = out["mu"], out["logvar"]
        kl = (0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar)).sum(1).mean()
        ident = (out["features"] - out["features_back"]).pow(2).mean()
        beta, lam = c.beta(step), c.bottleneck_weight(step)
        total = recon + beta * kl + lam * ident
        terms = {"loss": total.item(), "reconstruction": recon.item(), "kl": kl.item(), "bottleneck": ident.item()}
        terms.update(beta=beta, bottleneck_weight=lam)
        return total, terms


def source_vae(**overrides) -> VAE:
    """The background-source VAE of Table 5 (3,567,361 parameters); keywords override the config."""
    return VAE(source_vae_config(**overrides))


def kappa_vae(**overrides) -> VAE:
    """The convergence VAE of Table 6 (1,980,033 parameters); keywords override the config."""
    return VAE(kappa_vae_config(**overrides))
