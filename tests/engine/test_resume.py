"""Training survives a kill, and no code runs from a checkpoint.

``last.ckpt`` after every epoch; ``--resume`` continues the run's own recipe (changes refused unless
forced, then recorded), keeps the best score of a moved folder, skips a finished run, cleans up
after a killed write, says clearly when the disk is full or the folder read-only; a checkpoint whose
pickle would run code is refused.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch

from chestdx.cli import main
from chestdx.config import load_recipe
from chestdx.engine.checkpointing import AtomicCheckpointIO, RunCheckpoint, _rebase_state
from chestdx.engine.run import Run
from chestdx.engine.train import train
from chestdx.errors import ChestdxError, RunError
from tests.conftest import TINY

# best.ckpt tracks the *lowest epoch*: only epoch 0 is ever "best", so any later best.ckpt is a
# worse one by the run's own monitor (deterministic, unlike a real validation loss)
EPOCH_MONITOR = ["trainer.monitor=epoch", "trainer.monitor_mode=min"]


def _set(items):
    return [a for item in items for a in ("--set", item)]


def _ck(path: Path) -> dict:
    return torch.load(path, weights_only=True, map_location="cpu")


def _best_score(path: Path, monitor: str) -> float:
    """The monitored score a checkpoint's best-tracking ModelCheckpoint state holds."""
    for key, state in _ck(path)["callbacks"].items():
        if f"'monitor': {monitor!r}" in key:
            return float(state["best_model_score"])
    raise AssertionError(f"no ModelCheckpoint state for {monitor} in {path}")


def _tmp_files(run: Path) -> list[Path]:
    return [p for d in (run, run / "checkpoints") if d.is_dir() for p in d.iterdir() if p.name.endswith(".tmp")]


def test_last_checkpoint_after_every_epoch_and_a_finished_run_is_not_retrained(phantom_slices, tmp_path, caplog):
    run = tmp_path / "run"
    train(load_recipe("demo", [*TINY, "trainer.epochs=3", *EPOCH_MONITOR]), [phantom_slices], run, progress=False)
    ckdir = run / "checkpoints"
    assert _ck(ckdir / "best.ckpt")["epoch"] == 0  # never improved after epoch 0 ...
    last = _ck(ckdir / "last.ckpt")
    assert last["epoch"] == 2  # ... and last.ckpt still holds the last epoch
    assert [h["epoch"] for h in json.loads((run / "history.json").read_text())] == [0, 1, 2]

    # leftovers of writes killed mid-way are removed when the run is resumed
    stale = [ckdir / ".last.ckpt.k1ll3d_x.tmp", run / ".history.json.abcd1234.tmp"]
    for p in stale:
        p.write_bytes(b"partial")
    before = (ckdir / "last.ckpt").stat().st_mtime_ns
    caplog.clear()
    assert main(["train", "demo", "--out", str(run), "--resume", "--no-progress"]) == 0
    assert "already finished (3 of 3 epochs" in caplog.text
    assert (ckdir / "last.ckpt").stat().st_mtime_ns == before  # not retrained
    assert not (run / "logs" / "version_1").exists()
    assert not any(p.exists() for p in stale)


