"""Data: readers (PNG/JPG/TIFF, DICOM, NIfTI, .npy), data set layouts and splits, preprocessing and
augmentation, cached datasets. The synthetic chest phantom is :mod:`chestdx.phantom`."""

from chestdx.data.readers import read_image, read_mask  # noqa: E402
from chestdx.data.volumes import VolumeMeta, read_volume  # noqa: E402

__all__ = ["read_image", "read_mask", "read_volume", "VolumeMeta"]
