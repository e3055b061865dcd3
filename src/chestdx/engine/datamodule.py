"""The Lightning DataModule of 2D images (samples with splits -> cached data sets -> loaders), which
the other tasks' data modules extend (:mod:`chestdx.tasks`), and the patient-leak check of a run's splits."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader

from chestdx.config import Recipe
from chestdx.data.datasets import SliceDataset
from chestdx.errors import DatasetError

log = logging.getLogger(__name__)


def seed_worker(worker_id: int) -> None:
    """``worker_init_fn`` of every loader: numpy's seed from the worker's torch seed."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)


def encoder_run_folder(recipe: Recipe) -> Path | None:
    """The run folder of a recipe's trained encoder (``model.params.encoder``: a run folder or a
    ``.ckpt`` inside ``RUN/checkpoints/``), or None when it has none (``none``, a bundle's dict)."""
    spec = recipe.model.params.get("encoder")
    if not isinstance(spec, (str, Path)) or str(spec) in ("", "none"):
        return None
    path = Path(spec).expanduser()
    if path.is_dir():
        return path
    if path.is_file():
        return path.parent.parent if path.parent.name == "checkpoints" else path.parent
    return None


def patient_leak_check(recipe: Recipe, samples: Sequence[Any], out: str | Path | None = None, *,
                       refuse: bool = True) -> dict[str, Any]:
    """Check a run's splits for patient leaks, including against its encoder run's ``samples.csv``.

    Called when training starts (``engine/train.py``): a leak is refused unless the recipe says
    ``data.allow_patient_leaks: true``; the report is written to ``OUT/leakage.json`` and stated by
    ``chestdx evaluate``. See :func:`chestdx.data.splits.check_patient_leaks`.

    Args:
        recipe: the run's recipe (``data.allow_patient_leaks``, ``model.params.encoder``).
        samples: the run's slice records with splits.
        out: run folder to write ``leakage.json`` into (created), or None.
        refuse: raise on a leak (unless allowed); False: only report (evaluation).

    Returns:
        the report of :func:`~chestdx.data.splits.check_patient_leaks`, with ``encoder_samples``
        (the file read, or None) and ``note``.

    Raises:
        PatientLeakError: a leak, with ``refuse`` and without ``data.allow_patient_leaks``.
    """
    from chestdx.data.splits import check_patient_leaks
    from chestdx.engine.run import read_samples
    from chestdx.utils import write_json

    allow = bool(getattr(recipe.data, "allow_patient_leaks", False))
    folder = encoder_run_folder(recipe)
    enc_file = folder / "samples.csv" if folder is not None else None
    enc_samples = read_samples(enc_file) if enc_file is not None and enc_file.is_file() else None
    note = "splits checked for patients in two splits"
    if folder is not None and enc_samples is None:
        log.warning("leakage check: the encoder run %s has no samples.csv; its training patients are not checked "
                    "against this run's test patients", folder)
        note += f"; encoder {folder} has no samples.csv: not checked against it"
    elif enc_samples is not None:
        note += f", and this run's val/test patients against the encoder run's train/val ({enc_file})"
    report = check_patient_leaks(samples, encoder_samples=enc_samples, encoder=str(folder) if folder else None,
                                 allow=allow or not refuse)
    report["allowed"] = allow
    report["encoder_samples"] = str(enc_file) if enc_samples is not None else None
    report["note"] = note
    if not report["ok"]:
        log.warning("patient leak allowed (data.allow_patient_leaks): %s", ", ".join(report["leaking_patients"]))
    if out is not None:
        Path(out).mkdir(parents=True, exist_ok=True)
        write_json(Path(out) / "leakage.json", report)
    return report


