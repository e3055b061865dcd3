"""Atomic checkpoints: Lightning writes through a temp file and a rename, so a crash mid-write never
destroys the previous ``last.ckpt`` / ``best.ckpt``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lightning.pytorch.plugins.io import TorchCheckpointIO

from chestdx.utils import atomic_torch_save


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose ``save_checkpoint`` is atomic (temp file + ``os.replace``)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        atomic_torch_save(checkpoint, Path(path))
