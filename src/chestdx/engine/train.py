"""``chestdx train``: read a recipe and data, run the one training loop, write a run folder.

A run survives being killed: ``checkpoints/last.ckpt`` is written (atomically) after every epoch, so
``--resume`` loses at most the epoch that was running; it continues the run folder's own
``recipe.yaml`` (changed settings are refused unless forced, and then recorded), keeps the best
score across a moved or copied folder, and a finished run is not trained again.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping, TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger

from chestdx.config import Recipe, load_recipe
from chestdx.data.normalization import with_global_normalization
from chestdx.engine.checkpointing import AtomicCheckpointIO, RunCheckpoint, read_checkpoint
from chestdx.engine.datamodule import patient_leak_check
from chestdx.engine.precision import lightning_precision, training_mode
from chestdx.engine.progress import EpochLog, describe_data
from chestdx.engine.progress import log as progress_log
from chestdx.engine.run import Run, read_samples, save_run_start
from chestdx.errors import RunError
from chestdx.tasks import get_task
from chestdx.utils import is_write_error, remove_stale_temp_files, write_json, write_text
from chestdx.version import __version__

log = logging.getLogger(__name__)

_PERMISSION = {errno.EPERM, errno.EACCES}  # only ours when they concern the run folder, not a data file

RESUME_OVERRIDES = "resume_overrides.json"
"""Run-folder file listing the recipe changes each ``--resume --force`` applied (also in train.json)."""


class _History(Callback):
    """Write ``history.json`` (one dict per epoch, train and val metrics) atomically after every epoch.

    In Lightning 2 validation runs before ``on_train_epoch_end``, so both are known here; the row is
    written before ``last.ckpt`` (checkpoint callbacks run last), so every epoch a checkpoint holds
    has its row.

    Args:
        path: the ``history.json`` file.
        keep_before: on resume, the first epoch that will be trained again: earlier rows are kept,
            later ones (from an epoch that was interrupted) dropped. ``None`` starts a new history.
    """

    def __init__(self, path: Path, keep_before: int | None = None):
        self.path = path
        self.rows: list[dict[str, Any]] = []
        if keep_before is not None and path.is_file():
            self.rows = [r for r in json.loads(path.read_text()) if r["epoch"] < keep_before]

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        row: dict[str, Any] = {"epoch": trainer.current_epoch}
        row.update({k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1})
        self.rows = [r for r in self.rows if r["epoch"] != row["epoch"]] + [row]
        write_json(self.path, self.rows)


class _RecordForcedChanges(Callback):
    """Once Lightning has restored the checkpoint (``on_train_start``), write the changed recipe to
    ``recipe.yaml`` and append the changes to ``resume_overrides.json``: a checkpoint that does not fit
    the changed recipe fails before the run folder says it was changed."""

    def __init__(self, out: Path, recipe: Recipe, record: dict[str, Any]):
        self.out, self.recipe, self.record = out, recipe, record

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        write_text(self.out / "recipe.yaml", self.recipe.to_yaml())
        write_json(self.out / RESUME_OVERRIDES, [*_resume_records(self.out), self.record])


def _resume_records(out: Path) -> list[dict[str, Any]]:
    p = out / RESUME_OVERRIDES
    return list(json.loads(p.read_text())) if p.is_file() else []


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict) and d:
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: d}


#: Settings of where a run trains, not of what it learns: ``--resume`` takes changes to these (a run
#: started on the CPU may continue on a GPU) without ``--force``, and records them like forced ones.
HARDWARE_KEYS = frozenset({"trainer.accelerator", "trainer.devices", "trainer.num_nodes", "trainer.strategy",
                           "data.num_workers"})


def recipe_changes(old: Recipe, new: Recipe) -> dict[str, tuple[Any, Any]]:
    """The settings that differ between two recipes, as ``{"optim.lr": (old, new)}`` (dotted keys,
    lists compared whole), sorted by key."""
    a, b = _flatten(old.model_dump(mode="json")), _flatten(new.model_dump(mode="json"))
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


def resume_recipe(out: str | Path, name_or_path: str | Path, overrides: Any = ()) -> Recipe:
    """The recipe ``chestdx train RECIPE --out OUT --resume`` continues: ``OUT/recipe.yaml`` with
    ``overrides`` applied (:func:`train` then refuses the ones that change it, unless forced).

    ``RECIPE`` only has to name the same recipe as the run's. Without ``OUT/recipe.yaml`` it is
    ``RECIPE`` with the overrides (and :func:`train` says there is nothing to resume).

    Raises:
        RunError: ``RECIPE`` is not the recipe the run was trained with.
        ConfigError: bad overrides.
    """
    stored_path = Path(out) / "recipe.yaml"
    if not stored_path.is_file():
        return load_recipe(name_or_path, overrides)
    stored = load_recipe(stored_path).name
    named = load_recipe(name_or_path).name
    if named != stored:
        raise RunError(f"{out} was trained with recipe '{stored}', not '{named}'; --resume continues the run's "
                       f"own {stored_path}: give `chestdx train {stored} --out {out} --resume`, or another "
                       "--out for a new run")
    return load_recipe(stored_path, overrides)


def _completed_epochs(ckpt: dict[str, Any]) -> int:
    """Epochs a Lightning checkpoint has finished (saved at an epoch's end: its ``epoch`` + 1)."""
    try:
        return int(ckpt["loops"]["fit_loop"]["epoch_progress"]["current"]["processed"])
    except (KeyError, TypeError, ValueError):
        return int(ckpt.get("epoch", -1)) + 1


def _stopped_early(ckpt: dict[str, Any], recipe: Recipe) -> bool:
    es = recipe.trainer.early_stopping
    if es is None:
        return False
    for key, state in (ckpt.get("callbacks") or {}).items():
        if isinstance(key, str) and key.startswith("EarlyStopping") and isinstance(state, dict):
            if state.get("stopping_reason") not in (None, 0) or int(state.get("wait_count", 0)) >= es.patience:
                return True
    return False


def _best_from(ckpt: dict[str, Any], recipe: Recipe) -> float | None:
    tc = recipe.trainer
    for key, state in (ckpt.get("callbacks") or {}).items():
        if isinstance(key, str) and key.startswith("ModelCheckpoint") and f"'monitor': {tc.monitor!r}" in key:
            score = state.get("best_model_score") if isinstance(state, dict) else None
            return float(score) if isinstance(score, torch.Tensor) else None
    return None


def _write_failure(out: Path, e: OSError, recipe: Recipe) -> RunError:
    """The :class:`RunError` for an output folder that cannot be written (``e`` one of
    :data:`chestdx.utils.WRITE_ERRNOS`)."""
    folder = out
    if e.filename:
        p = Path(os.fsdecode(e.filename))
        folder = p if p.is_dir() else p.parent
    why = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exceeded",
           errno.EROFS: "it is on a read-only file system"}.get(e.errno or 0, "it is not writable (permission denied)")
    fix = "free some space" if e.errno in (errno.ENOSPC, errno.EDQUOT) else "make it writable"
    last = out / "checkpoints" / "last.ckpt"
    if last.is_file():
        then = (f"The checkpoints already written are intact: {fix}, then continue the run with "
                f"`chestdx train {recipe.name} --out {out} --resume`.")
    else:
        then = f"No checkpoint was written yet: {fix}, then start again with `chestdx train {recipe.name} --out {out} ...`."
    return RunError(f"{folder}: cannot write the run ({why}: {e.strerror or e}). {then}")


