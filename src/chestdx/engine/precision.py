"""Execution modes: how a model runs on the machine at hand (memory format x compute precision).

A mode is a memory format (``contiguous`` NCHW, or ``channels_last`` NHWC for 4D weights and
inputs) and a compute precision (``fp32``; ``bf16`` / ``fp16`` autocast, weights kept in float32).
Which one is fastest depends on the model, the phase and the machine: on a 2-core AVX512-BF16 CPU
ResNet-50 trains 3.0x faster with channels-last + bf16 than in fp32, while EfficientNet-Lite0
trains fastest with channels-last in fp32 (bf16 is slower there) and infers fastest with
channels-last + bf16.

Settings (recipe ``trainer.speed`` for training, ``inference.speed`` for evaluate / predict / serve;
CLI ``--speed``):

==================== ========================================================================
``auto``             measure the supported modes once (a few steps each) and pick the fastest;
                     the choice is cached per machine (see :func:`cache_file`)
``fp32``             contiguous float32: exactly what chestdx did before modes existed
``channels_last``    channels-last float32 (the same numbers up to summation order)
``bf16``             contiguous, bfloat16 autocast
``channels_last+bf16`` both
``fp16``             float16 autocast (CUDA; CPUs with AMX-FP16 / AVX512-FP16)
``channels_last+fp16`` both
==================== ========================================================================

``contiguous+bf16`` and ``channels_last+fp32`` are accepted spellings of ``bf16`` and
``channels_last``. A forced mode the hardware does not support natively still runs (PyTorch
emulates it, slowly) and logs a warning. ``$CHESTDX_SPEED``, where set, says what ``auto`` means in
this process (e.g. ``CHESTDX_SPEED=fp32`` turns measuring off); a forced setting is never replaced.

``auto`` picks the fastest mode, except that a float32 mode within 5 % of the fastest wins (no
precision given away for noise). Autocast changes results slightly (bf16 keeps 8 bits of mantissa:
probabilities move by up to a few 1e-2 on a trained model); maps (CAM, attention) are always
computed from float32 copies (:func:`float32_output`, :func:`chestdx.explain.cam.cam_from_features`),
and stage maps (``layercam8``, the default heatmap of a CNN) from a float32 pass of their own: from
bf16 activations they moved far from the float32 map on a trained EfficientNet-Lite0 (docs/results.md,
issue 19). An answer with such a heatmap is therefore cheapest in a float32 mode, where one pass with
gradients gives both, and ``auto`` picks among the float32 modes for it
(:meth:`InferenceSpeed.mode_for` ``exact``).

torch is imported inside the functions, so that :mod:`chestdx.config` can validate settings
without importing it.
"""

from __future__ import annotations

import contextlib
import copy
import difflib
import hashlib
import json
import logging
import os
import platform
import threading
import time
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from chestdx.errors import ConfigError

if TYPE_CHECKING:
    import torch
    from torch import Tensor, nn

    from chestdx.config import Recipe

log = logging.getLogger(__name__)

__all__ = [
    "FP32", "MEMORY_FORMATS", "COMPUTES", "SPEED_SETTINGS", "ExecMode", "InferenceSpeed", "apply_memory_format",
    "autocast", "cache_file", "fold_batchnorm", "inference_model", "candidate_modes", "device_description", "float32_output", "mode_from_precision",
    "model_fingerprint", "measure_modes", "parse_speed", "resolve_mode", "running", "set_memory_format",
    "supported_computes",
    "to_mode_input", "validate_speed", "example_shape", "training_device", "training_mode", "lightning_precision",
]

MemoryFormat = Literal["contiguous", "channels_last"]
Compute = Literal["fp32", "bf16", "fp16"]
Phase = Literal["train", "inference"]

MEMORY_FORMATS: tuple[str, ...] = ("contiguous", "channels_last")
COMPUTES: tuple[str, ...] = ("fp32", "bf16", "fp16")
SPEED_SETTINGS: tuple[str, ...] = ("auto", "fp32", "channels_last", "bf16", "channels_last+bf16", "fp16",
                                   "channels_last+fp16")
"""Every setting string, canonical spelling (see the module docstring)."""

ENV_SPEED = "CHESTDX_SPEED"
"""Environment variable: what ``auto`` means in this process (a forced setting string)."""

CACHE_NAME = "precision.json"
MEASURE_VERSION = 2
"""Part of every cache key: raised when what a mode runs changes, so that older choices are measured
again (2: one-channel inputs run channels-last from the first convolution, :func:`to_mode_input`)."""
EXACT_MARGIN = 0.05
"""``auto`` keeps a float32 mode whose time is within this fraction of the fastest mode's."""

_LIGHTNING = {"fp32": "32-true", "bf16": "bf16-mixed", "fp16": "16-mixed"}


