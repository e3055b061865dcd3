"""``chestdx evaluate``: score a trained run on a split, per site, with intervals, plots and files.

Writes into ``OUT`` (default ``RUN/eval-<split>``): ``metrics.json``, ``metrics.md``,
``predictions.csv`` (one row per image), ``confusion_matrix.png``, ``roc.png``; with several sites,
the same metrics per site inside ``metrics.json`` / ``metrics.md``; with ``aggregate``, patient-level
metrics too.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import DataLoader

from chestdx.data.datasets import SliceDataset
from chestdx.engine.infer import predict_loader
from chestdx.engine.run import Run
from chestdx.errors import DatasetError
from chestdx.utils import atomic_open, write_json, write_text


def _write_predictions(path: Path, samples: Sequence[Any], preds: dict[str, np.ndarray],
                       class_names: Sequence[str]) -> None:
    buf = io.StringIO()
    w = csv.writer(buf)
    extra = [k for k in ("flipped",) if k in preds]
    w.writerow(["path", "site", "patient_id", "label", "pred", *[f"p_{c}" for c in class_names], *extra])
    for row, i in enumerate(preds["index"]):
        s = samples[int(i)]
        p = preds["probs"][row]
        w.writerow([s.path, s.site, s.patient_id, class_names[s.label], class_names[int(p.argmax())],
                    *[f"{v:.6f}" for v in p], *[int(preds[k][row]) for k in extra]])
    with atomic_open(path, "w", encoding="utf-8", newline="") as f:
        f.write(buf.getvalue())


def evaluate_predictions(probs: np.ndarray, labels: np.ndarray, sites: Sequence[str],
                         patients: Sequence[str], class_names: Sequence[str], *, n_boot: int = 1000,
                         seed: int = 0, aggregate: str | None = None) -> dict[str, Any]:
    """Metrics overall, per site (where there are several) and per patient (with ``aggregate``).

    Args:
        probs: ``(N, K)``; labels: ``(N,)``; sites, patients: ``N`` names.
    """
    from chestdx.evaluate.metrics import aggregate as aggregate_groups
    from chestdx.evaluate.metrics import classification_metrics

    result: dict[str, Any] = {"overall": classification_metrics(labels, probs, class_names, n_boot=n_boot,
                                                               seed=seed)}
    site_arr = np.asarray(sites)
    uniq = sorted(set(sites))
    if len(uniq) > 1:
        result["sites"] = {
            s: classification_metrics(labels[site_arr == s], probs[site_arr == s], class_names,
                                      n_boot=n_boot, seed=seed)
            for s in uniq
        }
    if aggregate:
        groups = [f"{s}/{p}" for s, p in zip(sites, patients, strict=True)]
        _, pg, yg = aggregate_groups(probs, groups, aggregate, y_true=labels)  # type: ignore[arg-type]
        result["patient"] = classification_metrics(yg, pg, class_names, n_boot=n_boot, seed=seed)
        result["patient"]["aggregate"] = aggregate
    return result


def metrics_report_markdown(result: dict[str, Any], title: str) -> str:
    """All metric blocks of :func:`evaluate_predictions` as one markdown document."""
    from chestdx.evaluate.report import metrics_markdown

    parts = [metrics_markdown(result["overall"], title=f"{title}: all images")]
    for site, m in result.get("sites", {}).items():
        parts.append(metrics_markdown(m, title=f"{title}: site {site}"))
    if "patient" in result:
        parts.append(metrics_markdown(result["patient"],
                                      title=f"{title}: per patient ({result['patient']['aggregate']})"))
    return "\n\n".join(parts) + "\n"


def evaluate_run(run: Run | str | Path, sources: Sequence[str | Path] | None = None, split: str = "test",
                 out: str | Path | None = None, *, procedure: str | None = None,
                 procedure_params: dict[str, Any] | None = None, aggregate: str | None = None,
                 n_boot: int = 1000, which: str = "best", progress: bool = False) -> dict[str, Any]:
    """Evaluate a run on ``split`` of its own data (or of ``sources``).

    Args:
        procedure: inference procedure; default the recipe's (``plain`` or e.g. ``cam_voting``).
        aggregate: ``mean`` / ``max`` / ``majority`` patient-level aggregation, or None.

    Returns:
        the metrics dict (also written to ``out``).

    Raises:
        DatasetError: the split is empty.
    """
    from chestdx.evaluate.plots import plot_confusion_matrix, plot_roc

    run = run if isinstance(run, Run) else Run(run)
    recipe = run.recipe
    if sources:
        from chestdx.engine.datamodule import load_samples

        samples = load_samples(sources, recipe)
    else:
        samples = run.samples()
    chosen = [s for s in samples if s.split == split]
    if not chosen:
        raise DatasetError(f"no '{split}' images to evaluate (splits present: "
                           f"{sorted({str(s.split) for s in samples})})")
    out = Path(out) if out else run.path / f"eval-{split}"
    out.mkdir(parents=True, exist_ok=True)
    model = run.load_model(which)
    ds = SliceDataset(chosen, recipe.data, train=False, site_names=run.site_names or None, cache=False)
    loader = DataLoader(ds, batch_size=recipe.data.batch_size, shuffle=False)
    name = procedure or recipe.inference.name
    params = procedure_params if procedure_params is not None else (
        recipe.inference.params if name == recipe.inference.name else {})
    preds = predict_loader(model, loader, name, params, progress=progress)
    class_names = run.class_names
    order = preds["index"].astype(int)
    result = evaluate_predictions(
        preds["probs"], preds["label"].astype(int), [chosen[i].site for i in order],
        [chosen[i].patient_id for i in order], class_names, n_boot=n_boot, seed=recipe.seed,
        aggregate=aggregate,
    )
    result["split"] = split
    result["procedure"] = name
    result["n_images"] = len(chosen)
    if "flipped" in preds:
        result["flipped"] = int(preds["flipped"].sum())
    write_json(out / "metrics.json", result)
    write_text(out / "metrics.md", metrics_report_markdown(result, f"{recipe.name} on {split}"))
    _write_predictions(out / "predictions.csv", chosen, preds, class_names)
    plot_confusion_matrix(np.asarray(result["overall"]["confusion_matrix"]), class_names,
                          out / "confusion_matrix.png")
    plot_roc(preds["label"].astype(int), preds["probs"], class_names, out / "roc.png")
    return result
