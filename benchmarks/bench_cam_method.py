"""Cost of the cam-snapmix method's parts, as ratios measured in one run (no timed assertions).

1. Training step of SnapMix + CPE (recipe ``snapmix_cpe``) over the baseline's step (``baseline``):
   same backbone, size and batch. The paper's extra work is one more forward for the CAMs (SnapMix)
   and the CAM through the head (CPE). Aim: under 1.3x.
2. CAM-directed voting per image (k masked copies + CAM) over one plain forward, with the copies
   batched (``chunk``) and one copy at a time.

Run: ``python benchmarks/bench_cam_method.py [--backbone resnet50 --size 224 --batch 16]``.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F


def step_time(recipe_name: str, backbone: str, size: int, batch: int, steps: int) -> float:
    from chestdx.config import load_recipe
    from chestdx.engine.task import ChestTask

    recipe = load_recipe(recipe_name, {"data": {"image_size": size},
                                       "model": {"backbone": backbone, "weights": "none"}})
    task = ChestTask(recipe)
    opt = torch.optim.SGD(task.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 1, size, size, generator=g)
    y = torch.randint(0, 2, (batch,), generator=g)
    task.train()
    times = []
    for i in range(steps + 1):
        b = {"image": x, "label": y, "target": F.one_hot(y, 2).float()}
        t0 = time.perf_counter()
        if task.mixer is not None:
            b = task.mixer(task.model, b)
        loss, _, _ = task.compute_losses(b)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i:  # the first step warms up
            times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def voting_cost(backbone: str, size: int, n_images: int, k: int, cell: int) -> dict[str, float]:
    from chestdx.explain.voting import cam_voting
    from chestdx.models import ResNetMLP

    model = ResNetMLP(2, backbone).eval()
    x = torch.randn(n_images, 1, size, size)
    with torch.no_grad():
        model(x)
        t0 = time.perf_counter()
        model(x)
        plain = (time.perf_counter() - t0) / n_images
    t0 = time.perf_counter()
    cam_voting(model, x, k=k, cell=cell)  # default chunk (8 copies per pass on a CPU)
    batched = (time.perf_counter() - t0) / n_images
    t0 = time.perf_counter()
    cam_voting(model, x[:1], k=k, cell=cell, chunk=1)
    single = time.perf_counter() - t0
    return {"plain": plain, "batched": batched, "one_at_a_time": single}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--backbone", default="resnet50")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--k", type=int, default=31)
    ap.add_argument("--quick", action="store_true", help="resnet18 at 64 px")
    args = ap.parse_args()
    if args.quick:
        args.backbone, args.size = "resnet18", 64
    cell = max(1, args.size // 28)
    base = step_time("baseline", args.backbone, args.size, args.batch, args.steps)
    rows = [("baseline", base)]
    for name in ("snapmix", "baseline_cpe", "snapmix_cpe"):
        rows.append((name, step_time(name, args.backbone, args.size, args.batch, args.steps)))
    print(f"### Training step, {args.backbone} at {args.size} px, batch {args.batch} (median of {args.steps})\n")
    print("| recipe | s / step | ratio to baseline |\n|---|---|---|")
    for name, t in rows:
        print(f"| {name} | {t:.3f} | {t / base:.2f}x |")
    v = voting_cost(args.backbone, args.size, 4, args.k, cell)
    print(f"\n### CAM-directed voting, k = {args.k}, {cell} px cells, per image\n")
    print("| what | s / image | ratio to one plain forward |\n|---|---|---|")
    for name in ("plain", "batched", "one_at_a_time"):
        print(f"| {name} | {v[name]:.3f} | {v[name] / v['plain']:.1f}x |")


if __name__ == "__main__":
    main()
