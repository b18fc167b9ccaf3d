"""The study scripts under docs/ that the documentation's tables come from still run."""

import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from lens_runner import requires_lens, run

pytestmark = [requires_lens, pytest.mark.slow]

DOCS = Path(__file__).resolve().parents[1] / "docs"


def _table(stdout: str) -> dict[str, list[str]]:
    rows = [line.strip("|").split("|") for line in stdout.splitlines() if line.startswith("| ")]
    return {cells[0].strip(): [c.strip() for c in cells[1:]] for cells in rows if not cells[0].startswith(" method")}


def test_rim_sensitivity_measures_what_a_perturbation_moves(tmp_path):
    lenses = tmp_path / "lenses.h5"
    run("simulate", "lenses", "--kappa", "sie", "--sources", "sersic", "-n", 3, "--pixels", 32, "-o", lenses)
    run("train", "rim", "--data", lenses, "--preset", "tiny", "--steps", 2, "--batch-size", 1, "-o", tmp_path / "rim")

    def sensitivity(relative: float) -> dict[str, list[str]]:
        script = DOCS / "rim_sensitivity.py"
        args = ["--lenses", lenses, "--run", tmp_path / "rim", "--count", 3, "--relative", relative]
        proc = subprocess.run([sys.executable, script, *map(str, args)], capture_output=True, text=True, check=True)
        table = _table(proc.stdout)
        assert [k.split(",")[0] for k in table] == ["Adam", "Adam", f"RIM {tmp_path / 'rim'} (skip 0.03"]
        return table

    # the same observation twice: every method is deterministic, nothing moves
    for name, (largest, median, moved) in sensitivity(0.0).items():
        assert float(largest) == 0.0 and float(median) == 0.0 and moved == "0/3", name
    # a perturbation of 1 % of the peak moves every method's maps
    for name, (largest, _, _) in sensitivity(1e-2).items():
        assert float(largest) > 1e-4, name
    # lenses on another grid than the RIM's: refused in one line, before any work
    other = tmp_path / "other.h5"
    run("simulate", "lenses", "--kappa", "sie", "--sources", "sersic", "-n", 1, "--pixels", 64, "-o", other)
    args = ["--lenses", other, "--run", tmp_path / "rim"]
    proc = subprocess.run(
        [sys.executable, DOCS / "rim_sensitivity.py", *map(str, args)], capture_output=True, text=True
    )
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and "64" in proc.stderr and "32" in proc.stderr