@dataclass(frozen=True)
class ExecMode:
    """One execution mode.

    Attributes:
        memory_format: ``contiguous`` (NCHW) or ``channels_last`` (NHWC; applies to 4D weights and
            4D inputs ``(B, C, H, W)``, other tensors keep theirs).
        compute: ``fp32``, or ``bf16`` / ``fp16`` autocast (weights stay float32).
    """

    memory_format: MemoryFormat = "contiguous"
    compute: Compute = "fp32"

    @property
    def name(self) -> str:
        """The canonical setting string: ``fp32``, ``channels_last``, ``bf16``, ``channels_last+bf16``, ..."""
        if self.memory_format == "contiguous":
            return self.compute
        return "channels_last" if self.compute == "fp32" else f"channels_last+{self.compute}"

    @property
    def channels_last(self) -> bool:
        return self.memory_format == "channels_last"

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        """``torch.bfloat16`` / ``torch.float16`` for autocast modes, None for fp32."""
        import torch

        return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[self.compute]

    @property
    def lightning_precision(self) -> str:
        """Lightning's ``Trainer(precision=...)`` for this compute: ``32-true``, ``bf16-mixed``, ``16-mixed``."""
        return _LIGHTNING[self.compute]

    def __str__(self) -> str:
        return self.name


FP32 = ExecMode()
"""Contiguous float32: the mode of every path given no setting."""


# ----------------------------------------------------------------------------------------- settings


def _did_you_mean(value: str) -> str:
    close = difflib.get_close_matches(value.lower(), SPEED_SETTINGS, n=2, cutoff=0.5)
    return f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""


def parse_speed(setting: str | ExecMode) -> ExecMode | None:
    """Parse a setting string.

    Args:
        setting: ``auto`` or a forced mode (see the module docstring); parts joined by ``+`` in any
            order, case and surrounding blanks ignored. An :class:`ExecMode` is returned as it is.

    Returns:
        the forced :class:`ExecMode`, or None for ``auto``.

    Raises:
        ConfigError: an unknown setting (the message names it, the closest settings and all of them).
    """
    if isinstance(setting, ExecMode):
        return setting
    if not isinstance(setting, str):
        raise ConfigError(f"speed setting must be a string, got {setting!r} ({type(setting).__name__}); "
                          f"choose one of {', '.join(SPEED_SETTINGS)}")
    text = setting.strip().lower()
    if text == "auto":
        return None
    memory: set[str] = set()
    compute: set[str] = set()
    parts = [p.strip() for p in text.split("+")]
    for part in parts:
        if part in MEMORY_FORMATS:
            memory.add(part)
        elif part in COMPUTES:
            compute.add(part)
        else:
            raise ConfigError(f"unknown speed setting {setting!r}.{_did_you_mean(text)} Choose one of "
                              f"{', '.join(SPEED_SETTINGS)} (see chestdx.engine.precision).")
    if len(parts) > 2 or len(memory) > 1 or len(compute) > 1 or len(memory) + len(compute) != len(parts):
        raise ConfigError(f"speed setting {setting!r} names more than one memory format or precision; give at "
                          f"most one of each, e.g. 'channels_last+bf16'. Choose one of {', '.join(SPEED_SETTINGS)}.")
    return ExecMode(memory_format=next(iter(memory), "contiguous"),  # type: ignore[arg-type]
                    compute=next(iter(compute), "fp32"))  # type: ignore[arg-type]


def validate_speed(setting: str) -> str:
    """The canonical spelling of a setting (``auto`` or a mode's :attr:`ExecMode.name`).

    Raises:
        ConfigError: an unknown setting.
    """
    mode = parse_speed(setting)
    return "auto" if mode is None else mode.name


def _env_setting() -> ExecMode | None:
    value = os.environ.get(ENV_SPEED, "").strip()
    if not value:
        return None
    try:
        return parse_speed(value)
    except ConfigError as e:
        raise ConfigError(f"${ENV_SPEED}: {e}") from None


def mode_from_precision(precision: str | int | None) -> Compute | None:
    """The compute a Lightning precision string forces: ``bf16-mixed`` -> ``bf16``, ``16-mixed`` ->
    ``fp16``, ``32-true`` / ``64-true`` -> ``fp32``; None for None."""
    if precision is None:
        return None
    p = str(precision).lower()
    if p.startswith("bf16"):
        return "bf16"
    if p.startswith("16"):
        return "fp16"
    return "fp32"


# ----------------------------------------------------------------------------------------- hardware


def _device(device: Any) -> torch.device:
    import torch

    if device is None:
        return torch.device("cpu")
    d = torch.device(device)
    if d.type == "cuda" and d.index is None:
        d = torch.device("cuda", torch.cuda.current_device())
    return d


@lru_cache(maxsize=1)
def _cpuinfo() -> tuple[str, frozenset[str]]:
    """``(model name, flags)`` from ``/proc/cpuinfo`` (x86 ``flags``, ARM ``Features``); empty where
    it is not readable."""
    name, flags = "", frozenset[str]()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip().lower()
                if key in ("model name", "cpu model", "hardware") and not name:
                    name = value.strip()
                elif key in ("flags", "features") and not flags:
                    flags = frozenset(value.split())
                if name and flags:
                    break
    except OSError:
        pass
    return name or platform.processor() or platform.machine() or "unknown cpu", flags


