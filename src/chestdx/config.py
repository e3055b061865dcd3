"""Recipes: YAML files validated into typed configuration.

A recipe says everything the engine needs to run one method or ablation row: the task, the data
preprocessing and augmentation, the model, a list of weighted objectives, an optional batch
mixing, the inference procedure, the optimiser and the trainer settings. Recipes shipped with
chestdx live in ``chestdx/recipes/*.yaml`` and are addressed by name (``baseline``); any other
YAML file is addressed by path. Overrides use dotted keys: ``optim.lr=1e-3``,
``data.image_size=64``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializeAsAny,
    ValidationError,
    ValidationInfo,
    ValidatorFunctionWrapHandler,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from chestdx.errors import ConfigError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class AugmentConfig(_Strict):
    """Random augmentations applied to training images only (after caching).

    Probabilities are in [0, 1]; angles in degrees; ``translate`` as a fraction of the size.
    ``policy``: ``chestdx`` = the fields below, all applied; ``magsd_table2`` = MAG-SD's Table 2 (a
    random subset of brightness, contrast, zoom-in crop, rotation, flips; the fields below unused; see
    :class:`chestdx.data.transforms.MagsdAugment`).
    """

    policy: Literal["chestdx", "magsd_table2"] = "chestdx"
    hflip: float = 0.5
    vflip: float = 0.0
    rotate: float = 10.0
    scale: tuple[float, float] = (0.9, 1.1)
    translate: float = 0.05
    shear: float = 0.0
    blur_prob: float = 0.0
    blur_kernel: int = 7
    blur_sigma: tuple[float, float] = (0.05, 2.0)
    brightness: float = 0.0
    contrast: float = 0.0


class DataConfig(_Strict):
    """Preprocessing and loading: the options every task reads (the recipe's ``data`` section).

    Each task's section is a subclass adding the options only that task reads
    (:data:`DATA_SECTIONS`: :class:`SliceDataConfig`, :class:`SequenceDataConfig`,
    :class:`VolumeDataConfig`, :class:`LesionDataConfig`); a recipe's ``data`` is validated as its
    task's section, so an option of another task is refused when the recipe loads.

    ``normalize``: ``zscore`` = per-image zero mean, unit variance (chestdx's default for the 2D
    recipes; the papers mostly do not say, and the affinity paper subtracts a *global* mean instead);
    ``global`` = ``(x - mean) / std`` with one ``mean`` and ``std`` over all pixels of the training
    split's images (after crop, CLAHE and resize; computed once when training starts,
    :func:`chestdx.data.normalization.with_global_normalization`, and stored as
    ``normalize_stats`` in the run's recipe, so evaluate / predict / a bundle / serve normalise with
    the same two numbers; a recipe that gives ``normalize_stats`` keeps them); ``unit`` = keep
    [0, 1]; ``imagenet`` = ImageNet mean/std of the grey value; ``inception`` = ``(x - 0.5) / 0.5``
    (timm's IMAGENET_INCEPTION_MEAN / STD on every RGB channel: what the EfficientNet-Lite ImageNet
    weights expect; ``model.weights: imagenet`` with those backbones sets it).
    """

    image_size: int = Field(224, ge=16, le=1024)
    class_names: tuple[str, ...] = ("noncovid", "covid")
    hu_window: tuple[float, float] | None = None
    box_crop: bool = True
    clahe: bool = False
    clahe_clip: float = 0.01
    clahe_tile: int = 8
    normalize: Literal["zscore", "global", "unit", "imagenet", "inception"] = "zscore"
    # normalize: global: (mean, std) of the training split's pixels, filled in when training starts
    normalize_stats: tuple[float, float] | None = None
    batch_size: int = Field(16, ge=1)
    num_workers: int = Field(0, ge=0)
    cache: bool = True
    split_fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)
    # training refuses a patient in two splits, or a val/test patient its encoder run trained on
    # (data/splits.py: check_patient_leaks), unless this is true (then recorded in leakage.json)
    allow_patient_leaks: bool = False
    augment: AugmentConfig = Field(default_factory=lambda: AugmentConfig())

    @field_validator("class_names")
    @classmethod
    def _two_or_more(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if len(v) < 2:
            raise ValueError("class_names needs at least two classes")
        if len(set(v)) != len(v):
            raise ValueError(f"class_names has duplicates: {v}")
        return v

    @field_validator("normalize_stats")
    @classmethod
    def _positive_std(cls, v: tuple[float, float] | None) -> tuple[float, float] | None:
        import math

        if v is not None and not (math.isfinite(v[0]) and math.isfinite(v[1]) and v[1] > 0):
            raise ValueError(f"normalize_stats is (mean, std) with a finite mean and std > 0, got {tuple(v)}")
        return v

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def input_shape(self, in_chans: int = 1, batch: int | None = None) -> tuple[int, ...]:
        """The batch the model sees: ``(B, C, S, S)`` with ``S = image_size`` (``B = batch_size``
        unless given); a task whose inputs are not 2D images overrides it."""
        return (int(batch or self.batch_size), in_chans, self.image_size, self.image_size)


class SliceDataConfig(DataConfig):
    """``task: slice``: 2D images, answered one by one (a scan slice by slice).

    ``modality``: what the images are, ``ct`` (CT slices) or ``cxr`` (chest X-rays; ``task: cxr`` in
    recipes written before per-task sections means ``task: slice`` with ``modality: cxr``). It is
    recorded with the run and its bundle; the preprocessing is the same options either way.
    """

    modality: Literal["ct", "cxr"] = "ct"


class SequenceDataConfig(DataConfig):
    """``task: sequence`` (:mod:`chestdx.data.sequences`): scans cut to fixed-length slice sequences.

    ``sequence_length``: slices per sequence ``T``; ``short_scans``: what to do with scans of fewer
    slices (``skip`` them, or ``repeat`` slices to pad them).
    """

    sequence_length: int = Field(16, ge=1)
    short_scans: Literal["skip", "repeat"] = "skip"

    def input_shape(self, in_chans: int = 1, batch: int | None = None) -> tuple[int, ...]:
        """``(B, T, C, S, S)``."""
        return (int(batch or self.batch_size), self.sequence_length, in_chans, self.image_size, self.image_size)


class VolumeDataConfig(DataConfig):
    """``task: volume`` (:mod:`chestdx.data.volume_dataset`): whole 3D scans.

    ``volume_depth``: slices after resizing (H = W = ``image_size``); ``cache_dir``: the folder of the
    on-disk cache of preprocessed volumes (default ``$CHESTDX_CACHE_DIR``, else ``~/.cache/chestdx/volumes``).
    """

    volume_depth: int = Field(128, ge=1)
    cache_dir: str | None = None

    @field_validator("normalize")
    @classmethod
    def _no_global(cls, v: str) -> str:
        if v == "global":  # volumes are scaled to [0, 1] (data/volume_dataset.py); nothing would read the stats
            raise ValueError("'global' is not read by task 'volume' (volumes are scaled to [0, 1]); use unit")
        return v

    def input_shape(self, in_chans: int = 1, batch: int | None = None) -> tuple[int, ...]:
        """``(B, C, D, S, S)``."""
        return (int(batch or self.batch_size), in_chans, self.volume_depth, self.image_size, self.image_size)


class LesionDataConfig(DataConfig):
    """``task: lesion`` (:mod:`chestdx.data.lesions`): classification images plus segmentation data.

    ``segmentation_sources``: segmentation data of the one-shot training (empty: the classification
    images that have a lesion mask); ``min_lesion_area``: smallest lesion instance, in pixels at
    ``image_size``.
    """

    segmentation_sources: tuple[str, ...] = ()
    min_lesion_area: int = Field(4, ge=0)


DATA_SECTIONS: dict[str, type[DataConfig]] = {
    "slice": SliceDataConfig,
    "sequence": SequenceDataConfig,
    "volume": VolumeDataConfig,
    "lesion": LesionDataConfig,
}
"""Task name -> the class of its recipe ``data`` section; the task names a recipe may give. Each
task object of :mod:`chestdx.tasks` is registered under one of these names and names its section."""

TASK_ALIASES: dict[str, tuple[str, dict[str, Any]]] = {"cxr": ("slice", {"modality": "cxr"})}
"""Old task names still read: ``task: cxr`` is ``task: slice`` with ``data.modality: cxr``."""

_LEGACY_DATA_KEYS = frozenset({"volume_depth", "cache_dir", "sequence_length", "short_scans",
                               "segmentation_sources", "min_lesion_area"})
"""The per-task options the one flat data section had: a recipe dumped then (run folder, checkpoint,
bundle) holds all of them, for any task."""


def tasks_reading(key: str) -> list[str]:
    """The tasks whose ``data`` section has option ``key``, sorted."""
    return sorted(t for t, section in DATA_SECTIONS.items() if key in section.model_fields)


def _jsonable(v: Any) -> Any:
    """``v`` as YAML / JSON reads it back (tuples as lists), for comparing a stored value with a default."""
    return [_jsonable(x) for x in v] if isinstance(v, (list, tuple)) else v


def _data_problem(key: str, value: Any, task: str) -> InitErrorDetails:
    readers = " or ".join(f"'{t}'" for t in tasks_reading(key))
    return {"type": PydanticCustomError(
        "task_option", "an option of task {readers}, which task '{task}' does not read (it would have no "
        "effect); remove it", {"readers": readers, "task": task}), "loc": (key,), "input": value}


class ModelConfig(_Strict):
    """Which network: ``name`` selects a builder in :mod:`chestdx.models`.

    ``weights``: ``none`` (from scratch), ``imagenet`` (from a local file or the torch cache,
    never downloaded) or a path to a state dict / checkpoint.
    """

    name: str = "resnet_mlp"
    backbone: str = "resnet50"
    weights: str = "none"
    head_hidden: int = 512
    dropout: float = 0.0
    # no gradient (and batch norm in eval mode) for the backbone's stem and first N stages; -1: the
    # whole backbone (a linear probe of the head); 0: train everything
    freeze_stages: int = Field(0, ge=-1)
    params: dict[str, Any] = Field(default_factory=dict)


class ObjectiveConfig(_Strict):
    """One weighted loss term; ``name`` selects it in :mod:`chestdx.objectives`."""

    name: str
    weight: float = 1.0
    params: dict[str, Any] = Field(default_factory=dict)


class MixingConfig(_Strict):
    """A label-changing batch augmentation; ``name`` selects it in :mod:`chestdx.mixing`."""

    name: str
    prob: float = Field(1.0, ge=0.0, le=1.0)
    params: dict[str, Any] = Field(default_factory=dict)


def _speed_setting(v: Any) -> str:
    """Validate a speed setting (see :mod:`chestdx.engine.precision`) to its canonical spelling."""
    from chestdx.engine.precision import validate_speed

    try:
        return validate_speed(v)
    except ConfigError as e:
        raise ValueError(str(e)) from None


class InferenceConfig(_Strict):
    """How a trained model answers: ``plain`` forward, or a procedure such as ``cam_voting``.

    ``speed``: the execution mode of evaluate / predict / report / serve / ensemble (see
    :mod:`chestdx.engine.precision`): ``auto`` (measured once per machine, cached), or forced
    ``fp32``, ``channels_last``, ``bf16``, ``channels_last+bf16``, ``fp16``, ``channels_last+fp16``.
    A bundle carries it with the recipe; ``auto`` is resolved again on the machine that answers.
    """

    name: str = "plain"
    params: dict[str, Any] = Field(default_factory=dict)
    speed: str = "auto"

    @field_validator("speed", mode="before")
    @classmethod
    def _check_speed(cls, v: Any) -> str:
        return _speed_setting(v)


class OptimConfig(_Strict):
    name: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float = Field(1e-4, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    momentum: float = 0.9
    scheduler: Literal["none", "cosine", "step", "multistep", "onecycle"] = "none"
    step_size: int = 30
    # multistep: lr times gamma at these fractions of trainer.epochs (cmc-cov19d: 0.3 and 0.8)
    milestones: tuple[float, ...] = ()
    gamma: float = 0.1
    # discriminative learning rates: the backbone (the pretrained layers) at backbone_lr, the new
    # layers (heads, attention, ...) at lr; None: one lr for all (SnapMix: backbone 1e-3, new 1e-2)
    backbone_lr: float | None = Field(None, gt=0)
    # onecycle: share of the steps spent warming up
    warmup_fraction: float = Field(0.1, gt=0, lt=1)


class EarlyStoppingConfig(_Strict):
    monitor: str = "val_loss"
    mode: Literal["min", "max"] = "min"
    patience: int = 5


class TrainerConfig(_Strict):
    """Loop settings. ``monitor`` picks the best checkpoint (``val_loss`` min or ``val_auc`` max).

    ``speed``: the execution mode of training (see :mod:`chestdx.engine.precision`): ``auto``
    (measured once per machine, cached), or forced ``fp32``, ``channels_last``, ``bf16``,
    ``channels_last+bf16``, ``fp16``, ``channels_last+fp16``. ``precision`` is Lightning's precision
    string; None (the default) takes it from ``speed``, a value (``--precision``) forces it and
    ``speed`` then only chooses the memory format.
    """

    epochs: int = Field(10, ge=1)
    monitor: str = "val_loss"
    monitor_mode: Literal["min", "max"] = "min"
    early_stopping: EarlyStoppingConfig | None = None
    gradient_clip: float | None = None
    precision: str | None = None
    speed: str = "auto"
    accelerator: str = "auto"
    devices: str | int = "auto"
    num_nodes: int = 1
    strategy: str = "auto"
    limit_train_batches: float | int | None = None
    log_every_n_steps: int = 10

    @field_validator("speed", mode="before")
    @classmethod
    def _check_speed(cls, v: Any) -> str:
        return _speed_setting(v)


class Recipe(_Strict):
    """One method or ablation row: everything the engine needs to train and evaluate it."""

    name: str
    description: str = ""
    paper: str = ""
    # one of DATA_SECTIONS (the task objects of chestdx.tasks); data is validated as that task's section
    task: str = "slice"
    seed: int = 0
    data: SerializeAsAny[DataConfig] = Field(default_factory=dict, validate_default=True)
    model: ModelConfig = Field(default_factory=lambda: ModelConfig())
    objectives: list[ObjectiveConfig] = Field(default_factory=lambda: [ObjectiveConfig(name="ce")])
    mixing: MixingConfig | None = None
    inference: InferenceConfig = Field(default_factory=lambda: InferenceConfig())
    optim: OptimConfig = Field(default_factory=lambda: OptimConfig())
    trainer: TrainerConfig = Field(default_factory=lambda: TrainerConfig())

    @model_validator(mode="before")
    @classmethod
    def _task_spelling(cls, raw: Any) -> Any:
        """Read old spellings: ``task: cxr`` (``task: slice`` + ``data.modality: cxr``), and a ``data``
        section dumped before per-task sections (it holds every task's options; those of other tasks,
        which had no effect, are dropped, with a warning where one was not its default)."""
        if not isinstance(raw, Mapping):
            return raw
        raw = dict(raw)
        task, data = raw.get("task", "slice"), raw.get("data")
        if isinstance(task, str) and task in TASK_ALIASES:
            task, implied = TASK_ALIASES[task]
            data = dict(data) if isinstance(data, Mapping) else {} if data is None else data
            if isinstance(data, dict):
                for k, v in implied.items():
                    if data.setdefault(k, v) != v:
                        raise ValidationError.from_exception_data("Recipe", [{"type": PydanticCustomError(
                            "task_alias", "task '{alias}' means task '{task}' with data.{key}: {value}",
                            {"alias": raw["task"], "task": task, "key": k, "value": v}),
                            "loc": ("data", k), "input": data[k]}])
            raw["task"], raw["data"] = task, data
        section = DATA_SECTIONS.get(task) if isinstance(task, str) else None
        if section is not None and isinstance(data, Mapping) and _LEGACY_DATA_KEYS <= set(data):
            foreign = {k: data[k] for k in _LEGACY_DATA_KEYS if k not in section.model_fields}
            changed = sorted(k for k, v in foreign.items()
                             if _jsonable(v) != _jsonable(DATA_SECTIONS[tasks_reading(k)[0]].model_fields[k].default))
            if changed:
                import logging

                logging.getLogger(__name__).warning(
                    "recipe '%s': dropped data.%s, option(s) of another task that task '%s' never read",
                    raw.get("name"), ", data.".join(changed), task)
            raw["data"] = {k: v for k, v in data.items() if k not in foreign}
        return raw

    @field_validator("task")
    @classmethod
    def _known_task(cls, v: str) -> str:
        if v not in DATA_SECTIONS:
            from chestdx.registry import did_you_mean

            raise PydanticCustomError("unknown_task", "unknown task '{task}'{hint}; choose one of {names}",
                                      {"task": v, "hint": did_you_mean(v, DATA_SECTIONS),
                                       "names": ", ".join(sorted(DATA_SECTIONS))})
        return v

    @field_validator("data", mode="wrap")
    @classmethod
    def _task_section(cls, v: Any, handler: ValidatorFunctionWrapHandler, info: ValidationInfo) -> DataConfig:
        """``data`` as the section of the recipe's task; an option of another task is refused, named."""
        task = info.data.get("task")
        section = DATA_SECTIONS.get(task) if isinstance(task, str) else None
        if section is not None and type(v) is section:
            return v
        if isinstance(v, DataConfig):
            v = v.model_dump()
        if section is None:  # the task itself is wrong (reported): check the options every task shares
            section = DataConfig
            if isinstance(v, Mapping):
                v = {k: x for k, x in v.items() if not tasks_reading(k)}
        elif isinstance(v, Mapping):
            foreign = [_data_problem(k, x, str(task)) for k, x in v.items()
                       if k not in section.model_fields and tasks_reading(k)]
            if foreign:
                raise ValidationError.from_exception_data(section.__name__, foreign)
        return section.model_validate(v)

    @model_validator(mode="after")
    def _weights_normalize(self) -> Recipe:
        """ImageNet weights that need a fixed input scale (EfficientNet-Lite: ``inception``) set
        ``data.normalize``, so the stored recipe (run, bundle) carries what the weights were trained with."""
        from chestdx.pretrained import weights_normalize

        want = weights_normalize(self.model.backbone, self.model.weights)
        if want and self.data.normalize != want:
            import logging

            logging.getLogger(__name__).warning(
                "data.normalize %s -> %s: the ImageNet weights of %s expect inputs scaled that way",
                self.data.normalize, want, self.model.backbone)
            self.data.normalize = want  # type: ignore[assignment]
        return self

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def recipe_names() -> list[str]:
    """Names of the recipes shipped with chestdx, sorted."""
    root = resources.files("chestdx") / "recipes"
    return sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".yaml"))


