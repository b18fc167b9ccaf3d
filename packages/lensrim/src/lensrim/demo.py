"""The whole pipeline at small scale on built-in data, with an honest report (``lens demo``).

In a notebook::

    from lensrim.demo import PRESETS, run_demo
    result = run_demo(Path("demo"), PRESETS["quick"], seed=0)
    result["verdict"]  # sentences judging the numbers; demo/report/index.html has the figures

The demo is seven stages, one function each (:data:`STAGE_FUNCTIONS`, ``stage_*``), that pass a
:class:`DemoState` along. Each resumes: datasets are written in blocks, training runs from its
checkpoints, fine-tuning per batch of lenses, Adam's results are kept in ``adam.pt``.

1. synthetic halos (particles) -> KDE kappa maps, split by halo;  GalSim synthetic galaxies;
2. the source and kappa VAEs on the training split;
3. training lenses (KDE kappa or SIE, training sources) and held-out test lenses (test-split
   halos and galaxies only);
4. the RIM, trained on the training lenses mixed with lenses drawn from the two VAEs;
5. the held-out lenses reconstructed and fine-tuned with EWC;
6. the comparison the report is for: the RIM against plain Adam on the same likelihood with the
   same number of likelihood gradients (T - 1), from the RIM's gradient-free first estimate and
   from the constant predictor's maps (the reference is whichever fits better), and with many more;
7. every estimate scored against the truth and the fit, the verdict and the report.

Each stage's expected time on a 2-core development machine comes from ``demo_timings.json``
beside this module (measured, not code): on a CPU with native bfloat16, or, where the demo's RIM
would run in float32 instead (:func:`_float32_cpu_run`), on one without.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from lenscore.config import JsonConfig, differences
from lenscore.files import written
from lensrim.config import PRESETS as RIM_PRESETS

if TYPE_CHECKING:  # torch loads when the demo runs, not when a command line reads the presets
    import torch

    import lenssim
    from lensrim.model import RIM
    from lensrim.physics import LensingPhysics

__all__ = ["DemoConfig", "DemoError", "DemoState", "PRESETS", "STAGES", "duration", "expected_seconds", "run_demo"]


class DemoError(ValueError):
    """A directory that holds a demo run with other settings (a resume would mix two runs)."""


def duration(seconds: float) -> str:
    """``seconds`` as a human reads a cost: 40 s, 12 min, 3.5 h, 2.1 days."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


class _NoBar:
    """What the demo asks of a progress bar (tqdm's names), doing nothing."""

    n = 0

    def __enter__(self) -> _NoBar:
        return self

    def __exit__(self, *exc) -> None:
        return None

    def update(self, count: int = 1) -> None:
        self.n += count

    def set_postfix(self, *args, **kwargs) -> None:
        return None

    def set_postfix_str(self, *args, **kwargs) -> None:
        return None


def _no_bar(**kwargs) -> _NoBar:
    return _NoBar()


