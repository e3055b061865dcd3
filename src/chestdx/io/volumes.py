"""Read one CT scan as a 3D volume: a DICOM series folder, a zip of one, a NIfTI volume, a folder of
slice images (COV19-CT-DB style), a ``(D, H, W)`` ``.npy`` array, or a multi-frame DICOM file.

Every volume comes back as float32 ``(D, H, W)`` with axial slices ordered **inferior -> superior**
and each slice in the radiological display convention of :func:`chestdx.io.read_image` (rows
anterior -> posterior, columns patient right -> left), so a slice of a volume and the same slice read
on its own are the same array. Intensities are HU for DICOM (``pixel * RescaleSlope +
RescaleIntercept``, per file) and the stored values for NIfTI and ``.npy``; ``hu_window`` clips and
scales them to ``[0, 1]``. Slice images (PNG/JPEG) come in ``[0, 1]``.

Choices made where the input is ambiguous:

- DICOM series order: the position of each slice along the slice normal (``ImagePositionPatient``
  projected on the cross product of the two ``ImageOrientationPatient`` directions, turned to point
  to the head, +z of the patient frame, where it has a z component), ascending, so inferior ->
  superior even when the orientation's rows or columns are flipped;
  where positions are missing, ``InstanceNumber``; where both are missing, the file name in natural
  order. Files that are not DICOM images (``DICOMDIR``, text, thumbnails) are skipped and counted.
- A folder that holds more than one series (``SeriesInstanceUID``) is refused with the list of series
  and their file counts, unless ``series_uid`` picks one: mixing two series would interleave slices.
- Slice-image folders are stacked in natural order of their file names (``2.png`` before ``10.png``).
- Zips are unpacked into a temporary folder and read as a folder; nesting inside the zip does not
  matter. Refused: members whose paths escape the archive, more than ``max_zip_members`` files, a
  member that unpacks to more than ``max_member_bytes`` or all of them to more than
  ``max_unzipped_bytes`` (the declared sizes are checked first, then the bytes actually written,
  member by member in 1 MiB chunks, so a header that lies about a size cannot unpack past the cap),
  compression other than stored / deflate (bzip2 and LZMA cannot be unpacked in bounded memory).
  Errors name the zip and the member, never the temporary folder.

Hostile input: :func:`read_volume` raises only :class:`chestdx.errors.ChestdxError`. The voxels a
volume declares (NIfTI / ``.npy`` header, DICOM ``Rows * Columns * NumberOfFrames *
SamplesPerPixel`` summed over the series' files, image header sizes summed over a slice folder) are
checked against ``max_voxels`` (default :data:`chestdx.io.limits.MAX_VOLUME_VOXELS`) before any
pixel is decoded.
"""

from __future__ import annotations

import math
import re
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from chestdx.errors import DataError
from chestdx.io.dicom import dcmread, dicom_geometry, dicom_to_array, tag_number, tag_numbers, tag_str
from chestdx.io.formats import (
    PIL_SUFFIXES,
    apply_hu_window,
    check_array,
    file_kind,
    looks_like_dicom,
    open_checked,
    sniff_head,
)
from chestdx.io.images import nifti_open, npy_header, pil_pixels, read_image, read_nifti
from chestdx.io.limits import (
    MAX_UNZIPPED_BYTES,
    MAX_VOLUME_VOXELS,
    MAX_ZIP_MEMBER_BYTES,
    MAX_ZIP_MEMBERS,
    check_size,
    guard_reader,
)

__all__ = ["VolumeMeta", "read_volume", "is_volume_input", "natural_key", "MAX_UNZIPPED_BYTES",
           "MAX_VOLUME_VOXELS", "MAX_ZIP_MEMBERS", "MAX_ZIP_MEMBER_BYTES"]


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


