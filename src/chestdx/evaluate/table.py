"""``chestdx table``: train each recipe for several seeds on the same sites, evaluate each run on the
test split per site, and write the paper-style table (mean +- std over seeds).

Layout of ``OUT``::

    OUT/<recipe>/seed<s>/            a run folder (resumable: finished runs are reused)
    OUT/<recipe>/seed<s>/eval-test/  its evaluation
    OUT/results.json                 every run's metrics
    OUT/table.md                     one table per site (+ all sites together)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from chestdx.utils import write_json, write_text


def run_table(recipes: Sequence[str], sources: Sequence[str | Path], out: str | Path, *, seeds: int = 3,
              overrides: dict[str, Any] | None = None, n_boot: int = 200, progress: bool = False,
              metrics: Sequence[str] = ("accuracy", "precision", "recall", "f1"),
              folds: int | None = None) -> str:
    """Train and evaluate ``recipes`` x ``seeds``; returns the markdown table (also written).

    The data are read once: every recipe and seed sees the same samples and the same split (the
    split is seeded by the first seed), so the rows differ only by method and training seed.

    With ``folds = k`` (k-fold cross-validation, e.g. MAG-SD's 5 folds) each seed is replaced by a
    fold: run ``OUT/<recipe>/fold<f>`` tests on patient-grouped fold f and trains on the others
    (15 % of their images, by patient, held out for validation); the table is mean +- std over folds.
    """
    import json

    from chestdx.config import deep_merge, load_recipe
    from chestdx.engine.datamodule import load_samples
    from chestdx.engine.run import Run
    from chestdx.engine.train import train
    from chestdx.evaluate.report import seed_table
    from chestdx.evaluate.run import evaluate_run

    out = Path(out)
    overrides = overrides or {}
    first = load_recipe(recipes[0], overrides)
    samples = load_samples(sources, first)
    results: dict[str, dict[str, list[dict[str, Any]]]] = {}
    raw: dict[str, list[dict[str, Any]]] = {}
    for name in recipes:
        for s in range(folds or seeds):
            if folds:
                from chestdx.data.splits import kfold_train_val_test

                recipe = load_recipe(name, overrides)
                run_dir = out / recipe.name / f"fold{s}"
                run_samples = kfold_train_val_test(samples, folds, s, seed=first.seed)
            else:
                recipe = load_recipe(name, deep_merge(overrides, {"seed": first.seed + s}))
                run_dir = out / recipe.name / f"seed{s}"
                run_samples = samples
            if (run_dir / "train.json").is_file():
                run = Run(run_dir)
            else:
                resume = (run_dir / "checkpoints" / "last.ckpt").is_file()
                run = train(recipe, sources, run_dir, samples=None if resume else run_samples,
                            resume=resume, progress=progress)
            metrics_file = run_dir / "eval-test" / "metrics.json"
            if metrics_file.is_file():
                res = json.loads(metrics_file.read_text())
            else:
                res = evaluate_run(run, split="test", n_boot=n_boot)
            raw.setdefault(recipe.name, []).append(res)
            blocks = dict(res.get("sites") or {})
            blocks["all sites"] = res["overall"]
            for site, block in blocks.items():
                results.setdefault(recipe.name, {}).setdefault(site, []).append(block)
    write_json(out / "results.json", raw)
    table = seed_table(results, metrics=tuple(metrics))
    header = (f"Recipes {', '.join(recipes)}; {f'{folds} folds' if folds else f'{seeds} seed(s)'}; data {', '.join(str(s) for s in sources)}; "
              f"overrides {overrides or 'none'}. Binary tasks report the positive class; multi-class tasks the macro average.\n\n")
    write_text(out / "table.md", header + table)
    return header + table