@dataclass(frozen=True)
class DemoConfig(JsonConfig):
    """Sizes of the demo; ``standard`` takes about 15 minutes on 2 CPU cores with native bfloat16
    (20-29 on 2 cores without, where its RIM runs in float32 at half the batch), ``quick``
    under one.
    Settings that cannot make a demo are refused at construction, in one line."""

    RUN_KIND: ClassVar[str] = "demo"

    pixels: int = 64
    """Pixels across every map (image, kappa and source); the fields of view stay Table 1's."""
    halos: int = 40
    """Synthetic halos rendered into kappa maps (split by halo into training and test). 40 (32 to
    train on) instead of 10 at the same number of maps: +0.14 dex on held-out halos for 15 s
    (``docs/rim_ab.md``, fourth study)."""
    maps_per_halo: int = 4
    """Augmented kappa maps per halo (projections, rotations, rescaled Einstein radii)."""
    sources: int = 240
    """GalSim synthetic galaxies drawn as sources (split by galaxy)."""
    vae_steps: int = 600
    """Training steps of each VAE."""
    vae_latent: int = 16
    """Latent dimension of each VAE."""
    vae_filters: int = 8
    """Channels at each VAE's first level."""
    train_lenses: int = 512
    """Lenses simulated from the training splits for the RIM."""
    test_lenses: int = 8
    """Held-out lenses (test-split halos and galaxies) that every method is judged on."""
    sie_fraction: float = 0.3
    """Share of the training lenses whose kappa is an analytic SIE (Table 2) instead of a KDE map."""
    vae_lens_fraction: float = 0.25
    """Share of each RIM batch simulated from VAE draws (the paper's VAE-enlarged training set)."""
    rim_preset: str = "small"
    """The RIM's architecture (a :data:`lensrim.PRESETS` name), at ``pixels``."""
    rim_steps: int = 800
    """RIM training steps."""
    rim_batch: int = 8
    """Lenses per RIM training step. 8 and 800 steps with ``rim_bf16`` instead of 4 and 600 in
    float32: 2.7 times the lenses in 1.3 times the time on the 2-core Sapphire Rapids machine (601 s
    against 460) (``docs/rim_ab.md``, sixth study)."""
    rim_learning_rate: float = 1e-3
    """Initial Adamax learning rate of the RIM, per step."""
    rim_final_lr_factor: float = 0.25
    """The learning rate decays exponentially to this fraction of its start over the run."""
    rim_fit_weight: float = 0.02
    """The RIM's data-fit term (:attr:`lensrim.RIMConfig.fit_weight`). 0.02 on both maps: on
    seed 0 its median chi2_nu below plain Adam's with the same gradients at +0.50 dex, where 0.3
    on the source alone gains more and fits worse than Adam; not on every seed
    (``docs/rim_ab.md``, sixth study)."""
    rim_fit_kappa: float = 1.0
    """Share of the data-fit term's gradient that reaches log10 kappa
    (:attr:`lensrim.RIMConfig.fit_kappa`: 0, the source alone; 1, both maps)."""
    rim_bf16: bool = True
    """bfloat16 autocast of the RIM's U-net (:attr:`lensrim.RIMConfig.bf16`): on a CPU that
    computes bfloat16 natively (AMX or AVX-512 BF16), with ``rim_batch`` 8 about twice the lenses
    per second of float32 at batch 4 (``benchmarks/bench_rim.py``); elsewhere float32. Another
    thread count changes the rounding, in float32 as in bfloat16, and training's normalised steps
    grow it (see :attr:`lensrim.RIMConfig.bf16`)."""
    rim_float32_batch: int | None = 4
    """Lenses per RIM training step where ``rim_bf16`` meets a CPU that only emulates bfloat16,
    so that the RIM trains in float32 (most laptops; :func:`_float32_cpu_run`); None: ``rim_batch``
    there too. 4: float32 takes about as long per lens at batch 4 as at 8 (2.8 and 3.1 lenses/s
    on 2 AVX2 cores), so 8 made the demo 40 minutes there; at 4 its RIM stage takes half the time
    and, on seeds 0, 1 and 2, gained as much (+0.49, +0.37 and +0.52 dex against +0.48, +0.39 and
    +0.54) and fitted as well or better against Adam with the same gradients (``docs/rim_ab.md``,
    tenth study).
    Decided at every call from the CPU: a demo directory moved between a CPU with native bfloat16
    and one without is refused at the RIM stage rather than mixed."""
    rim_log_every: int = 25
    """RIM training steps between log lines (validation against the constant predictor)."""
    rim_validation: int = 16
    """Training lenses held out as the RIM's validation set."""
    fisher_samples: int = 16
    """VAE draws per lens for the EWC Fisher diagonal (Table 3: 200)."""
    finetune_steps: int = 30
    """RMSProp fine-tuning steps at most per lens (Table 3: 2000)."""
    finetune_learning_rate: float = 1e-5
    """RMSProp moves every weight by about this much per step: 1e-4 made the small RIM's fit oscillate."""
    ewc_lambda: float = 2e7
    """EWC strength lambda, in Table 3's units: 100 times Table 3's 2e5. On the three standard
    demos' RIMs (seeds 0-2) and their 8 test lenses, with the demo's 30 steps at 1e-5, Table 3's
    value cut the median chi2_nu further on two seeds (4.19 -> 3.44, 2.06 -> 1.64; 2.51 -> 2.47 on
    the third) but cost up to 0.14 dex of mean log10 loss against the truth (seed 1, one lens
    0.36); 2e7 cuts it by 7, 14 and 6 % (3.89, 1.77, 2.37) and keeps the mean loss within 0.05 dex
    (+0.008 to +0.040), no lens beyond 0.09 (README, "Fine-tuning and evaluation")."""
    adam_long_steps: int = 300
    """Gradients of the long Adam reference: more than the RIM's T - 1."""
    test_fraction: float = 0.2
    """Share of halos and galaxies held out for the test lenses."""

    def __post_init__(self) -> None:
        self.check_numbers()
        positive = [f.name for f in fields(self) if f.type == "int" and f.name != "finetune_steps"]
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"DemoConfig.{name} must be at least 1, got {getattr(self, name)}")
        if self.finetune_steps < 0:
            raise ValueError(f"DemoConfig.finetune_steps must be >= 0, got {self.finetune_steps}")
        if self.pixels < 16 or self.pixels & (self.pixels - 1):
            raise ValueError(f"DemoConfig.pixels must be a power of two >= 16, got {self.pixels}")
        for name in ("sie_fraction", "vae_lens_fraction"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"DemoConfig.{name} must lie in [0, 1], got {getattr(self, name)}")
        if not 0 < self.test_fraction < 1:
            raise ValueError(f"DemoConfig.test_fraction must lie in (0, 1), got {self.test_fraction}")
        if not 0 < self.rim_final_lr_factor <= 1:
            raise ValueError(f"DemoConfig.rim_final_lr_factor must lie in (0, 1], got {self.rim_final_lr_factor}")
        for name in ("rim_learning_rate", "finetune_learning_rate"):
            if getattr(self, name) <= 0:
                raise ValueError(f"DemoConfig.{name} must be positive, got {getattr(self, name)}")
        if self.ewc_lambda < 0 or self.rim_fit_weight < 0:
            raise ValueError("DemoConfig.ewc_lambda and rim_fit_weight must not be negative")
        batch = self.rim_float32_batch
        if batch is not None and (isinstance(batch, bool) or not isinstance(batch, int) or batch < 1):
            raise ValueError(f"DemoConfig.rim_float32_batch must be None or an integer >= 1, got {batch!r}")
        if not 0 <= self.rim_fit_kappa <= 1:
            raise ValueError(f"DemoConfig.rim_fit_kappa must lie in [0, 1], got {self.rim_fit_kappa}")
        if self.rim_preset not in RIM_PRESETS:
            raise ValueError(f"DemoConfig.rim_preset must be one of {sorted(RIM_PRESETS)}, got {self.rim_preset!r}")
        budget = RIM_PRESETS[self.rim_preset].steps - 1
        if self.adam_long_steps <= budget:
            raise ValueError(
                f"DemoConfig.adam_long_steps ({self.adam_long_steps}) must exceed the RIM's {budget} gradients: "
                "the long Adam reference is the one with many more"
            )


PRESETS = {
    "standard": DemoConfig(),
    "quick": DemoConfig(
        pixels=32,
        halos=4,
        maps_per_halo=4,
        sources=24,
        vae_steps=20,
        vae_latent=4,
        vae_filters=4,
        train_lenses=24,
        test_lenses=3,
        rim_preset="tiny",
        rim_steps=8,
        rim_batch=4,
        rim_bf16=False,  # its 8 steps take 2 s either way
        fisher_samples=2,
        finetune_steps=3,
        adam_long_steps=20,
        test_fraction=0.25,
    ),
}
"""``standard``: the README's demo (64^2 maps, about 15 minutes on 2 CPU cores with native bfloat16,
20-29 without); ``quick``: a smoke run of under a minute (32^2), the test suite's."""

