"""Read one CT scan as a 3D volume: a DICOM series folder, a zip of one, a NIfTI volume, a folder of
slice images (COV19-CT-DB style), a ``(D, H, W)`` ``.npy`` array, or a multi-frame DICOM file.

Every volume comes back as float32 ``(D, H, W)`` with axial slices ordered **inferior -> superior**
and each slice in the radiological display convention of :func:`chestdx.data.read_image` (rows
anterior -> posterior, columns patient right -> left), so a slice of a volume and the same slice read
on its own are the same array. Intensities are HU for DICOM (``pixel * RescaleSlope +
RescaleIntercept``, per file) and the stored values for NIfTI and ``.npy``; ``hu_window`` clips and
scales them to ``[0, 1]``. Slice images (PNG/JPEG) come in ``[0, 1]``.

Choices made where the input is ambiguous:

- DICOM series order: the position of each slice along the slice normal (``ImagePositionPatient``
  projected on the cross product of the two ``ImageOrientationPatient`` directions), ascending;
  where positions are missing, ``InstanceNumber``; where both are missing, the file name in natural
  order. Files that are not DICOM images (``DICOMDIR``, text, thumbnails) are skipped and counted.
- A folder that holds more than one series (``SeriesInstanceUID``) is refused with the list of series
  and their file counts, unless ``series_uid`` picks one: mixing two series would interleave slices.
- Slice-image folders are stacked in natural order of their file names (``2.png`` before ``10.png``).
- Zips are unpacked into a temporary folder (refused when they hold paths that escape it or more than
  ``max_unzipped_bytes``) and read as a folder; nesting inside the zip does not matter.
"""

from __future__ import annotations

import re
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from chestdx.data.readers import (
    PIL_SUFFIXES,
    _check_array,
    _dcmread,
    _dicom_to_array,
    _kind,
    _open_checked,
    _read_nifti,
    apply_hu_window,
    read_image,
)
from chestdx.errors import DataError

__all__ = ["VolumeMeta", "read_volume", "is_volume_input", "natural_key"]

#: Largest total size a zip may unpack to (bytes).
MAX_UNZIPPED_BYTES = 4 * 1024**3


@dataclass
class VolumeMeta:
    """Where a volume came from and how it was put together.

    Attributes:
        source: the path given.
        kind: ``dicom_series``, ``dicom_multiframe``, ``nifti``, ``slices`` or ``npy``.
        spacing: ``(dz, dy, dx)`` in mm where the file says, else None.
        files: the slice files in the order used (series and slice folders).
        series_uid: the DICOM series read.
        skipped: files in the folder that were not slices of the volume, with the reason.
        order: how the slices were ordered (``position``, ``instance``, ``name``, ``file``).
    """

    source: str
    kind: str
    spacing: tuple[float, float, float] | None = None
    files: list[str] = field(default_factory=list)
    series_uid: str | None = None
    skipped: list[tuple[str, str]] = field(default_factory=list)
    order: str = "file"

    def to_json(self) -> dict[str, Any]:
        return {"source": self.source, "kind": self.kind, "spacing": self.spacing, "n_files": len(self.files),
                "series_uid": self.series_uid, "skipped": len(self.skipped), "order": self.order}


