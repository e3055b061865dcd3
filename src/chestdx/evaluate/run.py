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

from chestdx.engine.infer import predict_loader
from chestdx.engine.infer import procedure_params as procedure_params_of
from chestdx.engine.run import Run, record_evaluation
from chestdx.errors import DatasetError
from chestdx.tasks import Evaluation, get_task
from chestdx.utils import atomic_open, write_json, write_text


def write_predictions(path: Path, samples: Sequence[Any], preds: dict[str, np.ndarray],
                       class_names: Sequence[str]) -> None:
    """One row per case: ``path, site, patient_id, label, pred, p_<class>...``; after CAM voting also
    ``flipped``, ``vote_p_0`` (the whole image's probability of the positive class, or of the
    originally predicted class for K > 2) and ``vote_p_1 .. vote_p_k`` (the same for the copy with
    the i highest-CAM cells masked): the curve of the paper's Figure 2."""
    buf = io.StringIO()
    w = csv.writer(buf)
    extra = [k for k in ("flipped",) if k in preds]
    votes = preds.get("vote_probs")
    n_votes = int(votes.shape[1]) if votes is not None and votes.ndim == 2 else 0
    original = preds.get("vote_original")
    vote_cols = ([] if original is None or not n_votes else ["vote_p_0"]) + [f"vote_p_{j + 1}" for j in range(n_votes)]
    w.writerow(["path", "site", "patient_id", "label", "pred", *[f"p_{c}" for c in class_names], *extra, *vote_cols])
    for row, i in enumerate(preds["index"]):
        s = samples[int(i)]
        p = preds["probs"][row]
        v = [] if votes is None or not n_votes else ([] if original is None else [original[row]]) + list(votes[row])
        w.writerow([s.path, s.site, s.patient_id, class_names[s.label], class_names[int(p.argmax())],
                    *[f"{x:.6f}" for x in p], *[int(preds[k][row]) for k in extra], *[f"{x:.6f}" for x in v]])
    with atomic_open(path, "w", encoding="utf-8", newline="") as f:
        f.write(buf.getvalue())


def evaluate_predictions(probs: np.ndarray, labels: np.ndarray, sites: Sequence[str],
                         patients: Sequence[str], class_names: Sequence[str], *, n_boot: int = 1000,
                         seed: int = 0, aggregate: str | None = None, case_unit: str = "image") -> dict[str, Any]:
    """Metrics overall, per site (where there are several) and per patient (with ``aggregate``).

    Intervals resample patients (``site/patient``, a cluster bootstrap), so the slices of one patient
    count as one draw; the unit is named in each block's ``ci_unit`` (see
    :func:`~chestdx.evaluate.metrics.classification_metrics`).

    Args:
        probs: ``(N, K)``; labels: ``(N,)``; sites, patients: ``N`` names.
        case_unit: what a row is (``image``, ``sequence``, ``volume``).
    """
    from chestdx.evaluate.metrics import aggregate as aggregate_groups
    from chestdx.evaluate.metrics import classification_metrics

    groups = np.asarray([f"{s}/{p}" for s, p in zip(sites, patients, strict=True)], dtype=object)
    result: dict[str, Any] = {"overall": classification_metrics(labels, probs, class_names, n_boot=n_boot,
                                                               seed=seed, groups=groups, case_unit=case_unit)}
    site_arr = np.asarray(sites)
    uniq = sorted(set(sites))
    if len(uniq) > 1:
        result["sites"] = {
            s: classification_metrics(labels[site_arr == s], probs[site_arr == s], class_names,
                                      n_boot=n_boot, seed=seed, groups=groups[site_arr == s], case_unit=case_unit)
            for s in uniq
        }
    if aggregate:
        _, pg, yg = aggregate_groups(probs, list(groups), aggregate, y_true=labels)  # type: ignore[arg-type]
        result["patient"] = classification_metrics(yg, pg, class_names, n_boot=n_boot, seed=seed,
                                                   case_unit="patient")
        result["patient"]["aggregate"] = aggregate
    return result