def _nifti_volume(path: Path, max_voxels: int | None = MAX_VOLUME_VOXELS
                  ) -> tuple[np.ndarray, tuple[float, float, float] | None]:
    """All axial slices of a NIfTI volume, ``(D, H, W)`` inferior -> superior, display convention.

    The header shape is checked against ``max_voxels`` before the data is read."""
    from nibabel.orientations import apply_orientation, io_orientation

    img, shape = nifti_open(path)
    if len(shape) == 2:
        return read_nifti(path, None, max_voxels)[None], None
    if len(shape) != 3:
        raise DataError(path, f"NIfTI image has shape {shape}; expected a 3D volume")
    if 0 in shape:
        raise DataError(path, f"NIfTI volume is empty (shape {shape})")
    check_size(path, math.prod(shape), max_voxels, f"NIfTI volume {shape}", "voxels")
    try:
        with np.errstate(over="ignore", invalid="ignore"):  # huge values become inf: refused by check_array
            data = np.asarray(img.get_fdata(dtype=np.float32, caching="unchanged")).reshape(shape)
        ornt = io_orientation(img.affine)[:3]
        zooms = tuple(float(z) for z in img.header.get_zooms()[:3])
        if np.isfinite(ornt[:, 0]).all() and len(set(ornt[:, 0].tolist())) == 3:
            data = apply_orientation(data, ornt)  # (X right, Y anterior, Z superior)
            spacing = tuple(zooms[int(np.flatnonzero(ornt[:, 0] == ax)[0])] for ax in (2, 1, 0))
        else:
            spacing = (zooms[2], zooms[1], zooms[0])
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001 - nibabel raises many kinds on corrupt input
        raise DataError(path, f"not a readable NIfTI volume ({type(e).__name__}: {e})") from None
    # (X, Y, Z) -> (Z, rows = anterior->posterior, cols = right->left)
    vol = np.transpose(data, (2, 1, 0))[:, ::-1, ::-1]
    return np.ascontiguousarray(vol, dtype=np.float32), (spacing[0], spacing[1], spacing[2])


def _npy_volume(path: Path, max_voxels: int | None = MAX_VOLUME_VOXELS) -> np.ndarray:
    """A ``(D, H, W)`` (or ``(H, W)``, as one slice) ``.npy`` array; header checked before loading."""
    shape, _ = npy_header(path)
    if len(shape) not in (2, 3) or 0 in shape:
        raise DataError(path, f"array has shape {shape}; expected (D, H, W)")
    check_size(path, math.prod(shape), max_voxels, f"array {shape}", "voxels")
    try:
        arr = np.load(path, allow_pickle=False)
    except Exception as e:  # noqa: BLE001
        raise DataError(path, f"not a readable .npy array ({type(e).__name__}: {e})") from None
    if not isinstance(arr, np.ndarray) or arr.dtype.kind not in "biuf":
        raise DataError(path, "expected one numeric numpy array")
    if arr.ndim == 2:
        arr = arr[None]
    return arr.astype(np.float32)


def _dicom_files(paths: list[Path], folder: Path, series_uid: str | None
                 ) -> tuple[list[tuple[Path, Any]], list[tuple[str, str]], str | None]:
    """Headers of the DICOM images among ``paths``, those of one series; and the skipped files."""
    skipped: list[tuple[str, str]] = []
    by_series: dict[str, list[tuple[Path, Any]]] = {}
    for p in paths:
        if p.name.upper() == "DICOMDIR":
            skipped.append((str(p), "DICOMDIR index"))
            continue
        try:
            kind = file_kind(p) if p.stat().st_size > 0 else "empty"
        except (DataError, OSError) as e:
            skipped.append((str(p), str(e)))
            continue
        if kind != "dicom":
            skipped.append((str(p), f"not DICOM ({kind})"))
            continue
        ds = dcmread(p, stop_before_pixels=True)
        if "Rows" not in ds:
            skipped.append((str(p), "DICOM object without an image"))
            continue
        by_series.setdefault(tag_str(ds, p, "SeriesInstanceUID", ""), []).append((p, ds))
    if not by_series:
        raise DataError(folder, "holds no DICOM image files")
    if series_uid is not None:
        if series_uid not in by_series:
            raise DataError(folder, f"holds no series {series_uid!r}; it holds {sorted(by_series)}")
        return by_series[series_uid], skipped, series_uid
    if len(by_series) > 1:
        listing = "; ".join(f"{uid or '(no SeriesInstanceUID)'}: {len(v)} files" for uid, v in sorted(by_series.items()))
        raise DataError(folder, f"holds {len(by_series)} DICOM series mixed together ({listing}); "
                        "put each series in its own folder or pick one (`chestdx predict --series-uid UID`, "
                        "read_volume(series_uid=UID))")
    uid, files = next(iter(by_series.items()))
    return files, skipped, uid or None