def device_description(device: Any = "cpu") -> str:
    """What the cache key says about the device: ``cpu: <model name> (<threads> threads)`` or
    ``cuda: <GPU name>``."""
    import torch

    d = _device(device)
    if d.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(d)}"
    if d.type == "cpu":
        return f"cpu: {_cpuinfo()[0]} ({torch.get_num_threads()} threads)"
    return d.type


def _trial(device_type: str, dtype: torch.dtype) -> bool:
    """A tiny conv + linear under autocast: runs, gives ``dtype`` and finite numbers close to fp32."""
    import torch

    try:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(2, 3, 8, 8, generator=g)
        w = torch.randn(4, 3, 3, 3, generator=g)
        ref = torch.nn.functional.conv2d(x, w)
        with torch.autocast(device_type, dtype=dtype):
            y = torch.nn.functional.conv2d(x.to(device_type), w.to(device_type))
        return bool(y.dtype == dtype and torch.isfinite(y).all()
                    and torch.allclose(y.float().cpu(), ref, atol=0.1, rtol=0.05))
    except Exception:  # noqa: BLE001 - any failure means "not supported"
        return False


@lru_cache(maxsize=8)
def _supported(kind: str, index: int | None) -> tuple[str, ...]:
    import torch

    if kind == "cuda":
        out = ["fp32", "fp16"]
        if torch.cuda.is_bf16_supported():
            out.insert(1, "bf16")
        return tuple(out)
    if kind != "cpu":
        return ("fp32",)
    _, flags = _cpuinfo()
    out = ["fp32"]
    if flags:
        bf16 = bool(flags & {"amx_bf16", "avx512_bf16", "bf16"})  # x86 AMX / AVX512, ARM BF16
        fp16 = bool(flags & {"amx_fp16", "avx512_fp16"})
    else:  # flags unreadable (not Linux): ask oneDNN, then try it
        mk = torch.backends.mkldnn.is_available()
        bf16 = mk and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        fp16 = mk and bool(torch.ops.mkldnn._is_mkldnn_fp16_supported())
    if bf16 and _trial("cpu", torch.bfloat16):
        out.append("bf16")
    if fp16 and _trial("cpu", torch.float16):
        out.append("fp16")
    return tuple(out)


def supported_computes(device: Any = "cpu") -> tuple[str, ...]:
    """The precisions the hardware runs natively, ``fp32`` first.

    CPU: ``bf16`` where ``/proc/cpuinfo`` lists ``amx_bf16`` or ``avx512_bf16`` (ARM: ``bf16``),
    ``fp16`` where it lists ``amx_fp16`` or ``avx512_fp16``; without readable flags oneDNN is asked
    (``torch.ops.mkldnn._is_mkldnn_bf16_supported``); either way a tiny autocast trial must pass.
    CUDA: ``fp16`` always, ``bf16`` where ``torch.cuda.is_bf16_supported()``. Other devices: ``fp32``.
    """
    d = _device(device)
    return _supported(d.type, d.index)


def candidate_modes(device: Any = "cpu", ndim: int = 4, compute: str | None = None,
                    phase: str = "inference") -> list[ExecMode]:
    """The modes ``auto`` measures: every supported compute, in both memory formats for 4D inputs
    (contiguous only otherwise); only ``compute`` where given (e.g. forced by ``trainer.precision``).
    Training on a CPU leaves fp16 out (Lightning has no fp16 AMP on a CPU; it would train in bf16)."""
    formats = MEMORY_FORMATS if ndim == 4 else ("contiguous",)
    computes = [c for c in supported_computes(device) if compute is None or c == compute]
    if phase == "train" and _device(device).type == "cpu" and compute is None:
        computes = [c for c in computes if c != "fp16"]
    if compute is not None and not computes:
        computes = [compute]
    return [ExecMode(f, c) for c in computes for f in formats]  # type: ignore[arg-type]


# ----------------------------------------------------------------------------------- applying modes

_CONVERTED: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()
"""Models :func:`apply_memory_format` made channels-last (so that a contiguous mode converts back
only what chestdx converted, never a model its owner made channels-last)."""


def set_memory_format(model: nn.Module, channels_last: bool) -> nn.Module:
    """Every 4D parameter and buffer of ``model`` (2D conv weights ``(O, I, kh, kw)``) to channels-last
    strides, or back to contiguous, in place (same values); other tensors are left as they are. Unlike
    ``model.to(memory_format=torch.channels_last)``, which refuses the 5D weights of a 3D model, this
    works on any model (a 3D model's 3D convolutions stay contiguous)."""
    import itertools

    import torch

    fmt = torch.channels_last if channels_last else torch.contiguous_format
    with torch.no_grad():
        for t in itertools.chain(model.parameters(), model.buffers()):
            if t.ndim == 4 and not t.is_contiguous(memory_format=fmt):
                t.data = t.data.contiguous(memory_format=fmt)
    return model


