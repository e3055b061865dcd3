"""ResNet-ATT2 per slice and the Bi-LSTM per scan on phantom scans, in the layout of Tables III-IV of
resnet50-att2-bilstm-covidx-ct.txt, plus scan-level answers of the slice model and the localisation
IoU of its attention masks (on the phantom's test slices and, where present, on the real COVID-19
CT segmentation slices of ``../shared/data``).

CPU scale by default (ResNet-18, 64 px, from scratch, flips only: on small from-scratch runs the
paper's affine augmentation slows learning, see the demo recipe). Prints markdown; asserts nothing.
Run: ``python benchmarks/bench_att2_sequence.py [--patients 12 --size 64 --epochs 6 --seq-epochs 15]``.
"""

from __future__ import annotations

import argparse
import csv
import tempfile
import time
from pathlib import Path
from typing import Any


def paper_table(metrics: dict[str, Any], title: str) -> str:
    """Per-class precision / recall / F1 and their support-weighted averages (Tables III-IV layout)."""
    rows = [f"### {title}", "", "| Class | Precision | Recall | F1 | Support |", "|---|---|---|---|---|"]
    total = sum(int(v["support"]) for v in metrics["per_class"].values())
    avg = {"precision": 0.0, "recall": 0.0, "f1": 0.0}
    for name, v in metrics["per_class"].items():
        rows.append(f"| {name} | {v['precision']['value']:.3f} | {v['recall']['value']:.3f} | "
                    f"{v['f1']['value']:.3f} | {v['support']} |")
        for k in avg:
            avg[k] += v[k]["value"] * int(v["support"]) / max(total, 1)
    rows.append(f"| Weighted average | {avg['precision']:.3f} | {avg['recall']:.3f} | {avg['f1']:.3f} | {total} |")
    return "\n".join(rows) + "\n"


def real_seg_iou(run: Any, limit: int) -> dict[str, Any] | None:
    """Localisation IoU of the run's attention masks on the real infection-mask slices."""
    import sys

    from torch.utils.data import DataLoader

    from chestdx.data.datasets import SliceDataset
    from chestdx.data.layouts import Sample
    from chestdx.explain.attention_masks import localisation_iou

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from conftest import real_data_root  # type: ignore[import-not-found]

    root = real_data_root()
    if root is None or not (root / "covid19_ct_seg_slices" / "index.csv").is_file():
        return None
    seg = root / "covid19_ct_seg_slices"
    rows = list(csv.DictReader(open(seg / "index.csv")))
    step = max(1, len(rows) // limit)
    samples = [Sample(str(seg / r["image"]), 2, r["volume_group"], "seg", str(seg / r["infection_mask"]))
               for r in rows[::step][:limit]]
    ds = SliceDataset(samples, run.recipe.data, train=False, cache=False)
    return localisation_iou(run.load_model(), DataLoader(ds, batch_size=32))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--patients", type=int, default=12, help="scans per class")
    ap.add_argument("--slices", type=int, default=20)
    ap.add_argument("--min-slices", type=int, default=14)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--seq-epochs", type=int, default=15)
    ap.add_argument("--backbone", default="resnet18")
    ap.add_argument("--real-limit", type=int, default=200)
    ap.add_argument("--out", help="work folder (default: a temporary one)")
    args = ap.parse_args()

    from chestdx.config import load_recipe
    from chestdx.engine.train import train
    from chestdx.evaluate.run import evaluate_run
    from chestdx.phantom.sequences import synthesize_sequences

    work = Path(args.out or tempfile.mkdtemp(prefix="att2_bench_"))
    t0 = time.time()
    manifest = synthesize_sequences(work / "data", n_patients_per_class=args.patients, slices_per_scan=args.slices,
                                    min_slices=args.min_slices, size=args.size, seed=0)
    t_synth = time.time() - t0
    flips = {"hflip": 0.5, "vflip": 0.5, "rotate": 0, "scale": [1.0, 1.0], "translate": 0.0, "shear": 0,
             "blur_prob": 0.0}
    slice_over = {"data": {"image_size": args.size, "batch_size": 32, "augment": flips},
                  "model": {"backbone": args.backbone, "weights": "none"},
                  "trainer": {"epochs": args.epochs, "limit_train_batches": None, "accelerator": "cpu"}}
    t0 = time.time()
    att2 = train(load_recipe("att2", slice_over), [manifest], work / "att2", progress=False)
    t_att2 = time.time() - t0
    res = evaluate_run(att2, n_boot=0, scan_aggregate="mean")
    out = [f"# ResNet-ATT2 and Bi-LSTM on phantom scans ({args.backbone}, {args.size} px, from scratch)", "",
           f"data: {args.patients} scans per class, {args.min_slices}-{args.slices} slices, synthesised in "
           f"{t_synth:.0f} s; ATT2 {args.epochs} epochs in {t_att2:.0f} s", "",
           paper_table(res["overall"], f"ATT2 per slice (Table III layout), {res['n_images']} test slices")]
    for how in ("mean", "majority", "max"):
        r = evaluate_run(att2, n_boot=0, scan_aggregate=how, localisation=False, out=work / f"eval-scan-{how}")
        out.append(paper_table(r["scan"], f"ATT2 per scan, {how} of the slice answers, {r['scan']['n_scans']} scans"))
    loc = res.get("localisation")
    if loc:
        out.append(f"ATT2 attention masks vs phantom lesion masks (test slices with a lesion, n={loc['n_images']}): "
                   f"IoU mean {loc['iou_mean']:.3f}, median {loc['iou_median']:.3f}, Dice {loc['dice_mean']:.3f}\n")
    real = real_seg_iou(att2, args.real_limit)
    if real is not None:
        out.append(f"ATT2 (phantom-trained) attention masks vs real infection masks (covid19_ct_seg_slices, "
                   f"n={real['n_images']}): IoU mean {real['iou_mean']:.3f}, median {real['iou_median']:.3f}, "
                   f"Dice {real['dice_mean']:.3f}\n")
    seq_over = {"data": {"image_size": args.size, "batch_size": 8, "augment": flips},
                "model": {"params": {"encoder": str(att2.path)}},
                "trainer": {"epochs": args.seq_epochs, "accelerator": "cpu"}}
    t0 = time.time()
    seq = train(load_recipe("att2_bilstm", seq_over), [manifest], work / "bilstm", progress=False)
    t_seq = time.time() - t0
    r = evaluate_run(seq, n_boot=0)
    out.append(paper_table(r["overall"], f"Bi-LSTM per scan (Table IV layout), {r['n_images']} test scans "
                                         f"({args.seq_epochs} epochs max, {t_seq:.0f} s; sequences {r['sequences']})"))
    print("\n".join(out))
    print(f"work folder: {work}")


if __name__ == "__main__":
    main()