def _slice_position(ds: Any, p: Path) -> float | None:
    """Position of a slice along its normal (``ImagePositionPatient`` on the cross product of the
    ``ImageOrientationPatient`` directions), None where either tag is absent.

    Raises:
        DataError: a tag present but not 3 (6) numbers, naming the tag.
    """
    ipp = tag_numbers(ds, p, "ImagePositionPatient", 3)
    iop = tag_numbers(ds, p, "ImageOrientationPatient", 6)
    if ipp is None or iop is None:
        return None
    normal = np.cross(np.asarray(iop[:3]), np.asarray(iop[3:]))
    if normal[2] < 0:  # DICOM patient z points to the head: ascending = inferior -> superior, whichever
        normal = -normal  # way the rows / columns run (a flipped orientation turns the cross product)
    return float(np.dot(normal, np.asarray(ipp)))


def _dicom_series(folder: Path, paths: list[Path], series_uid: str | None,
                  max_voxels: int | None = MAX_VOLUME_VOXELS,
                  hu_window: tuple[float, float] | None = None) -> tuple[np.ndarray, VolumeMeta]:
    files, skipped, uid = _dicom_files(paths, folder, series_uid)
    total = 0
    for p, ds in files:  # from the headers, before any pixel is decoded
        rows, cols, frames, spp = dicom_geometry(ds, p)
        total += rows * cols * frames * spp
    check_size(folder, total, max_voxels, f"DICOM series ({len(files)} files)", "voxels")
    positions = [_slice_position(ds, p) for p, ds in files]
    if all(pos is not None for pos in positions):
        order, how = np.argsort(np.asarray(positions, dtype=np.float64), kind="stable"), "position"
        sorted_pos = np.sort(np.asarray(positions, dtype=np.float64))
        dz = float(np.median(np.diff(sorted_pos))) if len(files) > 1 else None
    else:
        instances = [tag_number(ds, p, "InstanceNumber", None, integer=True) for p, ds in files]
        if all(n is not None for n in instances):
            order, how, dz = np.argsort(np.asarray(instances, dtype=np.float64), kind="stable"), "instance", None
        else:
            order = np.asarray(sorted(range(len(files)), key=lambda i: natural_key(files[i][0].name)))
            how, dz = "name", None
    p0, ds0 = files[0]
    if dz is None and len(files) > 1:
        st = (tag_number(ds0, p0, "SpacingBetweenSlices", None)
              or tag_number(ds0, p0, "SliceThickness", None))
        dz = float(st) if st else None
    vol: np.ndarray | None = None
    names = []
    for j, i in enumerate(order):
        p, _ = files[int(i)]
        # windowed per slice as read_image does it (MONOCHROME1 inverted after the window)
        arr = dicom_to_array(dcmread(p), p, hu_window, None, raw=False, max_pixels=max_voxels)
        if vol is None:
            vol = np.empty((len(files),) + arr.shape, np.float32)
        elif arr.shape != vol.shape[1:]:
            raise DataError(p, f"slice has shape {arr.shape} but the series' first slice has {vol.shape[1:]}")
        vol[j] = arr
        names.append(str(p))
    ps = tag_numbers(ds0, p0, "PixelSpacing", 2)
    spacing = None
    if ps is not None and dz is not None:
        spacing = (abs(dz), ps[0], ps[1])
    meta = VolumeMeta(source=str(folder), kind="dicom_series", spacing=spacing, files=names,
                      series_uid=uid, skipped=skipped, order=how)
    assert vol is not None  # files is never empty
    return vol, meta


def _slice_folder(folder: Path, paths: list[Path],
                  max_voxels: int | None = MAX_VOLUME_VOXELS) -> tuple[np.ndarray, VolumeMeta]:
    images = sorted((p for p in paths if p.name.lower().endswith(PIL_SUFFIXES)), key=lambda p: natural_key(p.name))
    skipped = [(str(p), "not a slice image") for p in paths if p not in images]
    if not images:
        raise DataError(folder, "holds neither DICOM files nor slice images (.png/.jpg/.tif/.bmp)")
    total = sum(pil_pixels(p) for p in images)  # from the image headers, before decoding
    check_size(folder, total, max_voxels, f"slice folder ({len(images)} images)", "voxels")
    vol: np.ndarray | None = None
    for j, p in enumerate(images):
        arr = read_image(p, max_pixels=max_voxels)
        if vol is None:
            vol = np.empty((len(images),) + arr.shape, np.float32)
        elif arr.shape != vol.shape[1:]:
            raise DataError(p, f"slice has shape {arr.shape} but {images[0].name} has {vol.shape[1:]}")
        vol[j] = arr
    meta = VolumeMeta(source=str(folder), kind="slices", files=[str(p) for p in images], skipped=skipped,
                      order="name")
    assert vol is not None
    return vol, meta