def _in_or_above(p: str | bytes | None, out: Path) -> bool:
    if p is None:
        return True
    a, b = Path(os.path.abspath(os.fsdecode(p))), Path(os.path.abspath(out))
    return a == b or b in a.parents or a in b.parents


_MB = 1024 * 1024


def checkpoint_bytes(task: torch.nn.Module, recipe: Recipe) -> tuple[int, int]:
    """Estimated sizes of ``(best.ckpt, last.ckpt)`` for ``task``: every tensor of its state dict,
    and for ``last.ckpt`` the optimiser's moments of the trainable parameters too (Adam / AdamW two,
    SGD with momentum one). Tensors dominate a checkpoint; the estimate leaves out the few kB of
    metadata and any optimiser state a task's own loop adds."""
    weights = sum(t.numel() * t.element_size() for t in task.state_dict().values() if isinstance(t, torch.Tensor))
    trainable = sum(p.numel() * p.element_size() for p in task.parameters() if p.requires_grad)
    o = recipe.optim
    moments = 2 if o.name in ("adam", "adamw") else (1 if o.momentum > 0 else 0)
    return weights, weights + moments * trainable


def check_disk_for_checkpoints(out: Path, task: torch.nn.Module, recipe: Recipe, *, resume: bool) -> None:
    """Refuse to start training when the disk under ``out`` cannot hold the run's checkpoints.

    A new run needs ``best.ckpt`` and ``last.ckpt`` plus a temporary copy of the one being written
    (checkpoints are written atomically, then renamed); a resumed run already has both and needs the
    temporary copy only. Refusing here costs nothing; finding out after the first epoch costs an epoch.

    Raises:
        RunError: not enough free space; the message gives both figures in MB.
    """
    import shutil

    best, last = checkpoint_bytes(task, recipe)
    need = last if resume else best + 2 * last
    try:
        free = shutil.disk_usage(out).free
    except OSError:  # cannot tell (an odd file system): training finds out when it writes
        return
    if free < need:
        raise RunError(f"{out}: not enough disk space for the run's checkpoints: about {need / _MB:,.0f} MB "
                       f"needed (best.ckpt {best / _MB:,.0f} MB, last.ckpt {last / _MB:,.0f} MB with the "
                       f"optimiser state, and a temporary copy while one is written), {free / _MB:,.0f} MB "
                       "free. Free some space or choose another --out.")


