"""What training says while it runs: the data it found, where it runs, and one line per epoch.

These lines go through the ``chestdx`` logger at INFO (``chestdx train`` shows them on stderr,
with or without a progress bar), so a log file of a long run reads::

    chestdx: data phantom/manifest.csv: read as CSV manifest, 240 images
    chestdx: 240 images from 2 sites (site0, site1): train 168 (normal 56, pneumonia 56, covid 56), ...
    chestdx: training on cpu (2 threads), precision 32-true, 10 epochs of 21 batches
    chestdx: epoch 1/10  train_loss 1.0850  val_loss 1.0712  val_acc 0.4167  val_macro_f1 0.3810  (4.1 s)
"""

from __future__ import annotations

import logging
import time
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

log = logging.getLogger("chestdx.train")

__all__ = ["EpochLog", "describe_data"]


def describe_data(summary: dict[str, Any], site_names: list[str]) -> str:
    """One line of split counts per class from a data module's ``summary()``."""
    parts = []
    total = 0
    for split in ("train", "val", "test"):
        c = summary.get(split)
        if not isinstance(c, dict):
            continue
        total += int(c.get("total", 0))
        per = ", ".join(f"{k} {v}" for k, v in (c.get("per_class") or {}).items())
        parts.append(f"{split} {c.get('total', 0)} ({per})")
    sites = f"{len(site_names)} site{'s' if len(site_names) != 1 else ''} ({', '.join(site_names)})"
    return f"{total} images from {sites}: " + "; ".join(parts)


class EpochLog(Callback):
    """Log where training runs when it starts and one line per epoch (train loss, validation
    metrics, seconds) when each epoch ends, whether or not a progress bar is shown."""

    def __init__(self) -> None:
        self._t0 = 0.0

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        dev = pl_module.device
        threads = f" ({torch.get_num_threads()} threads)" if dev.type == "cpu" else ""
        mode = getattr(pl_module, "exec_mode", None)
        mode_text = f", execution mode {getattr(mode, 'name', mode)}" if mode is not None else ""
        batches = trainer.num_training_batches
        nb = f" of {batches} batches" if isinstance(batches, int) else ""
        log.info("training on %s%s x %d device(s), precision %s%s, %d epochs%s", dev.type, threads,
                 trainer.num_devices, trainer.precision, mode_text, trainer.max_epochs or 0, nb)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._t0 = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()
                   if isinstance(v, torch.Tensor) and v.numel() == 1}
        keys = sorted(metrics, key=lambda k: (not k.startswith("train"), k))
        text = "  ".join(f"{k} {metrics[k]:.4f}" for k in keys)
        log.info("epoch %d/%d  %s  (%.1f s)", trainer.current_epoch + 1, trainer.max_epochs or 0, text,
                 time.perf_counter() - self._t0)
