"""CMC-COV19D on 3D volumes: one training step (peak memory, volumes/s) and data loading cold vs cached.

Training step: the ``cmc_model4`` recipe (two augmented views per volume, SupCon + CE + input mixup
under learned uncertainty weights, so three encoder passes' worth of activations: 2B views + 2B mixed
views) on random volumes, at each ``--shapes`` entry; each configuration runs in a fresh
subprocess so that its peak memory is its own (CUDA: ``max_memory_allocated``; CPU: the process's
peak resident set size, which includes the Python runtime and the model). Options: ``--precision
bf16-mixed`` (autocast), ``--checkpointing`` (activation checkpointing per stage).

Data loading: phantom NIfTI volumes (``synthesize_volumes``) read through ``VolumeDataset``: the
first pass reads, resizes and writes the on-disk cache (cold), the second reads the cache only.

    python benchmarks/bench_volume.py --small                 # CPU-sized: 16x64x64 and 32x128x128, resnet18
    python benchmarks/bench_volume.py --device cuda           # the paper's sizes: 64x128x128, 128x256x256
    python benchmarks/bench_volume.py --device cuda --precision bf16-mixed --checkpointing
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def one_step(args: argparse.Namespace) -> dict:
    """Measure one configuration in this process; print one JSON line."""
    import torch

    from chestdx.config import load_recipe
    from chestdx.engine.task import ChestTask

    d, h, w = (int(v) for v in args.shape.split("x"))
    over = [f"model.backbone={args.backbone}", "model.weights=none", f"data.image_size={h}",
            f"data.volume_depth={d}", f"mixing.params.depth={d if args.full_depth else max(1, d // 2)}",
            f"model.params.checkpointing={str(args.checkpointing).lower()}"]
    recipe = load_recipe(args.recipe, over)
    device = torch.device(args.device)
    torch.manual_seed(0)
    task = ChestTask(recipe).to(device)
    task.train()
    batch = {"image": torch.rand(args.batch, 1, d, h, w, device=device),
             "label": torch.arange(args.batch, device=device) % 2,
             "site": torch.zeros(args.batch, dtype=torch.long, device=device),
             "index": torch.arange(args.batch, device=device)}
    # first step materialises the lazy projection layer; then build the optimiser
    bf16 = args.precision == "bf16-mixed"

    def step(opt: torch.optim.Optimizer | None) -> float:
        import torch.nn.functional as F

        b = dict(batch)
        b["target"] = F.one_hot(b["label"], 2).float()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            b = task.mixer(task.model, b) if task.mixer is not None else b
            loss, _, _ = task.compute_losses(b)
        loss.backward()
        if opt is not None:
            opt.step()
            opt.zero_grad(set_to_none=True)
        return float(loss)

    step(None)
    opt = torch.optim.Adam([p for p in task.parameters() if p.requires_grad], lr=1e-4)
    task.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        step(opt)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    best = min(times)
    res = {"shape": args.shape, "backbone": args.backbone, "batch_volumes": args.batch,
           "views_per_step": 2 * args.batch, "precision": args.precision, "checkpointing": args.checkpointing,
           "device": args.device, "step_s": round(best, 3), "volumes_per_s": round(args.batch / best, 3),
           "peak_mb": round(torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else _peak_rss_mb(), 1),
           "peak_kind": "cuda max_memory_allocated" if device.type == "cuda" else "process peak RSS"}
    print(json.dumps(res))
    return res


def loading(n: int, shape: tuple[int, int, int], out: Path) -> dict:
    """Volumes/s through VolumeDataset: cold (read + resize + cache write), then cached."""
    from chestdx.config import VolumeDataConfig
    from chestdx.data.layouts import from_manifest
    from chestdx.data.volume_dataset import VolumeDataset
    from chestdx.phantom.volumes import synthesize_volumes

    per_class = max(1, n // 2)
    manifest = synthesize_volumes(out / "vols", n_patients_per_class=per_class, num_classes=2, shape=shape)
    samples = from_manifest(manifest, ["noncovid", "covid"])
    cfg = VolumeDataConfig(image_size=shape[1], volume_depth=shape[0], hu_window=(-600.0, 1500.0),
                           cache_dir=str(out / "cache"))
    ds = VolumeDataset(samples, cfg)
    t0 = time.perf_counter()
    for i in range(len(ds)):
        ds[i]
    cold = time.perf_counter() - t0
    t0 = time.perf_counter()
    for i in range(len(ds)):
        ds[i]
    warm = time.perf_counter() - t0
    return {"volumes": len(ds), "shape": "x".join(map(str, shape)), "cold_volumes_per_s": round(len(ds) / cold, 2),
            "cached_volumes_per_s": round(len(ds) / warm, 2), "speedup": round(cold / warm, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", action="store_true", help="CPU sizes (16x64x64, 32x128x128) and resnet18")
    ap.add_argument("--shapes", nargs="*", help="DxHxW per configuration")
    ap.add_argument("--recipe", default="cmc_model4")
    ap.add_argument("--backbone", help="default resnest50d (resnet18 with --small)")
    ap.add_argument("--batch", type=int, default=2, help="volumes per step (2x views)")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="32-true", choices=["32-true", "bf16-mixed"])
    ap.add_argument("--checkpointing", action="store_true")
    ap.add_argument("--full-depth", action="store_true",
                    help="train on all slices (default: a random depth crop of half the volume, the paper's "
                         "d = 64 of 128)")
    ap.add_argument("--loading", type=int, default=8, help="phantom volumes for the loading benchmark (0 skips)")
    ap.add_argument("--out", help="write results.json here")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--shape", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        one_step(args)
        return
    shapes = args.shapes or (["16x64x64", "32x128x128"] if args.small else ["64x128x128", "128x256x256"])
    backbone = args.backbone or ("resnet18" if args.small else "resnest50d")
    rows = []
    for shape in shapes:
        cmd = [sys.executable, __file__, "--one", "1", "--shape", shape, "--backbone", backbone, "--recipe",
               args.recipe, "--batch", str(args.batch), "--steps", str(args.steps), "--device", args.device,
               "--precision", args.precision]
        if args.checkpointing:
            cmd.append("--checkpointing")
        if args.full_depth:
            cmd.append("--full-depth")
        p = subprocess.run(cmd, capture_output=True, text=True)
        if p.returncode != 0:
            rows.append({"shape": shape, "error": (p.stderr.strip().splitlines() or ["?"])[-1]})
            continue
        rows.append(json.loads(p.stdout.strip().splitlines()[-1]))
    print("| shape | backbone | volumes/step | precision | checkpointing | step s | volumes/s | peak MB |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['shape']} | failed: {r['error']} |")
            continue
        print(f"| {r['shape']} | {r['backbone']} | {r['batch_volumes']} | {r['precision']} | {r['checkpointing']} | "
              f"{r['step_s']} | {r['volumes_per_s']} | {r['peak_mb']} ({r['peak_kind']}) |")
    result: dict = {"train_step": rows}
    if args.loading:
        d, h, w = (int(v) for v in shapes[0].split("x"))
        with tempfile.TemporaryDirectory() as tmp:
            load = loading(args.loading, (d, h, w), Path(tmp))
        result["loading"] = load
        print(f"\ndata loading, {load['volumes']} phantom NIfTI volumes at {load['shape']}: cold "
              f"{load['cold_volumes_per_s']} volumes/s, cached {load['cached_volumes_per_s']} volumes/s "
              f"({load['speedup']}x)")
    if args.out:
        from chestdx.utils import write_json

        write_json(Path(args.out), result)


if __name__ == "__main__":
    main()
