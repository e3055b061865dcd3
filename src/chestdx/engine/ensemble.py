"""Ensembles of CMC-COV19D (cmc-cov19d-3d-contrastive-mixup.txt, Sec. 3.4.2).

- **Intra-model**: the ``intra_ensemble`` inference procedure (:func:`chestdx.engine.infer.intra_ensemble`)
  averages one model's softmax outputs on ``t = 3`` augmented views of each volume (the training
  augmentations of Sec. 3.2, drawn from a fixed seed so an evaluation is repeatable).
- **Inter-model**: :func:`ensemble_runs` (``chestdx ensemble RUN... --data ...``) averages the
  probabilities of several trained runs on the same scans (the paper's "average operation"; Model5
  is the ensemble of Model1, Model3 and Model4) and scores the average like ``chestdx evaluate``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import DataLoader

from chestdx.engine.infer import predict_loader
from chestdx.engine.infer import procedure_params as own_params  # the argument of ensemble_runs has its name
from chestdx.errors import ConfigError, DatasetError

__all__ = ["ensemble_runs"]


def ensemble_runs(runs: Sequence[str | Path], sources: Sequence[str | Path] | None = None, split: str = "test",
                  out: str | Path | None = None, *, procedure: str | None = None,
                  procedure_params: dict[str, Any] | None = None, n_boot: int = 1000,
                  which: str = "best", progress: bool = False, speed: str | None = None,
                  device: Any = "cpu") -> dict[str, Any]:
    """Inter-model ensemble: average the probabilities of several runs on one split and score it.

    Each run answers with its own preprocessing and its own inference procedure (``procedure``
    overrides them all, e.g. ``intra_ensemble`` for the paper's Model5). With ``intra_ensemble``
    each member draws its views with its own training view parameters (its ``cmc_views`` depth crop,
    transverse crop, brightness, contrast: Model1's d = 128, Model3/4's d = 64), except the keys
    ``procedure_params`` gives, which apply to every member
    (:func:`chestdx.engine.infer.procedure_params`). Scans are joined by path; every run must answer
    every scan.

    Args:
        runs: run folders (two or more for an ensemble; one is allowed and scores that run).
        sources: data to score (default: the first run's own samples).
        split: ``train`` / ``val`` / ``test``.
        out: output folder (default ``<first run>/ensemble-<split>``): ``metrics.json``,
            ``metrics.md``, ``predictions.csv``.
        speed: execution mode setting for every run (see :mod:`chestdx.engine.precision`); default
            each run's own ``inference.speed``.
        device: where every run's model runs (a :class:`torch.device` or an accelerator,
            :func:`chestdx.engine.device.resolve_device`).

    Returns:
        the metrics of the ensemble (``overall``, per site) with ``members``: each run's accuracy
        and macro F1 on the same scans.

    Raises:
        ConfigError: runs with different class names, or one run given twice; DatasetError: an
            empty split or scans missing from a run's answers.
    """
    from chestdx.engine.run import Run
    from chestdx.evaluate.metrics import classification_metrics
    from chestdx.evaluate.run import evaluate_predictions, metrics_report_markdown, write_predictions
    from chestdx.tasks import get_task
    from chestdx.utils import write_json, write_text

    if not runs:
        raise ConfigError("chestdx ensemble: give at least one run folder")
    loaded = [r if isinstance(r, Run) else Run(r) for r in runs]
    given: set[Path] = set()
    for r in loaded:
        if r.path.resolve() in given:  # it would count twice in the mean but once in "members"
            raise ConfigError(f"chestdx ensemble: run {r.path} is given twice; an ensemble averages different runs")
        given.add(r.path.resolve())
    class_names = list(loaded[0].class_names)
    for r in loaded[1:]:
        if list(r.class_names) != class_names:
            raise ConfigError(f"runs disagree on classes: {r.path} has {list(r.class_names)}, "
                              f"{loaded[0].path} has {class_names}")
    ref_samples = get_task(loaded[0].recipe).load_samples(sources, loaded[0].recipe) if sources else loaded[0].samples()
    chosen = [s for s in ref_samples if s.split == split]
    if not chosen:
        raise DatasetError(f"no '{split}' scans to score (splits present: {sorted({str(s.split) for s in ref_samples})})")
    paths = [s.path for s in chosen]
    member_probs: list[np.ndarray] = []
    members: dict[str, Any] = {}
    labels = np.asarray([s.label for s in chosen])
    for r in loaded:
        recipe = r.recipe
        ds = get_task(recipe).ensemble_dataset(recipe, chosen, r.site_names)  # a sequence run is refused
        loader = DataLoader(ds, batch_size=recipe.data.batch_size, shuffle=False)
        name = procedure or recipe.inference.name
        params = own_params(recipe, name, procedure_params)  # intra_ensemble: the member's own views
        preds = predict_loader(r.load_model(which, device=device), loader, name, params, progress=progress,
                               speed=speed or recipe.inference.speed)
        probs = np.zeros((len(chosen), len(class_names)), np.float64)
        seen = np.zeros(len(chosen), bool)
        for row, i in enumerate(preds["index"].astype(int)):
            probs[i] = preds["probs"][row]
            seen[i] = True
        if not seen.all():
            missing = [paths[i] for i in np.flatnonzero(~seen)[:5]]
            raise DatasetError(f"run {r.path} gave no answer for {int((~seen).sum())} scans, e.g. {missing}")
        member_probs.append(probs)
        m = classification_metrics(labels, probs, class_names, n_boot=0)
        members[str(r.path)] = {"recipe": recipe.name, "procedure": name, "params": params,
                                "accuracy": m["accuracy"]["value"], "macro_f1": m["macro_f1"]["value"]}
    mean = np.mean(member_probs, axis=0)
    seed = loaded[0].recipe.seed
    result = evaluate_predictions(mean, labels, [s.site for s in chosen], [s.patient_id for s in chosen],
                                  class_names, n_boot=n_boot, seed=seed)
    result.update({"split": split, "n_images": len(chosen), "members": members,
                   "procedure": procedure or "each run's own"})
    out = Path(out) if out else loaded[0].path / f"ensemble-{split}"
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "metrics.json", result)
    write_text(out / "metrics.md", metrics_report_markdown(result, f"ensemble of {len(loaded)} runs on {split}")
               + "\n### members\n\n| run | recipe | procedure | accuracy | macro F1 |\n|---|---|---|---|---|\n"
               + "".join(f"| {k} | {v['recipe']} | {v['procedure']} | {v['accuracy']:.4f} | {v['macro_f1']:.4f} |\n"
                         for k, v in members.items()))
    write_predictions(out / "predictions.csv", chosen,
                       {"probs": mean, "index": np.arange(len(chosen))}, class_names)
    return result
