"""``chestdx train``: read a recipe and data, run the one training loop, write a run folder."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger

from chestdx import __version__
from chestdx.config import Recipe
from chestdx.engine.checkpointing import AtomicCheckpointIO
from chestdx.engine.datamodule import ChestDataModule, load_samples
from chestdx.engine.run import Run, read_samples, save_run_start, write_samples
from chestdx.engine.task import ChestTask
from chestdx.errors import RunError
from chestdx.utils import write_json

log = logging.getLogger(__name__)


class _History(Callback):
    """Write ``history.json`` (one dict per epoch, train and val metrics) atomically after every epoch.

    In Lightning 2 validation runs before ``on_train_epoch_end``, so both are known here.
    """

    def __init__(self, path: Path):
        self.path = path
        self.rows: list[dict[str, Any]] = []
        if path.is_file():
            import json

            self.rows = json.loads(path.read_text())

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        row: dict[str, Any] = {"epoch": trainer.current_epoch}
        row.update({k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1})
        self.rows = [r for r in self.rows if r["epoch"] != row["epoch"]] + [row]
        write_json(self.path, self.rows)


def train(recipe: Recipe, sources: Sequence[str | Path], out: str | Path, *, resume: bool = False,
          progress: bool = True, check_files: bool = True, samples: Sequence[Any] | None = None,
          trainer_overrides: dict[str, Any] | None = None) -> Run:
    """Train ``recipe`` on ``sources`` (one folder / CSV per site) into the run folder ``out``.

    Args:
        recipe: the resolved recipe.
        sources: data locations; with ``resume`` they may be empty (the run's samples.csv is used).
        out: run folder; created. Refuses to overwrite a finished run unless ``resume``.
        resume: continue from ``out/checkpoints/last.ckpt`` after an interruption.
        samples: ready sample records (skips reading ``sources``).
        trainer_overrides: extra ``lightning.Trainer`` arguments (e.g. ``fast_dev_run``).

    Returns:
        the :class:`~chestdx.engine.run.Run`.

    Raises:
        RunError: ``out`` holds a run and ``resume`` is not set, or ``resume`` finds no checkpoint.
        DatasetError: bad data (all bad files listed).
    """
    out = Path(out)
    last = out / "checkpoints" / "last.ckpt"
    if resume:
        if not last.is_file():
            raise RunError(f"--resume: no {last} to continue from")
        if samples is None:
            samples = read_samples(out / "samples.csv")
    elif (out / "recipe.yaml").exists() and (out / "checkpoints").exists():
        raise RunError(f"{out} already holds a run; use --resume to continue it or choose another --out")
    L.seed_everything(recipe.seed, workers=True, verbose=False)
    if samples is None:
        samples = load_samples(sources, recipe, check=check_files)
    if recipe.task == "lesion":  # Algorithm 1 of the affinity paper: paired batches, two steps (engine/lesion.py)
        from chestdx.engine.lesion import LesionDataModule, LesionTask

        seg = read_samples(out / "segmentation_samples.csv") if resume else None
        dm: ChestDataModule = LesionDataModule(recipe, samples, seg)
    else:
        dm = ChestDataModule(recipe, samples)
    if not resume:
        save_run_start(out, recipe, dm.samples, [str(s) for s in sources], dm.summary(), dm.site_names)
        if recipe.task == "lesion":
            write_samples(out / "segmentation_samples.csv", dm.seg_samples)  # type: ignore[attr-defined]
    task = (LesionTask if recipe.task == "lesion" else ChestTask)(recipe, dm.class_counts)
    tc = recipe.trainer
    ckpt = ModelCheckpoint(dirpath=out / "checkpoints", filename="best", monitor=tc.monitor,
                           mode=tc.monitor_mode, save_last=True, save_top_k=1, enable_version_counter=False)
    callbacks: list[Callback] = [ckpt, _History(out / "history.json")]
    if tc.early_stopping:
        es = tc.early_stopping
        callbacks.append(EarlyStopping(monitor=es.monitor, mode=es.mode, patience=es.patience))
    if progress:
        callbacks.append(TQDMProgressBar(refresh_rate=1))
    kwargs: dict[str, Any] = dict(
        max_epochs=tc.epochs, accelerator=tc.accelerator, devices=tc.devices, num_nodes=tc.num_nodes,
        strategy=tc.strategy, precision=tc.precision, gradient_clip_val=tc.gradient_clip,
        callbacks=callbacks, logger=CSVLogger(out, name="logs"),
        plugins=[AtomicCheckpointIO()], enable_progress_bar=progress, enable_model_summary=False,
        log_every_n_steps=tc.log_every_n_steps, default_root_dir=out, deterministic=False,
        num_sanity_val_steps=0,
    )
    if tc.limit_train_batches is not None:
        kwargs["limit_train_batches"] = tc.limit_train_batches
    kwargs.update(trainer_overrides or {})
    trainer = L.Trainer(**kwargs)
    t0 = time.time()
    trainer.fit(task, datamodule=dm, ckpt_path=str(last) if resume else None)
    wall = time.time() - t0
    write_json(out / "train.json", {
        "chestdx_version": __version__,
        "torch_version": torch.__version__,
        "epochs_run": trainer.current_epoch,
        "wall_seconds": round(wall, 2),
        "best_checkpoint": str(Path(ckpt.best_model_path).name) if ckpt.best_model_path else None,
        "best_score": float(ckpt.best_model_score) if ckpt.best_model_score is not None else None,
        "monitor": tc.monitor,
        "resumed": resume,
    })
    return Run(out)
