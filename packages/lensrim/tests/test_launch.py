"""A training run resolved from its settings (lensrim.launch): a preset with the options given, a
resumed run's own schedule and training options, Table 7's second stage, and refusals that name
the setting at fault."""

import json
from dataclasses import replace

import pytest
from conftest import sie_lenses

import lenssim
from lenscore.config import SettingError
from lensrim import PRESETS
from lensrim.launch import prepare_training, resolve_config, run_preset


def test_a_fresh_run_is_the_preset_with_the_options_given(tmp_path):
    config = resolve_config(tmp_path / "run", "tiny", batch_size=2, fit_weight=0.5, beta2=None, staircase=True)
    assert config == replace(PRESETS["tiny"], batch_size=2, fit_weight=0.5, staircase=True)
    with pytest.raises(TypeError, match="unknown training options"):
        resolve_config(tmp_path / "run", "tiny", not_an_option=1)


def test_a_resumed_run_keeps_its_schedule_and_training_options_unless_given_again(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    other = 0.5 if PRESETS["tiny"].fit_kappa != 0.5 else 0.25
    stored = replace(
        PRESETS["tiny"], learning_rate=3e-4, train_steps=40, fit_weight=0.2, time_weights="linear", fit_kappa=other
    )
    (run / "config.json").write_text(stored.to_json())
    resumed = resolve_config(run, "tiny")
    assert (resumed.learning_rate, resumed.train_steps, resumed.fit_weight, resumed.time_weights) == (
        3e-4,
        40,
        0.2,
        "linear",
    )
    assert resumed.fit_kappa == other
    again = resolve_config(run, "tiny", steps=80, fit_weight=0.0)
    assert (again.train_steps, again.fit_weight, again.learning_rate) == (80, 0.0, 3e-4)
    (run / "config.json").write_text(json.dumps({"model": "VAE"}))
    with pytest.raises(SettingError, match="not a RIM configuration") as e:
        resolve_config(run, "tiny")
    assert e.value.param == "output"


def test_a_resume_that_names_no_preset_keeps_the_runs(tmp_path):
    run = tmp_path / "run"
    assert run_preset(run) == "small" and resolve_config(run) == PRESETS["small"]  # a new run
    run.mkdir()
    (run / "config.json").write_text(replace(PRESETS["tiny"], batch_size=2).to_json())
    (run / "run.json").write_text(json.dumps({"preset": "tiny", "seed": 0}))
    assert run_preset(run) == "tiny" and run_preset(run, "small") == "small"
    assert resolve_config(run) == replace(PRESETS["tiny"], batch_size=2)
    assert resolve_config(run, "small").filters == PRESETS["small"].filters  # named: refused by check_run
    (run / "run.json").write_text(json.dumps({"seed": 0}))  # a run that did not record its preset
    assert run_preset(run) == "small"


def test_a_second_stage_needs_a_checkpoint(tmp_path):
    with pytest.raises(SettingError, match="no checkpoint to continue") as e:
        resolve_config(tmp_path / "run", "tiny", second_stage=True)
    assert e.value.param == "second_stage"


def test_a_second_stage_keeps_the_training_options_and_resumes_as_begun(tmp_path):
    from lenscore.runs import save_checkpoint
    from lensrim import RIM

    run = tmp_path / "run"
    run.mkdir()
    first = replace(PRESETS["tiny"], train_steps=40, fit_weight=0.7, time_weights="linear")
    (run / "config.json").write_text(first.to_json())
    model = RIM(first)

    def checkpoint(step):
        save_checkpoint(run, {"model": model.state_dict(), "optimizer": {}, "step": step})

    checkpoint(40)
    second = resolve_config(run, "tiny", second_stage=True, steps=10)
    assert second == first.second_stage(40, 10)  # the first stage's options, Table 7's schedule
    (run / "config.json").write_text(second.to_json())
    checkpoint(45)  # preempted at step 45
    # the same command again (a requeued job) resumes the stage begun at 40: same schedule, same end
    assert resolve_config(run, "tiny", second_stage=True, steps=10) == second
    assert resolve_config(run, "tiny", second_stage=True, steps=20) == first.second_stage(40, 20)
    assert resolve_config(run, "tiny") == second  # a plain resume continues it too


def test_a_resumed_run_keeps_its_batch_bf16_and_checkpointing_unless_given_again(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    stored = replace(PRESETS["tiny"], batch_size=8, bf16=True, activation_checkpointing=True)
    (run / "config.json").write_text(stored.to_json())
    for second_stage in (False, True):
        if second_stage:
            (run / "checkpoint.pt").write_bytes(b"")  # never read: the stage's start is the config's
            (run / "config.json").write_text(replace(stored, schedule_start=100).to_json())
        resumed = resolve_config(run, "tiny", second_stage=second_stage)
        assert (resumed.batch_size, resumed.bf16, resumed.activation_checkpointing) == (8, True, True)
    given = resolve_config(run, "tiny", batch_size=2, bf16=False, activation_checkpointing=False)
    assert (given.batch_size, given.bf16, given.activation_checkpointing) == (2, False, False)
    fresh = resolve_config(tmp_path / "fresh", "tiny")
    assert (fresh.batch_size, fresh.bf16, fresh.activation_checkpointing) == (PRESETS["tiny"].batch_size, False, False)


def test_validation_lenses_on_another_geometry_are_refused_naming_the_setting(tmp_path):
    lenses = sie_lenses(4, pixels=32)
    attrs = {"image_fov": 7.69, "source_fov": 3.0, "z_lens": 0.5, "z_source": 1.5}
    lenssim.write_lens_dataset(tmp_path / "train.h5", lenses, **attrs)
    lenssim.write_lens_dataset(tmp_path / "wide.h5", lenses, **{**attrs, "image_fov": 9.0})
    plan = prepare_training(
        tmp_path / "run", preset="tiny", data=tmp_path / "train.h5", validation=tmp_path / "train.h5"
    )
    assert plan.validation.observation.shape == (4, 1, 32, 32) and plan.start == 0
    assert plan.metadata["data"] == str(tmp_path / "train.h5") and plan.config.image_fov == 7.69
    with pytest.raises(SettingError, match="image_fov 9 differs from the training lenses' 7.69 arcsec") as e:
        prepare_training(tmp_path / "run", preset="tiny", data=tmp_path / "train.h5", external=tmp_path / "wide.h5")
    assert e.value.param == "external"
    with pytest.raises(SettingError, match="neither a number nor 'auto'"):
        prepare_training(tmp_path / "run", preset="tiny", data=tmp_path / "train.h5", initial_log10_kappa="x")


def test_vae_lenses_beside_a_dataset_are_simulated_on_its_grid_and_unfit_vaes_are_refused(tmp_path):
    import lensprior

    lenses = sie_lenses(4, pixels=32)
    attrs = {"image_fov": 6.0, "source_fov": 2.5, "z_lens": 0.5, "z_source": 1.5}  # not Table 1's fields
    lenssim.write_lens_dataset(tmp_path / "train.h5", lenses, **attrs)
    tiny = dict(pixels=32, levels=2, filters=4, latent_dim=4, batch_size=4, steps=2)

    def vae(kind, name, **fields):
        config = (lensprior.source_vae_config if kind == "source" else lensprior.kappa_vae_config)(**tiny)
        maps = lenses["source"] if kind == "source" else lenses["kappa"]
        lensprior.train_vae(config, maps, tmp_path / name, metadata={"data_attrs": {**attrs, **fields}})
        return tmp_path / name

    svae, kvae = vae("source", "svae"), vae("kappa", "kvae")
    common = dict(preset="tiny", data=tmp_path / "train.h5", initial_log10_kappa=0.0)
    plan = prepare_training(tmp_path / "run", kappa_vae=kvae, source_vae=svae, vae_fraction=0.5, **common)
    # the VAE-drawn half of each batch is simulated on the dataset's fields, which the RIM takes
    assert plan.batches.extra.attrs == {"image_fov": 6.0, "source_fov": 2.5}
    assert (plan.config.image_fov, plan.config.source_fov) == (6.0, 2.5)
    cases = (
        (dict(kappa_vae=svae, source_vae=svae), "kappa_vae", "expected a kappa VAE, got a source VAE"),
        (dict(kappa_vae=kvae, source_vae=kvae), "source_vae", "expected a source VAE, got a kappa VAE"),
        (dict(kappa_vae=vae("kappa", "k769", image_fov=7.69)), "kappa_vae", "image_fov 7.69, the RIM on 6 arcsec"),
        (dict(source_vae=vae("source", "s3", source_fov=3.0)), "source_vae", "source_fov 3, the RIM on 2.5 arcsec"),
    )
    for vaes, param, message in cases:
        with pytest.raises(SettingError, match=message) as e:
            prepare_training(tmp_path / "other", **vaes, **common)
        assert e.value.param == param
    assert not (tmp_path / "other").exists()


def test_a_finished_rank_leaves_with_its_code_and_its_output_flushed():
    import subprocess
    import sys

    code = "import sys; from lensrim.launch import leave_distributed; print('done', end=''); "
    code += "sys.stderr.write('said'); import atexit; atexit.register(print, 'teardown'); leave_distributed(3)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    # buffered output written, the code kept, and no interpreter teardown (atexit never runs)
    assert (proc.returncode, proc.stdout, proc.stderr) == (3, "done", "said")