def apply_memory_format(model: nn.Module, mode: ExecMode) -> nn.Module:
    """Convert ``model``'s 4D weights to the mode's memory format, in place; returns ``model``.

    ``channels_last``: :func:`set_memory_format` (4D tensors only). ``contiguous``: converts back
    only a model this function made channels-last.
    """
    if mode.channels_last:
        if _CONVERTED.get(model) != "channels_last":
            set_memory_format(model, True)
            _CONVERTED[model] = "channels_last"
    elif _CONVERTED.get(model) == "channels_last":
        set_memory_format(model, False)
        _CONVERTED.pop(model, None)
    return model


def to_mode_input(x: Tensor, mode: ExecMode) -> Tensor:
    """``x`` in the mode's memory format: a 4D floating tensor ``(B, C, H, W)`` becomes channels-last
    (same values, NHWC strides); anything else is returned as it is.

    One channel (chestdx's grey images): NCHW and NHWC describe the same memory, and PyTorch keeps
    the NCHW strides ``(HW, HW, W, 1)``, which the first convolution reads as NCHW, so its output and
    every layer after it ran NCHW even with channels-last weights. The strides are rewritten to
    ``(HW, 1, W, 1)`` (a view, no copy), so the network runs channels-last from the stem on: on the
    2-core CPU of issue 19 in channels-last + bf16, EfficientNet-Lite0 1.6x and ResNet-50 1.09x faster.
    """
    import torch

    if mode.channels_last and getattr(x, "ndim", 0) == 4 and x.is_floating_point():
        x = x.contiguous(memory_format=torch.channels_last)
        if x.shape[1] == 1 and x.stride(1) != 1:
            x = x.as_strided(x.shape, (x.stride(0), 1, x.stride(2), x.stride(3)), x.storage_offset())
    return x


@contextlib.contextmanager
def autocast(mode: ExecMode, device: Any = "cpu") -> Iterator[None]:
    """``torch.autocast(device_type, dtype=...)`` for a bf16 / fp16 mode; nothing for fp32."""
    import torch

    dtype = mode.autocast_dtype
    if dtype is None:
        yield
        return
    with torch.autocast(_device(device).type, dtype=dtype):
        yield


def float32_output(out: Any) -> Any:
    """``out`` with every floating tensor in float32: a :class:`~chestdx.models.ModelOutput` (logits
    ``(B, K)``, features ``(B, C, h, w)``, embedding ``(B, D)``, maps such as attention
    ``(B, h, w)``), a tensor, or a tuple / list / dict of them. Integer tensors are left alone."""
    import torch

    from chestdx.models.base import ModelOutput

    if isinstance(out, torch.Tensor):
        return out.float() if out.is_floating_point() and out.dtype != torch.float32 else out
    if isinstance(out, ModelOutput):
        return ModelOutput(logits=float32_output(out.logits), features=float32_output(out.features),
                           embedding=float32_output(out.embedding), maps=float32_output(out.maps))
    if isinstance(out, dict):
        return {k: float32_output(v) for k, v in out.items()}
    if isinstance(out, tuple | list):
        return type(out)(float32_output(v) for v in out)
    return out


@contextlib.contextmanager
def running(model: nn.Module, mode: ExecMode, device: Any = "cpu") -> Iterator[None]:
    """Run ``model`` in ``mode`` inside the block (inference; training goes through Lightning).

    The model is converted to the memory format (:func:`apply_memory_format`, in place, kept after
    the block); with autocast, a forward hook on ``model`` casts its outputs back to float32
    (:func:`float32_output`: logits, features, attention maps) and is removed when the block ends.
    Inputs are the caller's to convert (:func:`to_mode_input`); convolutions run channels-last
    either way once their weights are. Not reentrant on one model from several threads (the
    predictor holds its lock around it).

    Example::

        with running(model, mode, "cpu"):
            out = model(to_mode_input(images, mode))   # out.logits float32
    """
    apply_memory_format(model, mode)
    handle = None
    if mode.compute != "fp32":
        handle = model.register_forward_hook(lambda _m, _inp, out: float32_output(out))
    try:
        with autocast(mode, device):
            yield
    finally:
        if handle is not None:
            handle.remove()