def test_resume_keeps_the_runs_recipe_and_refuses_changed_settings(phantom_slices, tmp_path, capsys):
    run = tmp_path / "run"
    tiny2 = [*TINY, "trainer.epochs=2"]
    # train 1 of 2 epochs (as if interrupted after epoch 0)
    train(load_recipe("demo", tiny2), [phantom_slices], run, progress=False, trainer_overrides={"max_epochs": 1})
    recipe_yaml = (run / "recipe.yaml").read_text()
    last = (run / "checkpoints" / "last.ckpt").read_bytes()

    capsys.readouterr()
    rc = main(["train", "demo", "--out", str(run), "--resume", "--no-progress", "--lr", "0.5", "--image-size", "48",
               "--batch-size", "8"])  # the batch size is unchanged: not listed
    err = capsys.readouterr().err
    assert rc == 2
    assert "optim.lr: 0.001 -> 0.5" in err and "data.image_size: 32 -> 48" in err and "--force" in err
    assert "batch_size" not in err and "Traceback" not in err
    assert (run / "recipe.yaml").read_text() == recipe_yaml
    assert (run / "checkpoints" / "last.ckpt").read_bytes() == last
    # where it trains is not what it learns: a hardware change alone is no reason to refuse
    rc = main(["train", "demo", "--out", str(run), "--resume", "--no-progress", "--accelerator", "cpu", "--lr", "0.5"])
    err = capsys.readouterr().err
    assert rc == 2 and "optim.lr" in err and "trainer.accelerator" not in err

    assert main(["train", "baseline", "--out", str(run), "--resume", "--no-progress"]) == 2
    assert "trained with recipe 'demo', not 'baseline'" in capsys.readouterr().err
    assert main(["train", "demo", "--out", str(run), "--force", "--no-progress"]) == 2  # --force needs --resume

    assert main(["train", "demo", "--out", str(run), "--resume", "--force", "--no-progress", "--lr", "0.5",
                 "--image-size", "48"]) == 0
    r = Run(run).recipe
    assert r.optim.lr == 0.5 and r.data.image_size == 48 and r.trainer.epochs == 2
    summary = json.loads((run / "train.json").read_text())
    assert summary["resumed_from_epoch"] == 1
    assert summary["resume_overrides"][0]["changes"] == {"data.image_size": {"old": 32, "new": 48},
                                                         "optim.lr": {"old": 0.001, "new": 0.5}}
    assert json.loads((run / "resume_overrides.json").read_text()) == summary["resume_overrides"]
    assert [h["epoch"] for h in json.loads((run / "history.json").read_text())] == [0, 1]


def test_a_copied_run_folder_resumes_with_its_best_score(phantom_slices, tmp_path):
    recipe = load_recipe("demo", [*TINY, "trainer.epochs=3", *EPOCH_MONITOR])
    run = tmp_path / "run"
    train(recipe, [phantom_slices], run, progress=False, trainer_overrides={"max_epochs": 2})
    original = {p.name: p.read_bytes() for p in (run / "checkpoints").iterdir()}
    copy = tmp_path / "elsewhere" / "copy"
    shutil.copytree(run, copy)

    train(recipe, [], copy, resume=True, progress=False)
    assert _ck(copy / "checkpoints" / "last.ckpt")["epoch"] == 2
    best = _ck(copy / "checkpoints" / "best.ckpt")
    assert best["epoch"] == 0  # epoch 2 (worse by the monitor) did not replace it
    assert _best_score(copy / "checkpoints" / "best.ckpt", "epoch") == 0
    summary = json.loads((copy / "train.json").read_text())
    assert summary["best_score"] == 0 and summary["best_checkpoint"] == "best.ckpt"
    assert {p.name: p.read_bytes() for p in (run / "checkpoints").iterdir()} == original  # original untouched


def test_the_best_checkpoint_on_disk_wins_over_a_stale_state(phantom_slices, tmp_path):
    """A kill between writing best.ckpt and last.ckpt leaves last.ckpt's best state behind best.ckpt."""
    recipe = load_recipe("demo", [*TINY, "trainer.epochs=3", *EPOCH_MONITOR])
    run = tmp_path / "run"
    train(recipe, [phantom_slices], run, progress=False, trainer_overrides={"max_epochs": 2})
    last = run / "checkpoints" / "last.ckpt"
    ck = _ck(last)
    (key,) = [k for k in ck["callbacks"] if "'monitor': 'epoch'" in k]
    ck["callbacks"][key].update(best_model_score=None, best_model_path="", best_k_models={},
                                kth_best_model_path="", kth_value=torch.tensor(torch.inf))
    torch.save(ck, last)
    train(recipe, [], run, resume=True, progress=False)
    assert _ck(run / "checkpoints" / "best.ckpt")["epoch"] == 0


