"""Affinity model (maskrcnn-lesion-affinity.txt) measured end to end: phantom 3-class answers and COCO
mask AP, on the phantom's lesion masks or on real segmentation slices.

Trains one ``affinity_*`` recipe with Algorithm 1 (classification data: a fresh phantom; segmentation
data: ``--seg-data`` folders, or the phantom's own masks), then scores the test splits: 3-class
sensitivity / specificity / Eq. 14 F1 on the phantom, mask AP on the segmentation test split and on
every ``--extra-seg`` set (all of whose images are test images, e.g. the Inf-Net test set). Prints a
markdown table and writes ``results.json``. Time-boxed by ``--max-minutes`` (Lightning ``max_time``).

    python benchmarks/affinity_bench.py --out /tmp/aff --size 128 --max-minutes 2
    python benchmarks/affinity_bench.py --out /tmp/aff --size 256 --seg-data ../shared/data/covid19_ct_seg_slices \\
        --extra-seg ../shared/data/infnet_covid_semiseg_test --max-minutes 4
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--recipe", default="affinity_64")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--patients", type=int, default=40, help="phantom patients per class")
    ap.add_argument("--seg-data", nargs="*", default=[])
    ap.add_argument("--extra-seg", nargs="*", default=[])
    ap.add_argument("--backbone", default="resnet50")
    ap.add_argument("--epochs", type=int, default=100)
    ap.add_argument("--max-minutes", type=float, default=4.0)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--val-batches", type=int, help="validation batches per epoch (default: all)")
    ap.add_argument("--set", nargs="*", default=[], help="more recipe overrides key=value")
    args = ap.parse_args()

    from chestdx.config import load_recipe
    from chestdx.data.datasets import SliceDataset
    from chestdx.data.lesions import load_segmentation_sources
    from chestdx.engine.run import Run
    from chestdx.engine.train import train
    from chestdx.evaluate.lesion import class_metrics, evaluate_segmentation
    from chestdx.phantom import synthesize_slices
    from chestdx.utils import write_json

    out = Path(args.out)
    t0 = time.time()
    manifest = synthesize_slices(out / "phantom", n_patients_per_class=args.patients, slices_per_patient=2,
                                 num_classes=3, sites=1, size=args.size, seed=0)
    t_synth = time.time() - t0
    over = [f"data.image_size={args.size}", f"data.batch_size={args.batch}", f"trainer.epochs={args.epochs}",
            f"model.backbone={args.backbone}", f"optim.lr={args.lr}",
            f"data.min_lesion_area={max(4, round(100 * (args.size / 512) ** 2))}"]
    if args.seg_data:
        over.append("data.segmentation_sources=[" + ", ".join(str(Path(p).resolve()) for p in args.seg_data) + "]")
    recipe = load_recipe(args.recipe, over + list(args.set))
    t0 = time.time()
    trainer_over: dict[str, object] = {"max_time": {"minutes": args.max_minutes}}
    if args.val_batches:
        trainer_over["limit_val_batches"] = args.val_batches
    run = train(recipe, [manifest], out / "run", progress=False, trainer_overrides=trainer_over)
    t_train = time.time() - t0
    hist = json.loads((out / "run" / "history.json").read_text())
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = Run(run.path).load_model().to(device).eval()
    t0 = time.time()
    test = [s for s in run.samples() if s.split == "test"]
    ds = SliceDataset(test, recipe.data, cache=False)
    probs, labels = [], []
    with torch.no_grad():
        for i in range(0, len(ds), 16):
            items = [ds[j] for j in range(i, min(len(ds), i + 16))]
            x = torch.stack([it["image"] for it in items]).to(device)
            probs.append(model(x).probs.cpu().numpy())
            labels += [int(it["label"]) for it in items]
    if not probs:
        raise SystemExit("the phantom has no test images: raise --patients")
    cls = class_metrics(np.array(labels), np.concatenate(probs).argmax(1), recipe.data.class_names)
    t_cls = time.time() - t0
    from chestdx.engine.run import read_samples

    seg_sets = {"segmentation test split": [s for s in read_samples(out / "run" / "segmentation_samples.csv")
                                            if s.split == "test"]}
    for p in args.extra_seg:
        seg_sets[Path(p).name] = [s for s in load_segmentation_sources([p], recipe.data.class_names)
                                  if s.split == "test"]
    seg = {}
    for name, samples in seg_sets.items():
        r = evaluate_segmentation(model, samples, recipe.data, out / "eval" / name.replace(" ", "_"), overlays=2)
        seg[name] = {k: v for k, v in r.items() if k != "per_image"}
    res = {"recipe": recipe.name, "size": args.size, "backbone": args.backbone, "device": device,
           "epochs_run": len(hist), "synth_seconds": round(t_synth, 1), "train_seconds": round(t_train, 1),
           "classify_seconds": round(t_cls, 1), "history_last": hist[-1] if hist else None,
           "classification": cls, "segmentation": seg, "n_test_images": len(test)}
    write_json(out / "results.json", res)
    print(f"## {recipe.name}, {args.backbone} FPN, {args.size} px, {len(hist)} epochs, {device}: "
          f"train {t_train:.0f} s\n")
    print("| class | sensitivity | specificity | F1 (usual) |\n|---|---|---|---|")
    for n, c in cls["per_class"].items():
        print(f"| {n} | {c['sensitivity']:.3f} | {c['specificity']:.3f} | {c['f1']:.3f} |")
    print(f"\nEq. 14 F1 (not the usual F1) {cls['eq14_f1']:.3f}; weighted F1 {cls['weighted_f1']:.3f}; "
          f"accuracy {cls['accuracy']:.3f} ({len(test)} phantom test images)\n")
    print("| segmentation set | images (neg.) | paper AP@0.5 | AP@0.75 | AP@[.5:.95] | COCO AP@0.5 | AP@0.75 | "
          "AP@[.5:.95] | s |\n|---|---|---|---|---|---|---|---|---|")
    for name, r in seg.items():
        p, c = r["paper"], r["coco"]
        print(f"| {name} | {r['n_images']} ({r['n_negative']}) | {p['AP50']:.3f} | {p['AP75']:.3f} | {p['AP']:.3f} "
              f"| {c['AP50']:.3f} | {c['AP75']:.3f} | {c['AP']:.3f} | {r['wall_seconds']} |")


if __name__ == "__main__":
    main()
