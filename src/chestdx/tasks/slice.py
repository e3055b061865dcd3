"""``task: slice``: a classifier of 2D images, CT slices or chest X-rays (``data.modality``).

Everything is the default of :class:`~chestdx.tasks.base.Task`: samples from the 2D layouts
(:func:`chestdx.data.layouts.load_sources`), the :class:`~chestdx.engine.datamodule.ChestDataModule`
over :class:`~chestdx.data.datasets.SliceDataset`, the generic
:class:`~chestdx.engine.task.ChestTask`, one case per image, attention / heatmap localisation where
images have lesion masks, and a predictor answering an image directly and a scan slice by slice.

Chest X-rays are a modality of this task, not a task of their own: ``task: slice`` with
``data.modality: cxr`` (MAG-SD's recipes); ``task: cxr``, the older spelling, is read as that.
"""

from __future__ import annotations

from chestdx.config import SliceDataConfig
from chestdx.tasks.base import Task


class Slices(Task):
    """2D images: one model input ``(B, C, S, S)`` per batch of images."""

    name = "slice"
    data_config = SliceDataConfig
