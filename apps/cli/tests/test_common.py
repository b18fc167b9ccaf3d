import click
import pytest
import torch
from click.testing import CliRunner

from lens_cli.common import one_line_errors, resolve_device


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(click.BadParameter, match="not a device"):
        resolve_device("gpu!")
    with pytest.raises(click.BadParameter, match="only 'cpu' and 'cuda'"):
        resolve_device("meta")
    if not torch.cuda.is_available():
        with pytest.raises(click.BadParameter, match="no GPU"):
            resolve_device("cuda")


def test_library_errors_become_one_line_click_errors():
    @one_line_errors
    def f():
        raise ValueError("kappa must be positive\nmore detail")

    with pytest.raises(click.ClickException) as e:
        f()
    assert e.value.message == "kappa must be positive"


def test_a_simulation_the_options_make_impossible_is_one_line_but_a_bug_is_shown_in_full():
    import lenssim

    @one_line_errors
    def impossible():
        raise lenssim.SimulationError("only 0 of 4 lenses passed the acceptance checks in 200 tries")

    with pytest.raises(click.ClickException) as e:
        impossible()
    assert e.value.message.startswith("only 0 of 4 lenses")

    @one_line_errors
    def bug():
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")  # torch's, from a real fault

    with pytest.raises(RuntimeError, match="mat1"):  # not swallowed into a one-line message
        bug()


def test_help_does_not_wait_for_torch():
    # `lens --help` must answer at once: the command modules import torch only when they run
    import subprocess
    import sys

    code = "import sys, lens_cli.main; from click.testing import CliRunner; "
    code += "r = CliRunner().invoke(lens_cli.main.cli, ['--help']); assert r.exit_code == 0 and 'demo' in r.output; "
    code += "print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "1e400"])
def test_finite_float_options_refuse_nan_and_infinity(value):
    from lens_cli.common import FiniteFloat

    @click.command()
    @click.option("--rate", type=FiniteFloat())
    def cmd(rate):
        click.echo(rate)

    result = CliRunner().invoke(cmd, ["--rate", value])
    assert result.exit_code == 2 and "is not a finite number" in result.output
    assert CliRunner().invoke(cmd, ["--rate", "0.5"]).output == "0.5\n"


def test_durations_read_as_a_person_would_say_them():
    from lens_cli.common import duration

    assert [duration(s) for s in (40, 720, 3.5 * 3600, 3 * 86400)] == ["40 s", "12 min", "3.5 h", "3.0 days"]


def test_cost_estimate_prints_once_from_the_steps_after_the_first(capsys, monkeypatch):
    from lens_cli import common

    # times after each step: the first step's warm-up happened before the first call; 2 s per step after it
    clock = iter([100.0, 102.0, 104.0, 106.0, 108.0])
    monkeypatch.setattr(common.time, "perf_counter", lambda: next(clock))
    estimate = common.CostEstimate(1000, "step", "--steps sets fewer", after=3)
    for done in range(1, 6):
        estimate(done)
    err = capsys.readouterr().err
    assert err.count("s per step") == 1
    assert "2 s per step here: the 996 left take about 33 min (--steps sets fewer)" in err

    # a job that ends within the sample: nothing left, nothing to estimate
    clock = iter([100.0, 102.0, 104.0])
    short = common.CostEstimate(3, "step", after=3)
    for done in range(1, 4):
        short(done)
    assert "s per step" not in capsys.readouterr().err


def test_idle_cores_leaves_out_a_core_another_job_keeps_busy():
    import os
    import subprocess
    import sys
    import time

    from lens_cli.main import idle_cores

    cores = len(os.sched_getaffinity(0))
    assert 1 <= idle_cores(0.2) <= cores
    if cores < 2:
        pytest.skip("needs two cores")
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)
        assert idle_cores(1.0) <= cores - 1
    finally:
        busy.kill()
        busy.wait()


def test_every_command_and_option_has_help():
    from lens_cli.main import cli

    def walk(cmd, path):
        if isinstance(cmd, click.Group):
            for name, sub in cmd.commands.items():
                yield from walk(sub, [*path, name])
        yield path, cmd

    missing = [
        f"{' '.join(path)} {'/'.join(p.opts)}"
        for path, cmd in walk(cli, ["lens"])
        for p in cmd.params
        if isinstance(p, click.Option) and not p.help
    ]
    assert not missing, missing
    assert all(cmd.help for _, cmd in walk(cli, ["lens"]))
    # what `lens --help` says: every command that computes takes --seed and --device, all but evaluate
    leaves = {" ".join(path[1:]): cmd for path, cmd in walk(cli, ["lens"]) if not isinstance(cmd, click.Group)}
    without = sorted(name for name, cmd in leaves.items() if not {"seed", "device"} <= {p.name for p in cmd.params})
    assert without == ["evaluate"] and "(evaluate only reads a reconstruction)" in " ".join(cli.help.split())


