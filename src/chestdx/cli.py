"""The ``chestdx`` command: synth, recipes, train, evaluate, predict, table, demo.

Every subcommand is a thin layer over a Python function; ``main(argv)`` can be called in-process
(the tests do). User errors (:class:`~chestdx.errors.ChestdxError`) print one clear message and
exit with status 2; a ``predict`` run in which some inputs failed exits with status 1.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from chestdx.errors import ChestdxError
from chestdx.version import __version__

if TYPE_CHECKING:
    from chestdx.predict.predictor import Predictor


def _bars(args: argparse.Namespace) -> bool:
    """Progress bars only on a terminal (a log file gets the one-line-per-epoch log instead)."""
    return not args.no_progress and sys.stderr.isatty()


def _overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The recipe overrides given by the shortcut flags and ``--set KEY=VALUE``."""
    from chestdx.config import deep_merge, parse_overrides

    flat = {
        "trainer.epochs": args.epochs, "data.image_size": args.image_size, "model.backbone": args.backbone,
        "model.weights": args.weights, "data.batch_size": args.batch_size, "optim.lr": args.lr,
        "seed": args.seed, "trainer.accelerator": args.accelerator, "trainer.devices": args.devices,
        "trainer.num_nodes": args.num_nodes, "trainer.strategy": args.strategy,
        "trainer.precision": args.precision, "data.num_workers": args.num_workers,
        "trainer.speed": args.speed,
        "data.allow_patient_leaks": True if getattr(args, "allow_patient_leaks", False) else None,
    }
    items = [f"{k}={v}" for k, v in flat.items() if v is not None]
    return deep_merge(parse_overrides(items), parse_overrides(args.set or []))


def _positive(kind: type) -> Any:
    """An argparse type: a number of ``kind`` above zero (the flag is named in argparse's error)."""

    def parse(text: str) -> Any:
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a {kind.__name__}, got {text!r}") from None
        if not v > 0:
            raise argparse.ArgumentTypeError(f"must be above 0, got {text}")
        return v

    parse.__name__ = kind.__name__
    return parse


def _speed(text: str) -> str:
    """An argparse type: a speed setting (chestdx.engine.precision), its did-you-mean kept."""
    from chestdx.engine.precision import validate_speed

    try:
        return validate_speed(text)
    except ChestdxError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


_SPEED_HELP = ("execution mode: auto (measured once per machine, cached) | fp32 | channels_last | bf16 | "
               "channels_last+bf16 | fp16 | channels_last+fp16 (default: the recipe's inference.speed)")


def _add_heatmap_kind(p: argparse.ArgumentParser) -> None:
    p.add_argument("--heatmap-kind", default="auto", metavar="KIND",
                   help="the map drawn with each answer: auto (the measured best: intgrad for 2D CNNs), "
                        "or cam, gradcam16, layercam16, layercam8 (one backward pass: fastest), fused16, "
                        "occlusion, intgrad, att2, attention (docs/explain.md)")


def _add_speed(p: argparse.ArgumentParser) -> None:
    p.add_argument("--speed", type=_speed, metavar="MODE", help=_SPEED_HELP)


def _accelerator(text: str) -> str:
    """An argparse type: an accelerator name (engine/device.py), checked before torch loads."""
    from chestdx.engine.device import parse_accelerator

    try:
        parse_accelerator(text)
    except ChestdxError as e:
        raise argparse.ArgumentTypeError(str(e).replace("--accelerator=", "")) from None
    return text


def _add_device(p: argparse.ArgumentParser) -> None:
    """``--accelerator`` / ``--devices`` of a command that runs a trained model (one device)."""
    g = p.add_argument_group("device (where the model runs)")
    g.add_argument("--accelerator", default="auto", metavar="KIND", type=_accelerator,
                   help="auto (CUDA where available, else the CPU) | cpu | cuda | gpu | mps | cuda:N")
    g.add_argument("--devices", metavar="WHICH",
                   help="which device of that kind: 1 = the first (default), or one index such as '1,' for the "
                        "second GPU (inference runs on one device)")


def _device(args: argparse.Namespace, training: bool = False) -> Any:
    """The torch.device of ``--accelerator`` / ``--devices`` (engine/device.py), checked before any work.

    ``training``: the flags are the training ones (``chestdx table``): ``--devices N`` is Lightning's
    count of devices to train on, and the evaluations run on the first of them.
    """
    from chestdx.engine.device import resolve_device

    devices = args.devices
    if training and devices is not None and str(devices).strip().isdigit():
        devices = None
    return resolve_device(args.accelerator, devices)