def _folder_volume(folder: Path, paths: list[Path], series_uid: str | None,
                   max_voxels: int | None = MAX_VOLUME_VOXELS,
                   hu_window: tuple[float, float] | None = None) -> tuple[np.ndarray, VolumeMeta]:
    paths = [p for p in paths if p.is_file() and not p.name.startswith(".")]
    if not paths:
        raise DataError(folder, "folder is empty (no files directly inside; point at the series folder)")
    kinds = set()
    for p in paths:
        try:
            kinds.add(file_kind(p) if p.stat().st_size > 0 else "empty")
        except (DataError, OSError):
            kinds.add("unreadable")
    if "dicom" in kinds:
        return _dicom_series(folder, paths, series_uid, max_voxels, hu_window)
    return _slice_folder(folder, paths, max_voxels)


# ------------------------------------------------------------------------------------------- zips

_CHUNK = 1024 * 1024
_SAFE_NAME = re.compile(r"[^\w.\- ]")


def _mb(n: int) -> str:
    return f"{n / 1e6:.0f} MB" if n >= 10**6 else f"{n:,} bytes"


def _check_zip_directory(path: Path, max_members: int) -> None:
    """Refuse, from the end-of-central-directory record alone (before ``zipfile`` builds one object
    per entry), a zip that declares far more entries, or a far larger directory, than
    ``max_members`` files can need (folders count as entries too, hence the factor 2)."""
    end_rec = getattr(zipfile, "_EndRecData", None)
    if end_rec is None:  # pragma: no cover - private helper gone; the member count is checked later
        return
    try:
        with open(path, "rb") as f:
            rec = end_rec(f)
    except Exception:  # noqa: BLE001 - zipfile.ZipFile reports a broken record
        return
    if not rec:
        return
    entries = int(rec[getattr(zipfile, "_ECD_ENTRIES_TOTAL", 4)])
    cd_size = int(rec[getattr(zipfile, "_ECD_SIZE", 5)])
    if entries > 2 * max_members:
        raise DataError(path, f"zip holds {entries:,} entries, more than the limit of {max_members:,} files")
    if cd_size > 2 * max_members * 1024 + 65536:
        raise DataError(path, f"zip directory is {_mb(cd_size)}, too large for {max_members:,} files")