def test_option_defaults_are_the_library_defaults():
    # the CLI reads them from the torch-free config modules (lensrim.config, lensprior.config);
    # this holds each option to the field it stands for
    from dataclasses import fields

    import lensprior
    import lensrim
    from lens_cli.finetune import finetune
    from lens_cli.priors import train

    options = {p.name: p.default for p in finetune.params}
    names = {
        "ewc_lambda": "ewc_lambda",
        "fisher_samples": "fisher_samples",
        "latent_sigma": "latent_sigma",
        "learning_rate": "learning_rate",
        "max_steps": "max_steps",
        "target_chi2": "target_chi2_nu",
        "fisher_chunk": "fisher_chunk",
    }
    library = {f.name: f.default for f in fields(lensrim.FineTuneConfig)}
    assert {opt: options[opt] for opt in names} == {opt: library[field] for opt, field in names.items()}
    # the denoiser's default None (a resumed run's value, else the library's) and its help names the library's
    denoiser = {p.name: p for p in train.commands["denoiser"].params}
    library = {f.name: f.default for f in fields(lensprior.DenoiserConfig)}
    for k in ("steps", "noise_min", "noise_max", "highpass"):
        assert denoiser[k].default is None and f"(default: {library[k]:g}, or a resumed run's)" in denoiser[k].help


def test_preset_choices_are_the_registries():
    import lensrim
    from lens_cli.main import cli
    from lensrim.demo import PRESETS as DEMO_PRESETS

    rim_preset = next(p for p in cli.commands["train"].commands["rim"].params if p.name == "preset")
    assert set(rim_preset.type.choices) == set(lensrim.PRESETS)
    demo_preset = next(p for p in cli.commands["demo"].params if p.name == "preset")
    assert set(demo_preset.type.choices) == set(DEMO_PRESETS)
    import lensprior

    vae_preset = next(p for p in cli.commands["train"].commands["vae"].params if p.name == "preset")
    assert set(vae_preset.type.choices) == set(lensprior.VAE_PRESETS)


def test_options_that_mirror_a_config_field_carry_its_documentation_and_default():
    import lensrim
    from lens_cli.main import cli
    from lenscore.config import field_docs

    finetune = {p.name: p for p in cli.commands["finetune"].params}
    doc = field_docs(lensrim.FineTuneConfig)["ewc_lambda"]
    assert " ".join(doc.split()) == finetune["ewc_lambda"].help and "Table 3" in finetune["ewc_lambda"].help
    rim = {p.name: p for p in cli.commands["train"].commands["rim"].params}
    kept = "(default: the preset's, or a resumed run's)"  # a resume keeps its training options
    assert rim["fit_weight"].default is None and rim["fit_weight"].help.endswith(kept)
    assert rim["init"].help.endswith("(default: the preset's)")  # the model: a resume must match it
    assert "chi2_nu" in rim["fit_weight"].help


def test_warnings_print_as_one_line_each_and_the_display_comes_back(capsys):
    import warnings

    from lens_cli.common import warnings_as_lines
    from lens_cli.main import cli

    before = warnings.showwarning
    with warnings_as_lines():
        warnings.warn("x.fits: the PSF HDU sums to 0.9; renormalised to 1", stacklevel=1)
        warnings.warn("old name", DeprecationWarning, stacklevel=1)
    assert warnings.showwarning is before
    err = capsys.readouterr().err
    assert (
        err == "warning: x.fits: the PSF HDU sums to 0.9; renormalised to 1\nwarning (DeprecationWarning): old name\n"
    )

    @click.command("warn-once")
    def warn_once():
        warnings.warn("run/metrics.jsonl: dropped a half-written last line", stacklevel=1)

    cli.add_command(warn_once)
    try:
        result = CliRunner().invoke(cli, ["warn-once"])
    finally:
        cli.commands.pop("warn-once")
    assert result.exit_code == 0 and "warning: run/metrics.jsonl: dropped a half-written last line" in result.output
    assert "UserWarning" not in result.output and warnings.showwarning is before