STAGES = (
    "kappa maps from synthetic halos (KDE) and GalSim synthetic sources",
    "source and kappa VAEs",
    "training and held-out test lenses",
    "RIM training (dataset lenses mixed with VAE-drawn lenses)",
    "fine-tuning the held-out lenses (EWC)",
    "plain Adam on the likelihood, for comparison",
    "evaluation and report",
)
"""The stages' titles, in order (:data:`STAGE_FUNCTIONS` runs them)."""

TIMINGS_FILE = Path(__file__).with_name("demo_timings.json")


FLOAT32_CPU = ", float32 CPU"
"""Suffix of a preset's row in ``demo_timings.json`` measured on a CPU without native bfloat16."""


def expected_seconds(preset: str, *, float32_cpu: bool = False) -> dict[str, float]:
    """Seconds per stage (by title) that ``preset`` took on a 2-core development machine, as
    measured into ``demo_timings.json``; empty for a preset not measured there. ``float32_cpu``:
    the row measured on a CPU without native bfloat16, where the RIM's ``rim_bf16`` stages run in
    float32 (about three times as long on the 2-core machines measured), if there is one."""
    rows = json.loads(TIMINGS_FILE.read_text())["seconds"]
    measured = (float32_cpu and rows.get(preset + FLOAT32_CPU)) or rows.get(preset)
    return dict(zip(STAGES, measured, strict=True)) if measured else {}


def _float32_cpu_run(config: DemoConfig, device: str | torch.device) -> bool:
    """Whether a demo with ``config`` on ``device`` asks for bfloat16 and gets float32: a CPU
    without native bfloat16 (:func:`lensrim.model.native_bf16_cpu`)."""
    import torch

    from lensrim.model import native_bf16_cpu

    return config.rim_bf16 and torch.device(device).type == "cpu" and not native_bf16_cpu()


def _rim_batch(config: DemoConfig, device: str | torch.device) -> int:
    """The RIM's training batch for a demo with ``config`` on ``device``: ``rim_float32_batch``
    where the RIM asks for bfloat16 and gets float32 (:func:`_float32_cpu_run`) and that is set,
    else ``rim_batch``."""
    if config.rim_float32_batch is not None and _float32_cpu_run(config, device):
        return config.rim_float32_batch
    return config.rim_batch


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e}); remove it to start that part again") from None


def _write_json(path: Path, obj) -> None:
    with written(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=1, sort_keys=True) + "\n")


def _mix(a, b, fraction_b: float):
    """A sampler drawing from ``b`` with probability ``fraction_b`` and from ``a`` otherwise."""

    import torch

    def draw(count: int, generator: torch.Generator) -> torch.Tensor:
        pick = torch.rand(count, generator=generator) < fraction_b
        out = a(count, generator)
        if pick.any():
            out[pick.to(out.device)] = b(int(pick.sum()), generator).to(out.dtype)
        return out

    return draw


@dataclass
class Estimate:
    """One method's source and log10 kappa for the held-out lenses, and how the report names it."""

    label: str
    source: torch.Tensor
    log10_kappa: torch.Tensor


@dataclass
class DemoState:
    """What the stages pass along: the run's settings, and what each stage made for the next.
    Estimates are keyed by role (``constant``, ``rim_first``, ``rim``, ``adam_rim_start``,
    ``adam_constant_start``, ``adam_long``, ``finetuned``), never by their display labels."""

    output: Path
    config: DemoConfig
    seed: int
    device: torch.device
    say: Callable[[str], None]
    progress_bar: Callable[..., Any]
    observation: lenssim.ObservationConfig
    timings: dict[str, float]
    notes: dict[str, str] = field(default_factory=dict)
    vaes: dict[str, torch.nn.Module] = field(default_factory=dict)
    rim: RIM | None = None
    test: lenssim.LensBatch | None = None
    physics: LensingPhysics | None = None
    constant_log10_kappa: float = 0.0
    estimates: dict[str, Estimate] = field(default_factory=dict)
    adam: dict[str, dict[str, Any]] = field(default_factory=dict)
    result: dict[str, Any] = field(default_factory=dict)

    @property
    def budget(self) -> int:
        """The likelihood gradients the RIM uses: T - 1."""
        return self.rim.config.steps - 1


def stage_data(state: DemoState) -> None:
    """Stage 1: KDE kappa maps of synthetic halos, and GalSim synthetic sources (both split)."""
    import lenssim
    from lenssim import tng

    c, seed, output, bar = state.config, state.seed, state.output, state.progress_bar
    halos = [
        lenssim.HaloSource(f"synthetic-{seed}-{i}", (lambda i=i: tng.synthetic_particles([seed, i])))
        for i in range(c.halos)
    ]
    with bar(total=c.halos * c.maps_per_halo, desc="kappa maps", unit="map") as b:
        lenssim.simulate_kappa_dataset(
            output / "kappa.h5",
            halos,
            maps_per_halo=c.maps_per_halo,
            config=lenssim.KappaMapConfig.at_resolution(c.pixels),
            test_fraction=c.test_fraction,
            seed=seed,
            progress=b.update,
        )
    with bar(total=c.sources, desc="sources", unit="galaxy") as b:
        lenssim.simulate_source_dataset(
            output / "sources.h5",
            c.sources,
            stamp=lenssim.data.sources.SourceStampConfig.at_resolution(c.pixels),
            source_fov=state.observation.source_fov,
            test_fraction=c.test_fraction,
            seed=seed,
            block_size=64,
            progress=b.update,
        )


def stage_priors(state: DemoState) -> None:
    """Stage 2: the source and kappa VAEs on the training splits."""
    import lensprior

    c, n = state.config, state.config.pixels
    for kind, make in (("source", lensprior.source_vae_config), ("kappa", lensprior.kappa_vae_config)):
        field_file = state.output / ("sources.h5" if kind == "source" else "kappa.h5")
        cfg = make(pixels=n, latent_dim=c.vae_latent, filters=c.vae_filters, batch_size=16, steps=c.vae_steps)
        cfg = replace(cfg, levels=min(cfg.levels, int(np.log2(n)) - 2), learning_rate=1e-3)
        data = lensprior.load_field(field_file, kind, split="train", pixels=n)
        with state.progress_bar(total=c.vae_steps, desc=f"{kind} VAE", unit="step") as bar:
            state.vaes[kind] = lensprior.train_vae(
                cfg,
                data,
                state.output / f"vae-{kind}",
                seed=state.seed,
                device=state.device,
                log_every=50,
                checkpoint_every=100,
                progress=lambda done, terms, bar=bar: bar.update(done - bar.n),
            )
        state.vaes[kind].eval()


