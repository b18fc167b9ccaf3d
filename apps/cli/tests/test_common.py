import click
import pytest
import torch

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


def test_help_does_not_wait_for_torch():
    # `lens --help` must answer at once: the command modules import torch only when they run
    import subprocess
    import sys

    code = "import sys, lens_cli.main; from click.testing import CliRunner; "
    code += "r = CliRunner().invoke(lens_cli.main.cli, ['--help']); assert r.exit_code == 0 and 'demo' in r.output; "
    code += "print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