def _read_yaml(name_or_path: str | Path) -> tuple[dict[str, Any], str]:
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or p.exists():
        if not p.is_file():
            raise ConfigError(f"recipe file not found: {p}")
        text, origin = p.read_text(encoding="utf-8"), str(p)
    else:
        res = resources.files("chestdx") / "recipes" / f"{name_or_path}.yaml"
        if not res.is_file():
            names = recipe_names()
            import difflib

            close = difflib.get_close_matches(str(name_or_path), names, n=3)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            raise ConfigError(
                f"unknown recipe '{name_or_path}'.{hint} Shipped recipes: {', '.join(names)}; "
                "or give a path to a .yaml file."
            )
        text, origin = res.read_text(encoding="utf-8"), f"chestdx/recipes/{name_or_path}.yaml"
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{origin}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{origin}: a recipe must be a mapping, got {type(data).__name__}")
    return data, origin


def deep_merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in extra.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def parse_overrides(items: Iterable[str]) -> dict[str, Any]:
    """Turn ``["optim.lr=1e-3", "data.image_size=64"]`` into a nested dict (values parsed as YAML)."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override '{item}' must look like key.subkey=value")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            value = raw
        node = out
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return out


def load_recipe(name_or_path: str | Path, overrides: Mapping[str, Any] | Iterable[str] = (), *,
                parts: bool = True) -> Recipe:
    """Load a recipe by name or path, apply overrides, validate it whole (:func:`validate_recipe`).

    A recipe may say ``base: other_recipe`` to start from another recipe and change some keys.

    Args:
        parts: False: the schema only, no check of names and ``params`` against the registries (no
            torch import; see :func:`validate_recipe`).

    Raises:
        ConfigError: unknown recipe, bad YAML, unknown key or invalid value, unregistered model /
            objective / mixing / inference name or a ``params`` key its factory does not take (the
            message names them all).
    """
    data, origin = _read_yaml(name_or_path)
    seen = {origin}
    while "base" in data:
        base_name = data.pop("base")
        base, base_origin = _read_yaml(base_name)
        if base_origin in seen:
            raise ConfigError(f"{origin}: recipe 'base' chain loops at {base_name}")
        seen.add(base_origin)
        data = deep_merge(base, data)
    if not isinstance(overrides, Mapping):
        overrides = parse_overrides(overrides)
    data = deep_merge(data, overrides)
    return validate_recipe(data, origin, overridden=_dotted_keys(overrides), parts=parts)


def _dotted_keys(d: Mapping[str, Any], prefix: str = "") -> set[str]:
    """Every key of a nested mapping, dotted (``{"optim": {"lr": 1}}`` -> ``{"optim", "optim.lr"}``)."""
    out: set[str] = set()
    for k, v in d.items():
        key = f"{prefix}{k}"
        out.add(key)
        if isinstance(v, Mapping):
            out |= _dotted_keys(v, key + ".")
    return out


def recipe_keys(model: type[BaseModel] = None, prefix: str = "") -> list[str]:  # type: ignore[assignment]
    """Every settable dotted key of a recipe (``optim.weight_decay``, ``data.augment.flip``, ...);
    under ``data``, the options of every task's section."""
    import typing

    model = model or Recipe
    out: list[str] = []
    for name, f in model.model_fields.items():
        key = f"{prefix}{name}"
        out.append(key)
        for t in (f.annotation, *typing.get_args(f.annotation)):
            if isinstance(t, type) and issubclass(t, BaseModel):
                sections: list[type[BaseModel]] = [t, *DATA_SECTIONS.values()] if t is DataConfig else [t]
                for section in sections:
                    out += [k for k in recipe_keys(section, key + ".") if k not in out]
                break
    return out


