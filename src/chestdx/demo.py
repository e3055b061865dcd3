"""``chestdx demo``: the whole path on the embedded phantom, on a CPU, in a few minutes.

1. make a two-site, three-class phantom (normal / pneumonia / covid CT slices);
2. train the ``demo`` recipe (the baseline shrunk: ResNet-18, 64 px, from scratch);
3. evaluate on the held-out patients, per site, with 95% bootstrap intervals;
4. draw heatmaps (integrated gradients per cell of an 8 x 8 chequer, the measured best; docs/explain.md)
   over test images;
5. export the model bundle (``demo_out/model``) and answer one test image with it
   (``demo_out/study_report.html``, what ``chestdx report`` writes);
6. write one self-contained HTML report.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any


def run_demo(out: str | Path = "demo_out", quick: bool = False, progress: bool = True) -> Path:
    """Run the demo into ``out``; returns the path of ``report.html``.

    ``quick`` shrinks everything (fewer patients, 2 epochs) for tests.
    """
    from chestdx.config import load_recipe
    from chestdx.engine.train import train
    from chestdx.evaluate.plots import plot_training_curves, save_png
    from chestdx.evaluate.report import html_report, write_html
    from chestdx.evaluate.run import evaluate_run, metrics_report_markdown
    from chestdx.explain.overlays import overlay_answer
    from chestdx.phantom import synthesize_slices
    from chestdx.predict.predictor import Prediction, Predictor

    out = Path(out)
    t0 = time.time()
    data = out / "phantom"
    patients = 8 if quick else 60
    if not (data / "manifest.csv").is_file():
        synthesize_slices(data, n_patients_per_class=patients, slices_per_patient=2, num_classes=3,
                          sites=2, size=96 if quick else 128, seed=0)
    overrides = {"trainer": {"epochs": 2}} if quick else {}
    recipe = load_recipe("demo", overrides)
    run_dir = out / "run"
    if (run_dir / "train.json").is_file():
        from chestdx.engine.run import Run

        run = Run(run_dir)
    else:
        resume = (run_dir / "checkpoints" / "last.ckpt").is_file()
        run = train(recipe, [data / "manifest.csv"], run_dir, resume=resume, progress=progress)
    t_train = time.time() - t0
    result = evaluate_run(run, split="test", out=out / "eval", n_boot=200 if quick else 1000,
                          aggregate="mean")
    history = json.loads((run_dir / "history.json").read_text())
    plot_training_curves(history, out / "eval" / "training_curves.png")

    predictor = Predictor(run.path)
    test = [s for s in run.samples() if s.split == "test"]
    picks = []
    for label in range(len(run.class_names)):
        picks += [s for s in test if s.label == label][:2]
    images = []
    for s, pred in zip(picks, predictor.predict_files([s.path for s in picks], heatmap=True), strict=True):
        if not isinstance(pred, Prediction) or pred.heatmap is None or pred.image is None:
            continue
        png = out / "heatmaps" / f"{Path(s.path).stem}.png"
        save_png(overlay_answer(pred), png)  # own size, colour bar, kind and grid
        caption = (f"{Path(s.path).name}: true {run.class_names[s.label]}, predicted {pred.label} "
                   f"({pred.probs[pred.label]:.2f})")
        images.append((caption, png))
    from chestdx.predict.bundle import export_bundle
    from chestdx.predict.report import write_study_report

    bundle = export_bundle(run, out / "model", overwrite=True)
    study = write_study_report(Predictor(bundle), picks[-1].path, out / "study_report.html")
    wall = time.time() - t0
    overall = result["overall"]
    summary = (
        f"Phantom: 3 classes x {patients} patients x 2 sites, 2 slices each; recipe **demo** "
        f"({recipe.description}), {recipe.trainer.epochs} epochs. Test images: "
        f"{result['n_images']}. Accuracy {100 * overall['accuracy']['value']:.1f}%, macro F1 "
        f"{100 * overall['macro_f1']['value']:.1f}%. Training {t_train:.0f} s, whole demo {wall:.0f} s "
        f"on this machine. Heatmaps are integrated gradients of the predicted class summed per cell of an 8 x 8 "
        f"chequer (8 px cells at 64 px), the kind that points at the lesion most often for the cost "
        f"(docs/explain.md); their scores against the lesion masks are in the metrics below. "
        f"The trained model is exported as a bundle in `{bundle}` (serve it with `chestdx serve {bundle}`); "
        f"`{study.name}` is its one-page report on a test image."
    )
    md = metrics_report_markdown(result, "demo")
    sections = [("Summary", summary), ("Metrics (95% bootstrap intervals)", md)]
    figs = [("Confusion matrix (test)", out / "eval" / "confusion_matrix.png"),
            ("ROC (test, one-vs-rest)", out / "eval" / "roc.png"),
            ("Training curves", out / "eval" / "training_curves.png")] + images
    report = out / "report.html"
    write_html(report, html_report("chestdx demo: baseline on the synthetic chest phantom", sections, figs))
    import logging

    def ci(m: dict[str, Any]) -> str:
        lo, hi = m.get("low"), m.get("high")
        band = f" (95% CI {100 * lo:.1f}-{100 * hi:.1f})" if lo is not None and hi is not None else ""
        return f"{100 * m['value']:.1f}%{band}"

    logging.getLogger("chestdx.demo").info(
        "test split, %d images: accuracy %s, macro F1 %s, macro AUC %s; training %.0f s, demo %.0f s",
        result["n_images"], ci(overall["accuracy"]), ci(overall["macro_f1"]), ci(overall["macro_auc"]), t_train, wall)
    return report