def stage_lenses(state: DemoState) -> None:
    """Stage 3: training lenses (KDE or SIE kappa, training sources) and held-out test lenses
    (test-split halos and galaxies only)."""
    import lenssim

    c, obs, output = state.config, state.observation, state.output

    def draws(name: str, kind: str, split: str):
        return lenssim.sampler_from_spec(output / name, kind, config=obs, split=split)

    kappa_mix = _mix(draws("kappa.h5", "kappa", "train"), lenssim.sie_kappa_sampler(config=obs), c.sie_fraction)
    train = ("lenses-train.h5", c.train_lenses, kappa_mix, draws("sources.h5", "source", "train"), state.seed)
    test_kappa, test_sources = draws("kappa.h5", "kappa", "test"), draws("sources.h5", "source", "test")
    test = ("lenses-test.h5", c.test_lenses, test_kappa, test_sources, state.seed + 1)
    for name, count, ks, ss, s in (train, test):
        with state.progress_bar(total=count, desc=name, unit="lens") as bar:
            lenssim.simulate_lens_dataset(
                output / name,
                count,
                ks,
                ss,
                config=obs,
                seed=s,
                block_size=128,
                provenance={"demo": name},
                progress=bar.update,
            )


def stage_rim(state: DemoState) -> None:
    """Stage 4: the RIM, on the training lenses mixed with lenses drawn from the two VAEs."""
    import lensrim
    import lenssim
    from lensrim.training import DatasetBatches, MixedBatches, SimulatedBatches, constant_log10_kappa, vae_sampler

    c, obs, n, say = state.config, state.observation, state.config.pixels, state.say
    batch = _rim_batch(c, state.device)
    rim_json = state.output / "rim" / "config.json"  # a RIM begun by an earlier call: train_rim checks the rest
    stored = _read_json(rim_json) if rim_json.is_file() else {}
    began = stored.get("batch_size", batch) if isinstance(stored, dict) else batch
    if began != batch:
        raise DemoError(
            f"{state.output}: its RIM trains at batch {began}, and here ({state.device}) it would train at batch "
            f"{batch} (rim_float32_batch is for a CPU without native bfloat16): use another directory"
        )
    if batch != c.rim_batch:
        state.notes["RIM batch"] = (
            f"this CPU computes bfloat16 only by emulation: the RIM trained in float32 at batch {batch} "
            f"(rim_float32_batch), where a CPU with native bfloat16 trains it at batch {c.rim_batch}"
        )
    rim_cfg = replace(
        lensrim.PRESETS[c.rim_preset],
        pixels=n,
        batch_size=batch,
        learning_rate=c.rim_learning_rate,
        train_steps=c.rim_steps,
        decay_steps=max(1, c.rim_steps),
        decay_rate=c.rim_final_lr_factor,
        fit_weight=c.rim_fit_weight,
        fit_kappa=c.rim_fit_kappa,
        bf16=c.rim_bf16,
        image_fov=obs.image_fov,
        source_fov=obs.source_fov,
    )
    if n % 2**rim_cfg.levels:
        rim_cfg = replace(rim_cfg, levels=int(np.log2(n)) - 2)
    # VAE draws of a few-minute VAE can be broad: keep every check but the image border's
    loose = lenssim.AcceptanceCriteria(max_border=1.0)
    vaes = state.vaes
    vae_lenses = SimulatedBatches(vae_sampler(vaes["kappa"]), vae_sampler(vaes["source"]), obs, criteria=loose)
    vae_fraction = c.vae_lens_fraction
    if vae_fraction > 0:
        try:
            vae_lenses(0, 4, state.seed)  # can the VAEs' draws make acceptable lenses at all?
        except lenssim.SimulationError as e:
            vae_fraction = 0.0
            state.notes["VAE lenses"] = f"none in training: the VAEs' draws made no acceptable lens ({e})"
            say(f"note: {state.notes['VAE lenses']}")
    batches = MixedBatches(DatasetBatches(state.output / "lenses-train.h5"), vae_lenses, vae_fraction)
    # the first estimate starts at the constant predictor's log10 kappa (not kappa = 1)
    rim_cfg = replace(rim_cfg, initial_log10_kappa=constant_log10_kappa(batches, state.seed))
    state.test = lenssim.LensBatch.from_hdf5(state.output / "lenses-test.h5")
    with state.progress_bar(total=c.rim_steps, desc="RIM", unit="step") as bar:

        def progress(done, terms):
            bar.update(done - bar.n)
            if "val_log10_loss" in terms:  # a log step
                post = {"loss": f"{terms['loss']:.3g}"}
                post["val log10"] = f"{terms['val_log10_loss']:.2f} (const {terms['val_constant_log10_loss']:.2f})"
                bar.set_postfix(post, refresh=False)

        # validation: lenses held out of the training set; external: the held-out test lenses
        state.rim = lensrim.train_rim(
            rim_cfg,
            batches,
            state.output / "rim",
            seed=state.seed,
            device=state.device,
            checkpoint_every=50,
            log_every=max(1, min(c.rim_log_every, c.rim_steps)),
            validation_size=c.rim_validation,
            external=state.test,
            metadata={"image_fov": obs.image_fov, "source_fov": obs.source_fov, "demo": True},
            progress=progress,
        )
    state.rim.eval()