def leakage_markdown(report: dict[str, Any]) -> str:
    """One line for an evaluation report: what the leakage check found."""
    if report.get("ok"):
        what = f"no patient in two splits ({report['patients']} patients)"
        if report.get("encoder_checked"):
            what += "; no val/test patient in the encoder run's train/val"
        elif report.get("encoder"):
            what += f"; encoder run {report['encoder']} not checked (no samples.csv)"
        return f"Leakage check: passed: {what}."
    return (f"Leakage check: **FAILED**: {report['leaks_between_splits']} patient(s) in two splits, "
            f"{report['leaks_with_encoder']} val/test patient(s) seen by the encoder "
            f"({', '.join(report['leaking_patients'][:5])}); "
            f"{'allowed by data.allow_patient_leaks' if report.get('allowed') else 'not allowed in training'}: "
            "the figures are optimistic.")


class ChestDataModule(L.LightningDataModule):
    """Train / val / test loaders over one or several sites: 2D images, items of
    :class:`~chestdx.data.datasets.SliceDataset` (``image (B, 1, S, S)`` batches).

    A task whose training cases are not the records themselves, or whose data sets differ, subclasses
    it (:mod:`chestdx.tasks`): :meth:`build_cases` makes the cases (e.g. sequences of slices),
    :meth:`make_dataset` one split's data set.

    Args:
        recipe: the recipe (its ``data`` section and seed are used).
        samples: records with ``split`` set (see :func:`chestdx.tasks.load_samples`).

    Raises:
        DatasetError: no training or no validation case.
    """

    def __init__(self, recipe: Recipe, samples: Sequence[Any]):
        super().__init__()
        self.recipe = recipe
        self.cfg = recipe.data
        self.samples = list(samples)
        self.site_names = sorted({s.site for s in self.samples})
        self._datasets: dict[str, Any] = {}
        self.cases: list[Any] = self.build_cases()
        for split in ("train", "val"):
            if not self.split_samples(split):
                raise DatasetError(f"the data has no '{split}' images; counts: {self.summary()}")

    def build_cases(self) -> list[Any]:
        """The training cases made from ``self.samples`` (called once, by ``__init__``): here the
        records themselves, one image each."""
        return self.samples

    def split_samples(self, split: str) -> list[Any]:
        """The cases of one split (:meth:`build_cases`)."""
        return [s for s in self.cases if s.split == split]

    @property
    def class_counts(self) -> list[int]:
        """Training images per class, ``(K,)``."""
        c = Counter(s.label for s in self.split_samples("train"))
        return [c.get(k, 0) for k in range(self.cfg.num_classes)]

    def summary(self) -> dict[str, Any]:
        """Counts per split, class and site (written into the run folder)."""
        out: dict[str, Any] = {}
        for s in self.samples:
            key = s.split or "none"
            d = out.setdefault(key, {"total": 0, "per_class": {}, "per_site": {}})
            d["total"] += 1
            name = self.cfg.class_names[s.label]
            d["per_class"][name] = d["per_class"].get(name, 0) + 1
            d["per_site"][s.site] = d["per_site"].get(s.site, 0) + 1
        return out

    def dataset(self, split: str, train: bool | None = None) -> Any:
        """The data set of ``split`` (augmented when ``train``, default: the training split), built once."""
        key = f"{split}:{train}"
        if key not in self._datasets:
            self._datasets[key] = self.make_dataset(split, (split == "train") if train is None else train)
        return self._datasets[key]

    def make_dataset(self, split: str, train: bool) -> Any:
        """A new data set over the cases of ``split``."""
        return SliceDataset(self.split_samples(split), self.cfg, train=train, site_names=self.site_names)

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        g = torch.Generator()
        g.manual_seed(self.recipe.seed)
        ds = self.dataset(split)
        return DataLoader(ds, batch_size=self.cfg.batch_size, shuffle=shuffle,
                          num_workers=self.cfg.num_workers, worker_init_fn=seed_worker, generator=g,
                          drop_last=shuffle and len(ds) > self.cfg.batch_size,
                          persistent_workers=self.cfg.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)