def _did_you_mean(loc: str) -> str:
    import difflib

    close = difflib.get_close_matches(loc, recipe_keys(), n=3, cutoff=0.75)
    return f"; did you mean {' or '.join(close)}?" if close else ""


_BY_OVERRIDE = " [set by an override: --set or a flag]"


def _overridden(parts: list[str], overridden: set[str] | None) -> bool:
    """Whether the recipe key ``parts`` (``["optim", "lr"]``) or a key above it was set by an override."""
    return bool(overridden) and any(".".join(parts[:i]) in overridden for i in range(len(parts), 0, -1))  # type: ignore[operator]


def validate_recipe(data: Mapping[str, Any], origin: str = "recipe", overridden: set[str] | None = None, *,
                    parts: bool = True) -> Recipe:
    """Validate a plain mapping into a :class:`Recipe`, then (``parts``) its parts against their
    registries (:func:`part_problems`: every name registered, every ``params`` key accepted).

    Args:
        data: the recipe as plain data.
        origin: where it came from (named in the error).
        overridden: dotted keys set by overrides (``--set``, shortcut flags): an error in one of them
            is blamed on the override, not on ``origin``.
        parts: False: the schema only, which imports no torch (the CLI's first, fast pass over its
            recipes); the parts' check imports the model, objective, mixing and inference modules.

    Raises:
        ConfigError: listing every invalid key with its value, the reason, where it was set, and
            for an unknown key, name or ``params`` key the closest known ones.
    """
    lines = []
    blamed_override = False
    try:
        recipe = Recipe.model_validate(dict(data))
    except ValidationError as e:
        for err in e.errors():
            loc_parts = [str(x) for x in err["loc"]]
            loc = ".".join(loc_parts)
            got = err.get("input")
            where = ""
            if _overridden(loc_parts, overridden):
                where, blamed_override = _BY_OVERRIDE, True
            hint = _did_you_mean(loc) if err.get("type") == "extra_forbidden" else ""
            msg = "unknown key" if err.get("type") == "extra_forbidden" else err["msg"]
            lines.append(f"  {loc}: {msg} (got {got!r}){where}{hint}")
    else:
        if not parts:
            return recipe
        for loc_parts, msg in part_problems(recipe):
            where = ""
            if _overridden(loc_parts, overridden):
                where, blamed_override = _BY_OVERRIDE, True
            lines.append(f"  {msg}{where}")
        if not lines:
            return recipe
    head = f"{origin} with the overrides given" if blamed_override else origin
    raise ConfigError(f"{head}: invalid recipe\n" + "\n".join(lines)) from None


