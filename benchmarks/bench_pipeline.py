"""Execution modes end to end on this machine (issue 19): what each mode buys per model and phase,
and what the chestdx pipeline keeps of it.

One run prints four markdown tables (every figure of issue 19's item 4):

1. per model (ResNet-50 + MLP and EfficientNet-Lite0 + MLP at 224 px): training images/s at batch 16
   and inference ms/image at batch 1 and 32, for fp32 / channels-last / channels-last + bf16 (and
   bf16 with ``--all-modes``), as ratios against fp32 contiguous;
2. per model in its fastest mode (and fp32): a raw training step on tensors in memory (forward, CE,
   backward, SGD) against the chestdx training loop (a Lightning fit of :class:`ChestTask` on
   in-memory phantom-like images, mode applied as ``chestdx train`` applies it), and a raw forward
   against :func:`chestdx.engine.infer.predict_loader` (the evaluate / table / ensemble loop);
3. CAM voting (k = 31, the ``full`` recipe's procedure) seconds per image against one forward and
   against the forwards it needs (the whole image at batch 1, 31 copies at batch 31), and, outside
   fp32, against the same vote with the batch norms left unfolded (before
   :func:`chestdx.engine.precision.inference_model`);
4. ``Predictor.predict`` latency per slice with its heatmap (the default map,
   :data:`chestdx.explain.heatmap.DEFAULT_CNN_KIND`, and ``layercam8``; 512 px input, preprocessing
   included) with ``auto`` (as a user gets it: the mode it picked is named), the fastest inference
   mode forced and fp32, against a raw forward in the same mode and (outside fp32) the same predict
   with batch-norm folding off (``$CHESTDX_FOLD_BN=0``); and, for ``layercam8``, the passes
   of an answer with its map, one shared float32 pass with gradients against the two passes (answer,
   then a map pass of its own) predict ran before.

Every figure is the minimum over ``--iters`` timed calls, and the things compared in one row are
timed in turns, so that a shared machine's changing load disturbs them alike. Nothing is asserted.
On a busy shared CPU, OpenMP's spinning threads make 2-thread runs slower than 1-thread ones
(ResNet-50 forward, batch 8, load average 4 on 2 cores: 207 ms/img with 2 threads, 106 with 1);
``OMP_WAIT_POLICY=PASSIVE`` brought 2 threads back to 116 ms/img there. Defaults take a few minutes on 2 cores; ``--iters``, ``--loop-batches``,
``--vote-images`` raise the counts, ``--models`` / ``--all-modes`` change what is measured.
Run: ``python benchmarks/bench_pipeline.py``.
"""

from __future__ import annotations

import argparse
import copy
import os
import time
from typing import Any

import numpy as np
import torch

MODELS = {"resnet50": "resnet50", "lite0": "efficientnet_lite0"}


def _recipe(backbone: str, size: int, batch: int, procedure: str = "plain") -> Any:
    from chestdx.config import validate_recipe

    params = {"k": 31, "theta": 0.2, "cell": 8} if procedure == "cam_voting" else {}
    return validate_recipe({"name": f"bench-{backbone}", "data": {"image_size": size, "batch_size": batch},
                            "model": {"name": "resnet_mlp", "backbone": backbone, "weights": "none",
                                      "head_hidden": 512, "dropout": 0.2},
                            "optim": {"name": "sgd", "lr": 1e-3}, "inference": {"name": procedure, "params": params},
                            "trainer": {"speed": "fp32"}})


def _model(backbone: str, size: int) -> Any:
    from chestdx.models import build_model

    torch.manual_seed(0)
    return build_model(_recipe(backbone, size, 16).model, num_classes=2, in_chans=1)


def _images(n: int, size: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Phantom-like images: smooth noise, class 1 with a bright patch."""
    g = torch.Generator().manual_seed(seed)
    x = torch.nn.functional.avg_pool2d(torch.randn(n, 1, size, size, generator=g), 5, 1, 2) * 2
    y = torch.arange(n) % 2
    for i in range(n):
        if y[i]:
            r, c = torch.randint(0, size - size // 6, (2,), generator=g).tolist()
            x[i, 0, r:r + size // 6, c:c + size // 6] += 1.5
    return x, y


def _timed(fn: Any, iters: int, warmup: int = 1) -> float:
    """Minimum seconds of ``fn()`` over ``iters`` calls after ``warmup``."""
    return _interleaved({"fn": fn}, iters, warmup)["fn"]


def _interleaved(fns: dict[str, Any], iters: int, warmup: int = 1) -> dict[str, float]:
    """Minimum seconds of each ``fn()``, timed in turns (one call of each per round) so that a load
    change on a shared machine slows all of them alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(iters):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t0)
    return best