def train(recipe: Recipe, sources: Sequence[str | Path], out: str | Path, *, resume: bool = False,
          force: bool = False, progress: bool = True, check_files: bool = True, samples: Sequence[Any] | None = None,
          trainer_overrides: dict[str, Any] | None = None) -> Run:
    """Train ``recipe`` on ``sources`` (one folder / CSV per site) into the run folder ``out``.

    Args:
        recipe: the resolved recipe. With ``resume`` it must equal ``out/recipe.yaml`` (see
            :func:`resume_recipe`) unless ``force``.
        sources: data locations; with ``resume`` they may be empty (the run's samples.csv is used).
        out: run folder; created. Refuses to overwrite a run with checkpoints unless ``resume``.
        resume: continue from ``out/checkpoints/last.ckpt`` (written after every epoch) after an
            interruption; a finished run is returned as it is.
        force: with ``resume``, apply the settings of ``recipe`` that differ from the run's recipe;
            they are written to ``recipe.yaml`` and recorded in ``resume_overrides.json`` and train.json.
        samples: ready sample records (skips reading ``sources``).
        trainer_overrides: extra ``lightning.Trainer`` arguments (e.g. ``fast_dev_run``).

    Returns:
        the :class:`~chestdx.engine.run.Run`.

    Raises:
        RunError: ``out`` holds a run and ``resume`` is not set; ``resume`` finds no checkpoint, a
            checkpoint holding non-tensor objects, or (without ``force``) a changed recipe; ``out``
            cannot be written (disk full, read-only): the message says the run can be resumed.
        DatasetError: bad data (all bad files listed).
    """
    out = Path(out)
    try:
        return _train(recipe, sources, out, resume=resume, force=force, progress=progress, check_files=check_files,
                      samples=samples, trainer_overrides=trainer_overrides)
    except OSError as e:
        if is_write_error(e) and (e.errno not in _PERMISSION or _in_or_above(e.filename, out)):
            raise _write_failure(out, e, recipe) from None
        raise


