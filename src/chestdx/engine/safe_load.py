"""Read a checkpoint without running anything it holds.

``torch.load(weights_only=True)`` unpickles only tensors, plain containers, numbers and strings (and
the few types torch allow-lists); a pickle that would build any other object, and so could run code
(``__reduce__``), is refused before it does. Every checkpoint chestdx reads from a run folder, an
encoder path or ``export`` goes through :func:`read_checkpoint`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from chestdx.errors import RunError

__all__ = ["read_checkpoint"]


def read_checkpoint(path: str | Path, map_location: Any = "cpu") -> dict[str, Any]:
    """The checkpoint at ``path`` as a dict, loaded with ``weights_only=True``.

    Raises:
        RunError: missing, unreadable, not a dict, or holding objects other than tensors and plain
            values (refused without unpickling them); the message names the file.
    """
    import pickle

    import torch

    p = Path(path)
    if not p.is_file():
        raise RunError(f"{p}: checkpoint not found")
    try:
        ckpt = torch.load(p, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        text = str(e)
        found = [ln.strip() for ln in text.splitlines() if "Unsupported global" in ln or "GLOBAL " in ln]
        if not found:
            raise RunError(f"{p}: not a readable checkpoint (corrupt or not a torch file)") from None
        raise RunError(f"{p}: refused: the checkpoint holds objects other than tensors and plain values, and "
                       f"chestdx never unpickles those (it could run code): {found[0][:300]}") from None
    except Exception as e:  # noqa: BLE001 - zip / pickle / torch errors of a damaged file
        raise RunError(f"{p}: not a readable checkpoint ({type(e).__name__}: {str(e)[:300]})") from None
    if not isinstance(ckpt, dict):
        raise RunError(f"{p}: not a chestdx checkpoint (holds a {type(ckpt).__name__}, expected a dict)")
    return ckpt