def stage_finetune(state: DemoState) -> None:
    """Stage 5: the held-out lenses reconstructed and fine-tuned with EWC, into ``recon.h5``."""
    import lensrim
    import lenssim
    from lensrim.api import finetune_to_file, output_attrs

    c, obs, test, device = state.config, state.observation, state.test, state.device
    ft_cfg = lensrim.FineTuneConfig(
        ewc_lambda=c.ewc_lambda,
        fisher_samples=c.fisher_samples,
        learning_rate=c.finetune_learning_rate,
        max_steps=c.finetune_steps,
        fisher_chunk=8,
    )
    attrs = output_attrs(test.attrs, {"demo": True, "finetune": asdict(ft_cfg)})
    held = lenssim.Observation(
        observation=test.observation,
        psf=test.psf,
        noise=test.noise_sigma,
        image_fov=obs.image_fov,
        source_fov=obs.source_fov,
        truth={"source": test.source, "kappa": test.kappa},
    )
    task = lensrim.FineTune(state.vaes["source"].to(device), state.vaes["kappa"].to(device), ft_cfg, state.seed)
    with state.progress_bar(total=c.test_lenses, desc="fine-tuning", unit="lens") as bar:

        def phase(first, last, name, done, total):  # the lens count stands still meanwhile
            bar.set_postfix_str(f"lenses {first}-{last}: {name} {done}/{total}", refresh=False)

        out, batch = state.output / "recon.h5", min(8, c.test_lenses)
        rim = state.rim.to(device)
        finetune_to_file(rim, task, held, out, attrs=attrs, batch_size=batch, progress=bar.update, phase=phase)


LR_GRID = (1e-3, 3e-3, 1e-2, 3e-2, 1e-1)
"""Adam's learning rates tried for each reference; the one whose median chi2_nu is lowest is kept
(tuned on the fit alone: no labels)."""


def stage_adam(state: DemoState) -> None:
    """Stage 6: the RIM's estimates, the constant predictor's and plain Adam's on the same
    likelihood: with the RIM's T - 1 gradients from the RIM's first estimate and from the
    constant predictor's maps, and with many more."""
    import torch

    import lensrim
    from lensrim.baseline import optimise_likelihood
    from lensrim.metrics import constant_reference, median

    c, test, device = state.config, state.test, state.device
    y = test.observation.to(device)
    state.physics = physics = lensrim.LensingPhysics(
        test.psf.to(device), test.noise_sigma.to(device), state.observation.image_fov, state.observation.source_fov
    )
    with torch.no_grad():
        est = state.rim(y, physics)
    first_s, first_xi = est[0, :, :1], est[0, :, 1:]
    budget = state.budget
    ref = constant_reference(test.source, test.kappa)
    state.constant_log10_kappa = ref.log10_kappa
    constant = (torch.zeros_like(first_s), torch.full_like(first_xi, ref.log10_kappa))
    state.estimates.update(
        constant=Estimate(CONSTANT, *constant),
        rim_first=Estimate("RIM first estimate (0 gradients)", first_s, first_xi),
        rim=Estimate(f"RIM (T-1 = {budget} gradients)", est[-1, :, :1], est[-1, :, 1:]),
    )
    cache = _AdamCache(state.output / "adam.pt", first_s.shape)
    # role: (where it starts, in words and as maps; gradients; its key in adam.pt)
    runs = {
        "adam_rim_start": ("the RIM's first estimate", (first_s, first_xi), budget, budget),
        "adam_constant_start": ("the constant predictor", constant, budget, f"constant-{budget}"),
        "adam_long": ("the RIM's first estimate", (first_s, first_xi), c.adam_long_steps, c.adam_long_steps),
    }
    for role, (start, (s0, xi0), steps, key) in runs.items():
        if key not in cache:  # a re-run takes the stored result: same numbers, no work
            best = None
            for lr in LR_GRID:
                s, xi = optimise_likelihood(y, physics, s0, xi0, steps=steps, learning_rate=lr)
                chi2 = float(median(physics.chi2_nu(y, s, xi)))
                if best is None or chi2 < best[0]:
                    best = (chi2, lr, s, xi)
            cache.put(key, best[1], best[2], best[3])
        lr, s, xi = cache.get(key, device)
        where = "the same start" if role != "adam_constant_start" else "the constant predictor"
        state.estimates[role] = Estimate(f"Adam from {where} ({steps} gradients, lr {lr:g})", s, xi)
        state.adam[role] = {"gradients": steps, "learning_rate": lr, "start": start}


def stage_report(state: DemoState) -> None:
    """Stage 7: every estimate scored against the truth and the fit, the verdict and the report."""
    import torch

    from lensrim.report import comparison_figure, read_reconstruction, write_report

    c, test, device, physics = state.config, state.test, state.device, state.physics
    recon = read_reconstruction(state.output / "recon.h5")
    state.estimates["finetuned"] = Estimate(
        f"RIM + EWC fine-tuning ({c.finetune_steps} steps at most)",
        recon.source.to(device),
        torch.log10(recon.kappa.to(device)),
    )
    names = [e.label for e in state.estimates.values()]
    if len(set(names)) != len(names):  # DemoConfig's refusals keep them apart; the report needs it
        raise DemoError(f"two methods share a name in the comparison: {names}")
    y = test.observation.to(device)
    scores = {role: _score(e, y, physics, test, state.observation) for role, e in state.estimates.items()}
    comparison = {state.estimates[role].label: score for role, score in scores.items()}
    # the same-budget reference: whichever start let Adam fit better (chi2 alone, no labels)
    same = min(("adam_rim_start", "adam_constant_start"), key=lambda r: scores[r]["chi2_nu"]["median"])
    labels = {role: state.estimates[role].label for role in ("rim", "adam_long", "finetuned")}
    labels["adam_same"] = state.estimates[same].label
    step_losses = _final_validation_steps(state.output / "rim")
    verdict = {**_verdict(comparison, state.budget, labels, step_losses), **state.notes}
    verdict["fine-tuning budget"] = _finetune_budget(c, recon.steps.float(), state.timings[STAGES[4]])
    references = {  # the same figures as in comparison, under keys that do not change with settings
        "constant_predictor": {**scores["constant"], "log10_kappa": state.constant_log10_kappa},
        "adam_same_gradients": {**scores[same], **state.adam[same], "method": labels["adam_same"]},
        "adam_long": {**scores["adam_long"], **state.adam["adam_long"], "method": labels["adam_long"]},
    }
    if step_losses is not None:
        references["rim_steps"] = {"val_loss_t": step_losses, "final_over_best": step_losses[-1] / min(step_losses)}
    settled = {k: v for k, v in state.timings.items() if k != STAGES[6]}  # the report's own stage is not over
    extra = {"comparison": comparison, "references": references, "timings_s": settled, "notes": verdict}
    metrics = write_report(
        recon,
        state.output / "report",
        title="lens demo: RIM reconstruction of held-out lenses",
        extra={**extra, "demo": asdict(c)},
        extra_figures=lambda report, m: [comparison_figure(report / "comparison.png", comparison)],
    )
    state.result = {"metrics": metrics, "comparison": comparison, "verdict": verdict}


