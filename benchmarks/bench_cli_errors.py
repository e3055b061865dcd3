"""How long a newcomer waits to hear about a mistake (printed, never asserted; issue target: < 2 s on
a quiet 2-core machine). Each command runs in a fresh process; the median of ``--repeats`` runs.

Run: ``python benchmarks/bench_cli_errors.py [--repeats 3]``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

MISTAKES = [
    ("unknown recipe", ["train", "baselin", "--data", ".", "--out", "x"]),
    ("misspelt --set key", ["train", "demo", "--data", ".", "--out", "x", "--set", "optim.weight_decy=1e-4"]),
    ("negative --epochs", ["train", "demo", "--data", ".", "--out", "x", "--epochs", "-1"]),
    ("missing --data", ["train", "demo", "--out", "x"]),
    ("data path not found", ["train", "demo", "--data", "/no/such/folder", "--out", "x"]),
    # names and params keys are checked against the registries, which imports torch and the model
    # modules (still before any data is read or anything trains)
    ("misspelt inference name", ["train", "full", "--data", ".", "--out", "x", "--set", "inference.name=cam_votin"]),
    ("misspelt params key", ["train", "full", "--data", ".", "--out", "x", "--set", "inference.params.thta=0.3"]),
    ("run folder not found", ["evaluate", "/no/such/run"]),
    ("model not found", ["predict", "/no/such/model", "scan.png"]),
    ("--help", ["--help"]),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    import sys

    here = Path(sys.executable).parent / "chestdx"  # the venv's script, beside this interpreter
    exe = str(here) if here.exists() else shutil.which("chestdx") or "chestdx"
    load = os.getloadavg()[0]
    print(f"load average at start: {load:.2f} (2 cores; figures are for a quiet machine only when it is low)")
    print("| mistake | exit status | median seconds to the message |\n|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for what, argv in MISTAKES:
            times, rc = [], None
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                rc = subprocess.run([exe, *argv], cwd=tmp, capture_output=True).returncode
                times.append(time.perf_counter() - t0)
            print(f"| {what} | {rc} | {statistics.median(times):.2f} |")


if __name__ == "__main__":
    main()