# ------------------------------------------------------------------------------------ raw model


def raw_train_step(model: Any, mode: Any, batch: int, size: int) -> Any:
    """A raw training step (forward, CE on the logits, backward, SGD) in ``mode``, on a copy of
    ``model`` and tensors in memory; call it to run one step."""
    from chestdx.engine.precision import apply_memory_format, autocast, to_mode_input

    m = apply_memory_format(copy.deepcopy(model).train(), mode)
    opt = torch.optim.SGD(m.parameters(), lr=1e-3, momentum=0.9)
    x, y = _images(batch, size)
    x = to_mode_input(x, mode)

    def step() -> None:
        with autocast(mode):
            loss = torch.nn.functional.cross_entropy(m(x).logits.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def raw_forward(model: Any, mode: Any, batch: int, size: int) -> Any:
    """A raw forward (no_grad, eval) in ``mode`` on a copy of ``model``; call it to run one."""
    from chestdx.engine.precision import running, to_mode_input

    m = copy.deepcopy(model).eval()
    x = _images(batch, size)[0]

    def forward() -> None:
        with running(m, mode), torch.no_grad():
            m(to_mode_input(x, mode))

    return forward


def raw_train_ips(model: Any, mode: Any, batch: int, size: int, iters: int) -> float:
    """Images/s of :func:`raw_train_step`."""
    return batch / _timed(raw_train_step(model, mode, batch, size), iters)


def raw_infer_ms(model: Any, mode: Any, batch: int, size: int, iters: int) -> float:
    """Milliseconds per image of :func:`raw_forward`."""
    return 1000 * _timed(raw_forward(model, mode, batch, size), iters) / batch


# ---------------------------------------------------------------------------------- chestdx loops


def loop_train_ips(backbone: str, mode: Any, batch: int, size: int, n_batches: int) -> float:
    """Images/s of the chestdx training loop: ``L.Trainer.fit`` of :class:`ChestTask` on
    ``n_batches + 1`` in-memory batches, precision and memory format from ``mode`` as
    :func:`chestdx.engine.train.train` sets them; the fastest batch-to-batch interval counts (the
    first batch, a warm-up, starts the clock)."""
    import lightning as L
    from torch.utils.data import DataLoader

    from chestdx.engine.precision import lightning_precision
    from chestdx.engine.task import ChestTask

    recipe = _recipe(backbone, size, batch)
    task = ChestTask(recipe, [batch, batch])
    task.exec_mode = mode
    x, y = _images(batch * (n_batches + 1), size)
    items = [{"image": x[i], "label": y[i]} for i in range(len(y))]
    ends: list[float] = []

    class Clock(L.Callback):
        def on_train_batch_end(self, *args: Any, **kwargs: Any) -> None:
            ends.append(time.perf_counter())

    trainer = L.Trainer(max_epochs=1, accelerator="cpu", devices=1, precision=lightning_precision(recipe, mode),
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
                        callbacks=[Clock()])
    trainer.fit(task, DataLoader(items, batch_size=batch, shuffle=True))
    # the fastest batch-to-batch interval (like the raw step's minimum: the least disturbed by
    # other processes on a shared machine); it holds loading, the step, logging and Lightning
    return batch / min(b - a for a, b in zip(ends, ends[1:], strict=False))


def loop_infer(model: Any, mode: Any, batch: int, size: int) -> Any:
    """:func:`predict_loader` (the evaluate / table / ensemble loop, plain procedure) over one
    in-memory batch of dataset items; call it to run once."""
    from torch.utils.data import DataLoader

    from chestdx.engine.infer import predict_loader

    m = copy.deepcopy(model)
    x, y = _images(batch, size)
    items = [{"image": x[i], "label": y[i], "site": torch.tensor(0), "index": torch.tensor(i)} for i in range(len(y))]
    loader = DataLoader(items, batch_size=batch)
    return lambda: predict_loader(m, loader, speed=mode)


def voting(model: Any, mode: Any, size: int, n_images: int, fold: bool = True) -> Any:
    """CAM voting (k = 31, theta 0.2, 8 px cells: the ``full`` recipe) as the ``cam_voting``
    procedure runs it in :func:`predict_loader` (``fold``: on the copy with batch norms folded that
    it uses outside fp32, :func:`chestdx.engine.precision.inference_model`; else on the model as it
    is, the path before that change), on one batch of ``n_images``; call it to run once."""
    from chestdx.engine.infer import run_procedure
    from chestdx.engine.precision import inference_model, running, to_mode_input

    m = copy.deepcopy(model).eval()
    x = _images(n_images, size, seed=3)[0]
    params = {"k": 31, "theta": 0.2, "cell": 8}
    if fold:
        with running(m, mode):
            m = inference_model(m, mode, to_mode_input(x, mode))

    def vote() -> None:
        with running(m, mode):
            run_procedure("cam_voting", params, m, to_mode_input(x, mode))

    return vote


def unfolded(call: Any) -> Any:
    """``call`` with batch-norm folding off (``$CHESTDX_FOLD_BN=0``: the predictor before that change)."""
    def run() -> None:
        os.environ["CHESTDX_FOLD_BN"] = "0"
        try:
            call()
        finally:
            os.environ.pop("CHESTDX_FOLD_BN", None)

    return run


def _slice_512() -> np.ndarray:
    g = np.random.default_rng(0)
    return (g.normal(0, 300, (512, 512)) - 600).astype(np.float32)


def predict_call(model: Any, backbone: str, setting: str, size: int, kind: str = "auto") -> tuple[Any, Any]:
    """``Predictor.predict`` of one 512 px slice with its heatmap of ``kind`` (``auto``: the default
    map; an array in: preprocessing, the answer, the map, the answer's details), plain procedure,
    speed ``setting`` (``auto``: as a user gets it, resolved and cached on this machine); returns the
    call and the predictor (its ``speed.modes`` say what ``auto`` chose)."""
    from chestdx.predict.predictor import Predictor

    pred = Predictor.from_model(_recipe(backbone, size, 16), copy.deepcopy(model), speed=setting)
    pred.heatmap_kind = kind
    img = _slice_512()
    return (lambda: pred.predict(img, heatmap=True)), pred


def answer_and_map(model: Any, mode: Any, size: int, shared: bool) -> Any:
    """The passes of an answer with its ``layercam8`` map on one preprocessed slice in ``mode``:
    ``shared`` :func:`chestdx.explain.heatmap.answer_with_heatmap` (what ``predict`` runs: one float32
    pass with gradients in a float32 mode); else the path before issue 19's change, a ``no_grad``
    answer pass and then :func:`chestdx.explain.heatmap.heatmap` on its output (a float32 pass with
    gradients of its own). Call it to run once."""
    from chestdx.engine.infer import run_procedure
    from chestdx.engine.precision import running, to_mode_input
    from chestdx.explain.heatmap import answer_with_heatmap, heatmap

    m = copy.deepcopy(model).eval()
    x = _images(1, size, seed=4)[0]

    def call() -> None:
        with running(m, mode):
            xm = to_mode_input(x, mode)
            if shared:
                answer_with_heatmap(m, xm, "layercam8")
            else:
                heatmap(m, xm, "layercam8", out=run_procedure("plain", {}, m, xm).output)

    return call


# ------------------------------------------------------------------------------------------ main


def _load(what: str) -> None:
    la = os.getloadavg()
    print(f"\n(load average before {what}: {la[0]:.2f} / {la[1]:.2f} / {la[2]:.2f})", flush=True)


def _fmt_ratio(v: float, ref: float, higher_better: bool) -> str:
    r = v / ref if higher_better else ref / v
    return f"{v:.1f} ({r:.2f}x)"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--train-batch", type=int, default=16)
    ap.add_argument("--infer-batch", type=int, default=32)
    ap.add_argument("--iters", type=int, default=2, help="timed steps per measurement (minimum counts)")
    ap.add_argument("--loop-batches", type=int, default=3, help="timed batches of the training / evaluate loops")
    ap.add_argument("--vote-images", type=int, default=2, help="images of the CAM voting measurement")
    ap.add_argument("--all-modes", action="store_true", help="also bf16 contiguous in table 1")
    ap.add_argument("--tables", nargs="+", type=int, default=[1, 2, 3, 4], choices=[1, 2, 3, 4],
                    help="which tables (without 1, the fastest modes are what auto resolves on this machine)")
    args = ap.parse_args(argv)

    from chestdx.engine import precision as P
    from chestdx.engine.precision import FP32, parse_speed

    load = os.getloadavg()
    bf16 = "bf16" in P.supported_computes("cpu")
    names = ["fp32", "channels_last"] + (["bf16"] if bf16 and args.all_modes else []) + \
        (["channels_last+bf16"] if bf16 else [])
    modes = [parse_speed(n) for n in names]
    print(f"# chestdx pipeline benchmark\n\n{P.device_description('cpu')}, torch {torch.__version__}, "
          f"load average at start {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} (1 / 5 / 15 min); "
          f"{args.size} px, iters {args.iters}\n", flush=True)
    t_start = time.perf_counter()
    rows1: list[str] = []
    best_mode: dict[str, Any] = {}
    models: dict[str, Any] = {}
    for key in args.models:
        backbone = MODELS[key]
        model = models[key] = _model(backbone, args.size)
        b, n = args.train_batch, args.infer_batch
        if 1 not in args.tables:
            best_mode[key] = {"train": P.resolve_mode("auto", model, (b, 1, args.size, args.size), "train"),
                              "infer": P.resolve_mode("auto", model, (n, 1, args.size, args.size), "inference")}
            continue
        train = {k: b / v for k, v in _interleaved(
            {m.name: raw_train_step(model, m, b, args.size) for m in modes}, args.iters).items()}
        inf1 = {k: 1000 * v for k, v in _interleaved(
            {m.name: raw_forward(model, m, 1, args.size) for m in modes}, max(args.iters, 3)).items()}
        infn = {k: 1000 * v / n for k, v in _interleaved(
            {m.name: raw_forward(model, m, n, args.size) for m in modes}, args.iters).items()}
        best_mode[key] = {"train": parse_speed(max(train, key=train.__getitem__)),
                          "infer": parse_speed(min(infn, key=infn.__getitem__))}
        rows1.append(f"| {key} | train img/s, batch {args.train_batch} | "
                     + " | ".join(_fmt_ratio(train[n], train["fp32"], True) for n in names) + " |")
        rows1.append(f"| {key} | inference ms/img, batch 1 | "
                     + " | ".join(_fmt_ratio(inf1[n], inf1["fp32"], False) for n in names) + " |")
        rows1.append(f"| {key} | inference ms/img, batch {args.infer_batch} | "
                     + " | ".join(_fmt_ratio(infn[n], infn["fp32"], False) for n in names) + " |")
        print(f"(table 1, {key} done at {time.perf_counter() - t_start:.0f} s)", flush=True)
    if 1 in args.tables:
        print("\n## 1. Modes against fp32 contiguous (ratio: speed-up)\n")
        print("| model | measure | " + " | ".join(names) + " |\n|---|---|" + "---|" * len(names))
        print("\n".join(rows1), flush=True)

    if 2 in args.tables:
        _load("table 2")
        print("\n## 2. Raw model against the chestdx loops\n")
        print("| model | mode | raw train step img/s | chestdx training loop img/s | loop / raw "
              f"| raw forward ms/img (b{args.infer_batch}) | evaluate loop ms/img | raw / loop |\n|---|---|---|---|---|---|---|---|")
        for key in args.models:
            model, backbone = models[key], MODELS[key]
            for label, tm, im in [("fastest", best_mode[key]["train"], best_mode[key]["infer"]), ("fp32", FP32, FP32)]:
                step = raw_train_step(model, tm, args.train_batch, args.size)
                raw_t = _timed(step, args.iters)
                loop_t = loop_train_ips(backbone, tm, args.train_batch, args.size, args.loop_batches)
                raw_t = args.train_batch / min(raw_t, _timed(step, args.iters, warmup=0))  # before and after the loop
                n = args.infer_batch
                inf = _interleaved({"raw": raw_forward(model, im, n, args.size),
                                    "loop": loop_infer(model, im, n, args.size)}, args.iters)
                raw_i, loop_i = 1000 * inf["raw"] / n, 1000 * inf["loop"] / n
                mname = tm.name if tm == im else f"train {tm.name}, inference {im.name}"
                print(f"| {key} | {mname} ({label}) | {raw_t:.1f} | {loop_t:.1f} | {loop_t / raw_t:.2f} | {raw_i:.1f} "
                      f"| {loop_i:.1f} | {raw_i / loop_i:.2f} |", flush=True)

    if 3 in args.tables:
        _load("table 3")
        print("\n## 3. CAM voting (k = 31) against one forward\n")
        print("| model | mode | forward ms, b1 | forward ms/img, b31 | CAM voting s/img | voting / one b1 forward "
              "| voting / (b1 + 31 x b31 forwards) | voting, norms unfolded, s/img | unfolded / folded |"
              "\n|---|---|---|---|---|---|---|---|---|")
        for key in args.models:
            model = models[key]
            for mode in dict.fromkeys([best_mode[key]["infer"], FP32]):
                fns = {"vote": voting(model, mode, args.size, args.vote_images),
                       "b1": raw_forward(model, mode, 1, args.size),
                       "b31": raw_forward(model, mode, 31, args.size)}
                if mode != FP32:  # fp32 runs unfolded (exactly as before modes existed)
                    fns["unfolded"] = voting(model, mode, args.size, args.vote_images, fold=False)
                t = _interleaved(fns, args.iters)
                vote, b31 = t["vote"] / args.vote_images, t["b31"] / 31
                unf = (f"{t['unfolded'] / args.vote_images:.2f} | {t['unfolded'] / t['vote']:.2f}"
                       if "unfolded" in t else "- | -")
                print(f"| {key} | {mode.name} | {1000 * t['b1']:.1f} | {1000 * b31:.1f} | {vote:.2f} "
                      f"| {vote / t['b1']:.1f} | {vote / (t['b1'] + 31 * b31):.2f} | {unf} |", flush=True)

    if 4 in args.tables:
        _load("table 4")
        from chestdx.explain.heatmap import DEFAULT_CNN_KIND

        print(f"\n## 4. Predict latency per slice with its heatmap (512 px in; the default map is {DEFAULT_CNN_KIND})\n")
        print("| model | heatmap | setting (mode used) | predict ms/slice | raw forward ms, b1, same mode "
              "| predict / raw forward | predict, norms unfolded, ms | unfolded / folded "
              "| layercam8 answer + map passes ms: shared pass | before: two passes "
              "| shared / two |\n|---|---|---|---|---|---|---|---|---|---|---|")
        for key in args.models:
            model, backbone = models[key], MODELS[key]
            settings = dict.fromkeys(["auto", best_mode[key]["infer"].name, "fp32"])
            for kind in dict.fromkeys([DEFAULT_CNN_KIND, "layercam8"]):
                calls = {s: predict_call(model, backbone, s, args.size, kind) for s in settings}
                for call, _ in calls.values():
                    call()  # resolves auto (measured once per machine, cached) before the clock
                for s, (call, pred) in calls.items():
                    used = next(iter(pred.speed.modes.values()))  # what the setting resolved to
                    fns = {"predict": call, "b1": raw_forward(model, used, 1, args.size)}
                    if used != FP32:
                        fns["unfolded"] = unfolded(call)
                    if kind == "layercam8":
                        fns.update(shared=answer_and_map(model, used, args.size, shared=True),
                                   two=answer_and_map(model, used, args.size, shared=False))
                    t = _interleaved(fns, max(args.iters, 3))
                    passes = (f"{1000 * t['shared']:.1f} | {1000 * t['two']:.1f} | {t['shared'] / t['two']:.2f}"
                              if "shared" in t else "- | - | -")
                    unf = (f"{1000 * t['unfolded']:.1f} | {t['unfolded'] / t['predict']:.2f}"
                           if "unfolded" in t else "- | -")
                    print(f"| {key} | {kind} | {s} ({used.name}) | {1000 * t['predict']:.1f} | {1000 * t['b1']:.1f} "
                          f"| {t['predict'] / t['b1']:.2f} | {unf} | {passes} |", flush=True)

    end = os.getloadavg()
    print(f"\nwall {time.perf_counter() - t_start:.0f} s; load average at end {end[0]:.2f} / {end[1]:.2f} / "
          f"{end[2]:.2f}")


if __name__ == "__main__":
    main()
