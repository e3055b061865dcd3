"""Write small DICOM files and series for tests (pydicom, uncompressed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid


def write_dicom(path: Path, pixels: np.ndarray, *, slope: float = 1.0, intercept: float = 0.0,
                photometric: str = "MONOCHROME2", preamble: bool = True, frames: int = 1,
                pixel_data: bool = True, series_uid: str | None = None,
                position: tuple[float, float, float] | None = None, instance: int | None = None,
                spacing: tuple[float, float] | None = None) -> Path:
    """One CT image object; ``pixels`` uint16 (unsigned) or int16 (signed), ``(H, W)`` or ``(F, H, W)``."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"  # CT image storage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "CT"
    ds.Rows, ds.Columns = pixels.shape[-2:]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 16
    ds.BitsStored = 12 if pixels.dtype == np.uint16 else 16
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 0 if pixels.dtype == np.uint16 else 1
    ds.RescaleSlope = str(slope)
    ds.RescaleIntercept = str(intercept)
    if series_uid is not None:
        ds.SeriesInstanceUID = series_uid
    if position is not None:
        ds.ImagePositionPatient = [str(v) for v in position]
        ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    if instance is not None:
        ds.InstanceNumber = instance
    if spacing is not None:
        ds.PixelSpacing = [str(spacing[0]), str(spacing[1])]
    if frames > 1:
        ds.NumberOfFrames = frames
    if pixel_data:
        ds.PixelData = pixels.tobytes()
    if preamble:
        ds.save_as(path, enforce_file_format=True)
    else:
        pydicom.dcmwrite(path, ds, enforce_file_format=False)
    return path


def write_series(folder: Path, volume: np.ndarray, *, slope: float = 1.0, intercept: float = 0.0,
                 z0: float = -100.0, dz: float = 2.5, seed: int = 0, positions: bool = True,
                 series_uid: str | None = None, names: str = "random") -> list[Path]:
    """Write ``volume`` ``(D, H, W)`` (stored values, int16/uint16; slice 0 = inferior) as a series.

    File names are shuffled (``names="random"``) so that only the headers give the order; the
    instance numbers are shuffled too when ``positions`` is True (so only positions order it).
    """
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    uid = series_uid or generate_uid()
    d = volume.shape[0]
    file_ids = rng.permutation(d)
    instances = rng.permutation(d) + 1 if positions else np.arange(d) + 1
    out = []
    for k in range(d):
        name = f"IM{file_ids[k]:04d}" if names == "random" else f"{k}.dcm"
        out.append(write_dicom(folder / name, volume[k], slope=slope, intercept=intercept, series_uid=uid,
                               position=(0.0, 0.0, z0 + dz * k) if positions else None,
                               instance=int(instances[k]), spacing=(0.7, 0.7)))
    return out