def fold_batchnorm(model: nn.Module) -> int:
    """Fold every eval-mode ``BatchNorm2d`` into the ``Conv2d`` registered just before it in the same
    parent module (ResNet's ``conv1`` / ``bn1``, timm EfficientNet's ``conv_pw`` / ``bn1``, a
    ``downsample`` ``Sequential``), in place: the convolution's weight becomes ``w * g / sqrt(v + eps)``
    and its bias ``(b - m) * g / sqrt(v + eps) + beta``; the norm is replaced by what follows it inside
    the module (timm's ``BatchNormAct2d``: its dropout and activation; a plain ``BatchNorm2d``:
    nothing). The same function in eval mode, up to float rounding, without the normalisation's pass
    over every activation (and its backward, for gradient maps). Returns how many were folded.
    Call it on a copy (:func:`inference_model`): the model can no longer train."""
    import torch
    from torch import nn

    folded = 0
    for parent in list(model.modules()):
        kids = list(parent.named_children())
        for (_, conv), (bn_name, bn) in zip(kids, kids[1:], strict=False):
            if not (isinstance(conv, nn.Conv2d) and type(bn).__name__ in ("BatchNorm2d", "BatchNormAct2d")
                    and isinstance(bn, nn.BatchNorm2d) and not bn.training and bn.running_var is not None
                    and bn.running_mean is not None and conv.out_channels == bn.num_features):
                continue
            with torch.no_grad():
                scale = bn.running_var.float().add(bn.eps).rsqrt()
                if bn.weight is not None:
                    scale = scale * bn.weight.float()
                shift = -bn.running_mean.float() * scale
                if conv.bias is not None:
                    shift = shift + conv.bias.float() * scale
                if bn.bias is not None:
                    shift = shift + bn.bias.float()
                w = conv.weight.float() * scale.view(-1, *[1] * (conv.weight.ndim - 1))
                conv.weight = nn.Parameter(w.to(conv.weight.dtype).contiguous(
                    memory_format=torch.channels_last if conv.weight.is_contiguous(
                        memory_format=torch.channels_last) and conv.weight.ndim == 4 else torch.contiguous_format),
                    requires_grad=conv.weight.requires_grad)
                conv.bias = nn.Parameter(shift.to(conv.weight.dtype), requires_grad=conv.weight.requires_grad)
            rest = [m for m in (getattr(bn, "drop", None), getattr(bn, "act", None)) if m is not None]
            setattr(parent, bn_name, nn.Sequential(*rest) if rest else nn.Identity())
            folded += 1
    return folded


_FOLDED: weakref.WeakKeyDictionary[Any, tuple[Any, Any]] = weakref.WeakKeyDictionary()
_FOLD_LOCK = threading.Lock()


def _weights_key(model: nn.Module) -> tuple[Any, ...]:
    return tuple((t.data_ptr(), t._version, tuple(t.shape)) for t in (*model.parameters(), *model.buffers()))


_M = TypeVar("_M", bound="nn.Module")


def inference_model(model: _M, mode: ExecMode, example: Tensor | None = None) -> _M:
    """The module to run ``model``'s inference on in ``mode``: ``model`` itself in ``fp32`` (exactly
    what chestdx did before modes existed) or while it trains; in any other mode a copy with its
    batch norms folded into the convolutions (:func:`fold_batchnorm`), made once per model and
    weights (cached; remade when a parameter or buffer changes), and used only if it answers
    ``example`` (the first input it is asked for) as the model does (logits within 1e-3 of their
    scale, in float32); else ``model``. On the 2-core CPU of issue 19 the norms were 14-27 % of a
    voting pass's time (ResNet-50 / EfficientNet-Lite0, channels-last + bf16) and 20 % of an
    ``intgrad`` map's (norm forward + backward)."""
    import torch

    if mode == FP32 or model.training or os.environ.get("CHESTDX_FOLD_BN", "1") == "0":
        return model
    key = _weights_key(model)
    with _FOLD_LOCK:
        hit = _FOLDED.get(model)
        if hit is not None and hit[0] == key:
            return model if hit[1] is None else hit[1]
        fast: Any = copy.deepcopy(model).eval()
        ok = fold_batchnorm(fast) > 0
        if ok and example is not None:
            with torch.no_grad(), torch.autocast(example.device.type, enabled=False):
                x = example[:1].detach().float()
                a = model(x).logits.float()
                b = fast(x).logits.float()
            ok = bool(torch.isfinite(b).all()) and float((a - b).abs().max()) <= 1e-3 * max(1.0, float(a.abs().max()))
            if not ok:
                log.info("batch-norm folding changed %s's answer; running it unfolded", type(model).__name__)
        _FOLDED[model] = (key, fast if ok else None)
        return fast if ok else model


# -------------------------------------------------------------------------------------- measuring


def model_fingerprint(model: nn.Module) -> str:
    """The architecture, not the weights: the class name and a hash of every parameter's and
    buffer's name, shape and dtype (two models with the same layers share a fingerprint)."""
    h = hashlib.sha1()
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
    return f"{type(model).__name__}-{h.hexdigest()[:12]}"


def _measure_shape(shape: Sequence[int], phase: str) -> tuple[tuple[int, ...], str]:
    """``(shape measured, shape as keyed)``. Training: the batch as given. Inference: batch 1 is its
    own case; any larger batch is measured at ``min(B, 8)`` and keyed ``N`` (the ranking of modes
    at 8 held at 32 in the measurements of issue 19)."""
    shape = tuple(int(s) for s in shape)
    rest = "x".join(str(s) for s in shape[1:])
    if phase == "train" or shape[0] == 1:
        return shape, f"{shape[0]}x{rest}"
    return (min(shape[0], 8), *shape[1:]), f"Nx{rest}"


