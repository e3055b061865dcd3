"""The device inference runs on: ``--accelerator`` / ``--devices`` resolved in one place.

Every command that runs a trained model (``evaluate``, ``ensemble``, ``predict``, ``report``,
``serve``, ``table``'s evaluation, ``sweep-voting``) takes ``--accelerator`` and ``--devices``;
:func:`resolve_device` turns them into one :class:`torch.device`, which
:meth:`chestdx.engine.run.Run.load_task`, :func:`chestdx.engine.infer.predict_loader` and the
:class:`~chestdx.predict.predictor.Predictor` (and so the service) move the model and each batch to.
Results come back as CPU numpy arrays. Training keeps Lightning's own reading of the same flags
(``trainer.accelerator`` / ``trainer.devices``).

Inference is one process on one device, so ``--devices`` names at most one: ``auto`` or ``1``
(the first device of the kind), or one index written as Lightning writes indices (``"1,"``,
``"[1]"``), or ``cuda:1`` as ``--accelerator``. On the CPU the numbers are those of the code
before this module existed, bit for bit (the model was always on the CPU).
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from chestdx.errors import ConfigError

if TYPE_CHECKING:
    import torch

__all__ = ["ACCELERATORS", "model_device", "parse_accelerator", "resolve_device", "to_device"]

#: The ``--accelerator`` values (``gpu`` and ``cuda`` are the same).
ACCELERATORS = ("auto", "cpu", "cuda", "gpu", "mps")


def _index(devices: Any, flag: str) -> int | None:
    """The device index ``--devices`` names: None for ``auto`` / ``1`` / unset (the first)."""
    if devices is None:
        return None
    if isinstance(devices, bool):
        raise ConfigError(f"{flag}={devices!r}: give auto, 1, or one device index such as '0,'")
    if isinstance(devices, int):
        if devices in (1, -1):  # Lightning's -1 = "all": inference uses one, the first
            return None
        raise ConfigError(f"{flag}={devices}: inference runs on one device; give 1 (the first), one index "
                          "such as '1,' for the second, or leave it unset (several devices train with DDP only)")
    if isinstance(devices, Sequence) and not isinstance(devices, str):
        items = list(devices)
        if len(items) != 1 or isinstance(items[0], bool) or not isinstance(items[0], int) or items[0] < 0:
            raise ConfigError(f"{flag}={devices!r}: inference runs on one device; give one index, e.g. [0]")
        return int(items[0])
    text = str(devices).strip().lower()
    if text in ("", "auto", "1", "-1"):
        return None
    inner = text.strip("[]").rstrip(",").strip()
    if ("," in text or text.startswith("[")) and inner.isdigit():
        return int(inner)
    if text.isdigit():
        return _index(int(text), flag)
    raise ConfigError(f"{flag}={devices!r}: give auto, 1, or one device index such as '0,' or '[1]'")


def parse_accelerator(accelerator: Any, flag: str = "--accelerator") -> tuple[str, int | None]:
    """``(kind, index)`` of an accelerator string, checked without importing torch (so the command
    line refuses a typo at once): ``"cuda:1"`` -> ``("cuda", 1)``, ``"gpu"`` -> ``("cuda", None)``,
    None -> ``("auto", None)``.

    Raises:
        ConfigError: not one of :data:`ACCELERATORS` (or ``cuda:N``), with did-you-mean.
    """
    text = "auto" if accelerator is None else str(accelerator).strip().lower()
    kind, _, tail = text.partition(":")
    if kind not in ACCELERATORS or (tail and (kind not in ("cuda", "gpu") or not tail.isdigit())):
        near = difflib.get_close_matches(kind, ACCELERATORS, n=1)
        hint = f"; did you mean '{near[0]}'?" if near else ""
        raise ConfigError(f"{flag}={accelerator!r} is not an accelerator: choose one of "
                          f"{', '.join(ACCELERATORS)} (or cuda:N){hint}")
    return ("cuda" if kind == "gpu" else kind), (int(tail) if tail else None)


def resolve_device(accelerator: Any = "auto", devices: Any = None, *,
                   flag: str = "--accelerator", devices_flag: str = "--devices") -> torch.device:
    """The one device inference runs on.

    Args:
        accelerator: ``auto`` (CUDA where available, else the CPU), ``cpu``, ``cuda`` / ``gpu``,
            ``mps``, a device string such as ``cuda:1``, a :class:`torch.device`, or None (``auto``).
        devices: which device of that kind: None / ``auto`` / ``1`` (the first) or one index
            (``"1,"``, ``"[1]"``, ``[1]``); see the module docstring.
        flag, devices_flag: the option names the error messages give (a Python caller passes its
            own argument names).

    Returns:
        e.g. ``device("cpu")``, ``device("cuda", 0)``, ``device("mps")``.

    Raises:
        ConfigError: an unknown accelerator (with did-you-mean), a ``--devices`` that names no single
            device, or a device this machine does not have (CUDA not available, index out of range,
            no MPS), naming the flag.
    """
    import torch

    index = _index(devices, devices_flag)
    if isinstance(accelerator, torch.device):
        dev = accelerator
    else:
        kind, at = parse_accelerator(accelerator, flag)
        if at is not None:
            if index is not None and index != at:
                raise ConfigError(f"{flag}={accelerator!r} and {devices_flag}={devices!r} name different devices")
            index = at
        if kind == "auto":
            kind = "cuda" if torch.cuda.is_available() else "cpu"
        dev = torch.device(kind, index) if kind == "cuda" and index is not None else torch.device(kind)
    if dev.type == "cpu":
        if index not in (None, 0):
            raise ConfigError(f"{devices_flag}={devices!r}: the CPU is one device (give 1 or leave it unset)")
        return torch.device("cpu")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"{flag}={accelerator!s}: CUDA is not available on this machine (torch "
                              f"{torch.__version__}, CUDA build {torch.version.cuda or 'none'}, "
                              f"{torch.cuda.device_count()} GPU(s) seen); use {flag} cpu or auto")
        i = dev.index if dev.index is not None else (index or 0)
        if i >= torch.cuda.device_count():
            named = f"{devices_flag}={devices!r}" if index is not None and devices is not None else f"{flag}={accelerator!s}"
            raise ConfigError(f"{named}: GPU {i} does not exist ({torch.cuda.device_count()} GPU(s) on this "
                              "machine, counted from 0)")
        return torch.device("cuda", i)
    if dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise ConfigError(f"{flag}={accelerator!s}: MPS (Apple GPU) is not available on this machine; "
                              f"use {flag} cpu or auto")
        if index not in (None, 0):
            raise ConfigError(f"{devices_flag}={devices!r}: MPS is one device (give 1 or leave it unset)")
        return torch.device("mps")
    raise ConfigError(f"{flag}={accelerator!s}: device type {dev.type!r} is not supported for inference "
                      f"(choose one of {', '.join(ACCELERATORS)})")


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of a model's first parameter (or buffer); the CPU for a model with neither."""
    import torch

    for t in (*model.parameters(), *model.buffers()):
        return t.device
    return torch.device("cpu")


def to_device(batch: Any, device: torch.device | str) -> Any:
    """``batch`` with every tensor moved to ``device`` (dicts, lists, tuples and dataclasses such as
    :class:`~chestdx.models.ModelOutput` walked; anything else unchanged). A tensor already there is
    returned as is (no copy)."""
    import torch

    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    if dataclasses.is_dataclass(batch) and not isinstance(batch, type):
        return dataclasses.replace(batch, **{f.name: to_device(getattr(batch, f.name), device)
                                             for f in dataclasses.fields(batch) if f.init})
    if isinstance(batch, Mapping):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, tuple):
        return tuple(to_device(v, device) for v in batch)
    if isinstance(batch, list):
        return [to_device(v, device) for v in batch]
    return batch