def _unzip(path: Path, dest: Path, max_bytes: int, max_members: int = MAX_ZIP_MEMBERS,
           max_member_bytes: int = MAX_ZIP_MEMBER_BYTES) -> list[tuple[Path, str]]:
    """Unpack the files of zip ``path`` flat into ``dest``: ``[(unpacked file, member name)]``.

    Every failure is a :class:`DataError` naming ``path`` (and the member): a broken archive,
    corrupt deflate data, an unsupported compression method, encryption, a path escaping the
    archive, too many members, a member or the total over its size cap (declared or actual).
    """
    current = ""
    try:
        _check_zip_directory(path, max_members)
        with zipfile.ZipFile(path) as zf:
            members = [m for m in zf.infolist() if not m.is_dir()]
            if len(members) > max_members:
                raise DataError(path, f"zip holds {len(members):,} files, more than the limit of {max_members:,}")
            total = sum(m.file_size for m in members)
            if total > max_bytes:
                raise DataError(path, f"zip unpacks to {total / 1e6:.0f} MB, more than the limit of "
                                f"{max_bytes / 1e6:.0f} MB")
            for m in members:
                name = Path(m.filename)
                if name.is_absolute() or ".." in name.parts or ".." in Path(m.filename.replace("\\", "/")).parts:
                    raise DataError(path, f"zip member {m.filename!r} points outside the archive")
                if m.file_size > max_member_bytes:
                    raise DataError(path, f"zip member {m.filename!r} unpacks to {_mb(m.file_size)}, more than "
                                    f"the limit of {_mb(max_member_bytes)} per file")
                if m.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
                    raise DataError(path, f"zip member {m.filename!r} uses compression method {m.compress_type}; "
                                    "only stored and deflate are read")
                if m.flag_bits & 0x1:
                    raise DataError(path, f"zip member {m.filename!r} is encrypted")
            out: list[tuple[Path, str]] = []
            root = dest.resolve()
            written = 0
            for i, m in enumerate(members):
                current = m.filename
                name = Path(m.filename)
                if name.name.startswith(".") or "__MACOSX" in name.parts or not name.name:
                    continue
                safe = _SAFE_NAME.sub("_", name.name)
                if len(safe) > 120:
                    safe = safe[:60] + safe[-60:]  # keep the suffix (.dcm, .nii.gz) for sniffing
                target = root / f"{i:06d}_{safe}"
                size = 0
                with zf.open(m) as src:
                    chunk = src.read(_CHUNK)
                    if chunk and not looks_like_dicom(chunk[:1024]) and sniff_head(chunk[:1024]) is None:
                        # neither DICOM nor a kind chestdx reads: only its first chunk is unpacked (the
                        # folder reader then lists it as skipped, with its reason), never the rest
                        target.write_bytes(chunk)
                        out.append((target, name.name))
                        continue
                    with open(target, "wb") as dst:
                        while chunk:
                            size += len(chunk)
                            written += len(chunk)
                            if size > min(m.file_size, max_member_bytes) or written > max_bytes:
                                raise DataError(path, f"zip member {m.filename!r} unpacks to more than its "
                                                f"header declares ({m.file_size:,} bytes) or the limit")
                            dst.write(chunk)
                            chunk = src.read(_CHUNK)
                out.append((target, name.name))
            return out
    except DataError:
        raise
    except zipfile.BadZipFile as e:
        where = f" (zip member {current!r})" if current else ""
        raise DataError(path, f"not a readable zip file{where} ({e})") from None
    except NotImplementedError as e:  # compression method / zip version zipfile does not know
        raise DataError(path, f"zip uses a feature that cannot be read ({e})") from None
    except Exception as e:  # noqa: BLE001 - zlib.error, EOFError, OSError, struct.error, ...
        where = f"zip member {current!r}: " if current else ""
        raise DataError(path, f"{where}corrupt zip data ({type(e).__name__}: {e})") from None


def _zip_volume(p: Path, series_uid: str | None, max_voxels: int | None, max_unzipped_bytes: int,
                max_zip_members: int, max_member_bytes: int,
                hu_window: tuple[float, float] | None = None) -> tuple[np.ndarray, VolumeMeta]:
    """Read a zip as a folder; every error and skipped-file reason names the zip and the member,
    never the temporary folder."""
    with tempfile.TemporaryDirectory(prefix="chestdx-zip-") as tmp:
        unpacked = _unzip(p, Path(tmp), max_unzipped_bytes, max_zip_members, max_member_bytes)
        member = {str(t): n for t, n in unpacked}

        def clean(text: str) -> str:
            for t, n in member.items():
                text = text.replace(t, n)
            return text.replace(str(Path(tmp).resolve()), "").replace(tmp, "")

        try:
            vol, meta = _folder_volume(p, [t for t, _ in unpacked], series_uid, max_voxels, hu_window)
        except DataError as e:
            where = f"zip member {member[e.path]!r}: " if e.path in member else ""
            raise DataError(p, where + clean(e.problem)) from None
        except Exception as e:  # noqa: BLE001 - named here while the member names are known
            raise DataError(p, f"unreadable zip content ({type(e).__name__}: {clean(str(e))})") from None
        meta.files = [member.get(f, Path(f).name) for f in meta.files]
        meta.skipped = [(member.get(f, Path(f).name), clean(why)) for f, why in meta.skipped]
    return vol, meta


# -------------------------------------------------------------------------------------------- API


def _is_zip(p: Path) -> bool:
    try:
        return p.is_file() and zipfile.is_zipfile(p)
    except Exception:  # noqa: BLE001
        return False


def is_volume_input(path: str | Path) -> bool:
    """Whether ``path`` is a 3D scan: a folder, a zip, a 3D NIfTI / ``.npy`` or a multi-frame DICOM.

    Reads headers only; never raises (an unreadable file is not a volume; :func:`read_volume` or
    :func:`~chestdx.io.read_image` then says what is wrong with it)."""
    try:
        p = Path(path)
        if p.is_dir() or _is_zip(p):
            return True
        kind = file_kind(open_checked(p))
        if kind == "nifti":
            _, shape = nifti_open(p)
            return len([s for s in shape if s != 1]) >= 3
        if kind == "npy":
            return len(npy_header(p)[0]) == 3
        if kind == "dicom":
            ds = dcmread(p, stop_before_pixels=True)
            return (tag_number(ds, p, "NumberOfFrames", 1, integer=True) or 1) > 1
    except Exception:  # noqa: BLE001 - DataError, OSError, ...: not a volume
        return False
    return False