def part_problems(recipe: Recipe) -> list[tuple[list[str], str]]:
    """Every problem of a recipe's registered parts, found before anything is built: ``model.name``,
    each ``objectives[i].name`` (and the entries of an ``uncertainty`` objective's groups),
    ``mixing.name`` and ``inference.name`` registered, and every ``params`` key accepted by its
    factory (for a model, by the class its builder passes ``params`` to), with did-you-mean.

    Returns:
        ``(recipe key path, message)`` pairs (``(["objectives", "1", "params", "gama"], "objectives[1].
        params.gama: objective 'ce' has no parameter 'gama' ...")``); empty: the parts are sound.
    """
    # imported here: the schema alone (and so the CLI's first checks) needs no torch
    from chestdx.engine.infer import PROCEDURES
    from chestdx.mixing import MIXERS
    from chestdx.models import MODELS
    from chestdx.objectives import objective_problems

    found: list[tuple[list[str], str]] = []

    def add(loc: list[str], problems: list[tuple[str | None, str]]) -> None:
        found.extend(([*loc, "name"] if key is None else [*loc, "params", str(key)], msg) for key, msg in problems)

    add(["model"], MODELS.problems(recipe.model.name, recipe.model.params, "model"))
    for i, o in enumerate(recipe.objectives):
        add(["objectives", str(i)], objective_problems(o.name, o.params, f"objectives[{i}]"))
    if recipe.mixing is not None:
        add(["mixing"], MIXERS.problems(recipe.mixing.name, recipe.mixing.params, "mixing"))
    add(["inference"], PROCEDURES.problems(recipe.inference.name, recipe.inference.params, "inference"))
    return found
