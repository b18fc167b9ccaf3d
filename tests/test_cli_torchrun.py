"""`lens train rim` under torchrun, as a cluster user launches it: one process through the
distributed code path (DDP, gloo on a CPU; NCCL on a GPU in `nox -s gpu`), and two "nodes" that
meet through torchrun's c10d rendezvous, each compared with the plain command."""

import json
import os
import socket
import subprocess
import sys

import pytest
import torch
from lens_runner import LENS, requires_lens

pytestmark = [requires_lens, pytest.mark.slow]

TRAIN = (
    *("train", "rim", "--kappa", "sie", "--sources", "sersic", "--preset", "tiny", "--steps", 4),
    *("--batch-size", 2, "--learning-rate", 3e-3, "--log-every", 2, "--validation-size", 2),
)
# for comparisons across process counts: the gradient skip's zero-initialised output layer leaves
# the inner weights' first gradients near zero, where Adamax's normalised first step takes the sign
# of rounding, and two processes' averaged half-batches round differently from one whole batch
NO_SKIP = ("--gradient-skip", 0)
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}  # the same rounding in every process


def _launch(*args, lens_args=(), nodes: int = 1):
    """``torchrun ARGS lens TRAIN LENS_ARGS`` once per node, the nodes started together (each its
    own LENS_ARGS when given a list of them); their return codes and standard errors."""
    launcher = [sys.executable, "-m", "torch.distributed.run", *map(str, args)]
    per_node = lens_args if isinstance(lens_args, list) else [lens_args] * nodes
    procs = [
        subprocess.Popen(
            [*launcher, LENS, *map(str, TRAIN), *map(str, extra)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=ONE_THREAD,
        )
        for extra in per_node
    ]
    return [(p.returncode, err) for p, (_, err) in zip(procs, [p.communicate(timeout=300) for p in procs], strict=True)]


def _torchrun(*args, lens_args=(), nodes: int = 1):
    """:func:`_launch`, every node succeeding; their standard errors."""
    out = _launch(*args, lens_args=lens_args, nodes=nodes)
    # every node's code and standard error: a node's agent can fail because of another's
    report = "\n".join(f"--- node {i}: exit code {code}\n{err}" for i, (code, err) in enumerate(out))
    assert all(code == 0 for code, _ in out), report
    return [err for _, err in out]


def _rendezvous():
    endpoint = f"127.0.0.1:{_free_port()}"
    return ("--nnodes", 2, "--nproc-per-node", 1, "--rdzv-backend", "c10d", "--rdzv-endpoint", endpoint) + (
        "--rdzv-id",
        "lens-test",
        "--local-addr",
        "127.0.0.1",
    )


def _plain(output, *extra):
    return subprocess.run(
        [LENS, *map(str, (*TRAIN, *extra, "-o", output))], capture_output=True, text=True, env=ONE_THREAD, check=True
    )


def _weights(run_dir):
    return torch.load(run_dir / "checkpoint.pt", weights_only=True)["model"]


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_one_process_takes_the_distributed_path_and_equals_the_plain_command(tmp_path):
    plain = _plain(tmp_path / "plain")
    assert "distributed" not in plain.stderr
    (err,) = _torchrun("--standalone", "--nproc-per-node", 1, nodes=1, lens_args=("-o", tmp_path / "one"))
    assert "distributed: 1 process(es), gloo backend, global batch 2 (2 per process)" in err
    a, b = _weights(tmp_path / "plain"), _weights(tmp_path / "one")
    assert all(torch.equal(a[k], b[k]) for k in a)  # DDP over one process: the same bits


def test_two_nodes_through_the_c10d_rendezvous_equal_one_process(tmp_path):
    _plain(tmp_path / "plain", *NO_SKIP)
    errs = _torchrun(
        *_rendezvous(),
        nodes=2,
        lens_args=(*NO_SKIP, "-o", tmp_path / "two"),  # one output directory: a shared file system
    )
    first = [e for e in errs if "distributed:" in e]
    assert len(first) == 1 and "2 process(es), gloo backend, global batch 2 (1 per process)" in first[0]
    assert sum("training RIM" in e for e in errs) == 1  # rank 0 alone reports and writes
    a, b = _weights(tmp_path / "plain"), _weights(tmp_path / "two")
    # within 1 % of one Adamax step of the plain run's weights; a node that trained on the wrong
    # half of the batch, or whose gradients were not averaged, moves them by whole steps
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst < 0.01 * 3e-3, worst
    logged = [json.loads(line)["step"] for line in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    assert logged == [2, 4]  # once, by rank 0


def test_a_batch_that_the_processes_cannot_share_is_refused(tmp_path):
    endpoint = f"127.0.0.1:{_free_port()}"
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", "2"]
    launcher += ["--rdzv-backend", "c10d", "--rdzv-endpoint", endpoint, "--local-addr", "127.0.0.1"]
    args = [*map(str, TRAIN), "--batch-size", "3", "-o", str(tmp_path / "odd")]
    proc = subprocess.run([*launcher, LENS, *args], capture_output=True, text=True, env=ONE_THREAD, timeout=300)
    assert proc.returncode != 0 and "batch size 3 is not divisible by the 2 processes" in proc.stderr
    assert not (tmp_path / "odd").exists()


def test_the_gpu_sessions_torchrun_check_runs_on_a_cpu(tmp_path, capsys, monkeypatch):
    """`nox -s gpu`'s check of the multi-GPU path (torchrun, one process, NCCL), here with gloo."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_session.py"
    spec = importlib.util.spec_from_file_location("gpu_session", path)
    session = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(session)
    monkeypatch.setenv("PATH", f"{Path(LENS).parent}{os.pathsep}{os.environ['PATH']}")
    assert session.torchrun_check(tmp_path, device="cpu")
    out = capsys.readouterr().out
    assert "distributed: 1 process(es), gloo backend" in out and "on cpu against the plain command" in out
    assert "passed" in out


def test_nodes_that_see_different_run_directories_are_refused_together(tmp_path):
    """Two nodes whose -o are not one shared directory (one holds a checkpoint at step 2, the other
    nothing) would train with different step counts and learning rates: all refuse, nothing written."""
    _plain(tmp_path / "resumed", *NO_SKIP, "--steps", 2)
    before = (tmp_path / "resumed" / "checkpoint.pt").read_bytes()
    nodes = [(*NO_SKIP, "-o", tmp_path / "resumed"), (*NO_SKIP, "-o", tmp_path / "fresh")]
    out = _launch(*_rendezvous(), lens_args=nodes)
    assert all(code != 0 for code, _ in out)
    # each process says why in one line (torchrun then reports the failed worker in its own words)
    for _, err in out:
        (line,) = [x for x in err.splitlines() if x.startswith("Error: ")]
        assert "would resume" in line and "from different steps (rank 0: " in line and ": 2" in line, line
        assert "put -o on a file system they share" in line
    assert (tmp_path / "resumed" / "checkpoint.pt").read_bytes() == before
    assert not (tmp_path / "fresh").exists()


def test_commands_that_run_in_one_process_refuse_several(tmp_path):
    """Launched as two processes (what torchrun or srun set), every command but `train rim` would
    repeat its job in each process and write the same files: refused in one line, nothing written."""
    several = {**ONE_THREAD, "WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1", "MASTER_ADDR": "127.0.0.1"}
    for args in (
        ("train", "vae", "--kind", "source", "--data", tmp_path / "s.h5", "-o", tmp_path / "vae"),
        ("simulate", "lenses", "--kappa", "sie", "--sources", "sersic", "-n", 2, "-o", tmp_path / "l.h5"),
        ("finetune", "--help"),
    ):
        proc = subprocess.run([LENS, *map(str, args)], capture_output=True, text=True, env=several)
        assert proc.returncode == 2, (args, proc.stderr)
        assert "runs in one process, but 2 were launched" in proc.stderr and "Traceback" not in proc.stderr
    assert not list(tmp_path.iterdir())
    alone = subprocess.run([LENS, "simulate", "lenses", "--help"], capture_output=True, text=True, env=ONE_THREAD)
    assert alone.returncode == 0
