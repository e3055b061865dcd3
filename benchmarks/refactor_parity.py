"""Refactor parity (issue 14): every output of the five methods, recorded before and after a refactor.

``record`` trains one tiny, fixed-seed run per method on phantom data, evaluates it, predicts a few
files and ensembles, and writes every number those steps output into one JSON file keyed
``method / step / case / field``; ``compare`` says, per method, how many values there are, the
largest absolute difference and PASS / FAIL (exit status 1 on any FAIL, on a missing or extra key,
or on a changed label / string).

It drives chestdx only through its command line (``chestdx.cli.main`` with the same argument lists
as ``chestdx synth / train / evaluate / predict / ensemble``), the one surface that keeps its shape
while modules move, so the same file runs unchanged on the code before and after the refactor.
Every command runs in this one process (one import of torch instead of twenty); the Python,
NumPy and torch random generators are reseeded before each command, so a command does not depend
on what ran before it (``--subprocess`` runs each in its own process instead, to check that).

What is recorded (all of it, so that a change anywhere shows):

- ``train``: every number in ``history.json`` (losses, metrics and logged objective parts per epoch);
- ``evaluate`` / ``evaluate_*``: every column of ``predictions.csv`` per case (class probabilities,
  predicted and true label, CAM-voting ``flipped`` and ``vote_p_*``), ``scans.csv`` where written,
  the per-image records of ``segmentation.json`` / ``localisation.json`` and every number of
  ``metrics.json`` (bootstrap intervals included: the bootstrap is seeded);
- ``predict*``: every field of each ``chestdx predict`` JSON line (probabilities, label, per-slice
  probabilities, voting details, lesion detections) except file paths;
- ``ensemble_*``: ``predictions.csv`` and ``metrics.json`` of ``chestdx ensemble`` (intra-model
  views of one run, and the inter-model mean of two runs).

Methods (recipes, shrunk by overrides to train in seconds, their distinguishing parts kept):
``slice_demo`` (demo), ``slice_snapmix_cpe`` (snapmix_cpe answered with cam_voting: the ``full``
recipe's procedure), ``cxr_magsd`` (magsd), ``sequence_att2`` (att2, then ``att2_bilstm`` on its
frozen encoder), ``volume_cmc`` (cmc_model4, intra-model ensemble, inter-model ensemble with a
cmc_model1 run), ``lesion_affinity`` (affinity_32).

Determinism: the script sets ``OMP_NUM_THREADS=MKL_NUM_THREADS=1``, ``CHESTDX_SPEED=fp32``,
``PYTHONHASHSEED=0`` (re-executing itself if needed) and a private ``CHESTDX_CACHE_DIR`` under the
work folder, so two recordings of the same code are identical (max difference 0).

Usage::

    python benchmarks/refactor_parity.py record OUT.json [--work DIR] [--only slice_demo,...]
    python benchmarks/refactor_parity.py compare BEFORE.json AFTER.json [--atol 1e-6]

To record the code of another checkout, put its ``src`` first on ``PYTHONPATH``; the JSON's
``meta.chestdx`` says which copy was imported. A method whose command fails (or raises) is recorded
with its error in ``meta.errors`` (traceback in the work folder's ``commands.log``) and the others
still run; ``record`` then exits 1 and ``compare`` fails that method. About 1 minute on an idle
core (2 on a busy one; ``--subprocess``: 4).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import math
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "CHESTDX_SPEED": "fp32",
       "PYTHONHASHSEED": "0", "CUDA_VISIBLE_DEVICES": ""}
"""Set before torch is imported: one thread (reductions in a fixed order), no measured execution mode,
no GPU (the recording is of the CPU's numbers), a fixed string hash (set iteration order)."""

# ---------------------------------------------------------------------------------------------------
# tiny overrides: the tests' (tests/conftest.py, tests/engine/test_*.py), 2 epochs each (a second epoch
# carries optimiser and scheduler state, the best-checkpoint choice and the logged history further)
# ---------------------------------------------------------------------------------------------------

DEMO_TINY = ["--set", "data.image_size=32", "--epochs", "2", "--batch-size", "8", "--set", "model.head_hidden=16"]
"""tests/conftest.py TINY."""

CAM_TINY = ["--image-size", "64", "--batch-size", "8", "--epochs", "2", "--backbone", "resnet18", "--weights", "none",
            "--set", "model.head_hidden=16", "--set", "optim.name=adam", "--lr", "1e-3"]
"""tests/conftest.py CAM_TINY (the cam-snapmix recipes: ResNet-50, 224 px, ImageNet -> seconds)."""

CAM_VOTING = ["--set", "inference.name=cam_voting", "--set", "inference.params={k: 31, theta: 0.2, cell: 8}"]
"""The ``full`` recipe's procedure (k = 31 masked copies, 8 x 8 cells, theta = 0.2) on snapmix_cpe."""

MAGSD_TINY = ["--backbone", "resnet18", "--weights", "none", "--image-size", "32", "--batch-size", "8",
              "--set", "model.params.num_maps=4", "--set", "optim.name=adam", "--set", "optim.lr=1e-3",
              "--set", "data.augment.rotate=0", "--set", "data.augment.vflip=0", "--epochs", "2"]
"""tests/engine/test_magsd_train.py MAGSD_TINY."""

_SEQ_AUGMENT = "{vflip: 0.0, rotate: 0, shear: 0, translate: 0.0, scale: [1.0, 1.0], blur_prob: 0.0}"
ATT2_TINY = ["--image-size", "32", "--batch-size", "16", "--set", f"data.augment={_SEQ_AUGMENT}",
             "--backbone", "resnet18", "--weights", "none", "--lr", "1e-3", "--epochs", "2",
             "--set", "trainer.limit_train_batches=null"]
"""tests/engine/test_att2_sequence.py SLICE_TINY."""

BILSTM_TINY = ["--image-size", "32", "--batch-size", "4", "--set", "data.sequence_length=8",
               "--set", "data.short_scans=repeat", "--set", f"data.augment={_SEQ_AUGMENT}",
               "--set", "model.head_hidden=8", "--epochs", "2"]
"""tests/engine/test_att2_sequence.py test_bilstm_on_frozen_att2_embeddings (plus the encoder)."""

TINY_3D = ["--backbone", "resnet18", "--weights", "none", "--set", "model.params.time_kernel=1",
           "--image-size", "32", "--set", "data.volume_depth=16", "--batch-size", "4",
           "--set", "mixing.params.depth=8", "--epochs", "2", "--accelerator", "cpu",
           "--set", "optim.scheduler=none"]
"""tests/engine/test_cmc_train.py TINY_3D."""

INTRA = json.dumps({"views": 3, "depth": 8, "seed": 4})
"""Intra-model ensemble parameters (tests/engine/test_cmc_train.py)."""

TINY_AFFINITY = ["--image-size", "64", "--batch-size", "4", "--set", "data.min_lesion_area=4", "--epochs", "2",
                 "--set", "trainer.limit_train_batches=2", "--backbone", "resnet18", "--set", "model.head_hidden=32",
                 "--set", "model.params={affinities: 32, roi_batch: 4, sieve_stages: 1, fpn_channels: 32, "
                 "mask_channels: 32, box_hidden: 64, rpn_pre_nms_top_n: [100, 50], rpn_post_nms_top_n: [50, 30], "
                 "rpn_batch_size_per_image: 32, box_batch_size_per_image: 32}",
                 "--lr", "1e-3", "--set", "optim.weight_decay=0"]
"""tests/engine/test_lesion_train.py TINY_AFFINITY, with the affinity_32 row's C' = 32 kept."""

N_BOOT = "20"
"""Bootstrap resamples of the recorded intervals (seeded; few, to stay fast)."""

# ---------------------------------------------------------------------------------------------------
# running CLI commands
# ---------------------------------------------------------------------------------------------------


class ParityError(Exception):
    """A step of a method did not give its outputs (the method is recorded as failed)."""


class Runner:
    """Runs ``chestdx`` commands (in this process, or each in a subprocess) and logs them."""

    def __init__(self, work: Path, log: Any, subprocess_mode: bool = False) -> None:
        self.work, self.log, self.subprocess_mode = work, log, subprocess_mode
        self.seconds: dict[str, float] = {}
        self.last = ""

    def __call__(self, *argv: str) -> None:
        argv_s = [str(a) for a in argv]
        self.last = f"chestdx {' '.join(argv_s)}"
        print(f"$ {self.last}", file=self.log, flush=True)
        t0 = time.perf_counter()
        if self.subprocess_mode:
            rc = subprocess.call([sys.executable, "-m", "chestdx.cli", *argv_s], stdout=self.log, stderr=self.log,
                                 env=os.environ.copy())
        else:
            rc = _in_process(argv_s, self.log)
        dt = time.perf_counter() - t0
        self.seconds[argv_s[0]] = self.seconds.get(argv_s[0], 0.0) + dt
        if rc != 0:
            raise ParityError(f"`chestdx {' '.join(argv_s)}` exited {rc}; see {self.log.name}")


def _reseed() -> None:
    """Every generator a command may draw from, as in a fresh process."""
    import numpy as np
    import torch

    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


def _in_process(argv: list[str], log: Any) -> int:
    from chestdx.cli import main

    _reseed()
    with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        try:
            return int(main(argv) or 0)
        except SystemExit as e:  # argparse errors
            return int(e.code or 0) if isinstance(e.code, int) else 2


# ---------------------------------------------------------------------------------------------------
# reading outputs into flat {case: {field: value}} tables
# ---------------------------------------------------------------------------------------------------

Value = float | int | str | bool | None
Table = dict[str, dict[str, Value]]


def _num(text: str) -> Value:
    """A CSV cell as a number where it is one, else the string."""
    try:
        v = float(text)
    except ValueError:
        return text
    return v if math.isfinite(v) else text


def _rel(path: str, work: Path) -> str:
    """A path from the outputs, relative to the work folder (stable between recordings)."""
    s = str(path)
    for root in (str(work.resolve()), str(work)):
        if s.startswith(root + os.sep):
            return s[len(root) + 1:]
    return s


def read_csv(path: Path, work: Path, key: str = "path", skip: tuple[str, ...] = ()) -> Table:
    """One case per row (keyed by ``key``, made unique by its row number where repeated)."""
    out: Table = {}
    with open(path, newline="", encoding="utf-8") as f:
        for i, row in enumerate(csv.DictReader(f)):
            case = _rel(row.get(key, str(i)), work)
            if case in out:
                case = f"{case}#{i}"
            out[case] = {k: _num(v) for k, v in row.items() if k != key and k not in skip}
    if not out:
        raise ParityError(f"{path} has no rows")
    return out


_SKIP_KEYS = ("seconds", "elapsed", "time", "date", "created", "version", "host", "duration")
"""Numbers that are about the machine, not the method."""


def flatten(obj: Any, work: Path, prefix: str = "", numbers_only: bool = False) -> dict[str, Value]:
    """Every leaf of a JSON value under a dotted key; paths made relative to the work folder."""
    out: dict[str, Value] = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            ks = _rel(str(k), work)
            if any(s in ks.lower() for s in _SKIP_KEYS):
                continue
            out.update(flatten(v, work, f"{prefix}{ks}.", numbers_only))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out.update(flatten(v, work, f"{prefix}{i}.", numbers_only))
    elif isinstance(obj, bool) or obj is None or isinstance(obj, int | float):
        out[prefix[:-1]] = obj
    elif not numbers_only:
        out[prefix[:-1]] = _rel(str(obj), work)
    return out


def read_metrics(path: Path, work: Path) -> Table:
    """Every number of a ``metrics.json`` (strings such as folders and recipe names left out)."""
    return {"metrics": flatten(json.loads(path.read_text(encoding="utf-8")), work, numbers_only=True)}


def read_history(run: Path, work: Path) -> Table:
    """Every number of ``history.json``, one case per epoch."""
    hist = json.loads((run / "history.json").read_text(encoding="utf-8"))
    if not hist:
        raise ParityError(f"{run}/history.json is empty")
    return {f"epoch{i}": flatten(row, work, numbers_only=True) for i, row in enumerate(hist)}


_PATH_FIELDS = ("file", "overlay", "attention_overlay", "source")


def read_predict(path: Path, work: Path) -> Table:
    """One case per ``chestdx predict`` JSON line (keyed by its input), every field but file paths."""
    out: Table = {}
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
        rec = json.loads(line)
        case = _rel(rec.get("file", str(i)), work)
        out[case] = flatten({k: v for k, v in rec.items() if k not in _PATH_FIELDS}, work)
    if not out:
        raise ParityError(f"{path} has no predictions")
    return out


def read_eval(folder: Path, work: Path) -> dict[str, Table]:
    """The steps of one evaluation folder: its predictions, metrics and any per-image records."""
    steps = {"predictions": read_csv(folder / "predictions.csv", work), "metrics": read_metrics(folder / "metrics.json", work)}
    if (folder / "scans.csv").is_file():
        steps["scans"] = read_csv(folder / "scans.csv", work, key="scan_id")
    for name in ("segmentation", "localisation"):
        f = folder / f"{name}.json"
        if f.is_file():
            data = json.loads(f.read_text(encoding="utf-8"))
            per_image = data.get("per_image") or []
            steps[name] = {_rel(str(r.get("path", i)), work) + f"#{i}": flatten(r, work)
                           for i, r in enumerate(per_image)}
            if not steps[name]:
                steps[name] = {"all": flatten(data, work, numbers_only=True)}
    return steps


def _test_files(run: Path, n: int = 3) -> list[str]:
    """The first ``n`` test files of a run (its ``samples.csv``), else of its data."""
    f = run / "samples.csv"
    with open(f, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    test = [r["path"] for r in rows if r.get("split") == "test"] or [r["path"] for r in rows]
    out: list[str] = []
    for p in test:
        if p not in out:
            out.append(p)
    return out[:n]


# ---------------------------------------------------------------------------------------------------
# the methods
# ---------------------------------------------------------------------------------------------------

Steps = dict[str, Table]


def _synth(cli: Runner, out: Path, *args: str) -> Path:
    if not (out / "manifest.csv").is_file():
        cli("synth", "--out", out, *args)
    return out / "manifest.csv"


def slice_data(cli: Runner, classes: int) -> Path:
    """tests/conftest.py phantom_slices (3 classes, seed 0) / phantom_binary (2 classes, seed 3)."""
    if classes == 3:
        return _synth(cli, cli.work / "data" / "slice3", "--kind", "slice", "--classes", "3", "--sites", "2",
                      "--patients", "5", "--slices-per-patient", "2", "--size", "64", "--seed", "0")
    return _synth(cli, cli.work / "data" / "slice2", "--kind", "slice", "--classes", "2", "--sites", "2",
                  "--patients", "6", "--slices-per-patient", "2", "--size", "64", "--seed", "3")


def _evaluate(cli: Runner, run: Path, name: str, *args: str) -> Steps:
    out = cli.work / "eval" / f"{run.name}-{name}"
    cli("evaluate", run, "--out", out, "--n-boot", N_BOOT, "--no-progress", *args)
    return {f"{name}/{k}": v for k, v in read_eval(out, cli.work).items()}


def _predict(cli: Runner, run: Path, name: str, inputs: list[str], *args: str) -> Steps:
    out = cli.work / "predict" / f"{run.name}-{name}.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    cli("predict", run, *inputs, "--out", out, "--no-progress", *args)
    return {name: read_predict(out, cli.work)}


def _train(cli: Runner, recipe: str, run: Path, data: Path, *args: str) -> Steps:
    cli("train", recipe, "--data", data, "--out", run, "--no-progress", "--seed", "0", *args)
    if not (run / "checkpoints" / "best.ckpt").is_file():
        raise ParityError(f"{run} has no checkpoints/best.ckpt")
    return {"train": read_history(run, cli.work)}


def m_slice_demo(cli: Runner) -> Steps:
    data = slice_data(cli, 3)
    run = cli.work / "runs" / "demo"
    steps = _train(cli, "demo", run, data, *DEMO_TINY)
    steps |= _evaluate(cli, run, "evaluate", "--aggregate", "mean", "--scan-aggregate", "mean")
    steps |= _evaluate(cli, run, "evaluate_val", "--split", "val")
    steps |= _predict(cli, run, "predict", _test_files(run))
    return steps


def m_slice_snapmix_cpe(cli: Runner) -> Steps:
    data = slice_data(cli, 2)
    run = cli.work / "runs" / "snapmix_cpe"
    steps = _train(cli, "snapmix_cpe", run, data, *CAM_TINY, *CAM_VOTING)
    steps |= _evaluate(cli, run, "evaluate_cam_voting")  # the recipe's procedure
    steps |= _evaluate(cli, run, "evaluate_cam_voting_val", "--split", "val")
    steps |= _evaluate(cli, run, "evaluate_plain", "--procedure", "plain")
    files = _test_files(run)
    steps |= _predict(cli, run, "predict_cam_voting", files)
    steps |= _predict(cli, run, "predict_plain", files, "--procedure", "plain")
    return steps


def m_cxr_magsd(cli: Runner) -> Steps:
    data = _synth(cli, cli.work / "data" / "cxr", "--kind", "cxr", "--classes", "3", "--sites", "1",
                  "--patients", "6", "--size", "32", "--seed", "0")
    run = cli.work / "runs" / "magsd"
    steps = _train(cli, "magsd", run, data, *MAGSD_TINY)
    steps |= _evaluate(cli, run, "evaluate")
    steps |= _predict(cli, run, "predict", _test_files(run))
    return steps


def _scan_folder(manifest: Path, dest: Path) -> Path:
    """One scan's slice images copied into a folder of their own (``--scan-folders``)."""
    with open(manifest, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    test = [r for r in rows if r.get("split") == "test"] or rows
    scan = test[0]["scan_id"]
    dest.mkdir(parents=True, exist_ok=True)
    for r in sorted((r for r in rows if r["scan_id"] == scan), key=lambda r: int(r["slice"])):
        shutil.copy2(manifest.parent / r["path"], dest / Path(r["path"]).name)
    return dest


def m_sequence_att2(cli: Runner) -> Steps:
    data = _synth(cli, cli.work / "data" / "scans", "--kind", "sequence", "--patients", "5",
                  "--slices-per-patient", "10", "--min-slices", "7", "--size", "32", "--seed", "1")
    att2 = cli.work / "runs" / "att2"
    steps = {f"att2/{k}": v for k, v in _train(cli, "att2", att2, data, *ATT2_TINY).items()}
    steps |= {f"att2/{k}": v for k, v in _evaluate(cli, att2, "evaluate", "--scan-aggregate", "majority").items()}
    scan = _scan_folder(data, cli.work / "data" / "one_scan" / "scan0")
    steps |= {f"att2/{k}": v for k, v in _predict(cli, att2, "predict", _test_files(att2, 2)).items()}
    steps |= {f"att2/{k}": v for k, v in _predict(cli, att2, "predict_scan", [str(scan)], "--scan-folders").items()}
    bilstm = cli.work / "runs" / "att2_bilstm"
    steps |= {f"bilstm/{k}": v for k, v in
              _train(cli, "att2_bilstm", bilstm, data, *BILSTM_TINY, "--set", f"model.params.encoder={att2}").items()}
    steps |= {f"bilstm/{k}": v for k, v in _evaluate(cli, bilstm, "evaluate").items()}
    steps |= {f"bilstm/{k}": v for k, v in _predict(cli, bilstm, "predict_scan", [str(scan)], "--scan-folders").items()}
    return steps


def _ensemble(cli: Runner, runs: list[Path], name: str, *args: str) -> Steps:
    out = cli.work / "eval" / f"ensemble-{name}"
    cli("ensemble", *runs, "--out", out, "--n-boot", N_BOOT, "--no-progress", *args)
    return {f"{name}/predictions": read_csv(out / "predictions.csv", cli.work),
            f"{name}/metrics": read_metrics(out / "metrics.json", cli.work)}


def m_volume_cmc(cli: Runner) -> Steps:
    data = _synth(cli, cli.work / "data" / "volumes", "--kind", "volume", "--classes", "2", "--patients", "8",
                  "--size", "32", "--slices-per-patient", "16", "--seed", "1")
    cache = ["--set", f"data.cache_dir={cli.work / 'cache' / 'volumes'}"]
    m4 = cli.work / "runs" / "cmc_model4"
    steps = _train(cli, "cmc_model4", m4, data, *TINY_3D, *cache)
    steps |= _evaluate(cli, m4, "evaluate")
    steps |= _evaluate(cli, m4, "evaluate_val", "--split", "val")
    steps |= _ensemble(cli, [m4], "ensemble_intra", "--procedure", "intra_ensemble", "--params", INTRA)
    vol = sorted((data.parent / "volumes").glob("*.nii.gz"))[:2]
    steps |= _predict(cli, m4, "predict", [str(v) for v in vol])
    m1 = cli.work / "runs" / "cmc_model1"
    steps |= {f"model1/{k}": v for k, v in _train(cli, "cmc_model1", m1, data, *TINY_3D, *cache).items()}
    steps |= _ensemble(cli, [m4, m1], "ensemble_inter", "--split", "val")
    return steps


def m_lesion_affinity(cli: Runner) -> Steps:
    data = slice_data(cli, 3)
    run = cli.work / "runs" / "affinity_32"
    steps = _train(cli, "affinity_32", run, data, *TINY_AFFINITY)
    steps |= _evaluate(cli, run, "evaluate")
    steps |= _predict(cli, run, "predict", _test_files(run, 2), "--lesion-threshold", "0")
    return steps


METHODS: dict[str, Callable[[Runner], Steps]] = {
    "slice_demo": m_slice_demo,
    "slice_snapmix_cpe": m_slice_snapmix_cpe,
    "cxr_magsd": m_cxr_magsd,
    "sequence_att2": m_sequence_att2,
    "volume_cmc": m_volume_cmc,
    "lesion_affinity": m_lesion_affinity,
}

# ---------------------------------------------------------------------------------------------------
# record / compare
# ---------------------------------------------------------------------------------------------------


def _setup_env(work: Path) -> None:
    for k, v in ENV.items():
        os.environ[k] = v
    os.environ["CHESTDX_CACHE_DIR"] = str(work / "cache")


@contextlib.contextmanager
def _work_folder(given: str | None, keep: bool) -> Iterator[Path]:
    if given:
        work = Path(given).resolve()
        if work.exists() and any(work.iterdir()):
            raise SystemExit(f"refactor_parity: --work {work} is not empty (runs would be reused)")
        work.mkdir(parents=True, exist_ok=True)
        yield work
        return
    work = Path(tempfile.mkdtemp(prefix="chestdx-parity-"))
    try:
        yield work
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)


def record(out: Path, only: list[str], work_dir: str | None, keep: bool, subprocess_mode: bool) -> int:
    for name in only:
        if name not in METHODS:
            raise SystemExit(f"refactor_parity: unknown method '{name}'; choose from {', '.join(METHODS)}")
    with _work_folder(work_dir, keep) as work:
        _setup_env(work)
        import torch

        torch.set_num_threads(1)
        import chestdx

        log_path = work / "commands.log"
        values: dict[str, Steps] = {}
        seconds: dict[str, float] = {}
        errors: dict[str, str] = {}
        with open(log_path, "w", encoding="utf-8") as log:
            cli = Runner(work, log, subprocess_mode)
            for name in only:
                t0 = time.perf_counter()
                try:
                    values[name] = METHODS[name](cli)
                except Exception as e:  # one method's failure: recorded, the others still run
                    import traceback

                    traceback.print_exc(file=log)
                    values[name] = {}
                    errors[name] = f"{type(e).__name__}: {e} (during `{cli.last}`)"
                    print(f"{name}: FAILED: {errors[name]}; traceback in {log_path}", flush=True)
                seconds[name] = round(time.perf_counter() - t0, 1)
                if name not in errors:
                    n = sum(len(f) for t in values[name].values() for f in t.values())
                    print(f"{name}: {n} values in {seconds[name]:.0f} s", flush=True)
        if keep or work_dir:
            print(f"work folder kept: {work} (commands in {log_path})")
    meta = {"chestdx": str(Path(chestdx.__file__).parent), "python": sys.version.split()[0],
            "torch": torch.__version__, "env": {k: os.environ.get(k) for k in ENV}, "methods": only,
            "seconds": seconds, "seconds_per_command": {k: round(v, 1) for k, v in cli.seconds.items()},
            "subprocess": subprocess_mode, "errors": errors}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "values": values}, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    total = sum(seconds.values())
    print(f"wrote {out} ({total:.0f} s; chestdx from {meta['chestdx']})"
          + (f"; {len(errors)} method(s) FAILED: {', '.join(errors)}" if errors else ""))
    return 1 if errors else 0


def _leaves(values: dict[str, Any]) -> dict[str, Value]:
    """``step/case/field -> value`` of one method."""
    return {f"{step}/{case}/{field}": v
            for step, cases in values.items() for case, fields in cases.items() for field, v in fields.items()}


def _same_kind(x: Value, y: Value) -> bool:
    """Both plain numbers (not bools): compared with a tolerance; anything else must be equal."""
    return all(isinstance(v, int | float) and not isinstance(v, bool) for v in (x, y))


def compare(before_path: Path, after_path: Path, atol: float, show: int = 5) -> int:
    """Print per method: values, largest absolute difference, differences over ``atol``, changed
    labels / strings, missing and new keys, PASS / FAIL. Returns 1 if any method fails."""
    for p in (before_path, after_path):
        if not p.is_file():
            raise SystemExit(f"refactor_parity compare: {p} not found (write it with `record {p}`)")
    before, after = (json.loads(p.read_text(encoding="utf-8")) for p in (before_path, after_path))
    bv, av = before["values"], after["values"]
    print(f"before: {before_path} (chestdx from {before['meta'].get('chestdx')})")
    print(f"after:  {after_path} (chestdx from {after['meta'].get('chestdx')})")
    print(f"tolerance: |after - before| <= {atol:g}; labels, flags and other strings equal\n")
    print("| method | values | max abs diff | over tolerance | changed labels | missing | new | result |\n"
          "|---|---|---|---|---|---|---|---|")
    failed = False
    notes: list[str] = []
    for method in sorted(set(bv) | set(av)):
        b, a = _leaves(bv.get(method, {})), _leaves(av.get(method, {}))
        if not b or not a:
            failed = True
            print(f"| {method} | {len(b) or len(a)} | - | - | - | - | - | FAIL |")
            side = before if not b else after
            err = side["meta"].get("errors", {}).get(method)
            notes.append(f"{method}: not recorded {'before' if not b else 'after'}" + (f": {err}" if err else ""))
            continue
        missing, extra = sorted(set(b) - set(a)), sorted(set(a) - set(b))
        worst, over, changed = 0.0, [], []
        for key in sorted(set(b) & set(a)):
            x, y = b[key], a[key]
            if not _same_kind(x, y):
                if x != y:
                    changed.append((key, x, y))
                continue
            d = abs(float(x) - float(y))  # type: ignore[arg-type]
            worst = max(worst, d)
            if d > atol:
                over.append((d, key, x, y))
        ok = not (over or changed or missing or extra)
        failed |= not ok
        print(f"| {method} | {len(b)} | {worst:.3g} | {len(over)} | {len(changed)} | {len(missing)} | {len(extra)} | "
              f"{'PASS' if ok else 'FAIL'} |")
        for d, key, x, y in sorted(over, key=lambda t: -t[0])[:show]:
            notes.append(f"{method}: {key}: before {x!r}, after {y!r} (diff {d:.3g})")
        for key, x, y in changed[:show]:
            notes.append(f"{method}: {key}: before {x!r}, after {y!r}")
        notes += [f"{method}: missing after: {key}" for key in missing[:show]]
        notes += [f"{method}: new after: {key}" for key in extra[:show]]
    if notes:
        print("\n" + "\n".join(notes))
    print(f"\n{'FAIL' if failed else 'PASS'}")
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("record", help="train, evaluate, predict and ensemble every method; write OUT.json")
    r.add_argument("out", type=Path)
    r.add_argument("--only", default=",".join(METHODS), help=f"comma-separated methods (default all: {', '.join(METHODS)})")
    r.add_argument("--work", help="work folder for data and runs (kept; must be empty); default a temporary one")
    r.add_argument("--keep", action="store_true", help="keep the temporary work folder")
    r.add_argument("--subprocess", action="store_true", help="run every chestdx command in its own process")
    c = sub.add_parser("compare", help="compare two recordings; exit 1 on any difference over --atol")
    c.add_argument("before", type=Path)
    c.add_argument("after", type=Path)
    c.add_argument("--atol", type=float, default=1e-6)
    c.add_argument("--show", type=int, default=5, help="differences listed per method")
    args = parser.parse_args(argv)
    if args.command == "compare":
        return compare(args.before, args.after, args.atol, args.show)
    return record(args.out, [m for m in args.only.split(",") if m], args.work, args.keep, args.subprocess)


if __name__ == "__main__":
    if any(os.environ.get(k) != v for k, v in ENV.items()):  # PYTHONHASHSEED only acts on a new interpreter
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **ENV})
    sys.exit(main())