def test_fit_degeneracy_compares_the_fit_and_the_truth_of_each_method(tmp_path):
    lenses = tmp_path / "lenses.h5"
    run("simulate", "lenses", "--kappa", "sie", "--sources", "sersic", "-n", 3, "--pixels", 32, "-o", lenses)
    run("train", "rim", "--data", lenses, "--preset", "tiny", "--steps", 2, "--batch-size", 1, "-o", tmp_path / "rim")
    args = ["--lenses", lenses, "--run", tmp_path / "rim"]
    proc = subprocess.run(
        [sys.executable, DOCS / "fit_degeneracy.py", *map(str, args)], capture_output=True, text=True, check=True
    )
    rows = {
        name.split(" (")[0].split(", 7")[0]: [float(x) for x in cells] for name, cells in _table(proc.stdout).items()
    }
    constant = rows["constant predictor"]
    with_truth = rows["the source alone, kappa held at the truth"]
    assert with_truth[3] == float("-inf")  # the true kappa: no kappa error
    # 7 source gradients through the true kappa fit better than the empty model image and find a better source
    assert with_truth[0] < constant[0] and with_truth[2] < constant[2]
    # through the constant predictor's kappa the source fits better too, while kappa stays the constant's
    held = rows["the source alone, kappa held at the constant predictor's"]
    assert held[0] < constant[0] and held[3] == constant[3]
    assert f"RIM {tmp_path / 'rim'}" in rows
    # a wrong count of gradients: one line, no traceback
    proc = subprocess.run(
        [sys.executable, DOCS / "fit_degeneracy.py", "--lenses", str(lenses), "--gradients", "0"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode != 0 and "--gradients" in proc.stderr and "Traceback" not in proc.stderr
    # a lens file that is not there, and a run directory that is not a run: one line each, no traceback
    for args in (["--lenses", tmp_path / "missing.h5"], ["--lenses", lenses, "--run", tmp_path]):
        proc = subprocess.run(
            [sys.executable, DOCS / "fit_degeneracy.py", *map(str, args)], capture_output=True, text=True
        )
        assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
        assert proc.stderr.strip().count("\n") == 0 and str(args[-1]) in proc.stderr


def test_rim_fit_frontier_names_the_demo_data_its_arms_ran_on(tmp_path):
    sys.path.insert(0, str(DOCS))
    try:
        import rim_fit_frontier as frontier
    finally:
        sys.path.remove(str(DOCS))
    import json

    study, other, reseeded = tmp_path / "study", tmp_path / "other", tmp_path / "reseeded"
    for d, halos, seed in ((study, (10, 16), 0), (other, (40, 4), 0), (reseeded, (40, 4), 2)):
        d.mkdir()
        config = {"halos": halos[0], "maps_per_halo": halos[1]}
        (d / "demo.json").write_text(json.dumps({"config": config, "seed": seed}))
    assert frontier.data_of(study) == ""
    assert frontier.data_of(other) == ", on 40 halos (4 maps each)"
    assert frontier.data_of(reseeded) == ", on 40 halos (4 maps each), demo seed 2"  # other halos and lenses
    # the same arm on other data, with another seed or on another machine is another entry:
    # none overwrites the study's
    names = {
        frontier.entry("a", 0),
        frontier.entry("a", 0, frontier.data_of(other)),
        frontier.entry("a", 1),
        frontier.entry("a", 1, frontier.data_of(reseeded), "AMD EPYC"),
    }
    assert names == {
        "a",
        "a, on 40 halos (4 maps each)",
        "a, seed 1",
        "a, on 40 halos (4 maps each), demo seed 2, seed 1, AMD EPYC",
    }
    with pytest.raises(SystemExit, match="no readable demo.json"):
        frontier.data_of(tmp_path / "missing")


def test_rim_fit_frontier_arms_start_from_the_demo_as_the_study_began():
    """An arm means the same whatever the demo's defaults are now: every setting the study's
    arms vary is pinned by BEFORE, and the RIMConfig fields the demo sets itself reach the RIM
    through the demo's fields."""
    sys.path.insert(0, str(DOCS))
    try:
        import rim_fit_frontier as frontier
    finally:
        sys.path.remove(str(DOCS))
    import lensrim
    from lensrim import demo

    demo_fields, rim, spec = frontier.arm_settings("the demo before (fit 0.01)")
    assert spec is None and rim == {"gradient_skip": 0.0, "skip_normalisation": "pixel"}
    assert demo_fields == {
        "rim_fit_weight": 0.01,
        "rim_fit_kappa": 1.0,
        "rim_batch": 4,
        "rim_steps": 600,
        "rim_bf16": False,
        "rim_float32_batch": None,
    }
    demo_fields, rim, _ = frontier.arm_settings("gradient skip 0.03, fit 0.02, bf16, batch 8, 800 steps")
    assert demo_fields["rim_float32_batch"] is None  # batch 8 on a CPU without native bfloat16 too
    assert rim["gradient_skip"] == 0.03
    config = replace(demo.PRESETS["standard"], **demo_fields)
    assert (config.rim_bf16, config.rim_batch, config.rim_steps, config.rim_fit_kappa) == (True, 8, 800, 1.0)
    _, rim, _ = frontier.arm_settings("gradient skip 0.03, fit 0.02, bf16, batch 8, 800 steps, at most 64 channels")
    assert rim["max_filters"] == 64  # a RIMConfig field, set through the demo's preset
    for name in frontier.ARMS:  # every arm's fields are the demo's or the RIM's
        demo_fields, rim, _ = frontier.arm_settings(name)
        replace(demo.PRESETS["standard"], **demo_fields)
        replace(lensrim.PRESETS["small"], **rim)


def test_rim_fit_frontier_study_losses_add_the_term_they_name():
    sys.path.insert(0, str(DOCS))
    try:
        import rim_fit_frontier as frontier
    finally:
        sys.path.remove(str(DOCS))
    import torch

    import lenssim
    from lensrim import training
    from lensrim.model import rim_loss_terms

    class Fixed(torch.nn.Module):  # a "RIM" whose T estimates are one fixed tensor
        def __init__(self, estimates):
            super().__init__()
            self.estimates = torch.nn.Parameter(estimates)

        def forward(self, y, physics):
            return self.estimates

    original = training._batch_terms
    obs = lenssim.ObservationConfig.at_resolution(32)
    lenses = lenssim.simulate_sie_lenses(3, config=obs, generator=torch.Generator().manual_seed(3))
    batch = training.as_batch(lenses)
    physics_of = training.LensingOf(obs.image_fov, obs.source_fov)

    def chi2(source, log10_kappa):  # independently: the residual over the noise
        image = lenssim.lens_image(source, 10**log10_kappa, psf=batch["psf"])
        sigma = batch["noise_sigma"].reshape(-1, 1, 1, 1)
        return ((batch["observation"] - image) / sigma).pow(2).mean(dim=(1, 2, 3))

    truth_xi = torch.log10(batch["kappa"])
    wrong_xi = truth_xi + 0.2 * torch.linspace(-1, 1, 32)[None, None, :, None]  # a tilted kappa
    no_source = torch.zeros_like(batch["source"])
    models = {
        "truth kappa, no source": Fixed(torch.cat([no_source, truth_xi], 1)[None].repeat(2, 1, 1, 1, 1)),
        "tilted kappa, no source": Fixed(torch.cat([no_source, wrong_xi], 1)[None].repeat(2, 1, 1, 1, 1)),
    }

    def loss(model):
        return float(training._batch_terms(models[model], batch, physics_of)[0].detach())

    base = {k: loss(k) for k in models}

    def added(spec, model, steps=4):
        with frontier.study_loss(spec, steps):
            return loss(model) - base[model]

    # the true source through the RIM's kappa: about the noise (chi2_nu ~ 1, no term) at the true kappa,
    # whatever the RIM's source; through a tilted kappa the term the independent chi2_nu gives
    assert chi2(batch["source"], truth_xi).sub(1).abs().max() < 0.2
    assert abs(added({"true_source_fit": 0.1}, "truth kappa, no source")) < 0.1 * 0.2
    expected = 0.1 * torch.log(chi2(batch["source"], wrong_xi)).clamp_min(0).mean()
    assert expected > 0.05
    assert added({"true_source_fit": 0.1}, "tilted kappa, no source") == pytest.approx(float(expected), rel=1e-4)

    # the ramp: the RIM's own fit (no source: far from the noise), weighted 0, 1/4, ..., 1, 1 of w
    own = float(torch.log(chi2(no_source, truth_xi)).clamp_min(0).mean())
    assert own > 1
    with frontier.study_loss({"fit_ramp": 0.2}, 4):
        got = []
        for step in range(6):
            got.append(loss("truth kappa, no source"))
            if step == 1:
                with torch.no_grad():  # validation between steps: no term, and not a training step
                    assert loss("truth kappa, no source") == pytest.approx(base["truth kappa, no source"], rel=1e-6)
    ramp = [g - base["truth kappa, no source"] for g in got]
    assert ramp == pytest.approx([0.2 * own * w for w in (0, 0.25, 0.5, 0.75, 1, 1)], rel=1e-4, abs=1e-6)

    # the source term x10: eq. 7 (uniform over the steps for a model without a config) gains 9 source terms
    est = models["tilted kappa, no source"].estimates.detach()
    ls, lk = rim_loss_terms(est, batch["source"], batch["kappa"].clamp_min(1e-6))
    assert added({"source_weight": 10.0}, "tilted kappa, no source") == pytest.approx(float(9 * ls.mean()), rel=1e-4)

    # each leaves lensrim as it found it, and an unknown loss is refused in one line
    assert training._batch_terms is original and training.rim_loss_terms is rim_loss_terms
    with pytest.raises(SystemExit, match="unknown study loss 'x'"), frontier.study_loss({"x": 1.0}, 4):
        pass


def test_rim_stopping_reads_the_final_and_the_best_validated_step_from_a_demos_log(tmp_path):
    import json

    rim = tmp_path / "demo" / "rim"
    rim.mkdir(parents=True)
    (rim / "config.json").write_text(json.dumps({"batch_size": 4}))
    # validation lowest at step 50 (the first of two equals), the test lenses' best at step 75
    val = [-1.0, -1.3, -1.2, -1.3, -1.1]
    ext = [-1.1, -1.2, -1.4, -1.3, -1.25]
    chi2 = [9.0, 5.0, 4.0, 3.0, 2.5]
    rows = [
        {
            "step": 25 * (i + 1),
            "val_log10_loss": v,
            "ext_log10_loss": e,
            "ext_constant_log10_loss": -0.9,
            "ext_chi2_nu": c,
        }
        for i, (v, e, c) in enumerate(zip(val, ext, chi2, strict=True))
    ]
    (rim / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    proc = subprocess.run(
        [sys.executable, DOCS / "rim_stopping.py", tmp_path / "demo", "--last", "3"],
        capture_output=True,
        text=True,
        check=True,
    )
    ((name, cells),) = [(k, v) for k, v in _table(proc.stdout).items() if k != "run"]  # the header's first cell
    assert name == f"{tmp_path / 'demo'} (batch 4, 125 steps)"
    final, best, last = cells
    assert final == "+0.350 / 2.50"  # -0.9 - (-1.25)
    assert best == "+0.300 / 5.00 (50)"  # not the test lenses' best (step 75, +0.500)
    assert last == "+0.417, 0.076 (+0.350 to +0.500)"  # 0.5, 0.4, 0.35: mean 0.4167, sample sd 0.0764

    # a log without the test lenses (not a demo's RIM) is refused in one line, naming what is missing
    (rim / "metrics.jsonl").write_text(json.dumps({"step": 25, "val_log10_loss": -1.0}) + "\n")
    proc = subprocess.run([sys.executable, DOCS / "rim_stopping.py", rim], capture_output=True, text=True)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1
    assert "ext_chi2_nu, ext_constant_log10_loss, ext_log10_loss" in proc.stderr
    # a value that is not a finite number (a string, a boolean, NaN from a diverged run), and a
    # malformed line before the last: each refused in one line
    bad_value = json.dumps({**rows[0], "ext_chi2_nu": "nan?"}) + "\n"
    cases = [(bad_value, "no finite number for ext_chi2_nu"), ("{oops\n" + bad_value, "line 1")]
    for key, value in (("val_log10_loss", True), ("ext_log10_loss", float("nan"))):
        cases.append((json.dumps({**rows[0], key: value}) + "\n", f"no finite number for {key}"))
    for text, says in cases:
        (rim / "metrics.jsonl").write_text(text)
        proc = subprocess.run([sys.executable, DOCS / "rim_stopping.py", rim], capture_output=True, text=True)
        assert proc.returncode != 0 and proc.stderr.count("\n") == 1 and says in proc.stderr, proc.stderr


def test_noise_auto_measures_the_simulated_sigmas_of_the_lenses(tmp_path):
    demo = tmp_path / "demo"
    lenses = demo / "lenses-test.h5"
    run("simulate", "lenses", "--kappa", "sie", "--sources", "sersic", "-n", 3, "--pixels", 32, "-o", lenses)
    run("train", "rim", "--data", lenses, "--preset", "tiny", "--steps", 2, "--batch-size", 1, "-o", demo / "rim")
    proc = subprocess.run(
        [sys.executable, DOCS / "noise_auto.py", str(demo)], capture_output=True, text=True, check=True
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("lens ")]
    assert len(lines) == 3
    for line in lines:  # each sigma measured to within 15 % on 32^2 pixels
        ratio = float(line.split("(x")[1].split(")")[0])
        assert 0.85 < ratio < 1.15, line
    assert "measured / simulated sigma:" in proc.stdout.splitlines()[-1]
