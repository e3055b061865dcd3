"""Size limits for hostile input, and the guard that keeps every reader's failures typed.

Every reader checks the size an input *declares* (image header, DICOM ``Rows * Columns *
NumberOfFrames * SamplesPerPixel``, NIfTI / ``.npy`` header shape, zip directory) against these
limits **before** decoding, so a small file that unpacks to gigabytes is refused in milliseconds.
Each limit is a module-level default that callers override per call with a keyword argument
(``max_pixels=``, ``max_voxels=``, ``max_unzipped_bytes=``, ...); the web service passes its own
settings through :func:`chestdx.predict.inputs.study_from_bytes`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from chestdx.errors import ChestdxError, DataError

__all__ = [
    "MAX_IMAGE_PIXELS",
    "MAX_VOLUME_VOXELS",
    "MAX_ZIP_MEMBERS",
    "MAX_ZIP_MEMBER_BYTES",
    "MAX_UNZIPPED_BYTES",
    "check_size",
    "guard_reader",
]

#: Most pixels one 2D image may hold (``H * W``, per decoded frame, all samples counted):
#: 64 Mi pixels, i.e. 256 MB as float32.
MAX_IMAGE_PIXELS = 64 * 1024 * 1024
#: Most voxels one volume may hold (``D * H * W``, summed over the files of a series or slice
#: folder): 128 Mi voxels, i.e. 512 MB as float32 (a 512 x 512 x 512 CT).
MAX_VOLUME_VOXELS = 128 * 1024 * 1024
#: Most files one zip may hold (folders not counted).
MAX_ZIP_MEMBERS = 4096
#: Largest size one zip member may unpack to (bytes): 512 MiB.
MAX_ZIP_MEMBER_BYTES = 512 * 1024**2
#: Largest total size a zip may unpack to (bytes): 1 GiB.
MAX_UNZIPPED_BYTES = 1024**3


def check_size(path: str | Path, count: int, limit: int | None, what: str = "image",
               unit: str = "pixels") -> None:
    """Refuse ``count`` (pixels, voxels) above ``limit`` (None: no limit).

    Raises:
        DataError: naming ``path``, the count and the limit.
    """
    if limit is not None and count > limit:
        raise DataError(path, f"{what} holds {count:,} {unit}, more than the limit of {limit:,} {unit} "
                        "(refused before decoding)")


_F = TypeVar("_F", bound=Callable[..., Any])


def _label(x: Any) -> str:
    if isinstance(x, (str, Path)):
        return str(x)
    return type(x).__name__


def guard_reader(label: Callable[..., Any] | None = None) -> Callable[[_F], _F]:
    """Decorate a public reader so that it raises only :class:`~chestdx.errors.ChestdxError`.

    A :class:`ChestdxError` passes through unchanged; any other ``Exception`` (a library's
    ``ValueError``, ``zlib.error``, ``struct.error``, ``MemoryError``, ``RecursionError``, ...) becomes
    a :class:`DataError` that names the input and the exception type, chained to the original.

    Args:
        label: called with the reader's ``(*args, **kwargs)``, returns what to name in the error;
            default: the first argument (a path, else its type name).
    """

    def deco(fn: _F) -> _F:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            except ChestdxError:
                raise
            except Exception as e:  # noqa: BLE001 - the last line of defence; MemoryError included
                try:
                    name = label(*args, **kwargs) if label is not None else (_label(args[0]) if args else "?")
                except Exception:  # noqa: BLE001
                    name = "?"
                text = str(e)
                if len(text) > 300:
                    text = text[:300] + "..."
                what = "too large to read (out of memory)" if isinstance(e, MemoryError) else "unreadable input"
                raise DataError(name, f"{what} ({type(e).__name__}: {text})") from e

        return wrapper  # type: ignore[return-value]

    return deco
