"""Reading chest images and scans: every failure a typed error naming the file, every size checked first.

- :mod:`chestdx.io.images`   one image or mask (PNG/JPEG/TIFF/BMP, DICOM, NIfTI, ``.npy``) -> float32 ``(H, W)``
- :mod:`chestdx.io.volumes`  one scan (DICOM series, zip, NIfTI, slice folder, ``.npy``) -> float32 ``(D, H, W)``
- :mod:`chestdx.io.dicom`    DICOM tags and frame decoding shared by both
- :mod:`chestdx.io.formats`  file kinds by content and suffix, the array checks shared by every reader
- :mod:`chestdx.io.limits`   size limits for hostile input and the guard that keeps failures typed
"""

from chestdx.io.formats import (
    IMAGE_SUFFIXES,
    apply_hu_window,
    file_kind,
    is_image_file,
    looks_like_dicom,
    sniff_head,
)
from chestdx.io.images import read_image, read_mask
from chestdx.io.limits import (
    MAX_IMAGE_PIXELS,
    MAX_UNZIPPED_BYTES,
    MAX_VOLUME_VOXELS,
    MAX_ZIP_MEMBER_BYTES,
    MAX_ZIP_MEMBERS,
)
from chestdx.io.volumes import VolumeMeta, is_volume_input, natural_key, read_volume

__all__ = [
    "IMAGE_SUFFIXES",
    "MAX_IMAGE_PIXELS",
    "MAX_UNZIPPED_BYTES",
    "MAX_VOLUME_VOXELS",
    "MAX_ZIP_MEMBERS",
    "MAX_ZIP_MEMBER_BYTES",
    "VolumeMeta",
    "apply_hu_window",
    "file_kind",
    "is_image_file",
    "is_volume_input",
    "looks_like_dicom",
    "natural_key",
    "read_image",
    "read_mask",
    "read_volume",
    "sniff_head",
]