def _add_train_overrides(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("recipe overrides")
    g.add_argument("--epochs", type=_positive(int), help="training epochs (trainer.epochs)")
    g.add_argument("--image-size", type=_positive(int), help="input side in px (data.image_size)")
    g.add_argument("--backbone", help="resnet18 | resnet34 | resnet50 | ...")
    g.add_argument("--weights", help="imagenet | none | PATH to a state dict")
    g.add_argument("--batch-size", type=_positive(int), help="images per batch (data.batch_size)")
    g.add_argument("--lr", type=_positive(float), help="learning rate (optim.lr)")
    g.add_argument("--seed", type=int, help="random seed of splits, initialisation and augmentation (seed)")
    g.add_argument("--allow-patient-leaks", action="store_true",
                   help="train even when a patient lies in two splits or a test patient was in the encoder run's "
                        "training set (data.allow_patient_leaks; recorded in leakage.json and the evaluation)")
    g.add_argument("--num-workers", type=int, help="data-loader worker processes (data.num_workers)")
    g.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="any recipe key, e.g. --set optim.weight_decay=1e-4 (repeatable)")
    h = p.add_argument_group("hardware (passed to Lightning)")
    h.add_argument("--accelerator", help="cpu | gpu | auto")
    h.add_argument("--devices", help="number of devices or 'auto'")
    h.add_argument("--num-nodes", type=int, help="machines for DDP (trainer.num_nodes)")
    h.add_argument("--strategy", help="e.g. ddp")
    h.add_argument("--precision", help="32-true | bf16-mixed | 16-mixed (forces the precision; default: from --speed)")
    h.add_argument("--speed", type=_speed, metavar="MODE",
                   help=_SPEED_HELP.replace("recipe's inference.speed", "recipe's trainer.speed").replace(
                       "execution mode", "execution mode of training"))