def _train(recipe: Recipe, sources: Sequence[str | Path], out: Path, *, resume: bool, force: bool, progress: bool,
           check_files: bool, samples: Sequence[Any] | None, trainer_overrides: dict[str, Any] | None) -> Run:
    ckdir = out / "checkpoints"
    last = ckdir / "last.ckpt"
    for folder in (out, ckdir):
        for p in remove_stale_temp_files(folder):
            log.info("removed %s, left by an interrupted write", p)
    changes: dict[str, tuple[Any, Any]] = {}
    start_epoch = 0
    if resume:
        if not last.is_file():
            raise RunError(f"--resume: no {last} to continue from (training stopped before its first epoch "
                           "ended, or this is not a run folder): start it again without --resume")
        if not (out / "recipe.yaml").is_file():
            raise RunError(f"--resume: {out} has no recipe.yaml; it is not a complete chestdx run folder")
        stored = load_recipe(out / "recipe.yaml")
        if recipe.data.normalize == stored.data.normalize == "global" and recipe.data.normalize_stats is None:
            # the run's own training-split statistics (computed when it started), not a new pass
            recipe = recipe.model_copy(update={"data": recipe.data.model_copy(
                update={"normalize_stats": stored.data.normalize_stats})})
        changes = recipe_changes(stored, recipe)
        refused = {k: v for k, v in changes.items() if k not in HARDWARE_KEYS}
        if refused and not force:
            lines = "\n".join(f"  {k}: {a!r} -> {b!r}" for k, a, b in ((k, *v) for k, v in refused.items()))
            raise RunError(f"{out}: --resume continues the run's own recipe ({out / 'recipe.yaml'}), and these "
                           f"settings differ from it:\n{lines}\nDrop them to continue the run as it was "
                           "trained, or add --force to apply them (recorded in recipe.yaml and train.json).")
        ckpt = read_checkpoint(last)
        start_epoch = _completed_epochs(ckpt)
        if start_epoch >= recipe.trainer.epochs or _stopped_early(ckpt, recipe):
            how = "stopped early" if start_epoch < recipe.trainer.epochs else "all epochs done"
            log.warning("%s: already finished (%d of %d epochs, %s); nothing to resume. To train longer, "
                        "add --epochs N --force.", out, start_epoch, recipe.trainer.epochs, how)
            if not (out / "train.json").is_file():
                _write_summary(out, recipe, epochs_run=start_epoch, wall=0.0, best=_best_from(ckpt, recipe),
                               best_name="best.ckpt" if (ckdir / "best.ckpt").is_file() else None,
                               resumed=True, start_epoch=start_epoch)
            return Run(out)
        del ckpt
        if samples is None:
            samples = read_samples(out / "samples.csv")
    elif (out / "recipe.yaml").exists() and any(ckdir.glob("*.ckpt")):
        raise RunError(f"{out} already holds a run; use --resume to continue it or choose another --out")
    L.seed_everything(recipe.seed, workers=True, verbose=False)
    kind = get_task(recipe)  # the task object (chestdx.tasks): its samples, data module and LightningModule
    if samples is None:
        samples = kind.load_samples(sources, recipe, check=check_files)
    patient_leak_check(recipe, samples, out)  # refuses a patient leak (also against the encoder run): leakage.json
    recipe = with_global_normalization(recipe, samples)  # data.normalize: global: the training split's mean/std
    dm = kind.datamodule(recipe, samples, resume_from=out if resume else None)
    if not resume:
        (out / RESUME_OVERRIDES).unlink(missing_ok=True)  # from an earlier start that wrote no checkpoint
        save_run_start(out, recipe, dm.samples, [str(s) for s in sources], dm.summary(), dm.site_names)
        kind.save_run_files(out, dm)
    task = kind.lightning_module(recipe, dm.class_counts)
    check_disk_for_checkpoints(out, task, recipe, resume=resume)
    # trainer.speed (engine/precision.py); auto measures once, unless the task trains in its own loop
    task.exec_mode = training_mode(recipe, task.model, measure=kind.measure_training_speed)
    tc = recipe.trainer
    best = RunCheckpoint(dirpath=ckdir, filename="best", monitor=tc.monitor, mode=tc.monitor_mode,
                         save_last=False, save_top_k=1, enable_version_counter=False)
    # after every epoch, after best.ckpt and history.json (Lightning runs checkpoint callbacks last, in order)
    last_cb = RunCheckpoint(dirpath=ckdir, filename="last", monitor=None, save_top_k=1, save_last=False,
                            save_on_train_epoch_end=True, enable_version_counter=False)
    callbacks: list[Callback] = [best, last_cb, _History(out / "history.json", start_epoch if resume else None),
                                 EpochLog()]
    progress_log.info("%s", describe_data(dm.summary(), list(dm.site_names)))
    if changes:
        callbacks.append(_RecordForcedChanges(out, recipe, {
            "at_epoch": start_epoch, "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "changes": {k: {"old": a, "new": b} for k, (a, b) in changes.items()},
        }))
    if tc.early_stopping:
        es = tc.early_stopping
        callbacks.append(EarlyStopping(monitor=es.monitor, mode=es.mode, patience=es.patience))
    if progress:
        callbacks.append(TQDMProgressBar(refresh_rate=1))
    kwargs: dict[str, Any] = dict(
        max_epochs=tc.epochs, accelerator=tc.accelerator, devices=tc.devices, num_nodes=tc.num_nodes,
        strategy=tc.strategy, precision=lightning_precision(recipe, task.exec_mode), gradient_clip_val=tc.gradient_clip,
        callbacks=callbacks, logger=CSVLogger(out, name="logs"),
        plugins=[AtomicCheckpointIO(model_only=(best.file_name,))], enable_progress_bar=progress, enable_model_summary=False,
        log_every_n_steps=tc.log_every_n_steps, default_root_dir=out, deterministic=False,
        num_sanity_val_steps=0,
    )
    if tc.limit_train_batches is not None:
        kwargs["limit_train_batches"] = tc.limit_train_batches
    kwargs.update(trainer_overrides or {})
    trainer = L.Trainer(**kwargs)
    t0 = time.time()
    try:
        trainer.fit(task, datamodule=dm, ckpt_path=str(last) if resume else None)
    except RuntimeError as e:
        if changes and "state_dict" in str(e):
            raise RunError(f"{last}: the checkpoint does not fit the changed settings "
                           f"({', '.join(changes)}): {str(e).splitlines()[0][:300]}; the run folder is unchanged") from None
        raise
    _write_summary(out, recipe, epochs_run=trainer.current_epoch, wall=time.time() - t0,
                   best=float(best.best_model_score) if best.best_model_score is not None else None,
                   best_name=Path(best.best_model_path).name if best.best_model_path else None,
                   resumed=resume, start_epoch=start_epoch, speed=task.exec_mode.name)
    return Run(out)


def _write_summary(out: Path, recipe: Recipe, *, epochs_run: int, wall: float, best: float | None,
                   best_name: str | None, resumed: bool, start_epoch: int, speed: str | None = None) -> None:
    write_json(out / "train.json", {
        "chestdx_version": __version__,
        "torch_version": torch.__version__,
        "speed": speed,
        "epochs_run": epochs_run,
        "epochs": recipe.trainer.epochs,
        "wall_seconds": round(wall, 2),
        "best_checkpoint": best_name,
        "best_score": best,
        "monitor": recipe.trainer.monitor,
        "resumed": resumed,
        "resumed_from_epoch": start_epoch if resumed else None,
        "resume_overrides": _resume_records(out),
    })