def natural_key(name: str) -> list[Any]:
    """Sort key that orders embedded numbers by value: ``slice2`` < ``slice10``."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", name)]


def _nifti_volume(path: Path) -> tuple[np.ndarray, tuple[float, float, float] | None]:
    """All axial slices of a NIfTI volume, ``(D, H, W)`` inferior -> superior, display convention."""
    import nibabel as nib
    from nibabel.orientations import apply_orientation, io_orientation

    try:
        img: Any = nib.load(str(path))
        shape = tuple(int(s) for s in img.shape)
        while len(shape) > 3 and shape[-1] == 1:
            shape = shape[:-1]
        if len(shape) == 2:
            return _read_nifti(path, None)[None], None
        if len(shape) != 3:
            raise DataError(path, f"NIfTI image has shape {shape}; expected a 3D volume")
        data = np.asanyarray(img.dataobj).reshape(shape).astype(np.float32)
        ornt = io_orientation(img.affine)[:3]
        zooms = tuple(float(z) for z in img.header.get_zooms()[:3])
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001 - nibabel raises many kinds on corrupt input
        raise DataError(path, f"not a readable NIfTI volume ({type(e).__name__}: {e})") from None
    if 0 in shape:
        raise DataError(path, f"NIfTI volume is empty (shape {shape})")
    if np.isfinite(ornt[:, 0]).all() and len(set(ornt[:, 0].tolist())) == 3:
        data = apply_orientation(data, ornt)  # (X right, Y anterior, Z superior)
        spacing = tuple(zooms[int(np.flatnonzero(ornt[:, 0] == ax)[0])] for ax in (2, 1, 0))
    else:
        spacing = (zooms[2], zooms[1], zooms[0])
    # (X, Y, Z) -> (Z, rows = anterior->posterior, cols = right->left)
    vol = np.transpose(data, (2, 1, 0))[:, ::-1, ::-1]
    return np.ascontiguousarray(vol, dtype=np.float32), (spacing[0], spacing[1], spacing[2])


def _npy_volume(path: Path) -> np.ndarray:
    try:
        arr = np.load(path, allow_pickle=False)
    except Exception as e:  # noqa: BLE001
        raise DataError(path, f"not a readable .npy array ({type(e).__name__}: {e})") from None
    if not isinstance(arr, np.ndarray) or arr.dtype.kind not in "biuf":
        raise DataError(path, "expected one numeric numpy array")
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3 or arr.size == 0:
        raise DataError(path, f"array has shape {tuple(arr.shape)}; expected (D, H, W)")
    return arr.astype(np.float32)


def _dicom_files(paths: list[Path], folder: Path, series_uid: str | None) -> tuple[list[tuple[Path, Any]], list[tuple[str, str]], str | None]:
    """Headers of the DICOM images among ``paths``, those of one series; and the skipped files."""
    skipped: list[tuple[str, str]] = []
    by_series: dict[str, list[tuple[Path, Any]]] = {}
    for p in paths:
        if p.name.upper() == "DICOMDIR":
            skipped.append((str(p), "DICOMDIR index"))
            continue
        try:
            kind = _kind(p) if p.stat().st_size > 0 else "empty"
        except (DataError, OSError) as e:
            skipped.append((str(p), str(e)))
            continue
        if kind != "dicom":
            skipped.append((str(p), f"not DICOM ({kind})"))
            continue
        ds = _dcmread(p, stop_before_pixels=True)
        if "Rows" not in ds:
            skipped.append((str(p), "DICOM object without an image"))
            continue
        by_series.setdefault(str(ds.get("SeriesInstanceUID", "")), []).append((p, ds))
    if not by_series:
        raise DataError(folder, "holds no DICOM image files")
    if series_uid is not None:
        if series_uid not in by_series:
            raise DataError(folder, f"holds no series {series_uid!r}; it holds {sorted(by_series)}")
        return by_series[series_uid], skipped, series_uid
    if len(by_series) > 1:
        listing = "; ".join(f"{uid or '(no SeriesInstanceUID)'}: {len(v)} files" for uid, v in sorted(by_series.items()))
        raise DataError(folder, f"holds {len(by_series)} DICOM series mixed together ({listing}); "
                        "put each series in its own folder or pick one with series_uid")
    uid, files = next(iter(by_series.items()))
    return files, skipped, uid or None


def _dicom_series(folder: Path, paths: list[Path], series_uid: str | None) -> tuple[np.ndarray, VolumeMeta]:
    files, skipped, uid = _dicom_files(paths, folder, series_uid)
    positions: list[float | None] = []
    for _, ds in files:
        try:
            ipp = [float(v) for v in ds.ImagePositionPatient]
            iop = [float(v) for v in ds.ImageOrientationPatient]
            normal = np.cross(iop[:3], iop[3:])
            positions.append(float(np.dot(normal, ipp)))
        except (AttributeError, TypeError, ValueError):
            positions.append(None)
    if all(p is not None for p in positions):
        order, how = np.argsort(np.asarray(positions, dtype=np.float64), kind="stable"), "position"
        sorted_pos = np.sort(np.asarray(positions, dtype=np.float64))
        dz = float(np.median(np.diff(sorted_pos))) if len(files) > 1 else None
    elif all("InstanceNumber" in ds for _, ds in files):
        order, how, dz = np.argsort([int(ds.InstanceNumber) for _, ds in files], kind="stable"), "instance", None
    else:
        order = np.asarray(sorted(range(len(files)), key=lambda i: natural_key(files[i][0].name)))
        how, dz = "name", None
    if dz is None and len(files) > 1:
        st = files[0][1].get("SpacingBetweenSlices") or files[0][1].get("SliceThickness")
        dz = float(st) if st else None
    slices, names = [], []
    shape = None
    for i in order:
        p, _ = files[int(i)]
        arr = _dicom_to_array(_dcmread(p), p, None, None, raw=False)
        if shape is None:
            shape = arr.shape
        elif arr.shape != shape:
            raise DataError(p, f"slice has shape {arr.shape} but the series' first slice has {shape}")
        slices.append(arr)
        names.append(str(p))
    ps = files[0][1].get("PixelSpacing")
    spacing = None
    if ps is not None and dz is not None:
        spacing = (abs(dz), float(ps[0]), float(ps[1]))
    meta = VolumeMeta(source=str(folder), kind="dicom_series", spacing=spacing, files=names,
                      series_uid=uid, skipped=skipped, order=how)
    return np.stack(slices).astype(np.float32), meta


def _slice_folder(folder: Path, paths: list[Path]) -> tuple[np.ndarray, VolumeMeta]:
    images = sorted((p for p in paths if p.name.lower().endswith(PIL_SUFFIXES)), key=lambda p: natural_key(p.name))
    skipped = [(str(p), "not a slice image") for p in paths if p not in images]
    if not images:
        raise DataError(folder, "holds neither DICOM files nor slice images (.png/.jpg/.tif/.bmp)")
    slices: list[np.ndarray] = []
    for p in images:
        arr = read_image(p)
        if slices and arr.shape != slices[0].shape:
            raise DataError(p, f"slice has shape {arr.shape} but {images[0].name} has {slices[0].shape}")
        slices.append(arr)
    meta = VolumeMeta(source=str(folder), kind="slices", files=[str(p) for p in images], skipped=skipped,
                      order="name")
    return np.stack(slices).astype(np.float32), meta


def _folder_volume(folder: Path, paths: list[Path], series_uid: str | None) -> tuple[np.ndarray, VolumeMeta]:
    paths = [p for p in paths if p.is_file() and not p.name.startswith(".")]
    if not paths:
        raise DataError(folder, "folder is empty (no files directly inside; point at the series folder)")
    kinds = set()
    for p in paths:
        try:
            kinds.add(_kind(p) if p.stat().st_size > 0 else "empty")
        except (DataError, OSError):
            kinds.add("unreadable")
    if "dicom" in kinds:
        return _dicom_series(folder, paths, series_uid)
    return _slice_folder(folder, paths)


def _unzip(path: Path, dest: Path, max_bytes: int) -> list[Path]:
    try:
        with zipfile.ZipFile(path) as zf:
            members = [m for m in zf.infolist() if not m.is_dir()]
            total = sum(m.file_size for m in members)
            if total > max_bytes:
                raise DataError(path, f"zip unpacks to {total / 1e6:.0f} MB, more than the limit of "
                                f"{max_bytes / 1e6:.0f} MB")
            out = []
            root = dest.resolve()
            for i, m in enumerate(members):
                name = Path(m.filename)
                if name.is_absolute() or ".." in name.parts:
                    raise DataError(path, f"zip member {m.filename!r} points outside the archive")
                if name.name.startswith(".") or "__MACOSX" in name.parts:
                    continue
                target = (root / f"{i:06d}_{name.name}")
                with zf.open(m) as src, open(target, "wb") as dst:
                    dst.write(src.read())
                out.append(target)
            return out
    except zipfile.BadZipFile as e:
        raise DataError(path, f"not a readable zip file ({e})") from None


def is_volume_input(path: str | Path) -> bool:
    """Whether ``path`` is a 3D scan: a folder, a zip, a 3D NIfTI / ``.npy`` or a multi-frame DICOM."""
    p = Path(path)
    if p.is_dir() or zipfile.is_zipfile(p):
        return True
    try:
        kind = _kind(_open_checked(p))
    except DataError:
        return False
    if kind == "nifti":
        import nibabel as nib

        try:
            img: Any = nib.load(str(p))
            shape = [s for s in img.shape if s != 1] or [1]
        except Exception:  # noqa: BLE001
            return False
        return len(shape) >= 3
    if kind == "npy":
        try:
            return np.load(p, mmap_mode="r", allow_pickle=False).ndim == 3
        except Exception:  # noqa: BLE001
            return False
    if kind == "dicom":
        try:
            return int(_dcmread(p, stop_before_pixels=True).get("NumberOfFrames", 1) or 1) > 1
        except DataError:
            return False
    return False


def read_volume(path: str | Path, *, hu_window: tuple[float, float] | None = None,
                series_uid: str | None = None,
                max_unzipped_bytes: int = MAX_UNZIPPED_BYTES) -> tuple[np.ndarray, VolumeMeta]:
    """Read one scan as float32 ``(D, H, W)`` (inferior -> superior) and where it came from.

    Args:
        path: a DICOM series folder, a zip of one, a folder of slice images, a NIfTI file, a
            ``.npy`` array ``(D, H, W)`` or a multi-frame DICOM file.
        hu_window: ``(level, width)``: clip to the window and scale to ``[0, 1]`` (not for slice
            images, which are already in ``[0, 1]``).
        series_uid: the series to read from a folder holding several.
        max_unzipped_bytes: refuse zips that unpack to more.

    Returns:
        ``(volume (D, H, W) float32, VolumeMeta)``.

    Raises:
        DataError: missing or unreadable input, several series mixed in one folder, slices of
            different sizes, NaN values. The message names the file or folder.
    """
    p = Path(path)
    if not p.exists():
        raise DataError(p, "not found")
    if p.is_dir():
        vol, meta = _folder_volume(p, sorted(p.iterdir()), series_uid)
    elif zipfile.is_zipfile(p):
        with tempfile.TemporaryDirectory(prefix="chestdx-zip-") as tmp:
            files = _unzip(p, Path(tmp), max_unzipped_bytes)
            vol, meta = _folder_volume(p, files, series_uid)
            meta.files = [Path(f).name.split("_", 1)[1] for f in meta.files]
            meta.skipped = [(Path(f).name.split("_", 1)[-1], why) for f, why in meta.skipped]
    else:
        p = _open_checked(p)
        kind = _kind(p)
        if kind == "nifti":
            vol, spacing = _nifti_volume(p)
            meta = VolumeMeta(source=str(p), kind="nifti", spacing=spacing, files=[str(p)])
        elif kind == "npy":
            vol, meta = _npy_volume(p), VolumeMeta(source=str(p), kind="npy", files=[str(p)])
        elif kind == "dicom":
            ds = _dcmread(p)
            n = int(ds.get("NumberOfFrames", 1) or 1)
            vol = np.stack([_dicom_to_array(ds, p, None, i, raw=False) for i in range(n)])
            meta = VolumeMeta(source=str(p), kind="dicom_multiframe", files=[str(p)])
        else:
            raise DataError(p, "is a single 2D image, not a volume (use read_image, or give a folder, "
                            "a zip, a NIfTI or a .npy volume)")
    _check_array(p, vol, "volume", ndim=3)
    if hu_window is not None and meta.kind != "slices":  # slice pictures carry no HU
        vol = apply_hu_window(vol, hu_window)
    return vol.astype(np.float32, copy=False), meta