def metrics_report_markdown(result: dict[str, Any], title: str) -> str:
    """All metric blocks of :func:`evaluate_predictions` as one markdown document."""
    from chestdx.evaluate.report import metrics_markdown

    parts = [metrics_markdown(result["overall"], title=f"{title}: all images")]
    if result.get("leakage"):
        from chestdx.engine.datamodule import leakage_markdown

        parts.append(leakage_markdown(result["leakage"]))
    for site, m in result.get("sites", {}).items():
        parts.append(metrics_markdown(m, title=f"{title}: site {site}"))
    if "patient" in result:
        parts.append(metrics_markdown(result["patient"],
                                      title=f"{title}: per patient ({result['patient']['aggregate']})"))
    if "scan" in result:
        parts.append(metrics_markdown(result["scan"], title=f"{title}: per scan, from the slice answers "
                                                            f"({result['scan']['aggregate']})"))
    loc = result.get("localisation")
    if loc and loc.get("n_images"):
        parts.append(f"### {title}: attention-mask localisation\n\n"
                     f"IoU of the attention masks ({loc.get('method', 'Otsu')}) with the lesion masks, "
                     f"{loc['n_images']} images with a lesion: mean {loc['iou_mean']:.3f}, median "
                     f"{loc['iou_median']:.3f} (Dice mean {loc['dice_mean']:.3f}); IoU of the enclosing boxes "
                     f"mean {loc.get('box_iou_mean', float('nan')):.3f}")
    if result.get("heatmap_localisation"):
        from chestdx.evaluate.localisation import localisation_markdown

        parts.append(localisation_markdown(result["heatmap_localisation"], title))
    if "segmentation" in result or "lesion_classification" in result:
        from chestdx.evaluate.lesion import lesion_markdown

        parts.append(lesion_markdown(result, title))
    return "\n\n".join(parts) + "\n"