def _score(
    estimate: Estimate,
    y: torch.Tensor,
    physics: LensingPhysics,
    test: lenssim.LensBatch,
    obs: lenssim.ObservationConfig,
) -> dict[str, Any]:
    """An estimate's fit (chi2_nu: its summary, and each lens's, for paired comparisons), its error
    against the truth (the log10 loss of Table 4) and its mean coherence with the true source and kappa."""
    import torch

    import lensrim
    import lenssim
    from lensrim.metrics import chi2_summary, coherence_spectrum, log_loss_moments, residual_block

    s, xi = estimate.source.cpu(), estimate.log10_kappa.cpu()
    truth_s, truth_k = test.source, test.kappa.clamp_min(1e-6)
    model = physics.simulate(s.to(y.device), xi.to(y.device))
    chi2 = lenssim.chi2_nu(y, model, physics.sigma).cpu()
    binned = lenssim.binned_chi2_nu(y, model, physics.sigma, block=residual_block(y.shape[-1])).cpu()
    loss = lensrim.rim_loss(torch.cat([s, xi], dim=1)[None], truth_s, truth_k)
    _, gs = coherence_spectrum(s, truth_s, fov=obs.source_fov)
    _, gk = coherence_spectrum(torch.pow(10.0, xi), truth_k, fov=obs.image_fov)
    return {
        "chi2_nu": chi2_summary(chi2),
        "chi2_nu_per_lens": [float(v) for v in chi2],
        "chi2_nu_binned": chi2_summary(binned),
        "log10_loss": log_loss_moments(loss),
        "coherence_source_mean": _mean_or_none(gs),
        "coherence_kappa_mean": _mean_or_none(gk),
    }


def _finetune_budget(c: DemoConfig, used: torch.Tensor, stage_seconds: float) -> str:
    """What the demo's fine-tuning budget can show, against Table 3's, at this machine's speed."""
    per_step = stage_seconds / max(1.0, float(used.max()))
    return (
        f"the demo fine-tunes for at most {c.finetune_steps} RMSProp steps at learning rate "
        f"{c.finetune_learning_rate:g} with lambda {c.ewc_lambda:g} and {c.fisher_samples} Fisher draws (median "
        f"{float(used.median()):.0f} steps used); Table 3 allows 2000 steps at 1e-6 with 200 draws, which at "
        f"{per_step:.1f} s per step for these {len(used)} lenses on this machine (the stage's time over its "
        f"steps, its Fisher draws included: an upper bound) would take ~{2000 * per_step / 60:.0f} min, so the "
        "demo cannot show fine-tuning reaching the noise; the README's 'Does fine-tuning reach the noise?' "
        "measures that question (benchmarks/bench_finetune.py)"
    )


STAGE_FUNCTIONS: tuple[Callable[[DemoState], None], ...] = (
    stage_data,
    stage_priors,
    stage_lenses,
    stage_rim,
    stage_finetune,
    stage_adam,
    stage_report,
)
"""The stages, in the order of :data:`STAGES` (their titles)."""


class _Clock:
    """Times each stage, echoing a header with its title and expected time (``expected``:
    seconds by title). Times add up across resumed calls: ``path`` (JSON) keeps them after
    every stage."""

    def __init__(
        self,
        timings: dict,
        path: Path,
        expected: dict,
        *,
        frozen: bool,
        say: Callable[[str], None],
        cores: str = "2 CPU cores",
    ) -> None:
        self.say, self.timings, self.path, self.expected, self.cores = say, timings, path, expected, cores
        self.frozen = frozen  # a finished run's times stay those of the work, not of re-reading it
        self.count = 0

    @contextlib.contextmanager
    def __call__(self, name: str):
        self.count += 1
        eta = ""
        if self.frozen:
            eta = " (finished before: reading its results)"
        elif name in self.expected:
            eta = f" (about {duration(self.expected[name])} on {self.cores}"
            eta += "; resuming)" if name in self.timings else ")"
        self.say(f"[{self.count}/{len(STAGES)}] {name}{eta}")
        t0 = time.perf_counter()
        yield
        if self.frozen:
            return
        self.timings[name] = round(self.timings.get(name, 0.0) + time.perf_counter() - t0, 1)
        _write_json(self.path, self.timings)


def _differences(before: Any, now: dict) -> str:
    """What differs between a directory's stored demo settings and these: the seed, and the preset
    by name when both are one, else each field that differs."""
    if not isinstance(before, dict):
        return "not a demo's settings"
    said = differences({"seed": before.get("seed")}, {"seed": now["seed"]})
    names = {json.dumps(asdict(v), sort_keys=True): k for k, v in PRESETS.items()}
    presets = [names.get(json.dumps(s.get("config"), sort_keys=True)) for s in (before, now)]
    if all(presets) and presets[0] != presets[1]:
        said.append(f"the {presets[0]} preset there, the {presets[1]} preset here")
    else:
        said += differences(before.get("config"), now["config"])
    return "; ".join(said)


