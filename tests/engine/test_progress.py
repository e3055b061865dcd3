"""What ``chestdx train`` says while it runs: layout, counts per split and class, device and
precision, and one line per epoch, with no progress bar."""

from __future__ import annotations

import logging

from chestdx.cli import main
from chestdx.engine.progress import describe_data
from tests.conftest import TINY


def test_describe_data_counts_per_split_and_class():
    summary = {"train": {"total": 3, "per_class": {"a": 2, "b": 1}}, "test": {"total": 1, "per_class": {"b": 1}}}
    assert describe_data(summary, ["s1", "s2"]) == "4 images from 2 sites (s1, s2): train 3 (a 2, b 1); test 1 (b 1)"


def test_train_logs_layout_counts_device_and_every_epoch(phantom_slices, tmp_path, capsys, caplog):
    sets = [x for o in [*TINY, "trainer.epochs=2", "trainer.speed=fp32"] for x in ("--set", o)]
    rc = main(["train", "demo", "--data", str(phantom_slices), "--out", str(tmp_path / "run"), "--no-progress",
               *sets])
    assert logging.getLogger("chestdx").level == logging.NOTSET  # restored after the command
    err = caplog.text + capsys.readouterr().err
    assert rc == 0
    assert "read as CSV manifest" in err
    assert "train " in err and "(normal" in err
    assert "training on cpu" in err and "precision" in err
    assert "epoch 1/2" in err and "epoch 2/2" in err and "train_loss" in err and "val_loss" in err
    assert "it/s" not in err  # no progress bar off a terminal
