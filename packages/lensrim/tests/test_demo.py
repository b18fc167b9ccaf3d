"""The demo is a library call: a notebook runs it, sees its stages through ``say``, gets the
verdict and the report, and a directory of another run is refused."""

import json

import pytest

from lensrim.demo import PRESETS, STAGES, DemoError, run_demo


@pytest.mark.slow
def test_the_quick_demo_runs_from_python(tmp_path):
    lines = []
    result = run_demo(tmp_path / "demo", PRESETS["quick"], seed=3, say=lines.append)
    headers = [line for line in lines if line.startswith("[")]
    assert headers == [f"[{i + 1}/{len(STAGES)}] {name}" + headers[i][len(f"[{i + 1}/{len(STAGES)}] {name}") :]
                       for i, name in enumerate(STAGES)]  # fmt: skip
    metrics = json.loads((tmp_path / "demo" / "report" / "metrics.json").read_text())
    assert set(metrics["references"]) == {"constant_predictor", "adam_same_gradients", "adam_long"}
    assert result["verdict"]["RIM vs constant predictor"].startswith("the RIM ")
    assert (tmp_path / "demo" / "report" / "index.html").is_file()
    with pytest.raises(DemoError, match="other settings"):
        run_demo(tmp_path / "demo", PRESETS["quick"], seed=4, say=lines.append)