def _loss(out: Any) -> Tensor:
    logits = getattr(out, "logits", out)
    if isinstance(logits, tuple | list):
        logits = logits[0]
    return logits.float().mean()


def measure_modes(model: nn.Module, shape: Sequence[int], phase: str, device: Any, modes: Sequence[ExecMode],
                  *, warmup: int = 1, iters: int = 3, budget_s: float = 30.0) -> dict[str, float]:
    """Seconds per step of each mode, on copies of ``model`` and random inputs of ``shape``.

    The modes are timed in turns (one step of each, then the next round), so that a machine whose
    load changes while measuring (other processes on a shared CPU) slows every mode alike.

    Args:
        model: the model (copied per mode; never changed).
        shape: input shape, e.g. ``(16, 1, 224, 224)``.
        phase: ``train`` (forward + backward of the mean logit, ``train()`` mode) or ``inference``
            (forward under ``no_grad``, ``eval()`` mode).
        device: where to run.
        modes: the modes to time.
        warmup: untimed steps per mode (oneDNN / cuDNN pick their kernels here).
        iters: rounds of timed steps (fewer once ``budget_s`` is spent, at least one); the
            minimum per mode counts.
        budget_s: rough total time allowed.

    Returns:
        ``{mode name: seconds per step}``; a mode that fails is left out (logged). The global torch
        RNG (CPU, and the device's for CUDA) is as it was before the call.
    """
    import torch

    d = _device(device)
    # the timed steps run dropout and other random layers in train mode: on a forked RNG, so that a run
    # that measures (no cached choice) trains exactly as one that reads the cache
    rng_devices = [d.index if d.index is not None else torch.cuda.current_device()] if d.type == "cuda" else []
    with torch.random.fork_rng(devices=rng_devices):
        return _time_modes(model, tuple(shape), phase, d, modes, warmup=warmup, iters=iters, budget_s=budget_s)


def _time_modes(model: nn.Module, shape: tuple[int, ...], phase: str, d: Any, modes: Sequence[ExecMode], *,
                warmup: int, iters: int, budget_s: float) -> dict[str, float]:
    """:func:`measure_modes` on the device ``d`` (a ``torch.device``), without its RNG fork."""
    import torch

    gen = torch.Generator().manual_seed(0)
    x0 = torch.randn(tuple(shape), generator=gen)

    def step(m: nn.Module, x: Tensor, mode: ExecMode) -> None:
        if phase == "train":
            with autocast(mode, d):
                loss = _loss(m(x))
            loss.backward()
            m.zero_grad(set_to_none=True)
        else:
            with torch.no_grad(), autocast(mode, d):
                m(x)
        if d.type == "cuda":
            torch.cuda.synchronize(d)

    runs: dict[str, tuple[nn.Module, Tensor, ExecMode]] = {}
    start = time.perf_counter()
    for mode in modes:
        try:
            m = copy.deepcopy(model).to(d)
            apply_memory_format(m, mode)
            m.train(phase == "train")
            x = to_mode_input(x0.to(d), mode)
            for _ in range(warmup):
                step(m, x, mode)
            runs[mode.name] = (m, x, mode)
        except Exception as e:  # noqa: BLE001 - a mode that cannot run is simply not chosen
            log.warning("speed auto: mode %s failed while measuring (%s: %s); not using it",
                        mode.name, type(e).__name__, str(e)[:200])
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(iters):
        for name, (m, x, mode) in runs.items():
            t0 = time.perf_counter()
            step(m, x, mode)
            times[name].append(time.perf_counter() - t0)
        if time.perf_counter() - start > budget_s:
            break
    return {name: min(t) for name, t in times.items() if t}


def _pick(seconds: dict[str, float]) -> ExecMode:
    """The fastest mode, or a float32 mode within :data:`EXACT_MARGIN` of it."""
    if not seconds:
        return FP32
    best = min(seconds.values())
    exact = [n for n, s in seconds.items() if parse_speed(n).compute == "fp32" and s <= best * (1 + EXACT_MARGIN)]  # type: ignore[union-attr]
    name = min(exact, key=seconds.__getitem__) if exact else min(seconds, key=seconds.__getitem__)
    mode = parse_speed(name)
    assert mode is not None
    return mode


# ------------------------------------------------------------------------------------------ cache


def cache_file() -> Path:
    """``$CHESTDX_CACHE_DIR/precision.json``, else ``~/.cache/chestdx/precision.json``."""
    env = os.environ.get("CHESTDX_CACHE_DIR")
    root = Path(env) if env else Path.home() / ".cache" / "chestdx"
    return root / CACHE_NAME


_CACHE_LOCK = threading.Lock()
_MEMO: dict[tuple[str, str], ExecMode] = {}
"""In-process memo of resolved ``auto`` choices, by ``(cache file, key)``."""


def clear_memo() -> None:
    """Forget the in-process choices (the cache file is kept)."""
    _MEMO.clear()