@guard_reader()
def read_volume(path: str | Path, *, hu_window: tuple[float, float] | None = None,
                series_uid: str | None = None,
                max_unzipped_bytes: int = MAX_UNZIPPED_BYTES,
                max_voxels: int | None = MAX_VOLUME_VOXELS,
                max_zip_members: int = MAX_ZIP_MEMBERS,
                max_member_bytes: int = MAX_ZIP_MEMBER_BYTES) -> tuple[np.ndarray, VolumeMeta]:
    """Read one scan as float32 ``(D, H, W)`` (inferior -> superior) and where it came from.

    Args:
        path: a DICOM series folder, a zip of one, a folder of slice images, a NIfTI file, a
            ``.npy`` array ``(D, H, W)`` or a multi-frame DICOM file.
        hu_window: ``(level, width)``: clip to the window and scale to ``[0, 1]`` (not for slice
            images, which are already in ``[0, 1]``).
        series_uid: the series to read from a folder holding several.
        max_unzipped_bytes: refuse zips that unpack to more (declared or actual); default
            :data:`~chestdx.io.limits.MAX_UNZIPPED_BYTES` (1 GiB).
        max_voxels: refuse, before decoding, a volume that declares more voxels; default
            :data:`~chestdx.io.limits.MAX_VOLUME_VOXELS` (128 Mi); None: no limit.
        max_zip_members: refuse zips holding more files; default
            :data:`~chestdx.io.limits.MAX_ZIP_MEMBERS` (4096).
        max_member_bytes: refuse zips with a member that unpacks to more; default
            :data:`~chestdx.io.limits.MAX_ZIP_MEMBER_BYTES` (512 MiB).

    Returns:
        ``(volume (D, H, W) float32, VolumeMeta)``.

    Raises:
        DataError: missing or unreadable input, several series mixed in one folder, slices of
            different sizes, NaN values, a size over a limit. The message names the file or folder
            (for a zip: the zip and the member). Nothing else escapes: an unexpected library
            exception becomes a DataError naming its type.
        ConfigError: ``hu_window`` is malformed.
    """
    if hu_window is not None:
        apply_hu_window(np.zeros(1, np.float32), hu_window)  # validate before reading
    p = Path(path)
    if not p.exists():
        raise DataError(p, "not found")
    if p.is_dir():
        vol, meta = _folder_volume(p, sorted(p.iterdir()), series_uid, max_voxels, hu_window)
    elif _is_zip(p):
        vol, meta = _zip_volume(p, series_uid, max_voxels, max_unzipped_bytes, max_zip_members, max_member_bytes,
                                hu_window)
    else:
        p = open_checked(p)
        kind = file_kind(p)
        if kind == "nifti":
            vol, spacing = _nifti_volume(p, max_voxels)
            meta = VolumeMeta(source=str(p), kind="nifti", spacing=spacing, files=[str(p)])
        elif kind == "npy":
            vol, meta = _npy_volume(p, max_voxels), VolumeMeta(source=str(p), kind="npy", files=[str(p)])
        elif kind == "dicom":
            ds = dcmread(p)
            rows, cols, n, spp = dicom_geometry(ds, p)
            check_size(p, rows * cols * n * spp, max_voxels, f"DICOM volume ({n} x {rows} x {cols} x {spp} "
                       "samples)", "voxels")
            vol = np.empty((n, rows, cols), np.float32)
            for i in range(n):  # one frame decoded at a time (pydicom >= 3)
                vol[i] = dicom_to_array(ds, p, hu_window, i, raw=False, max_pixels=max_voxels)
            meta = VolumeMeta(source=str(p), kind="dicom_multiframe", files=[str(p)])
        else:
            raise DataError(p, "is a single 2D image, not a volume (use read_image, or give a folder, "
                            "a zip, a NIfTI or a .npy volume)")
    check_array(p, vol, "volume", ndim=3)
    if hu_window is not None and meta.kind in ("nifti", "npy"):  # DICOM: windowed per slice above, as
        vol = apply_hu_window(vol, hu_window)  # read_image windows it; slice pictures carry no HU
    return vol.astype(np.float32, copy=False), meta
