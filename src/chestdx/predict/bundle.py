"""Model bundles: one folder that answers new scans without the recipe file or the training data.

::

    MODEL_DIR/
      model.safetensors   the network's weights (no optimiser, no objectives)
      bundle.json         format, chestdx version, task, class names, the resolved recipe (its
                          ``data`` section is the preprocessing), input channels, class counts,
                          training-data summary, evaluation metrics, checkpoint used, export time
      card.md             the model card a person reads (also served at ``GET /model``)

``chestdx export RUN --out MODEL_DIR`` writes it (into a temporary folder renamed into place, so a
half-written bundle never exists); :func:`load_bundle` reads it. A bundle of another format, or
written by a newer chestdx than the one installed, is refused with a message that says which
version to install.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from chestdx.config import Recipe, validate_recipe
from chestdx.engine.safe_load import read_checkpoint
from chestdx.errors import ChestdxError, RunError
from chestdx.utils import fix_tempdir_mode, write_json, write_text
from chestdx.version import __version__

if TYPE_CHECKING:
    from chestdx.engine.run import Run

__all__ = ["BUNDLE_FORMAT", "Bundle", "BundleError", "export_bundle", "is_bundle", "load_bundle", "model_card"]

#: Layout version of bundles this chestdx writes and reads.
BUNDLE_FORMAT = 1
INTENDED_USE = (
    "Research use: reproducing and comparing published chest-imaging methods, and giving a "
    "radiologist a second look they can check against the heatmap. NOT a medical device: it has "
    "not been cleared or validated for clinical use and must not be used to make or change a "
    "diagnosis or a treatment decision."
)


class BundleError(ChestdxError):
    """A model bundle is missing, incomplete, or from an incompatible chestdx."""


@dataclass
class Bundle:
    """A loaded model bundle.

    Attributes:
        path: the bundle folder.
        recipe: the resolved recipe (pretrained-weight loading switched off: the weights are here).
        info: the contents of ``bundle.json``.
        model: the network in eval mode.
    """

    path: Path
    recipe: Recipe
    info: dict[str, Any]
    model: Any = field(repr=False)

    @property
    def class_names(self) -> list[str]:
        return list(self.info["class_names"])

    def card(self) -> dict[str, Any]:
        return model_card(self.info)


def _version_tuple(v: str) -> tuple[int, ...]:
    out = []
    for part in str(v).split(".")[:3]:
        digits = "".join(ch for ch in part if ch.isdigit())
        out.append(int(digits) if digits else 0)
    return tuple(out)


def is_bundle(path: str | Path) -> bool:
    """Whether ``path`` is a bundle folder (has ``bundle.json``)."""
    return (Path(path) / "bundle.json").is_file()


def _metrics_summary(run_path: Path) -> dict[str, Any] | None:
    """The test metrics of the run's latest evaluation on its own test split
    (:func:`chestdx.engine.run.latest_evaluation`), or None."""
    from chestdx.engine.run import latest_evaluation

    f = latest_evaluation(run_path, "test")
    if f is None:
        return None
    try:
        res = json.loads(f.read_text())
    except (OSError, ValueError):
        return None
    return {"split": res.get("split"), "procedure": res.get("procedure"), "n_images": res.get("n_images"),
            "overall": res.get("overall"), "sites": res.get("sites"),
            "heatmap_localisation": res.get("heatmap_localisation")}


def _run_info(run: Run) -> dict[str, Any]:
    """What a run says about its model: the fields of ``bundle.json`` that the model card reads."""
    return {"name": run.recipe.name, "description": run.recipe.description, "task": run.recipe.task,
            "class_names": run.class_names, "recipe": run.recipe.model_dump(mode="json"),
            "inference": run.recipe.inference.model_dump(mode="json"),
            "preprocessing": run.recipe.data.model_dump(mode="json", exclude={"augment"}),
            "training": {"data": run.data}, "metrics": _metrics_summary(run.path)}


def _self_contained(recipe: dict[str, Any]) -> dict[str, Any]:
    """The recipe with nothing outside the bundle: a sequence model's encoder, given as a run folder,
    becomes an inline description (its weights are part of the sequence model's state dict)."""
    params = recipe["model"].get("params") or {}
    enc = params.get("encoder")
    if recipe["model"]["name"] == "att2_bilstm" and isinstance(enc, str) and enc.lower() not in ("none", "", "null"):
        from chestdx.config import ModelConfig
        from chestdx.models.sequence import encoder_description

        desc = encoder_description(enc)
        params["encoder"] = {**desc, "model": ModelConfig.model_validate(desc["model"]).model_dump(mode="json")}
        params.pop("precompute_embeddings", None)  # a training-time shortcut; a bundle answers images
    return recipe


def input_profile(run: Run, max_images: int = 128) -> dict[str, Any] | None:
    """The training images' input statistics (:func:`chestdx.predict.ood.build_profile`) over up to
    ``max_images`` evenly spaced training samples, preprocessed as the predictor does; None for a
    task whose model does not answer 2D images (3D and sequence models), or when the training images are no longer where ``samples.csv`` says."""
    import logging

    import numpy as np

    from chestdx.data.transforms import LoadPreprocess
    from chestdx.errors import ChestdxError
    from chestdx.predict.ood import build_profile
    from chestdx.tasks import get_task

    if not get_task(run.recipe).per_slice:
        return None
    try:
        train = [s for s in run.samples() if s.split == "train"]
    except ChestdxError:
        return None
    if not train:
        return None
    pick = [train[int(i)] for i in np.unique(np.linspace(0, len(train) - 1, min(max_images, len(train))).round())]
    pre = LoadPreprocess(run.recipe.data)
    images = []
    for s in pick:
        try:
            images.append(pre({"path": s.path, "box": s.box, "mask": None})["image"][0].numpy())
        except Exception as e:  # noqa: BLE001 - a moved data set: no profile, say why
            logging.getLogger(__name__).warning("no input profile in the bundle: %s unreadable (%s)", s.path, e)
            return None
    return build_profile(images)


def export_bundle(run: Run | str | Path, out: str | Path, which: str = "best", overwrite: bool = False) -> Path:
    """Write the bundle of a trained run.

    Args:
        run: a run folder or :class:`~chestdx.engine.run.Run`.
        out: the bundle folder to create.
        which: ``best`` or ``last`` checkpoint.
        overwrite: replace an existing ``out``.

    Returns:
        ``out``.

    Raises:
        RunError: not a run, or no checkpoint.
        BundleError: ``out`` exists and ``overwrite`` is False.
    """
    from safetensors.torch import save_file

    from chestdx.engine.run import Run
    run = run if isinstance(run, Run) else Run(run)
    out = Path(out)
    if out.exists() and not overwrite:
        raise BundleError(f"{out}: already exists; choose another --out or pass --overwrite")
    ckpt_path = run.checkpoint(which)
    ckpt = read_checkpoint(ckpt_path)
    hp = ckpt.get("hyper_parameters", {})
    task = run.load_task(which, ckpt=ckpt)
    state = {k: v.detach().cpu().contiguous().clone() for k, v in task.model.state_dict().items()}
    train_info = json.loads((run.path / "train.json").read_text()) if (run.path / "train.json").is_file() else {}
    data = dict(run.data)
    data["sources"] = [Path(s).name for s in data.get("sources", [])]  # no local paths in a shared file
    info = {
        "format": BUNDLE_FORMAT,
        "chestdx_version": __version__,
        "torch_version": torch.__version__,
        "exported": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        **_run_info(run),
        "in_chans": int(hp.get("in_chans", 1)),
        "class_counts": hp.get("class_counts"),
        "recipe": _self_contained(run.recipe.model_dump(mode="json")),
        "training": {"data": data, "run": train_info, "checkpoint": ckpt_path.name, "epoch": ckpt.get("epoch")},
        "input_profile": input_profile(run),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    fix_tempdir_mode(tmp)  # mkdtemp makes 0700; the bundle is shared, so it follows the umask
    try:
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": str(BUNDLE_FORMAT)})
        write_json(tmp / "bundle.json", info)
        write_text(tmp / "card.md", card_markdown(model_card(info)))
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


#: Largest ``bundle.json`` read (bytes); a real one is a few KB.
MAX_BUNDLE_JSON_BYTES = 4 * 1024 * 1024


def _read_bundle_info(path: Path) -> dict[str, Any]:
    """``bundle.json`` as a dict with every key the loader needs checked.

    Raises:
        BundleError: too large, not UTF-8, not JSON, not an object, or a key missing / of the wrong
            type; the message names the key.
    """
    f = path / "bundle.json"
    try:
        size = f.stat().st_size
        if size > MAX_BUNDLE_JSON_BYTES:
            raise BundleError(f"{f}: {size} bytes, larger than any bundle.json ({MAX_BUNDLE_JSON_BYTES} bytes "
                              "at most); not a chestdx bundle")
        info = json.loads(f.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as e:
        raise BundleError(f"{f}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except (json.JSONDecodeError, RecursionError) as e:
        raise BundleError(f"{f}: not valid JSON ({e})") from None
    except OSError as e:
        raise BundleError(f"{f}: cannot read ({e.strerror or e})") from None
    if not isinstance(info, dict):
        raise BundleError(f"{f}: expected a JSON object, got {type(info).__name__}")

    def need(key: str, kind: type | tuple[type, ...], where: dict[str, Any] = info, prefix: str = "") -> Any:
        if key not in where or where[key] is None:
            raise BundleError(f"{f}: key '{prefix}{key}' missing; the bundle is damaged (export it again)")
        if not isinstance(where[key], kind) or isinstance(where[key], bool) and kind is not bool:
            want = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
            raise BundleError(f"{f}: key '{prefix}{key}' must be {want}, got {type(where[key]).__name__}")
        return where[key]

    need("format", int)
    names = need("class_names", list)
    if len(names) < 2 or not all(isinstance(n, str) and n for n in names):
        raise BundleError(f"{f}: key 'class_names' must list at least two class names, got {names!r}")
    recipe = need("recipe", dict)
    model = need("model", dict, recipe, "recipe.")
    need("name", str, model, "recipe.model.")
    if "in_chans" in info and info["in_chans"] is not None:
        ch = need("in_chans", int)
        if not 1 <= ch <= 4:
            raise BundleError(f"{f}: key 'in_chans' must be 1-4, got {ch}")
    params = model.get("params") or {}
    if not isinstance(params, dict):
        raise BundleError(f"{f}: key 'recipe.model.params' must be an object, got {type(params).__name__}")
    enc = params.get("encoder")
    if enc is not None and not isinstance(enc, dict) and str(enc).lower() not in ("none", "", "null"):
        # a bundle carries its encoder inline (its weights are in model.safetensors); a path would make
        # loading read, and formerly unpickle, a file outside the bundle
        raise BundleError(f"{f}: key 'recipe.model.params.encoder' names a file or folder ({str(enc)[:200]!r}); "
                          "a bundle must carry its encoder inline and is refused (export the run again)")
    if isinstance(enc, dict):
        need("model", dict, enc, "recipe.model.params.encoder.")
        need("num_classes", int, enc, "recipe.model.params.encoder.")
    return info


def load_bundle(path: str | Path, map_location: str = "cpu") -> Bundle:
    """Load a bundle: the recipe, the model (eval mode) and its card; no recipe file or data needed.

    Nothing in a bundle is unpickled: weights are safetensors, the rest is JSON checked key by key,
    and a recipe that points outside the bundle (an encoder path) is refused.

    Raises:
        BundleError: not a bundle, missing weights, another bundle format, a newer chestdx, a
            malformed ``bundle.json`` (naming the key), or weights that do not fit the network the
            recipe describes.
    """
    from safetensors.torch import load_file

    from chestdx.models import build_model
    path = Path(path)
    if not is_bundle(path):
        raise BundleError(f"{path}: not a model bundle (no bundle.json); make one with "
                          "`chestdx export RUN --out MODEL_DIR`")
    info = _read_bundle_info(path)
    fmt, made_by = info.get("format"), str(info.get("chestdx_version", "unknown"))
    if fmt != BUNDLE_FORMAT:
        raise BundleError(f"{path}: bundle format {fmt!r} (written by chestdx {made_by}) cannot be read by "
                          f"chestdx {__version__}, which reads format {BUNDLE_FORMAT}; install chestdx=="
                          f"{made_by} or re-export the run with this version")
    if _version_tuple(made_by)[:2] > _version_tuple(__version__)[:2]:
        raise BundleError(f"{path}: written by chestdx {made_by}, newer than the installed {__version__}; "
                          f"install chestdx>={made_by}")
    weights = path / "model.safetensors"
    if not weights.is_file():
        raise BundleError(f"{path}: model.safetensors missing (the bundle is incomplete; export it again)")
    recipe_dict = dict(info["recipe"])
    recipe_dict["model"] = {**recipe_dict["model"], "weights": "none"}  # the weights come from the bundle
    try:
        recipe = validate_recipe(recipe_dict, f"{path / 'bundle.json'} key 'recipe'")
        model = build_model(recipe.model, num_classes=len(info["class_names"]),
                            in_chans=int(info.get("in_chans") or 1))
    except ChestdxError as e:
        raise BundleError(f"{path / 'bundle.json'}: the recipe does not describe a network this chestdx builds: "
                          f"{e}") from None
    except Exception as e:  # noqa: BLE001 - a tampered recipe may reach any constructor
        raise BundleError(f"{path / 'bundle.json'}: the recipe does not describe a network this chestdx builds "
                          f"({type(e).__name__}: {str(e)[:300]})") from None
    try:
        state = load_file(str(weights), device=map_location)
        model.load_state_dict(state)
    except Exception as e:  # noqa: BLE001 - safetensors / torch raise several kinds
        raise BundleError(f"{weights}: weights do not fit the {recipe.model.name} network of the recipe "
                          f"({type(e).__name__}: {str(e)[:300]})") from None
    model.eval()
    return Bundle(path=path, recipe=recipe, info=info, model=model)


def _metric_line(block: dict[str, Any] | None, key: str) -> str | None:
    if not block or key not in block or block[key] is None:
        return None
    m = block[key]
    if isinstance(m, dict) and m.get("value") is not None:
        lo, hi = m.get("low"), m.get("high")
        ci = f" (95% CI {100 * lo:.1f}-{100 * hi:.1f})" if lo is not None and hi is not None else ""
        return f"{100 * m['value']:.1f}%{ci}"
    return None


def _started_from(model: dict[str, Any]) -> str:
    """Which weights training started from, in words (``model.weights`` of the stored recipe)."""
    from chestdx.models.backbones import describe_weights

    return describe_weights(model.get("backbone"), model.get("weights"))


def _heatmap_card(loc: dict[str, Any] | None) -> dict[str, Any] | None:
    """How the model's default heatmap scored against the test set's lesion masks (from the
    evaluation's ``heatmap_localisation``, :mod:`chestdx.evaluate.localisation`), next to the centre
    prior: ``{"kind", "n_images", score: "v [lo, hi]", "centre_prior": {score: ...}}``; None without one."""
    if not loc or not loc.get("default_kind") or loc["default_kind"] not in (loc.get("maps") or {}):
        return None

    def line(f: dict[str, float]) -> str:
        return f"{f['value']:.3f} [{f['ci_low']:.3f}, {f['ci_high']:.3f}]"

    kind = loc["default_kind"]
    scores = ("pointing", "energy", "iou", "dice")
    out: dict[str, Any] = {"kind": kind, "n_images": loc.get("n_images"),
                           **{k: line(loc["maps"][kind][k]) for k in scores if k in loc["maps"][kind]}}
    prior = (loc.get("references") or {}).get("centre_prior")
    if prior:
        out["centre_prior"] = {k: line(prior[k]) for k in scores if k in prior}
    return out


def model_card(info: dict[str, Any]) -> dict[str, Any]:
    """The model card as a dict: what it is, what it was trained on, how well it did, intended use."""
    training = info.get("training", {})
    data = training.get("data", {})
    metrics = info.get("metrics") or {}
    overall = metrics.get("overall")
    return {
        "name": info.get("name"),
        "description": info.get("description"),
        "task": info.get("task"),
        "class_names": info.get("class_names"),
        "model": info.get("recipe", {}).get("model", {}).get("name"),
        "backbone": info.get("recipe", {}).get("model", {}).get("backbone"),
        "input_profile": info.get("input_profile"),
        "weights": _started_from(info.get("recipe", {}).get("model", {})),
        "inference": info.get("inference"),
        "preprocessing": info.get("preprocessing"),
        "training_data": {"sources": data.get("sources"), "sites": data.get("site_names"),
                          "counts": data.get("counts")},
        "training_run": {k: training.get("run", {}).get(k) for k in ("epochs_run", "wall_seconds", "monitor",
                                                                      "best_score")},
        "metrics": {
            "split": metrics.get("split"),
            "n_images": metrics.get("n_images"),
            "accuracy": _metric_line(overall, "accuracy"),
            "macro_f1": _metric_line(overall, "macro_f1"),
            "macro_auc": _metric_line(overall, "macro_auc"),
        } if overall else None,
        "heatmap": _heatmap_card(metrics.get("heatmap_localisation")),
        "chestdx_version": info.get("chestdx_version"),
        "exported": info.get("exported"),
        "intended_use": INTENDED_USE,
        "warning": "Not a medical device. Not for clinical decisions.",
    }


def card_markdown(card: dict[str, Any]) -> str:
    """The model card as markdown."""
    pre = card.get("preprocessing") or {}
    as_trained = (f"As trained: {card['model']} on {card['backbone']}, {pre.get('image_size')} px input, "
                  f"started from {card.get('weights') or 'unknown weights'}.")
    described = f"Recipe `{card['name']}`: {card['description']} (the recipe's own words, before overrides). " \
        if card.get("description") else ""
    lines = [f"# Model card: {card['name']}", "", f"**{card['warning']}**", "", described + as_trained, "",
             "## What it does",
             f"- Task: {card['task']}; classes: {', '.join(card['class_names'] or [])}",
             f"- Network: {card['model']} ({card['backbone']}); inference: {(card.get('inference') or {}).get('name')}",
             f"- Started from: {card.get('weights') or 'unknown'}",
             f"- Input: image size {(card.get('preprocessing') or {}).get('image_size')} px, "
             f"HU window {(card.get('preprocessing') or {}).get('hu_window') or 'none'}", "",
             "## Training data"]
    td = card["training_data"]
    lines.append(f"- Sources: {', '.join(td.get('sources') or []) or 'unknown'}; sites: "
                 f"{', '.join(td.get('sites') or []) or 'one'}")
    for split, c in (td.get("counts") or {}).items():
        if isinstance(c, dict) and "total" in c:
            per = ", ".join(f"{k} {v}" for k, v in (c.get("per_class") or {}).items())
            lines.append(f"- {split}: {c['total']} images ({per})")
    lines += ["", "## Evaluation"]
    m = card.get("metrics")
    if m:
        lines.append(f"On the {m['split']} split ({m['n_images']} images): accuracy {m['accuracy']}, "
                     f"macro F1 {m['macro_f1']}, macro AUC {m['macro_auc']}.")
    else:
        lines.append("Not evaluated before export (run `chestdx evaluate RUN` and export again).")
    h = card.get("heatmap")
    if h:
        cp = h.get("centre_prior") or {}
        lines.append(f"Heatmap `{h['kind']}` against the lesion masks of {h['n_images']} test images: pointing "
                     f"game {h.get('pointing')} (centre prior {cp.get('pointing', '-')}), energy inside "
                     f"{h.get('energy')} (prior {cp.get('energy', '-')}), IoU {h.get('iou')} (prior "
                     f"{cp.get('iou', '-')}); patient-level 95% intervals (docs/explain.md).")
    lines += ["", "## Intended use", card["intended_use"], "",
              (f"chestdx {card['chestdx_version']}, exported {card['exported']}." if card.get("exported")
               else f"A run folder, not an exported bundle (read by chestdx {__version__})."), ""]
    return "\n".join(lines)


def load_any(path: str | Path, which: str = "best") -> tuple[Recipe, Any, list[str], dict[str, Any]]:
    """``(recipe, model, class_names, card)`` from a bundle or a run folder (``which`` checkpoint).

    Raises:
        BundleError / RunError: neither a bundle nor a run.
    """
    from chestdx.engine.run import Run

    p = Path(path)
    if is_bundle(p):
        b = load_bundle(p)
        return b.recipe, b.model, b.class_names, b.card()
    if (p / "recipe.yaml").is_file():
        run = Run(p)
        return run.recipe, run.load_model(which), run.class_names, model_card(_run_info(run))
    if not p.exists():
        raise BundleError(f"{p}: not found (expected a model bundle from `chestdx export` or a run folder)")
    raise RunError(f"{p}: neither a model bundle (bundle.json) nor a run folder (recipe.yaml)")