def evaluate_run(run: Run | str | Path, sources: Sequence[str | Path] | None = None, split: str = "test",
                 out: str | Path | None = None, *, procedure: str | None = None,
                 procedure_params: dict[str, Any] | None = None, aggregate: str | None = None,
                 n_boot: int = 1000, which: str = "best", progress: bool = False,
                 scan_aggregate: str | None = None, localisation: bool = True,
                 segmentation_sources: Sequence[str | Path] | None = None,
                 speed: str | None = None, heatmaps: Sequence[str] | str | None = None,
                 device: Any = "cpu") -> dict[str, Any]:
    """Evaluate a run on ``split`` of its own data (or of ``sources``).

    The run's task object (:func:`chestdx.tasks.get_task`) says what a case is, builds the data set
    and adds its own results (:meth:`~chestdx.tasks.base.Task.evaluate_extra`). A ``task: sequence``
    run is scored per sequence (one row per scan in ``predictions.csv``; the
    sequence builder's report under ``"sequences"``; Fig. 6 drawings of a few sequences in
    ``OUT/sequence_attention/``). A slice run whose model makes attention maps (ResNet50-ATT2) is
    also scored for localisation where images have lesion masks (``"localisation"``: IoU of the
    Otsu attention masks, overlays in ``OUT/attention/``).

    Args:
        procedure: inference procedure; default the recipe's (``plain`` or e.g. ``cam_voting``).
        aggregate: ``mean`` / ``max`` / ``majority`` patient-level aggregation, or None.
        segmentation_sources: ``task: lesion``: score the masks of these segmentation sources'
            ``split`` (default the run's ``segmentation_samples.csv``); see :mod:`chestdx.evaluate.lesion`.
        scan_aggregate: ``mean`` / ``majority`` / ``max``: also one answer per scan from the slice
            answers (metrics under ``"scan"``, rows in ``scans.csv``); slice runs only.
        localisation: score attention masks against lesion masks where possible, and the heatmaps:
            the run's default kind and each of ``heatmaps`` (``"cam,gradcam16"`` or a list), next to a
            centre prior and the whole body (``"heatmap_localisation"``, in ``localisation.json`` under
            ``"heatmaps"``; :mod:`chestdx.evaluate.localisation`).
        speed: execution mode setting (``auto``, ``fp32``, ``channels_last+bf16``, ...; see
            :mod:`chestdx.engine.precision`); default the recipe's ``inference.speed``. The mode
            chosen is recorded as ``"speed"`` in the metrics.
        device: where the model runs (a :class:`torch.device` or an accelerator: ``cpu``, ``cuda``,
            ``auto``, ...; :func:`chestdx.engine.device.resolve_device`); the figures are the CPU's
            to float precision.

    Returns:
        the metrics dict (also written to ``out``).

    Raises:
        DatasetError: the split is empty.
    """
    from chestdx.evaluate.plots import plot_confusion_matrix, plot_roc

    run = run if isinstance(run, Run) else Run(run)
    recipe = run.recipe
    task = get_task(recipe)  # what a case is, its data set, and the task's own results (chestdx.tasks)
    from chestdx.evaluate.localisation import parse_heatmap_kinds

    heatmap_kinds = ["auto", *[k for k in parse_heatmap_kinds(heatmaps) if k != "auto"]]  # checked before any work
    if sources:
        samples = task.load_samples(sources, recipe)
    else:
        samples = run.samples()
    chosen = [s for s in samples if s.split == split]
    if not chosen:
        raise DatasetError(f"no '{split}' images to evaluate (splits present: "
                           f"{sorted({str(s.split) for s in samples})})")
    out = Path(out) if out else run.path / f"eval-{split}"
    out.mkdir(parents=True, exist_ok=True)
    model = run.load_model(which, device=device)
    chosen, case_report = task.eval_cases(recipe, chosen, split)  # e.g. a sequence run's sequences
    ds = task.eval_dataset(recipe, chosen, run.site_names or None)
    loader = DataLoader(ds, batch_size=recipe.data.batch_size, shuffle=False)
    name = procedure or recipe.inference.name
    params = procedure_params_of(recipe, name, procedure_params)  # intra_ensemble: the run's own views
    from chestdx.engine.precision import FP32, InferenceSpeed, running

    device = next((p.device for p in model.parameters()), "cpu")
    control = InferenceSpeed(model, speed or recipe.inference.speed, device)
    preds = predict_loader(model, loader, name, params, progress=progress, speed=control)
    mode = next(iter(control.modes.values()), FP32)
    class_names = run.class_names
    order = preds["index"].astype(int)
    result = evaluate_predictions(
        preds["probs"], preds["label"].astype(int), [chosen[i].site for i in order],
        [chosen[i].patient_id for i in order], class_names, n_boot=n_boot, seed=recipe.seed,
        aggregate=aggregate, case_unit=task.case_unit,
    )
    result["split"] = split
    result["procedure"] = name
    if params:
        result["procedure_params"] = params
    result["n_images"] = len(chosen)
    from chestdx.engine.datamodule import patient_leak_check

    result["leakage"] = patient_leak_check(recipe, samples, refuse=False)  # the split check, stated in metrics.md
    result["speed"] = mode.name
    if scan_aggregate and task.scan_aggregation:
        from chestdx.data.sequences import scan_id_of
        from chestdx.evaluate.metrics import classification_metrics
        from chestdx.evaluate.scan_level import scan_level_answers, write_scan_answers

        answers = scan_level_answers(preds["probs"], [scan_id_of(chosen[i]) for i in order], scan_aggregate,
                                     labels=preds["label"].astype(int))
        scan_patient = {scan_id_of(chosen[i]): f"{chosen[i].site}/{chosen[i].patient_id}" for i in order}
        result["scan"] = classification_metrics(np.asarray(answers.labels), answers.probs, class_names, n_boot=n_boot,
                                                seed=recipe.seed, groups=[scan_patient[q] for q in answers.scan_ids],
                                                case_unit="scan")
        result["scan"]["aggregate"] = scan_aggregate
        result["scan"]["n_scans"] = len(answers.scan_ids)
        write_scan_answers(out / "scans.csv", answers, class_names)
    if localisation and task.heatmap_localisation and any(s.mask for s in chosen):
        from chestdx.explain.attention_masks import localisation_iou

        with running(model, mode, device):
            loc = localisation_iou(model, loader, overlays_dir=out / "attention")
        if loc["n_images"]:
            result["localisation"] = {k: v for k, v in loc.items() if k != "per_image"}
            write_json(out / "localisation.json", loc)
    if localisation and task.heatmap_localisation and any(s.mask for s in chosen):
        # every heatmap kind asked for (evaluate/localisation.py)
        from chestdx.evaluate.localisation import score_heatmaps

        with running(model, mode, device):
            hloc = score_heatmaps(model, loader, chosen, heatmap_kinds, n_boot=n_boot, seed=recipe.seed)
        if hloc["n_images"]:
            result["heatmap_localisation"] = {k: v for k, v in hloc.items() if k != "per_image"}
            attention = loc if "localisation" in result else {}  # loc: the attention scores above
            write_json(out / "localisation.json", {**attention, "heatmaps": hloc})
    if localisation and not task.heatmap_localisation and any(s.mask for s in chosen):
        # a task's own maps: the volume model's 3D Grad-CAM per slice, the lesion model's masks
        with running(model, mode, device):
            own = task.score_localisation(model, loader, chosen, heatmap_kinds, n_boot=n_boot, seed=recipe.seed)
        if own is not None and own["n_images"]:
            hloc = own
            result["heatmap_localisation"] = {k: v for k, v in hloc.items() if k != "per_image"}
            write_json(out / "localisation.json", {"heatmaps": hloc})
    # the task's own results: a sequence run's builder report and Fig. 6, a lesion run's Eq. 14 F1 / mask AP
    result.update(task.evaluate_extra(Evaluation(
        run=run, model=model, preds=preds, cases=chosen, dataset=ds, report=case_report, split=split, out=out,
        class_names=list(class_names), mode=mode, device=device, segmentation_sources=segmentation_sources)))
    if "flipped" in preds:
        result["flipped"] = int(preds["flipped"].sum())
    write_json(out / "metrics.json", result)
    if not sources:  # the run's own split: remember where, so that export finds it (model card)
        record_evaluation(run.path, split, out / "metrics.json")
    write_text(out / "metrics.md", metrics_report_markdown(result, f"{recipe.name} on {split}"))
    write_predictions(out / "predictions.csv", chosen, preds, class_names)
    plot_confusion_matrix(np.asarray(result["overall"]["confusion_matrix"]), class_names,
                          out / "confusion_matrix.png")
    plot_roc(preds["label"].astype(int), preds["probs"], class_names, out / "roc.png")
    return result
