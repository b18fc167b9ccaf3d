"""Where the demo's RIM training stops, and what keeping its best-validated weights would buy
instead (issue 23, §3; ``docs/rim_ab.md``, the eleventh study).

A demo logs, every ``rim_log_every`` steps, the RIM's mean log10 loss on its validation lenses
(training lenses held out of training) and on its held-out test lenses (``ext_`` keys), each beside
the constant predictor's on the same lenses, and the test lenses' median chi2_nu. From the logs
of finished runs this script prints, per run, the test lenses' gain over the constant predictor
and median chi2_nu

- at the final step (what the demo reports),
- at the logged step whose validation loss was the lowest (the weights a best-validated
  checkpoint would keep: chosen without looking at the test lenses),
- over the last ``--last`` logs: their mean, spread and range (how much the reported gain depends
  on where training happens to stop).

Nothing is trained or evaluated again: it reads ``metrics.jsonl`` and ``config.json``.

    python docs/rim_stopping.py demo-out demo-seed1 ...     # lens demo directories (or their rim/)
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from pathlib import Path

KEYS = ("step", "val_log10_loss", "ext_log10_loss", "ext_constant_log10_loss", "ext_chi2_nu")
"""What each log line must hold (a demo's RIM logs every one of them)."""


def _finite_number(value: object) -> bool:
    """A JSON number that is finite: not a boolean (Python counts them as ints), NaN or infinity
    (which Python's json module reads without complaint)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def read_log(run: Path) -> tuple[list[dict], int]:
    """The log lines and the training batch of a demo directory or its ``rim`` run directory,
    read by lenscore's own readers (JSON only); anything else is refused in one line (SystemExit)."""
    from lenscore.runs import RunError, read_json, read_metrics

    rim = run / "rim" if (run / "rim").is_dir() else run
    try:
        rows = read_metrics(rim / "metrics.jsonl")
        batch = int(read_json(rim / "config.json")["batch_size"])
    except (OSError, RunError, KeyError, TypeError, ValueError) as e:
        raise SystemExit(f"{run}: not a finished demo's RIM with metrics.jsonl and config.json ({e})") from None
    if not rows:
        raise SystemExit(f"{rim / 'metrics.jsonl'}: holds no log line (training has not logged yet)")
    missing = sorted({k for r in rows for k in KEYS if not _finite_number(r.get(k))})
    if missing:
        raise SystemExit(
            f"{rim / 'metrics.jsonl'}: no finite number for {', '.join(missing)}"
            " (a demo's RIM logs its test lenses as ext_; a diverged run logs NaN)"
        )
    return rows, batch


def summary(rows: list[dict], last: int = 8) -> dict:
    """The test lenses' gain (constant predictor's mean log10 loss minus the RIM's) and median
    chi2_nu at the final log, at the log of the lowest validation loss (the first of equals), and
    the gains of the last ``last`` logs."""

    def at(r: dict) -> dict:
        return {
            "step": r["step"],
            "gain": r["ext_constant_log10_loss"] - r["ext_log10_loss"],
            "chi2_nu": r["ext_chi2_nu"],
        }

    best = min(rows, key=lambda r: r["val_log10_loss"])
    gains = [at(r)["gain"] for r in rows[-last:]]
    spread = statistics.stdev(gains) if len(gains) > 1 else 0.0
    return {"final": at(rows[-1]), "best_validation": at(best), "last": gains, "last_sd": spread}


def table(runs: dict[str, tuple[list[dict], int]], last: int) -> str:
    lines = [
        "| run | final step: gain / chi2_nu | best validation (step): gain / chi2_nu "
        f"| last {last} logs: gain mean, sd (range) |",
        "|---|---|---|---|",
    ]
    for name, (rows, batch) in runs.items():
        s = summary(rows, last)
        f, b, gains = s["final"], s["best_validation"], s["last"]
        lines.append(
            f"| {name} (batch {batch}, {f['step']} steps) | {f['gain']:+.3f} / {f['chi2_nu']:.2f} "
            f"| {b['gain']:+.3f} / {b['chi2_nu']:.2f} ({b['step']}) "
            f"| {statistics.fmean(gains):+.3f}, {s['last_sd']:.3f} ({min(gains):+.3f} to {max(gains):+.3f}) |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="lens demo directories (or their rim/ run directories)")
    parser.add_argument("--last", type=int, default=8, help="logs at the end of training to summarise (default 8)")
    args = parser.parse_args(argv)
    if args.last < 1:
        raise SystemExit(f"--last must be at least 1, got {args.last}")
    print(table({str(run): read_log(run) for run in args.runs}, args.last))


if __name__ == "__main__":
    sys.exit(main())