def run_demo(
    output: str | os.PathLike,
    config: DemoConfig = PRESETS["standard"],
    *,
    seed: int = 0,
    device: str | torch.device = "cpu",
    say: Callable[[str], None] = print,
    progress_bar: Callable[..., Any] = _no_bar,
) -> dict:
    """Run (or resume) the demo in ``output`` and write ``output/report``; returns the report's
    metrics, the comparison of methods on the held-out lenses, the verdict and the stage times.

    ``say(line)`` prints the stage headers and notes; ``progress_bar(total=, desc=, unit=)``
    makes a context-managed bar with tqdm's ``update``, ``n``, ``set_postfix`` and
    ``set_postfix_str`` (e.g. ``tqdm.tqdm``; default: none). A directory holding a demo run
    with other settings is refused (:class:`DemoError`).
    """
    import torch

    import lenssim

    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    stored = output / "demo.json"
    settings = json.loads(json.dumps({"config": asdict(config), "seed": seed}))
    if stored.is_file() and (before := _read_json(stored)) != settings:
        raise DemoError(
            f"{output} holds a demo run with other settings ({_differences(before, settings)}: {stored}); "
            "use another directory"
        )
    _write_json(stored, settings)
    timing_file = output / "timings.json"  # seconds per stage, summed over every call on this directory
    timings: dict = _read_json(timing_file) if timing_file.is_file() else {}
    preset = next((k for k, v in PRESETS.items() if v == config), None)
    float32 = _float32_cpu_run(config, device)
    expected = expected_seconds(preset, float32_cpu=float32) if preset else {}
    finished = (output / "report" / "metrics.json").is_file()
    cores = "2 CPU cores without native bfloat16" if float32 else "2 CPU cores"
    if expected and not finished:
        say(f"the {preset} demo: about {duration(sum(expected.values()))} in all on {cores}")
        if float32:
            fast = duration(sum(expected_seconds(preset).values()))
            batch = _rim_batch(config, device)
            halved = f", training at batch {batch} instead of {config.rim_batch}" if batch != config.rim_batch else ""
            say(
                "note: this CPU computes bfloat16 only by emulation, so the RIM trains and fine-tunes in "
                f"float32{halved}; "
                f"the times given are those measured on such a CPU ({fast} in all on one with AVX-512 BF16 or AMX); "
                "more cores (--threads) or --device cuda go faster"
            )
    clock = _Clock(timings, timing_file, expected, frozen=finished, say=say, cores=cores)
    state = DemoState(
        output=output,
        config=config,
        seed=seed,
        device=torch.device(device),
        say=say,
        progress_bar=progress_bar,
        observation=lenssim.ObservationConfig.at_resolution(config.pixels),
        timings=timings,
    )
    for title, stage in zip(STAGES, STAGE_FUNCTIONS, strict=True):
        with clock(title):
            stage(state)
    _write_json(output / "report" / "timings.json", timings)
    return {**state.result, "timings": timings}


class _AdamCache:
    """The Adam reference's results, kept in ``path`` (tensors only, read with
    ``weights_only=True``) so that a re-run of the demo reports the same numbers without
    repeating the search. A file that does not fit (other lenses) is ignored and rewritten."""

    def __init__(self, path: Path, shape: tuple[int, ...]) -> None:
        import torch

        self.path, self.shape, self.items = path, tuple(shape), {}
        if path.is_file():
            try:
                items = torch.load(path, map_location="cpu", weights_only=True)
            except Exception:  # noqa: BLE001 - a cache: recompute whatever it cannot give
                items = {}
            if isinstance(items, dict) and all(isinstance(v, torch.Tensor) for v in items.values()):
                self.items = items

    def __contains__(self, steps: int) -> bool:
        s, xi, lr = (self.items.get(f"{steps}/{k}") for k in ("source", "log10_kappa", "learning_rate"))
        return (
            s is not None
            and xi is not None
            and lr is not None
            and tuple(s.shape) == self.shape
            and tuple(xi.shape) == self.shape
            and lr.numel() == 1
        )

    def get(self, steps: int, device) -> tuple[float, torch.Tensor, torch.Tensor]:
        item = self.items
        lr = float(item[f"{steps}/learning_rate"])
        return lr, item[f"{steps}/source"].to(device), item[f"{steps}/log10_kappa"].to(device)

    def put(self, steps: int, lr: float, s: torch.Tensor, xi: torch.Tensor) -> None:
        import torch

        self.items.update(
            {
                f"{steps}/source": s.detach().cpu().clone(),
                f"{steps}/log10_kappa": xi.detach().cpu().clone(),
                f"{steps}/learning_rate": torch.tensor(lr, dtype=torch.float64),
            }
        )
        with written(self.path) as tmp, open(tmp, "wb") as f:
            torch.save(self.items, f)


def _mean_or_none(gamma: np.ndarray) -> float | None:
    """Mean coherence over lenses and bins, or None when a map has no power at all (a zero
    source: coherence is undefined)."""
    finite = gamma[np.isfinite(gamma)]
    return float(finite.mean()) if finite.size else None


CONSTANT = "constant predictor (source 0, best constant log10 kappa)"
REQUIRED_GAIN = 0.4
"""dex by which the demo's RIM should beat the constant predictor on the held-out lenses."""
LAST_STEP_TOLERANCE = 0.02
"""How much worse than its best step the RIM's final estimate may be on the validation lenses."""


def _final_validation_steps(run_dir: Path) -> list[float] | None:
    """The validation loss at each RIM step at the end of training (the last log line), if logged."""
    from lenscore.runs import read_metrics

    rows = [r for r in read_metrics(run_dir / "metrics.jsonl") if "val_loss_t" in r]
    return [float(v) for v in rows[-1]["val_loss_t"]] if rows else None


def _paired(first: list[float], second: list[float]) -> tuple[int, int, float]:
    """Lens by lens: on how many of them ``first`` is below ``second``, out of how many, and the
    median of their ratios."""
    import statistics

    return (
        sum(a < b for a, b in zip(first, second, strict=True)),
        len(first),
        statistics.median(a / b for a, b in zip(first, second, strict=True)),
    )


