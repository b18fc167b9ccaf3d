"""The RIM's and fine-tuning's configurations, and the named RIM presets, without torch.

Importing this module loads neither torch nor the models, so a command line takes its option
defaults and preset choices from here at start-up. :mod:`lensrim.model` and
:mod:`lensrim.finetune` re-export these names.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, ClassVar, Literal

from lenscore.config import JsonConfig, SettingError, exponential_decay
from lenssim.geometry import IMAGE_FOV, SOURCE_FOV, Geometry

if TYPE_CHECKING:
    import torch

    from lensrim.physics import LensingPhysics

__all__ = ["PRESETS", "TIME_WEIGHTS", "FineTuneConfig", "RIMConfig"]

TIME_WEIGHTS = ("uniform", "linear", "quadratic", "final")
"""The training loss's weightings of the T estimates (:attr:`RIMConfig.time_weights`)."""


@dataclass(frozen=True)
class RIMConfig(JsonConfig):
    """Architecture, recurrence and optimisation of the RIM (Table 7 for ``preset="paper"``).

    The training defaults are those that measured best for both the loss against the truth and
    the fit (``docs/rim_ab.md``): gradients normalised as the authors' published model did
    (``rmsprop``, decay 0.9, not the paper text's ``adam``), the loss on the final estimate
    (``time_weights="final"``, not eq. 7's mean over the steps), a skip path for the normalised
    gradient (``gradient_skip`` 0.03) and a data-fit term on the source (``fit_weight`` 0.3,
    ``fit_kappa`` 0). ``gradient_preprocessing="adam", beta2=0.99, time_weights="uniform",
    gradient_skip=0, fit_weight=0`` is the paper's text.
    """

    RUN_KIND: ClassVar[str] = "RIM"

    pixels: int = 128
    """Pixels across the image, kappa and source grids (Table 1: 128); divisible by 2^levels."""
    image_fov: float = IMAGE_FOV
    """Side of the image (and kappa) grid, arcsec: with ``pixels``, the pixel scale the RIM
    learns. Saved with every run, so a RIM loaded from a file knows its own geometry."""
    source_fov: float = SOURCE_FOV
    """Side of the source grid, arcsec."""
    filters: int = 32
    """Channels of the U-net's first level (Table 7: 32)."""
    filter_scaling: int = 2
    """Factor on the channels at each deeper level (Table 7: 2)."""
    max_filters: int = 256
    """Most channels at any level (Table 7: 256)."""
    levels: int = 4
    """Stride-2 downsamplings of the U-net (Table 7: 4)."""
    convs_per_level: int = 2
    """3x3 convolutions per level before the ConvGRU (Table 7: 2)."""
    input_kernel: int = 11
    """Side of the first convolution's kernel, pixels (Table 7: 11)."""
    steps: int = 8
    """T, the RIM's recurrent steps: T estimates from T - 1 likelihood gradients (Table 7: 8)."""
    gradient_preprocessing: Literal["adam", "rmsprop", "raw"] = "rmsprop"
    """What the network sees of the likelihood gradient g_t (moments restart at every call):
    ``adam``, the paper's text (m_hat / (sqrt(v_hat) + epsilon)); ``rmsprop``, what the authors'
    published model used (Censai's ``RIMSharedUnetv3`` default: g / (sqrt(v_hat) + epsilon), the
    current gradient normalised, with ``beta2`` = 0.9 in their code); ``raw``, g itself."""
    beta1: float = 0.9
    """Decay of the first moment m (``adam`` only), in [0, 1)."""
    beta2: float = 0.9
    """Decay of the second moment v (``adam`` and ``rmsprop``), in (0, 1); 0.9 as the published model."""
    epsilon: float = 1e-8
    """Added to sqrt(v_hat), in the gradient's units; positive."""
    time_weights: Literal["uniform", "linear", "quadratic", "final"] = "final"
    """Weights of the T estimates in the training loss (eq. 7), proportional to 1, t or t^2 for
    t = 1..T and summing to 1 (``uniform`` is eq. 7; the original code offered these three), or
    ``final``: the last estimate alone, the one users receive and Table 4 scores."""
    clipping: Literal["global", "per_tensor"] = "global"
    """``global``: one factor for all weights' gradients together, norm ``clip_norm``;
    ``per_tensor``: each weight tensor clipped to ``clip_norm`` on its own (Keras' ``clipnorm``,
    the original code's)."""
    step_gains: bool = False
    """Learn one gain per RIM update and channel, x^(t+1) = x^(t) + a_t * g(...), starting at 1
    (2 (T - 1) weights beside the U-net's, not in the paper): lets the shared network take
    shorter late steps without having to infer the step count from its hidden states."""
    gradient_skip: float = 0.03
    """Initial value of a learned gain b_t per update and channel on a path that adds the
    preprocessed likelihood gradient to each update, x^(t+1) = x^(t) + g(...) + b_t * grad_t (not in
    the paper; 0: no such path, the paper's RIM). With a normalised gradient (``adam`` or
    ``rmsprop``) and b ~ 0.03, an untrained RIM starts as plain likelihood ascent, the optimiser
    it must beat, and the network learns the correction (the prior) on top. Needs ``adam`` or
    ``rmsprop``: with ``raw`` set it to 0."""
    skip_normalisation: Literal["pixel", "map"] = "pixel"
    """How the skip path normalises the gradient it adds: ``pixel``, the preprocessed gradient the
    network sees (each pixel's own moments: every pixel where the gradient is not zero moves by
    about b_t); ``map``, the raw gradient over the root-mean-square of its whole map (RMSProp over
    the map's mean square, decay ``beta2``), a steepest-ascent step whose pixels keep their
    relative sizes (``docs/rim_ab.md``, third study)."""
    fit_weight: float = 0.3
    """Weight of a data-fit term added to the training loss (not in the paper): the mean over the
    lenses of max(0, ln chi2_nu) of the final estimate, so that the RIM is also taught to explain
    its observation down to the noise and never rewarded for fitting below it (chi2_nu < 1)."""
    fit_kappa: float = 0.0
    """The share of the data-fit term's gradient that reaches kappa, in [0, 1] (the source gets all
    of it; the term's value is unchanged): 0 evaluates the term with the RIM's own kappa held
    fixed, so it teaches the source to explain the data through that kappa and leaves kappa to
    eq. 7; 1 lets it bend kappa to fit the arcs too, which a larger ``fit_weight`` pays for in the
    truth."""
    residual_input: bool = False
    """Give the network the whitened residual of the current estimate, asinh((y - F(x)) / sigma),
    as a sixth input channel (not in the paper; at the first call, x = 0, it is the observation
    in units of its noise). The preprocessed gradient says which way to move but not how far the
    model image is from the data in units of the noise: without the residual the network must
    infer the noise level from y's texture and the model image from x. It fitted no better than
    without, on the SIE + Sersic A/B and on the demo's data over two training seeds
    (``docs/rim_ab.md``, eighth study). Costs one more forward model per RIM step; needs a forward
    model with ``whitened_residual``."""
    learning_rate: float = 1e-4
    """Initial Adamax learning rate, per step (Table 7, first stage: 1e-4)."""
    decay_rate: float = 0.95
    """Factor on the learning rate every ``decay_steps`` steps (Table 7: 0.95, second stage 0.9)."""
    decay_steps: int = 100_000
    """Steps over which the learning rate decays by ``decay_rate`` (Table 7: 100,000)."""
    staircase: bool = False
    """Decay in whole steps of ``decay_rate`` every ``decay_steps`` (the original code's Keras
    ``ExponentialDecay(staircase=True)``) instead of continuously."""
    schedule_start: int = 0
    """The step at which the schedule starts (a second training stage restarts it there)."""
    train_steps: int = 610_000
    """The step training ends at (Table 7, first stage: 610,000)."""
    batch_size: int = 1
    """Lenses per step, all processes together (Table 7: 1)."""
    clip_norm: float = 5.0
    """Gradient norm at which training clips (see ``clipping``); positive."""
    activation_checkpointing: bool = False
    """Recompute each time step's activations in the backward pass: less memory, more compute."""
    bf16: bool = False
    """bfloat16 autocast of the U-net (the physics stays float32): on a GPU, and on a CPU that
    computes bfloat16 natively (AMX or AVX-512 BF16; elsewhere no effect, as emulated bfloat16
    is slower than float32). Fine-tuning's per-lens weights (``torch.func.vmap``) compute in the
    same precision: on the 2-core CPU, 32 more held-out lenses of the seed-0 demo's fine-tuned as
    the demo does took 263 s against 428 s in float32, median chi2_nu 1.99 against 2.10 (baseline
    2.41), mean log10 loss -1.413 against -1.410. The same seed on the same device and thread
    count gives the same weights, and a resumed run the uninterrupted one's; another CPU thread
    count changes the rounding (bfloat16 rounds at 4e-3, float32 at 6e-8), which training's
    normalised steps grow: the quick demo's barely trained RIM gives maps 26-48 % of their peak
    apart with 1 and 2 threads in float32 (seeds 4-6), 40 % in bfloat16 (seed 3)."""
    init: Literal["torch", "glorot"] = "glorot"
    """Initial weights: the original (Keras) code's Glorot-uniform weights with zero biases, or
    PyTorch's defaults. PyTorch's default (uniform with bound 1/sqrt(fan_in)) shrinks the signal
    through every tanh layer: at init the small preset's activations fall from 0.45 to 0.02 (std)
    down its encoder (Glorot: 0.50 to 0.11), and a 64^2 small RIM then stays at the constant
    predictor's loss for 300 steps where Glorot beats it by 0.4 dex (``docs/learning_curves.md``)."""
    initial_log10_kappa: float = 0.0
    """A constant added to the first estimate's log10 kappa: x^(0) = g(0, y, 0) + (0, c). With c
    the training set's best constant (the constant predictor's), an untrained RIM starts at that
    trivial guess instead of kappa = 1 everywhere, which its output layer would otherwise take
    hundreds of steps to unlearn (each weight moves about one learning rate per step)."""

    def __post_init__(self) -> None:
        self.check_numbers()
        if self.init not in ("torch", "glorot"):
            raise ValueError(f"init must be torch or glorot, got {self.init!r}")
        if self.gradient_preprocessing not in ("adam", "rmsprop", "raw"):
            raise ValueError(
                f"gradient_preprocessing must be adam, rmsprop or raw, got {self.gradient_preprocessing!r}"
            )
        if self.time_weights not in TIME_WEIGHTS:
            raise ValueError(f"time_weights must be one of {', '.join(TIME_WEIGHTS)}, got {self.time_weights!r}")
        if self.clipping not in ("global", "per_tensor"):
            raise ValueError(f"clipping must be global or per_tensor, got {self.clipping!r}")
        if not 0 <= self.beta1 < 1:
            raise ValueError(f"beta1 (the first moment's decay) must lie in [0, 1), got {self.beta1}")
        if not 0 < self.beta2 < 1:
            raise ValueError(f"beta2 (the second moment's decay) must lie in (0, 1), got {self.beta2}")
        for name in ("epsilon", "clip_norm", "learning_rate", "decay_rate"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("step_gains", "residual_input"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if self.fit_weight < 0:
            raise ValueError(f"fit_weight must be non-negative, got {self.fit_weight}")
        if not 0 <= self.gradient_skip <= 1:
            raise ValueError(f"gradient_skip must lie in [0, 1], got {self.gradient_skip}")
        if self.gradient_skip and self.gradient_preprocessing == "raw":
            raise SettingError(
                "gradient_skip needs a normalised gradient (gradient_preprocessing adam or rmsprop): "
                "the raw gradient's scale is the inverse noise variance; set gradient_skip 0 with raw",
                param="gradient_skip",
            )
        if self.skip_normalisation not in ("pixel", "map"):
            raise ValueError(f"skip_normalisation must be pixel or map, got {self.skip_normalisation!r}")
        if self.skip_normalisation == "map" and not self.gradient_skip:
            raise SettingError(
                "skip_normalisation map normalises the gradient skip's path, and gradient_skip is 0: "
                "give a gradient_skip above 0 or leave skip_normalisation at pixel",
                param="skip_normalisation",
            )
        if not 0 <= self.fit_kappa <= 1:
            raise ValueError(f"fit_kappa must lie in [0, 1], got {self.fit_kappa}")
        if self.pixels % (2**self.levels):
            raise ValueError(f"pixels ({self.pixels}) must be divisible by 2^levels ({2**self.levels})")
        if self.steps < 1:
            raise ValueError(f"the RIM needs at least one step, got {self.steps}")
        if self.pixels < 8:
            raise ValueError(f"pixels must be at least 8, got {self.pixels}")
        if self.input_kernel % 2 == 0 or self.input_kernel < 1:
            raise ValueError(f"input_kernel must be odd and positive, got {self.input_kernel}")
        if self.input_kernel > self.pixels:
            raise ValueError(f"input_kernel ({self.input_kernel}) is larger than the {self.pixels}-pixel image")
        if not math.isfinite(self.initial_log10_kappa):
            raise ValueError(f"initial_log10_kappa must be finite, got {self.initial_log10_kappa}")
        for name in ("filters", "levels", "batch_size", "decay_steps", "train_steps", "max_filters", "filter_scaling"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if not (0 < self.source_fov and 0 < self.image_fov):
            raise ValueError(f"fields of view must be positive, got {self.image_fov} and {self.source_fov}")
        if self.max_filters < self.filters:
            raise ValueError(f"max_filters ({self.max_filters}) must be at least filters ({self.filters})")
        # sizes a file could otherwise set to anything: bounded so that a bad config fails at once
        for name, most in (("steps", 1000), ("pixels", 4096), ("levels", 12), ("max_filters", 65536)):
            if getattr(self, name) > most:
                raise ValueError(f"{name} is {getattr(self, name)}, beyond the largest sensible value {most}")

    BEFORE_FIELDS: ClassVar[dict[str, object]] = {
        "time_weights": "uniform",
        "clipping": "global",
        "fit_weight": 0.0,
        "fit_kappa": 1.0,
        "step_gains": False,
        "gradient_skip": 0.0,
        "skip_normalisation": "pixel",
        "residual_input": False,
    }
    """Training options added after runs were first saved, with the values every run saved
    without them trained with: a ``config.json`` that lacks one is read with this value, so such
    a run resumes exactly as it began, whatever today's defaults are."""

    @classmethod
    def from_json(cls, text: str) -> RIMConfig:
        import json

        data = json.loads(text)
        if isinstance(data, dict) and data.get("model") == cls.RUN_KIND:
            data = {**cls.BEFORE_FIELDS, **data}
        return super().from_json(json.dumps(data))

    def loss_time_weights(self) -> list[float]:
        """The weight of each of the T estimates in the training loss (``time_weights``), summing to 1."""
        if self.time_weights == "final":
            return [0.0] * (self.steps - 1) + [1.0]
        power = TIME_WEIGHTS.index(self.time_weights)
        raw = [float(t**power) for t in range(1, self.steps + 1)]
        return [w / sum(raw) for w in raw]

    @property
    def geometry(self) -> Geometry:
        """The grid this RIM works on: ``pixels`` across, ``image_fov`` and ``source_fov`` arcsec."""
        return Geometry(self.pixels, self.image_fov, self.source_fov)

    def physics(self, psf: torch.Tensor, noise: torch.Tensor | float) -> LensingPhysics:
        """The lensing forward model on this RIM's grid, for observations with these PSFs
        ``(B or 1, 1, k, k)`` and noise (a sigma per lens ``(B,)``, one for all, or a noise map
        ``(B, 1, N, N)``, infinite at masked pixels, which then weigh nothing); a noise that is
        not positive, or not finite outside a map, or a map without a finite pixel, is refused."""
        import torch

        from lensrim.physics import LensingPhysics

        noise = torch.as_tensor(noise, dtype=torch.float32) if not isinstance(noise, torch.Tensor) else noise
        if noise.dim() == 0:
            noise = noise.reshape(1)
        finite = torch.isfinite(noise)
        if noise.dim() == 4:  # a noise map: +inf masks a pixel, but each lens keeps some data
            if torch.isnan(noise).any() or not (noise > 0).all():
                raise ValueError("a noise map must be positive (+inf where a pixel is masked), got NaN or <= 0")
            if not finite.flatten(1).any(dim=1).all():
                raise ValueError("a noise map masks every pixel of a lens: nothing is left to fit")
        elif not (finite.all() and (noise > 0).all()):
            raise ValueError("noise sigma must be positive and finite")
        return LensingPhysics(psf, noise, self.image_fov, self.source_fov)

    def widths(self) -> list[int]:
        """Channels of each level, then of the bottleneck."""
        return [min(self.filters * self.filter_scaling**i, self.max_filters) for i in range(self.levels + 1)]

    OPTIMISATION_FIELDS: ClassVar[tuple[str, ...]] = (
        "learning_rate",
        "decay_rate",
        "decay_steps",
        "staircase",
        "schedule_start",
        "train_steps",
    )
    """Fields a resumed run may change (a new training stage); the others define the model."""

    def learning_rate_at(self, step: int) -> float:
        """Exponential decay from ``learning_rate`` at ``schedule_start`` (the stage's first step):
        lr * rate^(k / decay_steps) after k steps, with k // decay_steps if ``staircase``."""
        k = max(0, step - self.schedule_start)
        return exponential_decay(self.learning_rate, self.decay_rate, self.decay_steps, k, staircase=self.staircase)

    def second_stage(self, start: int, steps: int = 870_000) -> RIMConfig:
        """Table 7's second stage: Adamax from 6e-5, x0.9 per 100k steps, from step ``start``."""
        return replace(
            self,
            learning_rate=6e-5,
            decay_rate=0.9,
            decay_steps=100_000,
            schedule_start=start,
            train_steps=start + steps,
        )


PRESETS: dict[str, RIMConfig] = {
    "paper": RIMConfig(filters=128, max_filters=1024, levels=5),
    # a CPU run's length: about 1.5 h at 128^2 on 2 cores (2.5 s per step), not Table 7's 610k steps
    "small": RIMConfig(
        filters=16, max_filters=128, levels=4, learning_rate=1e-3, decay_steps=20_000, batch_size=4, train_steps=2_000
    ),
    "tiny": RIMConfig(
        pixels=32,
        filters=8,
        max_filters=32,
        levels=2,
        learning_rate=1e-3,
        decay_steps=5_000,
        batch_size=4,
        train_steps=500,
        init="torch",  # two levels do not attenuate; PyTorch's init learned faster at 32^2
    ),
}
"""Named configurations: ``paper`` (Table 7's U-net of 348,546,818 parameters, 610,000 steps), ``small``
(3.5M parameters, 2,000 steps: trains on a CPU), ``tiny`` (32^2 maps, 500 steps, for tests)."""


@dataclass(frozen=True)
class FineTuneConfig(JsonConfig):
    """Table 3 by default: RMSProp at 1e-6, at most 2000 steps, lambda 2e5, 200 VAE draws at 0.3."""

    RUN_KIND: ClassVar[str] = "fine-tuning"

    ewc_lambda: float = 2e5
    """lambda of the EWC penalty (lambda / 2) sum_i F_i (phi_i - phi*_i)^2 beside the mean chi2_nu
    (eq. 13; Table 3: 2e5), in Table 3's units."""
    fisher_samples: int = 200
    """VAE draws per lens whose simulated observations estimate the Fisher diagonal (Table 3: 200)."""
    latent_sigma: float = 0.3
    """Width of the latent draws around the encoded baseline, latent units (Table 3: 0.3)."""
    learning_rate: float = 1e-6
    """RMSProp learning rate, per step (Table 3: 1e-6)."""
    max_steps: int = 2000
    """RMSProp steps at most per lens (Table 3: 2000)."""
    target_chi2_nu: float = 1.0
    """A lens stops early once its chi2_nu reaches this (1: the noise)."""
    rmsprop_alpha: float = 0.9
    """RMSProp's decay of the squared-gradient average (Keras' rho, 0.9 in the original run)."""
    rmsprop_eps: float = 1e-7
    """Added to sqrt(v) (Keras' epsilon)."""
    fisher_chunk: int = 8
    """Draws differentiated together (memory: one weight copy per draw)."""
    fisher_chi2: bool = True
    """Whether the Fisher's per-draw loss includes the mean chi2_nu beside eq. 7 (eq. A5). The
    original code once left it out, noting that it drowns the prior's information."""

    def __post_init__(self) -> None:
        self.check_numbers()
        for name in ("ewc_lambda", "latent_sigma", "target_chi2_nu", "max_steps"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be non-negative, got {getattr(self, name)}")
        for name in ("fisher_samples", "fisher_chunk"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be positive, got {self.learning_rate}")
        if not isinstance(self.fisher_chi2, bool):
            raise ValueError(f"fisher_chi2 must be true or false, got {self.fisher_chi2!r}")
        if not 0 <= self.rmsprop_alpha < 1:
            raise ValueError(f"rmsprop_alpha must lie in [0, 1), got {self.rmsprop_alpha}")