def test_rebase_moves_only_paths_of_the_old_folder():
    old, new = Path("/a/run/checkpoints"), Path("/b/copy/checkpoints")
    state = {"dirpath": str(old), "best_model_path": str(old / "best.ckpt"), "kth_best_model_path": "",
             "last_model_path": "/elsewhere/x.ckpt", "best_k_models": {str(old / "best.ckpt"): torch.tensor(1.0)},
             "best_model_score": torch.tensor(1.0)}
    out = _rebase_state(state, old, new)
    assert out["dirpath"] == str(new) and out["best_model_path"] == str(new / "best.ckpt")
    assert out["last_model_path"] == "/elsewhere/x.ckpt" and out["kth_best_model_path"] == ""
    assert list(out["best_k_models"]) == [str(new / "best.ckpt")]
    # the state key stays Lightning's, so run folders written before RunCheckpoint existed resume
    assert RunCheckpoint(dirpath=new, monitor="val_loss").state_key.startswith("ModelCheckpoint{'monitor'")


class _WritesAMarker:
    """Unpickling this (``weights_only=False``) calls ``open(marker, 'w')``: a stand-in for any code."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def _evil_checkpoint(path: Path, marker: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": {}, "hyper_parameters": {}, "epoch": 0, "payload": _WritesAMarker(marker)}, path)


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path):
    # the file really does run code when unpickled the old way
    _evil_checkpoint(tmp_path / "probe.ckpt", tmp_path / "probe-marker")
    torch.load(tmp_path / "probe.ckpt", weights_only=False)
    assert (tmp_path / "probe-marker").exists()

    run, marker = tmp_path / "run", tmp_path / "marker"
    run.mkdir()
    recipe = load_recipe("demo", TINY)
    (run / "recipe.yaml").write_text(recipe.to_yaml())
    for name in ("best.ckpt", "last.ckpt"):
        _evil_checkpoint(run / "checkpoints" / name, marker)
    with pytest.raises(ChestdxError, match=r"best\.ckpt: refused: the checkpoint holds objects other than tensors"):
        Run(run).load_task()
    with pytest.raises(RunError, match="refused"):
        AtomicCheckpointIO().load_checkpoint(run / "checkpoints" / "last.ckpt")  # Lightning's resume reads here
    with pytest.raises(RunError, match=r"last\.ckpt: refused"):
        train(recipe, [], run, resume=True, progress=False)
    assert not marker.exists()


def test_a_full_disk_mid_run_is_a_clear_error_and_the_run_resumes(phantom_slices, tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    real_replace = os.replace
    saves = []

    def replace(src, dst, *args, **kwargs):
        if str(dst).endswith("last.ckpt"):
            saves.append(dst)
            if len(saves) == 2:  # the second epoch's last.ckpt: the disk is full
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(src))
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)
    rc = main(["train", "demo", "--data", str(phantom_slices), "--out", str(run), "--no-progress",
               *_set([*TINY, "trainer.epochs=3"])])
    err = capsys.readouterr().err
    monkeypatch.undo()
    assert rc == 2 and "Traceback" not in err
    assert f"{run / 'checkpoints'}: cannot write the run (the disk is full" in err
    assert f"chestdx train demo --out {run} --resume" in err
    assert _ck(run / "checkpoints" / "last.ckpt")["epoch"] == 0  # the previous checkpoint is intact
    assert _tmp_files(run) == []
    assert main(["train", "demo", "--out", str(run), "--resume", "--no-progress"]) == 0
    assert _ck(run / "checkpoints" / "last.ckpt")["epoch"] == 2
    assert [h["epoch"] for h in json.loads((run / "history.json").read_text())] == [0, 1, 2]


@pytest.mark.parametrize("how", ["chmod", "patched"])
def test_a_read_only_run_folder_is_a_clear_error(phantom_slices, tmp_path, monkeypatch, how):
    run = tmp_path / "run"
    recipe = load_recipe("demo", [*TINY, "trainer.epochs=2"])
    train(recipe, [phantom_slices], run, progress=False, trainer_overrides={"max_epochs": 1})
    before = {p.name: p.read_bytes() for p in (run / "checkpoints").iterdir()}
    if how == "chmod":
        if os.geteuid() == 0:
            pytest.skip("running as root: chmod does not stop writes (the 'patched' case covers it)")
        for d in (run, run / "checkpoints"):
            d.chmod(0o555)
    else:
        real_mkstemp = tempfile.mkstemp

        def mkstemp(*args, dir=None, **kwargs):
            if dir is not None and Path(run) in [Path(dir), *Path(dir).parents]:
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(Path(dir) / "tmpXXXX"))
            return real_mkstemp(*args, dir=dir, **kwargs)

        monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    try:
        with pytest.raises(RunError, match=r"cannot write the run \(it is not writable") as info:
            train(recipe, [], run, resume=True, progress=False)
    finally:
        for d in (run, run / "checkpoints"):
            d.chmod(0o755)
    assert str(run) in str(info.value) and "--resume" in str(info.value)
    assert {p.name: p.read_bytes() for p in (run / "checkpoints").iterdir()} == before


@pytest.fixture(scope="module")
def kill_data(tmp_path_factory) -> Path:
    """Enough phantom images at 64 px that one epoch takes a couple of seconds on 2 CPU cores."""
    from chestdx.phantom import synthesize_slices

    return Path(synthesize_slices(tmp_path_factory.mktemp("kill"), n_patients_per_class=25, slices_per_patient=2,
                                  num_classes=3, sites=1, size=64, seed=2))


def _completed_epoch(run: Path) -> int:
    """The last epoch last.ckpt holds and history.json lists (-1 before the first)."""
    try:
        rows = json.loads((run / "history.json").read_text())
        ck = _ck(run / "checkpoints" / "last.ckpt")
    except (FileNotFoundError, ValueError, RuntimeError, EOFError):  # not written yet
        return -1
    return min(ck["epoch"], max(r["epoch"] for r in rows))


def test_sigkill_mid_epoch_then_resume_loses_at_most_that_epoch(kill_data, tmp_path):
    """The real CLI in a subprocess, SIGKILLed in the middle of an epoch, then ``--resume``d to the end."""
    run, epochs = tmp_path / "run", 4
    cmd = [sys.executable, "-m", "chestdx.cli", "train", "demo", "--out", str(run), "--no-progress",
           *_set(["data.image_size=64", "data.batch_size=16", "model.head_hidden=16", "data.num_workers=0",
                  f"trainer.epochs={epochs}"])]
    proc = subprocess.Popen([*cmd, "--data", str(kill_data)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline, seen, t_epoch = time.time() + 180, {}, None
        while proc.poll() is None and time.time() < deadline:
            done = _completed_epoch(run)
            if done >= 0 and done not in seen:
                seen[done] = time.time()
            if done >= 1:
                t_epoch = seen[done] - seen.get(done - 1, seen[done] - 2.0)
                break
            time.sleep(0.05)
        assert t_epoch is not None, f"epoch 1 never finished: {proc.communicate()[0].decode()[-2000:]}"
        time.sleep(min(max(0.4 * t_epoch, 0.2), 3.0))  # into the next epoch's training batches
        assert proc.poll() is None, "the run ended before it could be killed: make the epochs longer"
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    killed = _ck(run / "checkpoints" / "last.ckpt")
    k = killed["epoch"]
    assert 1 <= k < epochs - 1, k
    steps_per_epoch = killed["global_step"] // (k + 1)
    best_before = _best_score(run / "checkpoints" / "best.ckpt", "val_loss")

    res = subprocess.run([*cmd, "--resume"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    summary = json.loads((run / "train.json").read_text())
    assert summary["resumed_from_epoch"] == k + 1  # only the killed epoch is trained again
    resumed_log = (run / "logs" / "version_1" / "metrics.csv").read_text().splitlines()
    assert resumed_log[1].split(",")[0] == str(k + 1)  # the resumed session's first logged epoch
    final = _ck(run / "checkpoints" / "last.ckpt")
    assert final["epoch"] == epochs - 1 and final["global_step"] == epochs * steps_per_epoch
    assert [h["epoch"] for h in json.loads((run / "history.json").read_text())] == list(range(epochs))
    best_after = _best_score(run / "checkpoints" / "best.ckpt", "val_loss")
    assert best_after <= best_before
    assert summary["best_score"] == pytest.approx(best_after)
    assert _tmp_files(run) == []
    print(f"killed during epoch {k + 1} (last.ckpt at epoch {k}, {t_epoch:.1f} s/epoch), resumed at epoch "
          f"{k + 1}; best val_loss {best_before:.4f} before, {best_after:.4f} after")