def cmd_synth(args: argparse.Namespace) -> int:
    from chestdx.phantom import synthesize_slices

    if args.kind == "cxr":
        from chestdx.phantom.cxr import synthesize_cxr

        manifest = synthesize_cxr(args.out, n_patients_per_class=args.patients, num_classes=args.classes,
                                  images_per_patient=args.slices_per_patient or 1,
                                  sites=args.sites, size=args.size, seed=args.seed)
        print(f"wrote {manifest}")
        return 0
    if args.kind == "sequence":
        from chestdx.phantom.sequences import synthesize_sequences

        n = args.slices_per_patient if args.slices_per_patient is not None else 20
        manifest = synthesize_sequences(args.out, n_patients_per_class=args.patients, slices_per_scan=n,
                                        min_slices=args.min_slices, num_classes=args.classes, sites=args.sites,
                                        size=args.size, seed=args.seed)
        print(f"wrote {manifest}")
        return 0
    if args.kind == "volume":
        from chestdx.phantom.volumes import synthesize_volumes

        depth = args.slices_per_patient if args.slices_per_patient is not None else max(4, args.size // 2)
        manifest = synthesize_volumes(args.out, n_patients_per_class=args.patients, num_classes=args.classes,
                                      sites=args.sites, shape=(depth, args.size, args.size), seed=args.seed)
        print(f"wrote {manifest}")
        return 0
    if args.kind != "slice":
        raise ChestdxError(f"--kind {args.kind} is not available yet; this version makes --kind slice")
    manifest = synthesize_slices(
        args.out, n_patients_per_class=args.patients,
        slices_per_patient=args.slices_per_patient if args.slices_per_patient is not None else 2,
        num_classes=args.classes, sites=args.sites, size=args.size, seed=args.seed,
    )
    print(f"wrote {manifest}")
    return 0


def cmd_recipes(args: argparse.Namespace) -> int:
    from chestdx.config import load_recipe, recipe_names

    for name in recipe_names():
        r = load_recipe(name, parts=False)  # the listing needs no torch (tests validate them whole)
        print(f"{name:28s} {r.description}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from chestdx.config import load_recipe
    from chestdx.engine.train import resume_recipe, train

    if args.force and not (args.resume or args.folds):
        raise ChestdxError("--force only goes with --resume (it applies changed settings to a resumed run)")
    if args.resume and not args.folds:  # continue the run's own recipe.yaml; train() refuses changes
        recipe = resume_recipe(args.out, args.recipe, _overrides_from_args(args))
    else:
        recipe = load_recipe(args.recipe, _overrides_from_args(args))
    if args.folds:  # one run per patient-grouped fold in OUT/fold<f> (experiments/kfold.py)
        from chestdx.experiments.kfold import train_folds

        train_folds(recipe, args.data or [], args.out, args.folds, only=args.fold, force=args.force,
                    progress=_bars(args))
        return 0
    run = train(recipe, args.data or [], args.out, resume=args.resume, force=args.force,
                progress=_bars(args))
    print(f"run written to {run.path} (best checkpoint {run.checkpoint('best').name})")
    return 0


def cmd_ensemble(args: argparse.Namespace) -> int:
    import json

    from chestdx.engine.ensemble import ensemble_runs

    device = _device(args)
    params = json.loads(args.params) if args.params else None
    res = ensemble_runs(args.runs, args.data, split=args.split, out=args.out, procedure=args.procedure,
                        procedure_params=params, n_boot=args.n_boot, which=args.checkpoint,
                        progress=_bars(args), speed=args.speed, device=device)
    o = res["overall"]
    print(f"ensemble of {len(args.runs)} runs on {res['split']} ({res['n_images']} scans): "
          f"accuracy {o['accuracy']['value']:.4f} [{o['accuracy']['low']:.4f}, {o['accuracy']['high']:.4f}], "
          f"macro F1 {o['macro_f1']['value']:.4f} [{o['macro_f1']['low']:.4f}, {o['macro_f1']['high']:.4f}]")
    for path, m in res["members"].items():
        print(f"  member {path} ({m['recipe']}, {m['procedure']}): accuracy {m['accuracy']:.4f}, "
              f"macro F1 {m['macro_f1']:.4f}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from chestdx.evaluate.run import evaluate_run, metrics_report_markdown

    device = _device(args)
    from chestdx.experiments.kfold import evaluate_folds, fold_runs

    folds = fold_runs(args.run)
    if not (Path(args.run) / "recipe.yaml").is_file() and folds:  # the folds of `chestdx train --folds`
        print(evaluate_folds(args.run, folds, split=args.split, procedure=args.procedure, n_boot=args.n_boot,
                             which=args.checkpoint, progress=_bars(args), speed=args.speed, device=device))
        return 0
    res = evaluate_run(args.run, args.data, split=args.split, out=args.out, procedure=args.procedure,
                       aggregate=args.aggregate, n_boot=args.n_boot, which=args.checkpoint,
                       scan_aggregate=args.scan_aggregate, segmentation_sources=args.seg_data,
                       progress=_bars(args), speed=args.speed, heatmaps=args.heatmap, device=device)
    print(metrics_report_markdown(res, f"{Path(args.run).name} on {args.split}"))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from chestdx.predict.inputs import expand_inputs
    from chestdx.predict.predictor import Predictor
    from chestdx.utils import atomic_open, to_json

    predictor = Predictor(args.model, which=args.checkpoint, procedure=args.procedure,
                          lesion_score_threshold=args.lesion_threshold, speed=args.speed,
                          device=_device(args), heatmap_kind=args.heatmap_kind)
    inputs = expand_inputs(args.inputs, scan_folders=args.scan_folders)
    errors: list[tuple[str, str]] = []
    lines = []
    overlays = args.overlays
    answers = predictor.predict_files(inputs, heatmap=overlays is not None, errors=errors,
                                      aggregate=args.scan_aggregate, max_slices=args.max_slices,
                                      series_uid=args.series_uid)
    # a bar only for several inputs on a terminal (disable=None: tqdm turns itself off off a tty)
    bar = tqdm(answers, total=len(inputs), unit="input", file=sys.stderr,
               disable=True if args.no_progress or len(inputs) <= 1 else None)
    names = OutputNames()
    for pred in bar:
        rec = pred.to_json()
        stem = names.stem(pred.source)
        try:
            if overlays is not None:
                rec["overlay"] = _write_overlays(pred, Path(overlays), stem)
            if args.attention is not None:
                rec["attention_overlay"] = _attention_overlay(predictor, pred.source, Path(args.attention), stem)
        except OSError as e:
            raise ChestdxError(f"cannot write the overlay of {pred.source} ({e.strerror or e}); "
                               "check --overlays / --attention") from None
        lines.append(to_json(rec))
        if not args.out:
            bar.write(lines[-1], file=sys.stdout)
    bar.close()
    for path, problem in errors:
        print(to_json({"file": path, "error": problem}), file=sys.stderr)
    if args.out:
        with atomic_open(args.out, "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + ("\n" if lines else ""))
        print(f"wrote {len(lines)} predictions to {args.out}", file=sys.stderr)
    if errors:
        print(f"{len(errors)} of {len(inputs)} inputs failed (listed above)", file=sys.stderr)
        return 1
    return 0


class OutputNames:
    """One output stem per input, unique within a ``predict`` call.

    The stem is the input's whole file name without its image suffix (``2020.03.12.a.png`` ->
    ``2020.03.12.a``, ``ct.nii.gz`` -> ``ct``, a series folder -> its name), with characters other
    than letters, digits, ``.``, ``-`` and ``_`` replaced by ``_``; a stem already given gets
    ``-2``, ``-3``, ... so two inputs never write the same overlay file.
    """

    def __init__(self) -> None:
        self._used: set[str] = set()

    def stem(self, source: str) -> str:
        import re

        name = Path(str(source).rstrip("/")).name
        lower = name.lower()
        for suffix in (".nii.gz", ".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".dcm", ".dicom", ".nii",
                       ".npy", ".zip", ".gif", ".webp"):
            if lower.endswith(suffix) and len(name) > len(suffix):
                name = name[: -len(suffix)]
                break
        base = re.sub(r"[^A-Za-z0-9._-]", "_", name).strip(".") or "input"
        stem, k = base, 1
        while stem.lower() in self._used:
            k += 1
            stem = f"{base}-{k}"
        self._used.add(stem.lower())
        return stem


def _attention_overlay(predictor: Predictor, source: str, folder: Path, stem: str) -> str:
    """Write the mean-attention overlay of one image (MAG-SD localisation) as ``<stem>_attention.png``;
    returns the PNG path."""
    from chestdx.evaluate.plots import save_png
    from chestdx.explain.localize import attention_heatmap
    from chestdx.explain.overlays import overlay_heatmap

    x = predictor.preprocess(source)[None]
    hm = attention_heatmap(predictor.model, x.to(predictor.device))[0].cpu().numpy()
    img = x[0, 0].numpy()
    img = (img - img.min()) / (img.max() - img.min() + 1e-8)
    return str(save_png(overlay_heatmap(img, hm), folder / f"{stem}_attention.png"))


def _write_overlays(pred: Any, folder: Path, stem: str) -> str:
    """Heatmap overlay PNG(s) of one answer: ``<stem>_cam.png`` or, for a scan, one per slice in
    ``<stem>/``; returns the file or folder written."""
    from chestdx.evaluate.plots import save_png
    from chestdx.explain.overlays import overlay_answer

    if getattr(pred, "details", {}).get("heatmap_kind") == "lesion_mask":
        return _write_lesions(pred, folder, stem)
    if getattr(pred, "slices", None) is None:
        out = folder / f"{stem}_cam.png"
        save_png(overlay_answer(pred), out)  # own size, colour bar, map kind and grid
        return str(out)
    sub = folder / stem
    for i, s in zip(pred.slice_indices, pred.slices, strict=True):
        save_png(overlay_answer(s), sub / f"slice_{i:04d}_cam.png")
    return str(sub)


def _write_lesions(pred: Any, folder: Path, stem: str) -> str:
    """Lesion model answer: ``<name>_lesions.png`` (0/255 mask) and ``<name>_boxes.png`` (overlay with
    boxes and scores); returns the overlay's path."""
    import numpy as np

    from chestdx.evaluate.plots import save_png
    from chestdx.explain.overlays import draw_lesions

    mask = pred.heatmap > 0.5
    save_png((mask * 255).astype(np.uint8), folder / f"{stem}_lesions.png")
    found = pred.details.get("lesions", [])
    boxes = np.array([d["box"] for d in found], dtype=float).reshape(-1, 4)
    scores = np.array([d["score"] for d in found], dtype=float)
    out = folder / f"{stem}_boxes.png"
    save_png(draw_lesions(pred.image, mask[None], boxes, scores), out)
    return str(out)


def cmd_compare(args: argparse.Namespace) -> int:
    from chestdx.evaluate.compare import compare_runs, comparison_markdown

    res = compare_runs(args.run_a, args.run_b, split=args.split, out=args.out, figures=args.metrics,
                       n_boot=args.n_boot, seed=args.seed)
    print(comparison_markdown(res))
    return 0


def cmd_table(args: argparse.Namespace) -> int:
    from chestdx.experiments.table import run_table

    device = _device(args, training=True)
    over = _overrides_from_args(args)
    table = run_table(args.recipes, args.data, args.out, seeds=args.seeds, overrides=over,
                      n_boot=args.n_boot, progress=_bars(args), folds=args.folds,
                      metrics=tuple(args.metrics), device=device)
    print(table)
    return 0


def cmd_sweep_voting(args: argparse.Namespace) -> int:
    from chestdx.evaluate.voting_sweep import sweep_voting

    rows = sweep_voting(args.run, ks=args.k, thetas=args.theta, split=args.split, out=args.out, cell=args.cell,
                        speed=args.speed, device=_device(args))
    print("| parameter | k | theta | site | accuracy | F1 |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['parameter']} | {r['k']} | {r['theta']:g} | {r['site']} | {100 * r['accuracy']:.2f} "
              f"| {100 * r['f1']:.2f} |")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from chestdx.predict.bundle import export_bundle

    out = export_bundle(args.run, args.out, which=args.checkpoint, overwrite=args.overwrite)
    print(f"model bundle: {out}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from chestdx.predict.predictor import Predictor
    from chestdx.predict.report import write_study_report

    predictor = Predictor(args.model, procedure=args.procedure, speed=args.speed, device=_device(args),
                          heatmap_kind=args.heatmap_kind)
    out = write_study_report(predictor, args.input, args.out, aggregate=args.scan_aggregate,
                             max_slices=args.max_slices, series_uid=args.series_uid)
    print(f"report: {out}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from chestdx.serve.app import serve

    serve(args.model, host=args.host, port=args.port, max_upload_mb=args.max_upload_mb,
          max_batch=args.max_batch, max_slices=args.max_slices,
          max_pixels=int(args.max_megapixels * 1e6) if args.max_megapixels else None,
          max_voxels=int(args.max_megavoxels * 1e6) if args.max_megavoxels else None,
          max_unzipped_mb=args.max_unzipped_mb, decode_timeout_s=args.decode_timeout,
          header_timeout_s=args.header_timeout, body_timeout_s=args.body_timeout, speed=args.speed,
          device=_device(args), heatmap_kind=args.heatmap_kind)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from chestdx.demo import run_demo

    report = run_demo(args.out, quick=args.quick, progress=_bars(args))
    print(f"demo report: {report}")
    return 0


class _Help(argparse.RawDescriptionHelpFormatter):
    """argparse help that shows each option's default (where it has one worth showing)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "%(default)" in text or action.default in (None, False, argparse.SUPPRESS) or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="chestdx", formatter_class=_Help,
                                description=__doc__.splitlines()[0] + "\n\nEvery subcommand has its own --help.")
    p.add_argument("--version", action="version", version=f"chestdx {__version__}", help="print the version")
    p.add_argument("-v", "--verbose", action="store_true", help="log more")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND", title="commands")
    _add_parser = sub.add_parser

    def add_parser(name: str, **kw: Any) -> argparse.ArgumentParser:  # every page shows its defaults
        return _add_parser(name, formatter_class=_Help, description=kw.get("help"), **kw)

    sub.add_parser = add_parser  # type: ignore[method-assign]

    s = sub.add_parser("synth", help="make a labelled synthetic chest phantom data set")
    s.add_argument("--out", required=True, help="folder to write the images and manifest.csv into")
    s.add_argument("--kind", default="slice", choices=["slice", "sequence", "volume", "cxr"], help="what to make: CT slices, slice sequences, 3D volumes or chest X-rays")
    s.add_argument("--classes", type=int, default=3, choices=[2, 3], help="2: COVID vs non-COVID; 3: normal / pneumonia / COVID-19")
    s.add_argument("--sites", type=int, default=1, help="sites, each with its own scanner (noise, resolution, window, field of view)")
    s.add_argument("--patients", type=int, default=40, help="patients per class and site")
    s.add_argument("--slices-per-patient", type=int,
                   help="slices per patient (default 2); --kind sequence: slices per scan (default 20); "
                        "--kind volume: slices per volume (default --size / 2); --kind cxr: X-rays per patient (default 1)")
    s.add_argument("--min-slices", type=int,
                   help="--kind sequence: draw each scan's slice count in [MIN, --slices-per-patient]")
    s.add_argument("--size", type=int, default=128, help="image side in px")
    s.add_argument("--seed", type=int, default=0, help="the same seed writes the same data")
    s.set_defaults(func=cmd_synth)

    s = sub.add_parser("recipes", help="list the shipped recipes")
    s.set_defaults(func=cmd_recipes)

    s = sub.add_parser("train", help="train a recipe on data; writes a run folder")
    s.add_argument("recipe", help="recipe name (see `chestdx recipes`) or path to a .yaml")
    s.add_argument("--data", nargs="+", help="one folder / CSV / label file per site")
    s.add_argument("--out", required=True, help="run folder")
    s.add_argument("--resume", action="store_true",
                   help="continue from OUT/checkpoints/last.ckpt (written after every epoch) with OUT/recipe.yaml")
    s.add_argument("--force", action="store_true",
                   help="with --resume: apply overrides that change OUT/recipe.yaml (recorded in the run folder)")
    s.add_argument("--folds", type=int, help="patient-grouped k-fold: one run per fold in OUT/fold<f>")
    s.add_argument("--fold", type=int, help="with --folds: train only this fold")
    s.add_argument("--no-progress", action="store_true", help="no progress bars (training still logs one line per epoch)")
    _add_train_overrides(s)
    s.set_defaults(func=cmd_train)

    s = sub.add_parser("evaluate", help="metrics with 95%% intervals, confusion matrix, ROC")
    s.add_argument("run", help="a run folder (`chestdx train --out RUN`)")
    s.add_argument("--data", nargs="+", help="evaluate on other data (default: the run's own split)")
    s.add_argument("--split", default="test", help="which split of the run's samples to score")
    s.add_argument("--out", help="output folder (default RUN/eval-SPLIT)")
    s.add_argument("--procedure", help="inference procedure (default: the recipe's), e.g. plain, cam_voting")
    s.add_argument("--aggregate", choices=["mean", "max", "majority"],
                   help="also patient-level metrics: each patient's slice probabilities combined this way")
    s.add_argument("--scan-aggregate", choices=["mean", "max", "majority"],
                   help="also one answer per scan from the slice answers (scans.csv; scan ids from file names)")
    s.add_argument("--seg-data", nargs="+", help="task lesion: segmentation data whose --split images are "
                   "scored for mask AP (default: the run's own segmentation split)")
    s.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples for the 95%% intervals")
    s.add_argument("--checkpoint", default="best", choices=["best", "last"], help="which checkpoint of a run folder")
    s.add_argument("--no-progress", action="store_true", help="no progress bars (training still logs one line per epoch)")
    s.add_argument("--heatmap", metavar="KINDS", help="also score these heatmap kinds against the lesion masks, "
                   "comma-separated (cam, gradcam16, layercam16, layercam8, fused16, occlusion, intgrad, attention, att2; the run's "
                   "default map is always scored): pointing game, energy, IoU / Dice, next to a centre prior "
                   "and the whole body")
    _add_speed(s)
    _add_device(s)
    s.set_defaults(func=cmd_evaluate)

    s = sub.add_parser("predict", help="answer images and scans: JSON lines of class probabilities")
    s.add_argument("model", help="a model bundle (chestdx export) or a run folder")
    s.add_argument("inputs", nargs="+",
                   help="image files, DICOM files or series folders, NIfTI, .npy, zips of a DICOM series, folders")
    s.add_argument("--overlays", "--cam", dest="overlays", metavar="DIR",
                   help="write heatmap overlay PNGs into DIR (per slice for scans)")
    s.add_argument("--attention", metavar="DIR",
                   help="write the mean attention map overlay per image into DIR (attention models: magsd)")
    s.add_argument("--out", help="write JSON lines here instead of stdout")
    s.add_argument("--lesion-threshold", type=float, default=0.5,
                   help="lesion models: list and draw detections scoring at least this (default 0.5)")
    s.add_argument("--scan-aggregate", default="mean", choices=["mean", "majority", "max"],
                   help="how a slice model's slice answers make a scan's answer")
    s.add_argument("--series-uid", help="a folder holding several DICOM series: answer this SeriesInstanceUID")
    s.add_argument("--no-progress", action="store_true", help="no progress bar")
    s.add_argument("--max-slices", type=int, help="answer at most this many evenly spaced slices per scan")
    _add_heatmap_kind(s)
    s.add_argument("--scan-folders", action="store_true",
                   help="treat each folder of slice images as one scan (COV19-CT-DB layout)")
    s.add_argument("--procedure", help="inference procedure (default: the recipe's), e.g. plain, cam_voting")
    s.add_argument("--checkpoint", default="best", choices=["best", "last"], help="which checkpoint of a run folder")
    _add_speed(s)
    _add_device(s)
    s.set_defaults(func=cmd_predict)

    s = sub.add_parser("ensemble", help="inter-model ensemble: average several runs' probabilities and score "
                                        "them (CMC-COV19D Model5)")
    s.add_argument("runs", nargs="+", help="run folders")
    s.add_argument("--data", nargs="+", help="data to score (default: the first run's own samples)")
    s.add_argument("--split", default="test", choices=["train", "val", "test"], help="which split to score")
    s.add_argument("--out", help="output folder (default RUN1/ensemble-SPLIT)")
    s.add_argument("--procedure", help="inference procedure for every run, e.g. intra_ensemble "
                                       "(default: each run's own)")
    s.add_argument("--params", help='procedure parameters as JSON, e.g. \'{"views": 3, "depth": 64}\'')
    s.add_argument("--checkpoint", default="best", choices=["best", "last"], help="which checkpoint of a run folder")
    s.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples for the 95%% intervals")
    s.add_argument("--no-progress", action="store_true", help="no progress bars (training still logs one line per epoch)")
    _add_speed(s)
    _add_device(s)
    s.set_defaults(func=cmd_ensemble)

    s = sub.add_parser("table", help="train recipes x seeds, evaluate per site, write a paper-style table")
    s.add_argument("recipes", nargs="+", help="recipe names or paths (the table's rows)")
    s.add_argument("--data", nargs="+", required=True, help="one folder / CSV per site")
    s.add_argument("--out", required=True, help="folder for the runs, their evaluations and table.md")
    s.add_argument("--seeds", type=int, default=3, help="training seeds per recipe (each row is mean +- std over them)")
    s.add_argument("--folds", type=int, help="k-fold cross-validation by patient instead of seeds (MAG-SD: 5)")
    s.add_argument("--metrics", nargs="+", default=["accuracy", "precision", "recall", "f1"],
                   help="table columns (e.g. accuracy macro_f1 for CMC-COV19D's Table 1)")
    s.add_argument("--n-boot", type=int, default=200, help="bootstrap resamples for the 95%% intervals")
    s.add_argument("--no-progress", action="store_true", help="no progress bars (training still logs one line per epoch)")
    _add_train_overrides(s)
    s.set_defaults(func=cmd_table)

    s = sub.add_parser("compare", help="paired difference B - A of two runs on the same test cases, with a "
                                       "patient-level bootstrap 95%% interval and p-value")
    s.add_argument("run_a", metavar="RUN_A", help="run folder (its eval-SPLIT/predictions.csv), evaluation folder or "
                                                  "predictions.csv")
    s.add_argument("run_b", metavar="RUN_B", help="the same for the run compared with RUN_A")
    s.add_argument("--split", default="test", help="which evaluation of a run folder (RUN/eval-SPLIT)")
    s.add_argument("--metrics", nargs="+", help="figures to compare (default: accuracy, macro and weighted "
                                                "figures, and the positive class's for a binary task)")
    s.add_argument("--n-boot", type=int, default=2000, help="paired bootstrap resamples")
    s.add_argument("--seed", type=int, default=0, help="seed of the resampling")
    s.add_argument("--out", help="folder for compare.json and compare.md (default: print only)")
    s.set_defaults(func=cmd_compare)

    s = sub.add_parser("sweep-voting", help="Figure 3 of the cam-snapmix paper: voting accuracy vs k and theta")
    s.add_argument("run", help="a run folder (`chestdx train --out RUN`)")
    s.add_argument("--k", type=int, nargs="+", default=[1, 5, 10, 15, 20, 25, 30, 31, 32, 33, 34, 35],
                   help="numbers of masked copies to try (default: Figure 3's range, every k of 30-35)")
    s.add_argument("--theta", type=float, nargs="+", default=[0.1, 0.2, 0.3, 0.4, 0.5],
                   help="certainty thresholds to try (default: Figure 3's 0.1-0.5)")
    s.add_argument("--cell", type=int, help="cell side in px (default: the recipe's, 8 at 224 px)")
    s.add_argument("--split", default="test", help="which split to score")
    s.add_argument("--out", help="output folder (default RUN/voting-sweep)")
    _add_speed(s)
    _add_device(s)
    s.set_defaults(func=cmd_sweep_voting)

    s = sub.add_parser("export", help="write a model bundle (weights, recipe, card) from a trained run")
    s.add_argument("run", help="a run folder (`chestdx train --out RUN`)")
    s.add_argument("--out", required=True, help="the bundle folder to create")
    s.add_argument("--checkpoint", default="best", choices=["best", "last"], help="which checkpoint of a run folder")
    s.add_argument("--overwrite", action="store_true", help="replace an existing bundle folder")
    s.set_defaults(func=cmd_export)

    s = sub.add_parser("report", help="one self-contained HTML page for one study: answer, heatmaps, model card")
    s.add_argument("model", help="a model bundle or a run folder")
    s.add_argument("input", help="an image, DICOM file or series folder, NIfTI, zip or folder of slices")
    s.add_argument("--out", required=True, help="the .html file to write")
    s.add_argument("--scan-aggregate", default="mean", choices=["mean", "majority", "max"],
                   help="how a slice model's slice answers make a scan's answer")
    s.add_argument("--series-uid", help="a folder holding several DICOM series: answer this SeriesInstanceUID")
    s.add_argument("--max-slices", type=int, default=64, help="answer at most this many slices of a scan")
    s.add_argument("--procedure", help="inference procedure (default: the recipe's), e.g. plain, cam_voting")
    _add_heatmap_kind(s)
    _add_speed(s)
    _add_device(s)
    s.set_defaults(func=cmd_report)

    s = sub.add_parser("serve", help="web service: POST /predict, GET /health, GET /model, a page at /")
    s.add_argument("model", help="a model bundle or a run folder")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1: this machine only)")
    s.add_argument("--port", type=int, default=8000, help="port to listen on")
    s.add_argument("--max-upload-mb", type=float, default=64.0,
                   help="largest upload, enforced while it streams (413 beyond; default %(default)s)")
    s.add_argument("--max-batch", type=int, default=16, help="most images per shared forward pass")
    s.add_argument("--max-slices", type=int, default=64, help="answer at most this many slices of a scan")
    s.add_argument("--max-megapixels", type=float, default=None,
                   help="most decoded pixels of one image, checked before decoding (default: the readers' limit)")
    s.add_argument("--max-megavoxels", type=float, default=None,
                   help="most decoded voxels of one scan, checked before decoding (default: the readers' limit)")
    s.add_argument("--max-unzipped-mb", type=float, default=None,
                   help="most bytes a zip upload may unpack to (default: the readers' limit)")
    s.add_argument("--decode-timeout", type=float, default=60.0,
                   help="seconds an upload may take to decode before a 408 (default %(default)s)")
    s.add_argument("--header-timeout", type=float, default=10.0,
                   help="seconds a connection may take to send its request head (default %(default)s)")
    s.add_argument("--body-timeout", type=float, default=30.0,
                   help="seconds the body may pause between chunks before a 408 (default %(default)s)")
    _add_heatmap_kind(s)
    _add_speed(s)
    _add_device(s)
    s.set_defaults(func=cmd_serve)

    s = sub.add_parser("demo", help="phantom -> train -> evaluate -> HTML report, on the CPU")
    s.add_argument("--out", default="demo_out", help="folder for the demo's phantom, run, evaluation, report and bundle")
    s.add_argument("--quick", action="store_true", help="a smaller, faster demo (for tests)")
    s.add_argument("--no-progress", action="store_true", help="no progress bars (training still logs one line per epoch)")
    s.set_defaults(func=cmd_demo)
    return p


def _must_exist(paths: Sequence[str] | None, flag: str) -> None:
    for item in paths or []:
        if not Path(item).exists():
            raise ChestdxError(f"{flag}: {item} not found")


def _precheck(args: argparse.Namespace) -> None:
    """Check the recipes and paths before the command runs: first what needs no torch (recipe names,
    override keys and values, the paths given), so that such a mistake is reported in well under 2 s
    (torch, Lightning and MONAI take 10 s and more to import on a small machine); then the recipes'
    parts against the registries (model / objective / mixing / inference names and ``params`` keys),
    which imports torch and the model modules (a few seconds, not a training run). Raises
    ChestdxError / ConfigError."""
    from chestdx.config import load_recipe

    cmd = args.command
    if cmd in ("train", "table"):
        over = _overrides_from_args(args)
        stored = Path(args.out) / "recipe.yaml"
        stored_too = cmd == "train" and args.resume and stored.is_file()
        names = [args.recipe] if cmd == "train" else args.recipes
        # first what needs no torch (the recipes' schema, the paths), then the recipes' parts against
        # the registries (names, params keys), which import the model / objective / mixing modules
        for name in ([stored] if stored_too else []) + names:
            load_recipe(name, over, parts=False)
        if cmd == "train" and not args.data and not args.resume:
            raise ChestdxError("--data is required (one folder / CSV / label file per site), unless --resume "
                               "continues a run with its own samples.csv")
        _must_exist(args.data, "--data")
        if stored_too:
            load_recipe(stored, over)
        if cmd == "table":
            from chestdx.experiments.table import load_rows

            load_rows(names, over)  # an inference.params override goes to the rows that take it
        else:
            load_recipe(args.recipe, over)
    elif cmd in ("evaluate", "sweep-voting", "export"):
        _must_exist([args.run], "RUN")
        _must_exist(getattr(args, "data", None), "--data")
    elif cmd == "ensemble":
        _must_exist(args.runs, "RUN")
        _must_exist(args.data, "--data")
    elif cmd in ("predict", "report", "serve"):
        _must_exist([args.model], "MODEL")
        _must_exist(args.inputs if cmd == "predict" else [args.input] if cmd == "report" else [], "INPUT")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point. Returns the exit status (0 ok, 1 some inputs failed, 2 user error)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        _precheck(args)
    except ChestdxError as e:
        print(f"chestdx {args.command}: error: {e}", file=sys.stderr)
        return 2
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_LogFormat())
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, handlers=[handler])
    if args.command in ("train", "table", "demo") and not args.verbose:
        # what training does (data layout and counts, device, one line per epoch) is always shown,
        # for this command only (main() may run many times in one process: tests, notebooks)
        ours = logging.getLogger("chestdx")
        saved = ours.level
        if ours.getEffectiveLevel() > logging.INFO:
            ours.setLevel(logging.INFO)
        try:
            return _dispatch(args)
        finally:
            ours.setLevel(saved)
    return _dispatch(args)


class _LogFormat(logging.Formatter):
    """``chestdx: message`` for chestdx's own progress lines, ``LEVEL logger: message`` otherwise."""

    def format(self, record: logging.LogRecord) -> str:
        if record.name.startswith("chestdx") and record.levelno == logging.INFO:
            return f"chestdx: {record.getMessage()}"
        return f"{record.levelname} {record.name}: {record.getMessage()}"


def _dispatch(args: argparse.Namespace) -> int:
    """Run the subcommand; a ChestdxError (also one wrapped by MONAI / Lightning) is one line, status 2."""
    if not args.verbose:
        import warnings

        for pattern in (".*smaller than the logging interval.*", ".*LeafSpec.*", ".*does not have many workers.*"):
            warnings.filterwarnings("ignore", message=pattern)
        for name in ("lightning", "lightning.pytorch", "lightning.fabric", "lightning.pytorch.utilities.rank_zero",
                     "lightning.fabric.utilities.rank_zero"):
            logging.getLogger(name).setLevel(logging.ERROR)
    try:
        return int(args.func(args) or 0)
    except ChestdxError as e:
        print(f"chestdx {args.command}: error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # MONAI / Lightning may wrap our errors
        from chestdx.data.datasets import unwrap_error

        inner = unwrap_error(e)
        if isinstance(inner, ChestdxError):
            print(f"chestdx {args.command}: error: {inner}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
