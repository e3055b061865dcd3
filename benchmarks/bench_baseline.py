"""Baseline speed on this machine: training and inference images/s of ResNet-50 + MLP at 224 px,
and data-loading images/s cold (reading files) vs cached (MONAI CacheDataset).

Prints a markdown table; nothing is asserted. Run: ``python benchmarks/bench_baseline.py``
(``--quick`` for a smaller run, ``--size``, ``--backbone``, ``--batch``).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import torch


def bench_model(backbone: str, size: int, batch: int, steps: int) -> dict[str, float]:
    from chestdx.config import validate_recipe
    from chestdx.engine.task import ChestTask

    recipe = validate_recipe({"name": "bench", "data": {"image_size": size},
                              "model": {"backbone": backbone, "weights": "none"}})
    task = ChestTask(recipe)
    opt = task.configure_optimizers()
    opt = opt["optimizer"] if isinstance(opt, dict) else opt
    x = torch.randn(batch, 1, size, size)
    y = torch.randint(0, 2, (batch,))
    batch_d = {"image": x, "label": y, "target": torch.nn.functional.one_hot(y, 2).float()}
    task.train()
    for i in range(steps + 1):
        if i == 1:
            t0 = time.perf_counter()
        loss, _, _ = task.compute_losses(batch_d)
        opt.zero_grad()
        loss.backward()
        opt.step()
    train_ips = steps * batch / (time.perf_counter() - t0)
    task.eval()
    xb = torch.randn(2 * batch, 1, size, size)
    with torch.no_grad():
        task.model(xb)
        t0 = time.perf_counter()
        for _ in range(steps):
            task.model(xb)
    infer_ips = steps * 2 * batch / (time.perf_counter() - t0)
    return {"train_images_per_s": train_ips, "infer_images_per_s": infer_ips}


def _loading_source(tmp: Path, n_patients: int) -> tuple[list, tuple[str, ...], str]:
    """Real COVID-CT (large PNGs, as users have) where present, else a 512 px phantom."""
    import os

    from chestdx.data.layouts import load_source
    from chestdx.phantom import synthesize_slices

    root = Path(os.environ.get("CHESTDX_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
    if (root / "covid_ct_ucsd").is_dir():
        names = ("noncovid", "covid")
        return load_source(str(root / "covid_ct_ucsd"), names)[: 6 * n_patients], names, "COVID-CT PNGs"
    manifest = synthesize_slices(tmp, n_patients_per_class=n_patients, slices_per_patient=2, num_classes=3,
                                 sites=1, size=512, seed=0)
    names = ("normal", "pneumonia", "covid")
    return load_source(str(manifest), names), names, "phantom 512 px PNGs"


def bench_loading(n_patients: int, size: int) -> dict[str, Any]:
    from chestdx.config import DataConfig
    from chestdx.data.datasets import SliceDataset

    with tempfile.TemporaryDirectory() as tmp:
        samples, names, what = _loading_source(Path(tmp), n_patients)
        cfg = DataConfig(image_size=size, class_names=names)
        warm = SliceDataset(samples[:8], cfg, train=True, cache=False)
        for i in range(len(warm)):  # first calls of the transforms pay one-off dispatch costs
            warm[i]
        out: dict[str, Any] = {"n_images": len(samples), "source": what}
        for cached in (False, True):
            t0 = time.perf_counter()
            ds = SliceDataset(samples, cfg, train=True, cache=cached, cache_workers=1)
            build = time.perf_counter() - t0
            t0 = time.perf_counter()
            for _ in range(2):  # two epochs
                for i in range(len(ds)):
                    ds[i]
            per_epoch = (time.perf_counter() - t0) / 2
            key = "cached" if cached else "uncached"
            out[f"{key}_images_per_s"] = len(ds) / per_epoch
            out[f"{key}_build_s"] = build
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--backbone", default="resnet50")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    if args.quick:
        args.backbone, args.size, args.steps = "resnet18", 64, 2
    m = bench_model(args.backbone, args.size, args.batch, args.steps)
    d = bench_loading(10 if args.quick else 50, args.size)
    print(f"| what ({args.backbone}, {args.size} px, batch {args.batch}, {torch.get_num_threads()} threads) | figure |")
    print("|---|---|")
    print(f"| training images/s | {m['train_images_per_s']:.1f} |")
    print(f"| inference images/s | {m['infer_images_per_s']:.1f} |")
    print(f"| data loading images/s, uncached (read + preprocess + augment) | {d['uncached_images_per_s']:.1f} |")
    print(f"| data loading images/s, cached (augment only) | {d['cached_images_per_s']:.1f} |")
    print(f"| cached / uncached loading ratio | {d['cached_images_per_s'] / d['uncached_images_per_s']:.1f}x |")
    print(f"| cache fill time for {d['n_images']} images ({d['source']}) | {d['cached_build_s']:.2f} s |")


if __name__ == "__main__":
    main()
