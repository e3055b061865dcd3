"""Patient-grouped k-fold cross-validation (MAG-SD's 5 folds): one run per fold, and their summary.

Layout of ``OUT``::

    OUT/fold<f>/          a run folder; fold f is its test split, 15 % of the other folds' patients
                          validate (:func:`chestdx.data.splits.kfold_train_val_test`)
    OUT/cv_summary.md     mean +- std over folds of each fold's test figures, per site

Used by ``chestdx train --folds K`` / ``chestdx evaluate OUT`` and by ``chestdx table --folds K``
(:mod:`chestdx.experiments.table`), so a fold is named, split and resumed the same way everywhere.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from chestdx.utils import write_text

if TYPE_CHECKING:
    from chestdx.config import Recipe


def fold_dir(out: str | Path, fold: int) -> Path:
    """``OUT/fold<f>``: the run folder of fold ``fold``."""
    return Path(out) / f"fold{fold}"


def fold_runs(folder: str | Path) -> list[Path]:
    """The fold run folders under ``folder`` (``fold<f>/recipe.yaml``), in fold order (fold2 before fold10)."""
    found = [p.parent for p in Path(folder).glob("fold*/recipe.yaml") if re.fullmatch(r"fold\d+", p.parent.name)]
    return sorted(found, key=lambda p: int(p.name[4:]))


def fold_samples(samples: Sequence[Any], folds: int, fold: int, seed: int) -> list[Any]:
    """``samples`` with their ``split`` set for fold ``fold`` of ``folds`` (patient-grouped, seeded)."""
    from chestdx.data.splits import kfold_train_val_test

    return kfold_train_val_test(samples, folds, fold, seed=seed)


def train_folds(recipe: Recipe, sources: Sequence[str | Path], out: str | Path, folds: int, *,
                only: int | None = None, force: bool = False, progress: bool = False) -> list[Path]:
    """Train ``recipe`` once per fold into ``OUT/fold<f>``; returns the fold run folders.

    A finished fold (``train.json`` written) is kept; an interrupted one (``last.ckpt``) resumes.

    Args:
        only: train this fold alone.
    """
    from chestdx.engine.train import train
    from chestdx.tasks import load_samples

    samples = load_samples(sources, recipe)
    done = []
    for f in [only] if only is not None else range(folds):
        run_dir = fold_dir(out, f)
        if (run_dir / "train.json").is_file():
            print(f"fold {f}: finished before, kept ({run_dir})")
        else:
            resume = (run_dir / "checkpoints" / "last.ckpt").is_file()
            train(recipe, sources, run_dir, resume=resume, force=force, progress=progress,
                  samples=None if resume else fold_samples(samples, folds, f, recipe.seed))
            print(f"fold {f} written to {run_dir}")
        done.append(run_dir)
    return done


def evaluate_folds(folder: str | Path, runs: Sequence[Path], *, split: str = "test", **evaluate: Any) -> str:
    """Evaluate every fold run and write ``FOLDER/cv_summary.md`` (mean +- std over folds, per site).

    Args:
        evaluate: passed to :func:`chestdx.evaluate.run.evaluate_run` (procedure, n_boot, which, ...).

    Returns:
        The summary's markdown.
    """
    from chestdx.evaluate.report import seed_table
    from chestdx.evaluate.run import evaluate_run

    per_site: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        res = evaluate_run(run, split=split, **evaluate)
        for site, block in {**(res.get("sites") or {}), "all sites": res["overall"]}.items():
            per_site.setdefault(site, []).append(block)
    table = seed_table({Path(folder).name: per_site}, metrics=("accuracy", "recall", "specificity", "f1", "auc"),
                       row_header="Run")
    text = f"{len(runs)} folds of {folder}, {split} split of each fold, mean +- std over folds.\n\n{table}"
    write_text(Path(folder) / "cv_summary.md", text)
    return text
