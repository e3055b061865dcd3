"""Heatmap localisation of a trained slice run on data with lesion masks, measured (no assertions).

The numbers of docs/explain.md ("Measured"). For each source, every image with a non-empty lesion
mask is scored (:func:`chestdx.evaluate.localisation.score_heatmaps`: pointing game, energy inside,
IoU / Dice, patient-level 95% intervals, next to the centre prior and the whole body), for the
run's default map and each ``--heatmap`` kind, preprocessed exactly as the run's test images
(``data`` section of its recipe: crop, resize, normalise; the mask gets the same crop and resize).

Sources:

- a segmentation folder (``index.csv`` with ``image`` / ``infection_mask`` / ``volume_group``, e.g.
  ``../shared/data/covid19_ct_seg_slices``; or ``image`` / ``gt``, ``../shared/data/infnet_covid_semiseg_test``):
  every slice is used (they are all COVID-positive: label ``covid``), patients are ``volume_group``
  (the Inf-Net test set has no patient ids: each image counts as its own patient, so its interval
  is too narrow if slices share a patient);
- any other data source chestdx reads (a phantom ``manifest.csv``): its ``--split`` images.

Run: ``python benchmarks/measure_localisation.py RUN --data SRC [SRC ...] [--heatmap cam,gradcam16]
[--max-images N] [--target predicted|true] [--intgrad-steps 1 2 4 8] [--out results.json]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Any


def load_scored_samples(src: str, recipe: Any, split: str) -> list[Any]:
    """The samples of one source to score, every one with ``split="test"``."""
    from chestdx.data.lesions import load_segmentation_source
    from chestdx.tasks import load_samples

    root = Path(src)
    if (root / "index.csv").is_file():
        samples = load_segmentation_source(root, recipe.data.class_names)
    else:
        samples = [s for s in load_samples([src], recipe) if s.split == split]
    return [dataclasses.replace(s, split="test") for s in samples if s.mask]


def measure(run_dir: str, sources: list[str], kinds: list[str], split: str = "test", max_images: int = 0,
            n_boot: int = 1000, target: str = "predicted") -> dict[str, Any]:
    """``{source: score_heatmaps(...) without per_image, + accuracy on the scored images}``."""
    import numpy as np
    import torch
    from torch.utils.data import DataLoader

    from chestdx.engine.run import Run
    from chestdx.evaluate.localisation import localisation_markdown, score_heatmaps
    from chestdx.tasks import get_task

    run = Run(run_dir)
    recipe = run.recipe
    task = get_task(recipe)
    model = run.load_model("best")
    out: dict[str, Any] = {}
    for src in sources:
        samples = load_scored_samples(src, recipe, split)
        if max_images and len(samples) > max_images:  # evenly spaced, every patient kept in proportion
            keep = np.linspace(0, len(samples) - 1, max_images).round().astype(int)
            samples = [samples[i] for i in sorted(set(keep.tolist()))]
        ds = task.eval_dataset(recipe, samples, None)
        loader = DataLoader(ds, batch_size=8, shuffle=False)
        t0 = time.perf_counter()
        res = score_heatmaps(model, loader, samples, ["auto", *[k for k in kinds if k != "auto"]], n_boot=n_boot,
                             seed=recipe.seed, target=target)
        # the answer on the same images (all lesion images: the class their label names)
        correct, n = 0, 0
        with torch.no_grad():
            for batch in loader:
                pred = model(batch["image"]).logits.argmax(1)
                correct += int((pred == batch["label"]).sum())
                n += len(pred)
        res.pop("per_image", None)
        res["accuracy_on_scored"] = correct / max(n, 1)
        res["seconds"] = time.perf_counter() - t0
        res["source"] = src
        out[src] = res
        print(localisation_markdown(res, f"{Path(run_dir).name} on {Path(src).name}"))
        print(f"\naccuracy on these images: {res['accuracy_on_scored']:.3f}; {res['seconds']:.0f} s; "
              f"load average {os.getloadavg()[0]:.2f}\n")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run")
    ap.add_argument("--data", nargs="+", required=True)
    ap.add_argument("--heatmap", default="cam,gradcam16,layercam16,layercam8,fused16")
    ap.add_argument("--split", default="test", help="split of a non-segmentation source")
    ap.add_argument("--max-images", type=int, default=0, help="score at most this many images per source (0: all)")
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--target", default="predicted", choices=["predicted", "true"],
                    help="whose map is scored: the predicted class's (default) or the labelled class's")
    ap.add_argument("--out", help="write the results as JSON here")
    ap.add_argument("--intgrad-steps", type=int, nargs="+",
                    help="measure once per value with intgrad_map's Riemann points set to it (default: IG_STEPS); "
                         "the table in docs/explain.md, 'How many Riemann points': --intgrad-steps 1 2 4 8")
    a = ap.parse_args()
    from chestdx.evaluate.localisation import parse_heatmap_kinds
    from chestdx.explain.occlusion import intgrad_map

    kinds = parse_heatmap_kinds(a.heatmap)
    if not a.intgrad_steps:
        res = measure(a.run, a.data, kinds, a.split, a.max_images, a.n_boot, a.target)
    else:  # heatmap() calls intgrad_map with its default steps: set that default, then put it back
        saved = intgrad_map.__kwdefaults__["steps"]
        res = {}
        try:
            for steps in a.intgrad_steps:
                intgrad_map.__kwdefaults__["steps"] = steps
                print(f"## intgrad with {steps} Riemann point(s)")
                res[f"intgrad_steps={steps}"] = measure(a.run, a.data, kinds, a.split, a.max_images, a.n_boot, a.target)
        finally:
            intgrad_map.__kwdefaults__["steps"] = saved
    if a.out:
        Path(a.out).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