def _read_cache(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        log.warning("speed auto: ignoring unreadable cache %s (%s); it will be rewritten", path, e)
        return {}
    return data if isinstance(data, dict) else {}


def _cache_key(fingerprint: str, shape_key: str, phase: str, device: Any, restrict: str | None) -> str:
    import torch

    parts = [phase, fingerprint, shape_key, device_description(device), f"torch {torch.__version__}",
             f"measure v{MEASURE_VERSION}"]
    if restrict:
        parts.append(f"compute {restrict}")
    return " | ".join(parts)


def resolve_mode(setting: str | ExecMode | None, model: nn.Module, shape: Sequence[int], phase: Phase = "inference",
                 device: Any = "cpu", *, compute: str | None = None) -> ExecMode:
    """The mode a setting means for ``model`` on inputs of ``shape`` in ``phase`` on ``device``.

    Args:
        setting: ``auto``, a forced setting string or mode, or None (``fp32``).
        model: the model that will run (only its architecture matters; it is not changed).
        shape: an input batch shape, e.g. ``(16, 1, 224, 224)`` (train) or ``(1, 1, 224, 224)``.
        phase: ``train`` or ``inference``.
        device: where it will run (``cpu``, ``cuda``, a ``torch.device``).
        compute: only modes of this precision (``trainer.precision`` forced it); a forced setting
            keeps its memory format and takes this precision.

    ``auto`` (after ``$CHESTDX_SPEED``, see the module docstring) reads the choice for this
    (architecture, shape, phase, device, torch version) from :func:`cache_file`, or measures
    (:func:`measure_modes`, a few steps per mode), picks and writes it there atomically. An
    unwritable cache costs a warning and a measurement next time, nothing else.

    Raises:
        ConfigError: an unknown setting.
    """
    if setting is None:
        setting = FP32
    forced = parse_speed(setting)
    if forced is None:
        forced = _env_setting()
    if forced is not None:
        if compute is not None and forced.compute != compute:
            forced = ExecMode(forced.memory_format, compute)  # type: ignore[arg-type]
        if forced.compute not in supported_computes(device):
            log.warning("speed %s: %s is not supported natively by %s; it runs emulated (slowly)",
                        forced.name, forced.compute, device_description(device))
        return forced
    import torch

    measured_shape, shape_key = _measure_shape(shape, phase)
    key = _cache_key(model_fingerprint(model), shape_key, phase, device, compute)
    path = cache_file()
    memo_key = (str(path), key)
    if memo_key in _MEMO:
        return _MEMO[memo_key]
    with _CACHE_LOCK:
        entry = _read_cache(path).get(key)
        if isinstance(entry, dict):
            try:
                mode = parse_speed(str(entry.get("mode")))
            except ConfigError:
                mode = None
            if mode is not None:
                _MEMO[memo_key] = mode
                return mode
        modes = candidate_modes(device, len(shape), compute, phase)
        if len(modes) == 1:
            chosen, seconds = modes[0], {modes[0].name: float("nan")}
        else:
            t0 = time.perf_counter()
            seconds = measure_modes(model, measured_shape, phase, device, modes)
            chosen = _pick(seconds)
            log.info("speed auto: %s for %s %s on %s (measured %s in %.1f s)", chosen.name, phase, shape_key,
                     device_description(device), {k: round(v, 4) for k, v in seconds.items()},
                     time.perf_counter() - t0)
        data = _read_cache(path)
        data[key] = {"mode": chosen.name, "seconds_per_step": seconds, "measured_shape": list(measured_shape),
                     "measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                     "threads": torch.get_num_threads()}
        try:
            from chestdx.utils import write_json

            write_json(path, data)
        except OSError as e:
            log.warning("speed auto: cannot write the cache %s (%s); the choice is kept for this process only",
                        path, e)
        _MEMO[memo_key] = chosen
        return chosen


# ---------------------------------------------------------------------------------- repeated use


class InferenceSpeed:
    """A speed setting applied to one model for inference, resolved lazily per input shape.

    Args:
        model: the model (converted in place to a channels-last mode's memory format when one is used).
        setting: ``auto``, a forced setting, or None (``fp32``).
        device: where the model runs.

    Example::

        speed = InferenceSpeed(model, "auto", "cpu")
        with speed.run(images) as x:       # x: images in the mode's memory format
            out = model(x)                 # under autocast if the mode says so; float32 outputs
    """

    def __init__(self, model: nn.Module, setting: str | ExecMode | None = None, device: Any = "cpu"):
        self.model = model
        self.setting = setting if isinstance(setting, ExecMode) else validate_speed(setting or "fp32")
        self.device = device
        self.modes: dict[str, ExecMode] = {}
        """Resolved modes by shape key (``1x1x224x224``, ``Nx1x224x224``)."""

    def mode_for(self, shape: Sequence[int], *, exact: bool = False) -> ExecMode:
        """The mode for a batch of ``shape`` (resolved once per shape key).

        ``exact``: the job needs a float32 pass anyway (an answer with a gradient heatmap, which a
        float32 mode computes in the answer's own pass: :func:`chestdx.explain.heatmap.answer_with_heatmap`),
        so ``auto`` picks among the float32 modes only (keyed ``<shape> fp32``); a forced setting and
        ``$CHESTDX_SPEED`` are kept as they are.
        """
        _, key = _measure_shape(shape, "inference")
        compute = "fp32" if exact and self.setting == "auto" and _env_setting() is None else None
        if compute:
            key = f"{key} {compute}"
        if key not in self.modes:
            self.modes[key] = resolve_mode(self.setting, self.model, shape, "inference", self.device, compute=compute)
        return self.modes[key]

    @contextlib.contextmanager
    def run(self, images: Tensor, *, batch: int | None = None, exact: bool = False) -> Iterator[Tensor]:
        """Enter the mode for ``images (B, ...)``; yields them in its memory format (see :func:`running`).

        ``batch``: how many images the job sends through the network at once where that is not ``B``
        (CAM voting's masked copies: :func:`chestdx.engine.infer.pass_batch`); the mode is the one for
        that batch. ``exact``: see :meth:`mode_for`.
        """
        shape = tuple(images.shape) if batch is None else (int(batch), *images.shape[1:])
        mode = self.mode_for(shape, exact=exact)
        with running(self.model, mode, self.device):
            yield to_mode_input(images, mode)

    @contextlib.contextmanager
    def session(self, images: Tensor, *, batch: int | None = None,
                exact: bool = False) -> Iterator[tuple[Any, Tensor]]:
        """As :meth:`run`, yielding ``(module to run, images)``: the module is
        :func:`inference_model` of the model in the mode (batch norms folded outside ``fp32``)."""
        shape = tuple(images.shape) if batch is None else (int(batch), *images.shape[1:])
        mode = self.mode_for(shape, exact=exact)
        with running(self.model, mode, self.device):
            x = to_mode_input(images, mode)
            fast = inference_model(self.model, mode, x)
            if fast is self.model:
                yield fast, x
                return
            with running(fast, mode, self.device):
                yield fast, x


# ------------------------------------------------------------------------------------ from recipes


def example_shape(recipe: Recipe, in_chans: int = 1, batch: int | None = None) -> tuple[int, ...]:
    """The input batch a recipe's model sees, as its task's data section gives it
    (:meth:`chestdx.config.DataConfig.input_shape`): ``(B, C, S, S)``; ``task: volume``
    ``(B, C, D, S, S)``; ``task: sequence`` ``(B, T, C, S, S)`` (``B`` = ``data.batch_size`` unless given)."""
    return tuple(recipe.data.input_shape(in_chans, batch))


def training_device(accelerator: str | None) -> str:
    """The device Lightning will train on for ``trainer.accelerator``: ``cuda`` for ``gpu`` / ``cuda``
    (and ``auto`` where CUDA is available), ``mps`` for ``mps``, else ``cpu``."""
    import torch

    acc = str(accelerator or "auto").lower()
    if acc in ("gpu", "cuda") or (acc == "auto" and torch.cuda.is_available()):
        return "cuda"
    return "mps" if acc == "mps" else "cpu"


def training_mode(recipe: Recipe, model: nn.Module, speed: str | None = None, *, measure: bool = True) -> ExecMode:
    """The execution mode a recipe trains in (``trainer.speed``, or ``speed`` where given).

    ``trainer.precision``, where set, forces the precision (``auto`` then measures only the memory
    formats). With ``measure`` False (the task's ``measure_training_speed``: ``task: lesion``, a
    detector trained with its own two-step loop) ``auto`` resolves to ``fp32`` (or ``$CHESTDX_SPEED``)
    without measuring: :func:`measure_modes` times a classifier's training step only.

    Raises:
        ConfigError: an unknown setting.
    """
    tc = recipe.trainer
    setting: str | ExecMode = speed or tc.speed
    compute = mode_from_precision(tc.precision)
    if not measure and parse_speed(str(setting)) is None:
        setting = _env_setting() or ExecMode(compute=compute or "fp32")
    shape = example_shape(recipe, int(getattr(model, "in_chans", 1)))
    device = training_device(tc.accelerator)
    mode = resolve_mode(setting, model, shape, "train", device, compute=compute)
    if mode.compute == "fp16" and device == "cpu":
        log.warning("speed %s: Lightning has no fp16 mixed precision on a CPU and trains in bf16; "
                    "recording the mode as %s", mode.name, ExecMode(mode.memory_format, "bf16").name)
        mode = ExecMode(mode.memory_format, "bf16")
    return mode


def lightning_precision(recipe: Recipe, mode: ExecMode) -> str:
    """``trainer.precision`` where set (it forces), else the mode's (``32-true``, ``bf16-mixed``, ``16-mixed``)."""
    p = recipe.trainer.precision
    return str(p) if p is not None else mode.lightning_precision