def _verdict(comparison: dict, budget: int, labels: dict[str, str], per_step: list[float] | None = None) -> dict:
    """Sentences that say, from the numbers alone, whether the learning works. ``labels``: the
    comparison's names of the ``rim``, ``adam_same`` (the same-budget reference), ``adam_long`` and
    ``finetuned`` estimates; ``per_step``: the validation loss at each RIM step at the end of training."""
    rim, adam, adam_long, ft = (labels[k] for k in ("rim", "adam_same", "adam_long", "finetuned"))
    const = comparison[CONSTANT]["log10_loss"]["mu"]
    gain = const - comparison[rim]["log10_loss"]["mu"]
    verdict = "learned" if gain >= REQUIRED_GAIN else "has NOT learned enough"
    first = {
        "RIM vs constant predictor": (
            f"the RIM {verdict}: mean log10 loss {comparison[rim]['log10_loss']['mu']:.2f} against the constant "
            f"predictor's {const:.2f} on the same held-out lenses, {gain:+.2f} dex (the demo asks for "
            f">= {REQUIRED_GAIN} dex)"
        )
    }
    out = first
    r, a, al, f = (comparison[k] for k in (rim, adam, adam_long, ft))
    rc, cc, ac = (x["chi2_nu"]["median"] for x in (r, comparison[CONSTANT], a))
    fits = rc < cc and rc < ac
    out["RIM's fit"] = (
        f"the RIM {'fits' if fits else 'does NOT fit'} the data better than both references: median chi2_nu "
        f"{rc:.3g} against the constant predictor's {cc:.3g} (an empty model image) and {ac:.3g} for Adam with the "
        f"same {budget} gradients (1 = the noise)"
    )
    if "chi2_nu_per_lens" in r and "chi2_nu_per_lens" in a:  # a median of a few lenses moves with one of them
        wins, count, ratio = _paired(r["chi2_nu_per_lens"], a["chi2_nu_per_lens"])
        out["RIM's fit"] += (
            f"; lens by lens it fits better than that Adam on {wins} of {count} (its chi2_nu over Adam's: median "
            f"{ratio:.3g})"
        )
    if "chi2_nu_binned" in r:  # what is left: noise (about 1 in blocks) or structure (above chi2_nu)
        from lensrim.metrics import RESIDUAL_BLOCK

        rb = r["chi2_nu_binned"]["median"]
        out["RIM's fit"] += (
            f"; summed in {RESIDUAL_BLOCK}x{RESIDUAL_BLOCK}-pixel blocks its residual gives {rb:.3g} (white noise "
            f"gives about 1, a noise level off by one factor chi2_nu's {rc:.3g}): "
            + ("structure the model misses" if rb > 1.5 * rc else "close to white")
        )
    if per_step is not None:
        best = min(range(len(per_step)), key=per_step.__getitem__)
        excess = per_step[-1] / per_step[best] - 1
        ok = excess <= LAST_STEP_TOLERANCE
        out["RIM's last step"] = (
            f"the RIM's final estimate {'is' if ok else 'is NOT'} its best: at the end of training its validation "
            f"loss at step {len(per_step)} of {len(per_step)} is {100 * excess:.1f} % above the best step's "
            f"(step {best + 1}; the demo asks for <= {100 * LAST_STEP_TOLERANCE:.0f} %); per step: "
            + ", ".join(f"{v:.4f}" for v in per_step)
        )

    def better(x, y, key):
        return x[key]["mu"] < y[key]["mu"] if key == "log10_loss" else x[key]["median"] < y[key]["median"]

    out["RIM vs Adam, same budget"] = (
        f"with {budget} likelihood gradients the RIM {'beats' if better(r, a, 'log10_loss') else 'does NOT beat'} "
        f"Adam (the better fitting of its two starts: {adam}) on the error against the truth "
        f"(log10 loss {r['log10_loss']['mu']:.2f} vs {a['log10_loss']['mu']:.2f}) "
        f"and {'beats' if better(r, a, 'chi2_nu') else 'does NOT beat'} it on the fit "
        f"(median chi2_nu {r['chi2_nu']['median']:.3g} vs {a['chi2_nu']['median']:.3g})"
    )
    out["RIM vs long Adam"] = (
        f"Adam with many more gradients reaches median chi2_nu {al['chi2_nu']['median']:.3g} and log10 loss "
        f"{al['log10_loss']['mu']:.2f}: fitting the data without a prior "
        + (
            "does not recover the truth better than the RIM"
            if al["log10_loss"]["mu"] >= r["log10_loss"]["mu"]
            else "recovers the truth better than this short-trained RIM"
        )
    )
    c = comparison[CONSTANT]
    out["fine-tuning"] = (
        f"EWC fine-tuning moves median chi2_nu from {r['chi2_nu']['median']:.3g} to {f['chi2_nu']['median']:.3g} and "
        f"the log10 loss from {r['log10_loss']['mu']:.2f} to {f['log10_loss']['mu']:.2f}; "
        f"coherence source {_fmt(r['coherence_source_mean'])} -> {_fmt(f['coherence_source_mean'])}, "
        f"kappa {_fmt(r['coherence_kappa_mean'])} -> {_fmt(f['coherence_kappa_mean'])}"
    )
    out["fine-tuned vs references"] = (
        f"the fine-tuned reconstruction's log10 loss {f['log10_loss']['mu']:.2f} "
        f"{'beats' if f['log10_loss']['mu'] < c['log10_loss']['mu'] else 'does NOT beat'} the constant predictor's "
        f"{c['log10_loss']['mu']:.2f} and {'beats' if better(f, al, 'log10_loss') else 'does NOT beat'} long Adam's "
        f"{al['log10_loss']['mu']:.2f}; its median chi2_nu {f['chi2_nu']['median']:.3g} against the constant "
        f"predictor's {c['chi2_nu']['median']:.3g} and long Adam's {al['chi2_nu']['median']:.3g} (1 = the noise)"
    )
    out["scale"] = (
        "a demo-scale model trained for minutes on a CPU, far from the paper's 10 GPU-days: the numbers show whether "
        "the pipeline learns, not the method's ceiling"
    )
    return out


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"
