"""Seeded, bounded fuzzing of every reader with hostile input (issue 13).

Corrupt, truncated, bit-flipped, bomb and wrong-type inputs, all made at test time from small
valid seeds (PIL, pydicom, nibabel, numpy; nothing binary is committed), go through every entry
point: ``read_image``, ``read_mask``, ``read_volume``, ``is_volume_input``, ``load_study``,
``study_from_bytes`` and ``expand_inputs``. Each call must give a valid float32 array (bool for
masks) or a :class:`~chestdx.errors.ChestdxError`, nothing else, within a few seconds; the valid
seeds must read; the bombs must be refused, and a subprocess reading all of them must not grow its
peak RSS by more than 100 MB. Errors of ``study_from_bytes`` must name the upload, never a
temporary file.

``pytest -s tests/fuzz`` prints the number of inputs per category (``test_fuzz_counts``).
"""

from __future__ import annotations

import copy
import gzip
import io
import json
import os
import re
import struct
import subprocess
import sys
import textwrap
import time
import warnings
import zipfile
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.datadict import tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)

from chestdx.errors import ChestdxError, DataError
from chestdx.io import VolumeMeta, is_volume_input, read_image, read_mask, read_volume
from chestdx.predict.inputs import Study, expand_inputs, load_study, study_from_bytes

SEED = 13
#: Longest any one call may take (seconds); the readers refuse bombs in milliseconds.
MAX_SECONDS = 5.0
#: Most the peak RSS of a process may grow while it reads every bomb (bytes).
MAX_RSS_GROWTH = 100 * 1024**2
#: Fewest inputs the corpus must hold.
MIN_INPUTS = 1000
#: Arguments ``test_fuzz_expand_inputs`` hands ``expand_inputs``.
N_EXPAND = 15


@dataclass
class Case:
    """One hostile input: a file (``data``) or a folder (``files``), with what must happen."""

    category: str
    name: str
    data: bytes | None = None
    files: dict[str, bytes] = field(default_factory=dict)
    must_read: bool = False  # a valid seed: every reader that takes it must succeed
    must_refuse: bool = False  # a bomb: must be refused (ChestdxError)
    slice_ok: bool = False  # a volume bomb of which read_image / read_mask may read one slice
    match: str | None = None  # a regex the refusal message must match
    kwargs: dict[str, Any] = field(default_factory=dict)  # limits passed to read_volume / study_from_bytes
    path: Path | None = None


# ------------------------------------------------------------------------------ mutation helpers


def _truncations(data: bytes, rng: np.random.Generator, n: int) -> list[bytes]:
    """``n`` prefixes of ``data``: a few fixed cut points in the header, the rest at random."""
    cuts = {1, 8, 64, 132, 348, len(data) // 2, len(data) - 1}
    cuts |= {int(c) for c in rng.integers(1, max(len(data), 2), size=n)}
    cuts = sorted(c for c in cuts if 0 < c < len(data))
    picked = [cuts[int(i)] for i in rng.choice(len(cuts), size=min(n, len(cuts)), replace=False)]
    return [data[:c] for c in sorted(picked)]


def _bitflips(data: bytes, rng: np.random.Generator, n: int, head: int = 512) -> list[bytes]:
    """``n`` copies of ``data`` with 1-8 random bits flipped; half of them within the first
    ``head`` bytes (where the headers are), half anywhere."""
    out = []
    for i in range(n):
        b = bytearray(data)
        span = min(head, len(b)) if i % 2 == 0 else len(b)
        for _ in range(int(rng.integers(1, 9))):
            pos = int(rng.integers(0, span))
            b[pos] ^= 1 << int(rng.integers(0, 8))
        out.append(bytes(b))
    return out


def _overwrites(data: bytes, rng: np.random.Generator, n: int) -> list[bytes]:
    """``n`` copies of ``data`` with a random run of 4-64 bytes replaced by random bytes."""
    out = []
    for _ in range(n):
        b = bytearray(data)
        start = int(rng.integers(0, len(b)))
        run = int(rng.integers(4, 65))
        b[start:start + run] = rng.integers(0, 256, size=len(b[start:start + run]), dtype=np.uint8).tobytes()
        out.append(bytes(b))
    return out


def _patch(data: bytes, offset: int, fmt: str, value: Any) -> bytes:
    b = bytearray(data)
    struct.pack_into(fmt, b, offset, value)
    return bytes(b)


# ----------------------------------------------------------------------------- zero-data bombs

_MIB = 1 << 20


def _deflate_zeros(n: int) -> bytes:
    """A raw deflate stream of ``n`` zero bytes, built from one 1 MiB block: after a full flush the
    compressor's state is reset, so every further block of zeros compresses to the same bytes."""
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = c.compress(bytes(_MIB)) + c.flush(zlib.Z_FULL_FLUSH)
    full, rest = divmod(n, _MIB)
    tail = b""
    if rest:
        c2 = zlib.compressobj(9, zlib.DEFLATED, -15)
        tail = c2.compress(bytes(rest)) + c2.flush(zlib.Z_FULL_FLUSH)
    return block * full + tail + b"\x03\x00"  # an empty final block


def _crc_zeros(n: int, crc: int = 0) -> int:
    chunk = bytes(16 * _MIB)
    while n >= len(chunk):
        crc = zlib.crc32(chunk, crc)
        n -= len(chunk)
    return zlib.crc32(bytes(n), crc)


def _png_chunk(tag: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body) & 0xFFFFFFFF)


def _png_bomb(width: int, height: int) -> bytes:
    """A valid RGBA PNG of ``width x height`` black pixels (about 1 KB per MB of pixels)."""
    raw = height * (1 + 4 * width)  # a filter byte per row
    adler = ((raw % 65521) << 16) | 1  # adler32 of zeros
    idat = b"\x78\xda" + _deflate_zeros(raw) + struct.pack(">I", adler)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def _gzip_with_zeros(head: bytes, n_zeros: int) -> bytes:
    """gzip of ``head`` followed by ``n_zeros`` zero bytes, without compressing them one by one."""
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    first = c.compress(head) + c.flush(zlib.Z_FULL_FLUSH)
    body = _deflate_zeros(n_zeros)
    crc = _crc_zeros(n_zeros, zlib.crc32(head))
    return (b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff" + first + body
            + struct.pack("<II", crc & 0xFFFFFFFF, (len(head) + n_zeros) & 0xFFFFFFFF))


@dataclass
class _Member:
    name: str
    data: bytes  # as stored (compressed where method 8)
    crc: int
    usize: int
    method: int = 8
    flags: int = 0
    version: int = 20


def _zip_raw(members: list[_Member], entries: int | None = None) -> bytes:
    """A zip written by hand, so that its headers can say anything (sizes, methods, counts)."""
    out = bytearray()
    central = bytearray()
    for m in members:
        name = m.name.encode("utf-8")
        offset = len(out)
        out += struct.pack("<4sHHHHHIIIHH", b"PK\x03\x04", m.version, m.flags, m.method, 0, 0x21,
                           m.crc & 0xFFFFFFFF, len(m.data), m.usize, len(name), 0) + name + m.data
        central += struct.pack("<4sHHHHHHIIIHHHHHII", b"PK\x01\x02", 20, m.version, m.flags, m.method, 0,
                               0x21, m.crc & 0xFFFFFFFF, len(m.data), m.usize, len(name), 0, 0, 0, 0, 0,
                               offset) + name
    n = len(members) if entries is None else entries
    eocd = struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, n, n, len(central), len(out), 0)
    return bytes(out + central + eocd)


def _deflate(data: bytes) -> bytes:
    c = zlib.compressobj(6, zlib.DEFLATED, -15)
    return c.compress(data) + c.flush()


def _zip(files: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=compression) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buf.getvalue()


# ------------------------------------------------------------------------------------ seeds


def _png(arr: np.ndarray, mode: str | None = None, **save: Any) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr, mode).save(buf, format=save.pop("format", "PNG"), **save)
    return buf.getvalue()


def _pil_seeds(rng: np.random.Generator) -> dict[str, bytes]:
    g = rng.integers(0, 256, (24, 32), dtype=np.uint8)
    rgb = rng.integers(0, 256, (20, 16, 3), dtype=np.uint8)
    rgba = rng.integers(0, 256, (12, 10, 4), dtype=np.uint8)
    seeds = {
        "l.png": _png(g),
        "rgb.png": _png(rgb),
        "rgba.png": _png(rgba),
        "i16.png": _png(g.astype(np.uint16) * 257),
        "bilevel.png": _png(g > 128),
        "rgb.jpg": _png(rgb, format="JPEG", quality=90),
        "l.jpeg": _png(g, format="JPEG"),
        "f.tif": _png(rng.normal(size=(8, 9)).astype(np.float32), format="TIFF"),
        "i32.tif": _png((g.astype(np.int32) * 1000), format="TIFF"),
        "rgb.bmp": _png(rgb, format="BMP"),
        "p.gif": _png(g, format="GIF"),
    }
    pal = Image.fromarray((g % 4).astype(np.uint8), "P")
    pal.putpalette([0, 0, 0, 255, 255, 255, 255, 0, 0, 0, 255, 0] + [0] * (256 * 3 - 12))
    buf = io.BytesIO()
    pal.save(buf, format="PNG", transparency=1)
    seeds["ptrans.png"] = buf.getvalue()
    buf = io.BytesIO()
    frames = [Image.fromarray(g), Image.fromarray(255 - g)]
    frames[0].save(buf, format="TIFF", save_all=True, append_images=frames[1:])
    seeds["pages.tif"] = buf.getvalue()
    return seeds


def _dicom_dataset(pixels: np.ndarray, *, photometric: str = "MONOCHROME2", frames: int = 1,
                   ts: str = ExplicitVRLittleEndian, preamble: bool = True, samples: int = 1,
                   position: tuple[float, float, float] | None = (0.0, 0.0, 10.0),
                   instance: int | None = 1, series_uid: str | None = None) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ts
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "CT"
    ds.SeriesInstanceUID = series_uid or "1.2.826.0.1.3680043.8.498.1"
    ds.Rows, ds.Columns = pixels.shape[-3:-1] if samples > 1 else pixels.shape[-2:]
    ds.SamplesPerPixel = samples
    ds.PhotometricInterpretation = photometric
    if samples > 1:
        ds.PlanarConfiguration = 0
    ds.BitsAllocated = pixels.dtype.itemsize * 8
    ds.BitsStored = 12 if pixels.dtype == np.uint16 else pixels.dtype.itemsize * 8
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 1 if pixels.dtype.kind == "i" else 0
    ds.RescaleSlope = "1.0"
    ds.RescaleIntercept = "-1024.0"
    ds.SliceThickness = "2.5"
    ds.PixelSpacing = ["0.7", "0.7"]
    if position is not None:
        ds.ImagePositionPatient = [str(v) for v in position]
        ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    if instance is not None:
        ds.InstanceNumber = instance
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.PixelData = pixels.tobytes()
    ds["PixelData"].VR = "OW" if pixels.dtype.itemsize > 1 else "OB"  # not left ambiguous for the writer
    return ds


def _ds_bytes(ds: Dataset, preamble: bool = True) -> bytes:
    buf = io.BytesIO()
    if preamble:
        ds.save_as(buf, enforce_file_format=True)
    else:
        pydicom.dcmwrite(buf, ds, enforce_file_format=False)
    return buf.getvalue()


def _dicom_seeds(rng: np.random.Generator) -> dict[str, Dataset]:
    u16 = rng.integers(0, 4096, (6, 7), dtype=np.uint16)
    i16 = rng.integers(-1000, 1000, (5, 8), dtype=np.int16)
    return {
        "ct_u16.dcm": _dicom_dataset(u16),
        "ct_i16.dcm": _dicom_dataset(i16),
        "cxr_mono1.dcm": _dicom_dataset(u16, photometric="MONOCHROME1"),
        "multiframe.dcm": _dicom_dataset(rng.integers(0, 4096, (3, 4, 5), dtype=np.uint16), frames=3),
        "rgb.dcm": _dicom_dataset(rng.integers(0, 256, (4, 6, 3), dtype=np.uint8), photometric="RGB", samples=3),
        "implicit.dcm": _dicom_dataset(u16, ts=ImplicitVRLittleEndian),
    }


def _nifti_bytes(img: Any, gz: bool) -> bytes:
    raw = img.to_bytes()
    return gzip.compress(raw, compresslevel=1, mtime=0) if gz else raw


def _nifti_seeds(rng: np.random.Generator) -> dict[str, bytes]:
    vol16 = nib.Nifti1Image(rng.integers(-1000, 1000, (6, 5, 4), dtype=np.int16), np.diag([-0.8, 0.8, 2.5, 1]))
    vol16.header.set_slope_inter(1.0, -24.0)
    return {
        "vol_i16.nii": _nifti_bytes(vol16, False),
        "vol_f32.nii.gz": _nifti_bytes(nib.Nifti1Image(rng.normal(size=(5, 6, 3)).astype(np.float32),
                                                       np.eye(4)), True),
        "img_2d.nii": _nifti_bytes(nib.Nifti1Image(rng.normal(size=(7, 6)).astype(np.float32), np.eye(4)), False),
        "vol_u8.nii.gz": _nifti_bytes(nib.Nifti1Image(rng.integers(0, 255, (4, 4, 5), dtype=np.uint8),
                                                      np.diag([-1.0, -1.0, 1.0, 1.0])), True),
        "vol_n2.nii": _nifti_bytes(nib.Nifti2Image(rng.normal(size=(4, 3, 2)).astype(np.float32), np.eye(4)), False),
    }


def _npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


def _npy_raw(header: str, data: bytes, version: tuple[int, int] = (1, 0), hlen: int | None = None) -> bytes:
    """A ``.npy`` file with any header text (padded as numpy pads it) and any data."""
    text = header.encode("latin1")
    lenfmt = "<H" if version[0] == 1 else "<I"
    pre = 6 + 2 + struct.calcsize(lenfmt)
    pad = (-(pre + len(text) + 1)) % 64
    text = text + b" " * pad + b"\n"
    return (b"\x93NUMPY" + bytes(version) + struct.pack(lenfmt, len(text) if hlen is None else hlen) + text + data)


# ----------------------------------------------------------------------------------- corpus


_BAD_VALUES = ["abc", "1e400", "nan", "-7", "2.5", "1\\2", "99999999999999999999", "\x00\x00"]
_TAGS_SINGLE = ["NumberOfFrames", "SamplesPerPixel", "BitsStored", "BitsAllocated", "PixelRepresentation",
                "HighBit", "Rows", "Columns", "RescaleSlope", "RescaleIntercept", "PhotometricInterpretation",
                "PlanarConfiguration", "SliceThickness", "InstanceNumber", "ImagePositionPatient",
                "PixelSpacing"]
_TAGS_SERIES = ["ImagePositionPatient", "ImageOrientationPatient", "InstanceNumber", "SliceThickness",
                "SpacingBetweenSlices", "PixelSpacing", "SeriesInstanceUID", "Rows"]


def _with_tag(ds: Dataset, keyword: str, value: str) -> Dataset:
    """A copy of ``ds`` whose ``keyword`` holds ``value`` as a text (LO) element, whatever its VR."""
    out = copy.deepcopy(ds)
    tag = tag_for_keyword(keyword)
    out[tag] = DataElement(tag, "LO", value)
    return out


def _pil_cases(rng: np.random.Generator) -> list[Case]:
    cases = []
    for name, data in _pil_seeds(rng).items():
        cases.append(Case("pil", f"seed_{name}", data, must_read=True))
        stem, suffix = name.rsplit(".", 1)
        cases += _mutated("pil", stem, f".{suffix}", data, rng, flips=10, head=128)
    return cases


def _mutated(category: str, stem: str, suffix: str, data: bytes, rng: np.random.Generator, *, flips: int,
             head: int) -> list[Case]:
    """6 truncations, ``flips`` bit flips (half inside the first ``head`` bytes) and 2 overwrites of
    ``data``, named ``<stem>_cut<i><suffix>``, ``_flip<i>``, ``_junk<i>``."""
    return ([Case(category, f"{stem}_cut{i}{suffix}", b) for i, b in enumerate(_truncations(data, rng, 6))]
            + [Case(category, f"{stem}_flip{i}{suffix}", b)
               for i, b in enumerate(_bitflips(data, rng, flips, head=head))]
            + [Case(category, f"{stem}_junk{i}{suffix}", b) for i, b in enumerate(_overwrites(data, rng, 2))])


def _dicom_cases(rng: np.random.Generator) -> list[Case]:
    cases = []
    seeds = _dicom_seeds(rng)
    for name, ds in seeds.items():
        data = _ds_bytes(ds)
        cases.append(Case("dicom", f"seed_{name}", data, must_read=True))
        cases += _mutated("dicom", name.rsplit(".", 1)[0], ".dcm", data, rng, flips=14, head=600)
    # no preamble, no suffix: sniffed from its first tag
    cases.append(Case("dicom", "seed_raw_nosuffix", _ds_bytes(seeds["ct_u16.dcm"], preamble=False), must_read=True))
    # compressed transfer syntaxes holding junk: the decoders' ValueError / RuntimeError
    for ts in (RLELossless, JPEGBaseline8Bit, JPEG2000Lossless, JPEGLSLossless):
        for j, junk in enumerate((b"\x00" * 16, rng.integers(0, 256, 64, dtype=np.uint8).tobytes(),
                                  b"\x01\x00\x00\x00" + b"\x40\x00\x00\x00" + b"\xff" * 60)):
            ds = copy.deepcopy(seeds["ct_u16.dcm"])
            ds.file_meta.TransferSyntaxUID = ts
            ds.PixelData = encapsulate([junk])
            ds["PixelData"].VR = "OB"
            ds["PixelData"].is_undefined_length = True
            cases.append(Case("dicom", f"compressed_{ts.name.split()[0]}_{j}.dcm", _ds_bytes(ds)))
    # deflated transfer syntax whose deflate stream is corrupt
    deflated = copy.deepcopy(seeds["ct_u16.dcm"])
    deflated.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    data = _ds_bytes(deflated)
    for i, b in enumerate(_bitflips(data, rng, 4, head=len(data))):
        cases.append(Case("dicom", f"deflated_flip{i}.dcm", b))
    # geometry that lies about the pixel data
    for keyword, value in (("Rows", 4000), ("Columns", 65535), ("NumberOfFrames", 1000), ("BitsAllocated", 1),
                           ("BitsAllocated", 24), ("BitsAllocated", 64), ("SamplesPerPixel", 4),
                           ("Rows", 0), ("NumberOfFrames", 0)):
        ds = copy.deepcopy(seeds["ct_u16.dcm"])
        setattr(ds, keyword, value)
        cases.append(Case("dicom", f"lie_{keyword}_{value}.dcm", _ds_bytes(ds)))
    return cases


def _dicom_tag_cases(rng: np.random.Generator) -> list[Case]:
    seeds = _dicom_seeds(rng)
    cases = []
    for keyword in _TAGS_SINGLE:
        base = {"NumberOfFrames": "multiframe.dcm", "BitsStored": "cxr_mono1.dcm", "PixelRepresentation":
                "cxr_mono1.dcm", "PlanarConfiguration": "rgb.dcm"}.get(keyword, "ct_u16.dcm")
        for j, value in enumerate(_BAD_VALUES):
            ds = _with_tag(seeds[base], keyword, value)
            cases.append(Case("dicom_tags", f"tag_{keyword}_{j}.dcm", _ds_bytes(ds)))
        # the same through an implicit-VR file, where the VR comes from the dictionary
        ds = _with_tag(seeds["implicit.dcm"], keyword, "abc")
        cases.append(Case("dicom_tags", f"tag_implicit_{keyword}.dcm", _ds_bytes(ds)))
    # numeric-VR values (IS / DS) whose text is not a number, patched into the bytes
    sentinel = {"NumberOfFrames": "77777777", "InstanceNumber": "66666666",  # IS
                "SliceThickness": "5555.555", "RescaleSlope": "4444.444"}  # DS
    for keyword, placeholder in sentinel.items():
        ds = copy.deepcopy(seeds["multiframe.dcm" if keyword == "NumberOfFrames" else "ct_u16.dcm"])
        setattr(ds, keyword, placeholder)
        data = _ds_bytes(ds)
        assert data.count(placeholder.encode()) == 1
        for j, repl in enumerate(("abc     ", "1e400   ", "nan     ", "--------", "\x00" * 8, "1.5     ")):
            cases.append(Case("dicom_tags", f"patched_{keyword}_{j}.dcm",
                              data.replace(placeholder.encode(), repl.encode("latin1"))))
    return cases


def _series_files(rng: np.random.Generator, positions: bool = True) -> dict[str, Dataset]:
    uid = generate_uid()
    out = {}
    for k in range(4):
        px = rng.integers(0, 4096, (5, 6), dtype=np.uint16)
        out[f"IM{(k * 7) % 4:04d}"] = _dicom_dataset(px, position=(0.0, 0.0, 2.5 * k) if positions else None,
                                                    instance=k + 1, series_uid=uid)
    return out


def _series_cases(rng: np.random.Generator) -> list[Case]:
    cases = []
    good = {n: _ds_bytes(ds) for n, ds in _series_files(rng).items()}
    cases.append(Case("dicom_series", "seed_series.zip", _zip(good), must_read=True))
    cases.append(Case("dicom_series", "seed_series_folder", files=good, must_read=True))
    for positions in (True, False):
        files = _series_files(rng, positions)
        for keyword in _TAGS_SERIES:
            for j, value in enumerate(_BAD_VALUES[:4]):
                mutated = {n: _ds_bytes(_with_tag(ds, keyword, value) if i == 1 else ds)
                           for i, (n, ds) in enumerate(files.items())}
                tag = f"{'pos' if positions else 'nopos'}_{keyword}_{j}"
                if j % 2:
                    cases.append(Case("dicom_series", f"series_{tag}", files=mutated))
                else:
                    cases.append(Case("dicom_series", f"series_{tag}.zip",
                                      _zip(mutated, zipfile.ZIP_STORED if j else zipfile.ZIP_DEFLATED)))
    names = list(good)
    for i, b in enumerate(_bitflips(good[names[1]], rng, 10, head=600)):
        cases.append(Case("dicom_series", f"series_flip{i}.zip", _zip({**good, names[1]: b}, zipfile.ZIP_STORED)))
    for i, b in enumerate(_truncations(good[names[2]], rng, 4)):
        cases.append(Case("dicom_series", f"series_cut{i}", files={**good, names[2]: b}))
    extras = {"zeros.dcm": bytes(8192), "DICOMDIR": good[names[0]], "notes.txt": b"hello",
              "fake.dcm": b"\x00" * 128 + b"DICM" + b"\xff" * 64, "slice.png": _png(np.zeros((5, 6), np.uint8)),
              "empty.dcm": b"", ".hidden.dcm": bytes(100)}
    for extra, data in extras.items():
        cases.append(Case("dicom_series", f"series_plus_{extra}.zip", _zip({**good, extra: data})))
    other = {f"B{n}": _ds_bytes(ds) for n, ds in _series_files(rng).items()}
    cases.append(Case("dicom_series", "series_mixed.zip", _zip({**good, **other})))
    cases.append(Case("dicom_series", "slices_folder", must_read=True,
                      files={f"{k}.png": _png(rng.integers(0, 255, (6, 5), dtype=np.uint8)) for k in (1, 2, 10)}))
    cases.append(Case("dicom_series", "slices_sizes_differ",
                      files={"1.png": _png(np.zeros((6, 5), np.uint8)), "2.png": _png(np.zeros((5, 6), np.uint8))}))
    return cases


_NIFTI1_FIELDS: list[tuple[int, str, Any]] = [
    (0, "<i", 0), (0, "<i", 540), (40, "<h", 0), (40, "<h", 8), (40, "<h", -1), (40, "<h", 15),
    (42, "<h", 0), (42, "<h", -5), (42, "<h", 32767), (44, "<h", 32767), (46, "<h", 32767), (46, "<h", 0),
    (70, "<h", 0), (70, "<h", 1), (70, "<h", 128), (70, "<h", 32), (70, "<h", 2304), (70, "<h", 1792),
    (70, "<h", 255), (70, "<h", 1024), (72, "<h", 0), (72, "<h", 7), (80, "<f", float("nan")),
    (80, "<f", -1.0), (80, "<f", 0.0), (108, "<f", -352.0), (108, "<f", 1e10), (108, "<f", float("nan")),
    (108, "<f", 3.5), (112, "<f", float("nan")), (112, "<f", float("inf")), (112, "<f", -1e38),
    (116, "<f", float("inf")), (252, "<h", 1), (254, "<h", 1), (280, "<f", float("nan")),
    (256, "<f", 2.0), (344, "4s", b"xxx\x00"), (344, "4s", b"n+2\x00"),
]


def _nifti_cases(rng: np.random.Generator) -> list[Case]:
    cases = []
    for name, data in _nifti_seeds(rng).items():
        cases.append(Case("nifti", f"seed_{name}", data, must_read=True))
        gz = name.endswith(".gz")
        raw = gzip.decompress(data) if gz else data
        stem, suffix = name.split(".", 1)
        if name != "vol_n2.nii":
            for j, (offset, fmt, value) in enumerate(_NIFTI1_FIELDS):
                if gz and j % 2:
                    continue  # half of the field mutations for the compressed seeds
                b = _patch(raw, offset, fmt, value)
                if offset == 252:
                    b = _patch(_patch(b, 280, "<f", float("nan")), 256, "<f", 5.0)
                cases.append(Case("nifti", f"{stem}_hdr{j}.{suffix}",
                                  gzip.compress(b, compresslevel=1, mtime=0) if gz else b))
        for i, b in enumerate(_truncations(data, rng, 4)):
            cases.append(Case("nifti", f"{stem}_cut{i}.{suffix}", b))
        for i, b in enumerate(_bitflips(data, rng, 8, head=352)):
            cases.append(Case("nifti", f"{stem}_flip{i}.{suffix}", b))
    cases.append(Case("nifti", "gzip_of_text.nii.gz", gzip.compress(b"not a nifti header" * 40)))
    cases.append(Case("nifti", "gzip_not_nifti.gz", gzip.compress(bytes(400))))
    return cases


_NPY_HEADERS = [
    "{'descr': '<f4', 'fortran_order': False, 'shape': (1000000, 1000000), }",
    "{'descr': '<f4', 'fortran_order': False, 'shape': (-1, 4), }",
    "{'descr': '<f4', 'fortran_order': False, 'shape': (), }",
    "{'descr': '<f4', 'fortran_order': False, 'shape': (0,), }",
    "{'descr': '<f4', 'fortran_order': False, 'shape': (6,), }",
    "{'descr': '<f4', 'fortran_order': False, 'shape': (1, 1, 2, 3), }",
    "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 0, 3), }",
    "{'descr': '<f4', 'fortran_order': False, 'shape': " + str((1,) * 40) + ", }",
    "{'descr': '|O', 'fortran_order': False, 'shape': (2, 3), }",
    "{'descr': '<U1', 'fortran_order': False, 'shape': (2, 3), }",
    "{'descr': '|V4', 'fortran_order': False, 'shape': (2, 3), }",
    "{'descr': [('a', '<i4')], 'fortran_order': False, 'shape': (2, 3), }",
    "{'descr': '<c8', 'fortran_order': False, 'shape': (2, 3), }",
    "{'descr': '<M8[D]', 'fortran_order': False, 'shape': (2, 3), }",
    "{'descr': '|S4', 'fortran_order': False, 'shape': (2, 3), }",
    "{'descr': '>f4', 'fortran_order': True, 'shape': (2, 3), }",
    "{'descr': '<f4', 'fortran_order': 'yes', 'shape': (2, 3), }",
    "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), 'extra': 1}",
    "{'descr': '<f4', 'fortran_order': False}",
    "{'descr': '<f4', 'fortran_order': False, 'shape': (2.5, 3), }",
    "{'descr': 'nonsense', 'fortran_order': False, 'shape': (2, 3), }",
    "{'descr': __import__('os').getcwd(), 'fortran_order': False, 'shape': (2, 3), }",
    "garbage that is not a dict",
    "(" * 200 + ")" * 200,
    "{'descr': '<f8', 'fortran_order': False, 'shape': (2, 3), }",
    "{'descr': '<f4', 'fortran_order': False, 'shape': (3, 2, 1), }",
]


def _npy_cases(rng: np.random.Generator) -> list[Case]:
    cases = []
    seeds = {
        "f32_2d.npy": _npy_bytes(rng.normal(size=(4, 5)).astype(np.float32)),
        "i16_3d.npy": _npy_bytes(rng.integers(-5, 5, (3, 4, 2), dtype=np.int16)),
        "bool_2d.npy": _npy_bytes(rng.random((3, 3)) > 0.5),
        "f64_fortran_be.npy": _npy_bytes(np.asfortranarray(rng.normal(size=(3, 4))).astype(">f8")),
    }
    for name, data in seeds.items():
        cases.append(Case("npy", f"seed_{name}", data, must_read=True))
        stem = name[:-4]
        for i, b in enumerate(_truncations(data, rng, 4)):
            cases.append(Case("npy", f"{stem}_cut{i}.npy", b))
        for i, b in enumerate(_bitflips(data, rng, 8, head=128)):
            cases.append(Case("npy", f"{stem}_flip{i}.npy", b))
    cases.append(Case("npy", "seed_v2.npy", _npy_raw("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }",
                                                       np.arange(6, dtype=np.float32).tobytes(), (2, 0)),
                      must_read=True))
    data = np.arange(6, dtype=np.float32).tobytes()
    for j, header in enumerate(_NPY_HEADERS):
        cases.append(Case("npy", f"hdr{j}.npy", _npy_raw(header, data)))
        cases.append(Case("npy", f"hdr{j}_v3.npy", _npy_raw(header, data, (3, 0))))
    good = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }"
    for j, hlen in enumerate((0, 1, 65535, 63)):
        cases.append(Case("npy", f"hlen{j}.npy", _npy_raw(good, data, hlen=hlen)))
    for j, version in enumerate(((0, 0), (9, 9), (1, 9), (4, 0))):
        cases.append(Case("npy", f"version{j}.npy", _npy_raw(good, data, version)))
    return cases


def _zip_cases(rng: np.random.Generator) -> list[Case]:
    cases = []
    series = {n: _ds_bytes(ds) for n, ds in _series_files(rng).items()}
    slices = {f"s{k}.png": _png(rng.integers(0, 255, (6, 5), dtype=np.uint8)) for k in range(3)}
    for label, files, method in (("series", series, zipfile.ZIP_DEFLATED), ("slices", slices, zipfile.ZIP_STORED),
                                 ("series_stored", series, zipfile.ZIP_STORED)):
        data = _zip(files, method)
        cases.append(Case("zip", f"seed_{label}.zip", data, must_read=True))
        # deflate corruption: flips inside the member data, after the first local header
        for i, b in enumerate(_bitflips(data[40:], rng, 16, head=len(data))):
            cases.append(Case("zip", f"{label}_flip{i}.zip", data[:40] + b))
        for i, b in enumerate(_truncations(data, rng, 5)):
            cases.append(Case("zip", f"{label}_cut{i}.zip", b))
        cd = data.rfind(b"PK\x01\x02")
        for j, (off, fmt, value) in enumerate(((10, "<H", 12), (10, "<H", 14), (10, "<H", 99), (10, "<H", 1),
                                               (6, "<H", 84), (8, "<H", 1), (24, "<I", 10), (24, "<I", 2**31),
                                               (20, "<I", 2**31), (28, "<H", 60000), (42, "<I", 2**31),
                                               (16, "<I", 0xDEADBEEF))):
            cases.append(Case("zip", f"{label}_cd{j}.zip", _patch(data, cd + off, fmt, value)))
    one = series[next(iter(series))]
    comp = _deflate(one)
    crc = zlib.crc32(one)
    for j, name in enumerate(("../escape.dcm", "/abs/path.dcm", "a/../../b.dcm", "..\\win.dcm", "ok/../../x.dcm")):
        cases.append(Case("zip", f"traversal{j}.zip", _zip_raw([_Member(name, comp, crc, len(one))]),
                          must_refuse=True, match="outside the archive"))
    # headers that lie about the sizes: smaller, larger, zero
    for j, usize in enumerate((10, len(one) * 50, 0, len(one) + 1)):
        cases.append(Case("zip", f"lying_size{j}.zip", _zip_raw([_Member("a.dcm", comp, crc, usize)])))
    cases.append(Case("zip", "lying_crc.zip", _zip_raw([_Member("a.dcm", comp, crc ^ 1, len(one))])))
    cases.append(Case("zip", "encrypted.zip", _zip_raw([_Member("a.dcm", comp, crc, len(one), flags=1)])))
    cases.append(Case("zip", "entries_lie.zip", _zip_raw([_Member("a.dcm", comp, crc, len(one))], entries=65535)))
    cases.append(Case("zip", "many_members.zip", _zip({f"m{k}.dcm": b"x" for k in range(4200)}, zipfile.ZIP_STORED),
                      must_refuse=True, match="more than the limit"))
    cases.append(Case("zip", "zeros_members.zip", _zip({f"{k}.dcm": bytes(8192) for k in range(8)})))
    cases.append(Case("zip", "zeros_nosuffix.zip", _zip({f"IM{k}": bytes(8192) for k in range(8)})))
    cases.append(Case("zip", "nested.zip", _zip({"inner.zip": _zip(series)})))
    cases.append(Case("zip", "empty.zip", _zip({})))
    cases.append(Case("zip", "dirs_only.zip", _zip({"a/": b"", "a/b/": b""})))
    cases.append(Case("zip", "odd_names.zip", _zip({"a\x01b.dcm": one, "x" * 300 + ".dcm": one, "日本.dcm": one,
                                                    "dup/IM.dcm": one, "dup2/IM.dcm": one})))
    cases.append(Case("zip", "macosx.zip", _zip({"__MACOSX/._IM": b"junk", ".DS_Store": b"junk", **series}),
                      must_read=True))
    cases.append(Case("zip", "random_after_magic.zip", b"PK\x03\x04" + rng.integers(0, 256, 500, np.uint8).tobytes()))
    cases.append(Case("zip", "eocd_only_random.zip", rng.integers(0, 256, 300, np.uint8).tobytes()
                      + struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, 3, 3, 46 * 3, 17, 0)))
    return cases


def _bomb_cases() -> list[Case]:
    """Small files that declare (or unpack to) far more than the limits; all must be refused."""
    cases = [Case("bomb", "rgba_50000x3500.png", _png_bomb(50000, 3500), must_refuse=True,
                  match=r"175,000,000 pixels, more than the limit of 67,108,864")]
    small = _png(np.zeros((4, 4), np.uint8))
    ihdr = small.find(b"IHDR")
    for w, h in ((65535, 65535), (9000, 8000), (2**31 - 1, 1)):
        body = struct.pack(">II", w, h) + small[ihdr + 12:ihdr + 17]
        patched = small[:ihdr - 4] + _png_chunk(b"IHDR", body) + small[ihdr + 21:]
        cases.append(Case("bomb", f"png_ihdr_{w}x{h}.png", patched, must_refuse=True))
    jpg = _png(np.zeros((8, 8), np.uint8), format="JPEG")
    sof = jpg.find(b"\xff\xc0")
    cases.append(Case("bomb", "jpeg_65500x65500.jpg", _patch(_patch(jpg, sof + 5, ">H", 65500), sof + 7, ">H", 65500),
                      must_refuse=True))
    bmp = _png(np.zeros((4, 4, 3), np.uint8), format="BMP")
    cases.append(Case("bomb", "bmp_huge.bmp", _patch(_patch(bmp, 18, "<i", 30000), 22, "<i", 30000), must_refuse=True))
    tif = _png(np.zeros((4, 4), np.uint8), format="TIFF")
    tif_b = bytearray(tif)
    n_entries = struct.unpack_from("<H", tif_b, struct.unpack_from("<I", tif_b, 4)[0])[0]
    ifd = struct.unpack_from("<I", tif_b, 4)[0] + 2
    for k in range(n_entries):
        tag, typ = struct.unpack_from("<HH", tif_b, ifd + 12 * k)
        if tag in (256, 257):  # ImageWidth, ImageLength
            struct.pack_into("<HHII", tif_b, ifd + 12 * k, tag, 4, 1, 100000)
    cases.append(Case("bomb", "tiff_huge.tif", bytes(tif_b), must_refuse=True))
    cases.append(Case("bomb", "gif_huge.gif", _patch(_patch(_png(np.zeros((4, 4), np.uint8), format="GIF"), 6, "<H",
                                                            65535), 8, "<H", 65535), must_refuse=True))
    # DICOM declaring 65535 x 65535 x 1000 frames
    ds = _dicom_dataset(np.zeros((4, 4), np.uint16))
    ds.Rows, ds.Columns, ds.NumberOfFrames = 65535, 65535, 1000
    cases.append(Case("bomb", "dicom_huge.dcm", _ds_bytes(ds), must_refuse=True, match="limit"))
    ds2 = _dicom_dataset(np.zeros((4, 4), np.uint16))
    ds2.Rows, ds2.Columns = 9000, 8000
    cases.append(Case("bomb", "dicom_72M.dcm", _ds_bytes(ds2), must_refuse=True, match="limit"))
    # NIfTI headers declaring 30000^3 (raw and gz), and a real .nii.gz of 315 MB of zeros (157 M voxels)
    hdr = nib.Nifti1Image(np.zeros((2, 2, 2), np.int16), np.eye(4)).to_bytes()[:352]
    huge = _patch(_patch(_patch(hdr, 42, "<h", 30000), 44, "<h", 30000), 46, "<h", 30000)
    cases.append(Case("bomb", "nifti_huge.nii", huge + bytes(64), must_refuse=True))
    cases.append(Case("bomb", "nifti_huge.nii.gz", gzip.compress(huge + bytes(64)), must_refuse=True))
    real = _patch(_patch(_patch(hdr, 42, "<h", 512), 44, "<h", 512), 46, "<h", 600)
    cases.append(Case("bomb", "nifti_zeros_512x512x600.nii.gz", _gzip_with_zeros(real, 512 * 512 * 600 * 2),
                      must_refuse=True, match="voxels", slice_ok=True))
    cases.append(Case("bomb", "npy_huge.npy", _npy_raw("{'descr': '<f8', 'fortran_order': False, "
                                                        "'shape': (100000, 100000), }", bytes(64)), must_refuse=True))
    # zips: a 600 MiB member (over the per-member cap), 3 x 400 MiB (over the 1 GiB total), lying sizes
    crc400 = _crc_zeros(400 * _MIB)
    z400 = _deflate_zeros(400 * _MIB)
    cases.append(Case("bomb", "zip_total_1200MiB.zip",
                      _zip_raw([_Member(f"{k}.dcm", z400, crc400, 400 * _MIB) for k in range(3)]),
                      must_refuse=True, match="more than the limit"))
    crc600 = _crc_zeros(200 * _MIB, crc400)
    cases.append(Case("bomb", "zip_member_600MiB.zip",
                      _zip_raw([_Member("a.dcm", z400[:-2] + _deflate_zeros(200 * _MIB), crc600, 600 * _MIB)]),
                      must_refuse=True, match="per file"))
    cases.append(Case("bomb", "zip_lying_small.zip", _zip_raw([_Member("a.dcm", z400, crc400, 5000)]),
                      must_refuse=True))
    cases.append(Case("bomb", "zip_lying_under_caps.zip", _zip_raw([_Member("a.dcm", z400, crc400, 3 * _MIB)]),
                      must_refuse=True, kwargs={"max_unzipped_bytes": 2 * _MIB}))
    z8 = _deflate_zeros(8 * _MIB)
    cases.append(Case("bomb", "zip_lying_crc_small_caps.zip", _zip_raw([_Member("a.dcm", z8, 1234, 8 * _MIB)]),
                      must_refuse=True, kwargs={"max_unzipped_bytes": 4 * _MIB}))
    return cases


_SUFFIXES = [".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".dcm", ".dicom", ".nii", ".nii.gz", ".npy",
             ".zip", "", ".gz"]
_MAGICS = [b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"II*\x00", b"MM\x00*", b"BM", b"GIF89a", b"\x93NUMPY",
           b"\x1f\x8b", b"PK\x03\x04", b"\x00" * 128 + b"DICM", b"\x00" * 128 + b"DICM\x02\x00",
           b"\x08\x00\x05\x00CS", b"\x02\x00\x00\x00UL"]


def _random_cases(rng: np.random.Generator) -> list[Case]:
    cases = []
    for suffix in _SUFFIXES:
        for i, size in enumerate((1, 7, 133, 600, 4096, int(rng.integers(2, 20000)))):
            cases.append(Case("random", f"rand{i}{suffix}", rng.integers(0, 256, size, np.uint8).tobytes()))
    for j, magic in enumerate(_MAGICS):
        for i, size in enumerate((0, 16, 400, 3000)):
            body = rng.integers(0, 256, size, np.uint8).tobytes()
            cases.append(Case("random", f"magic{j}_{i}.{('png', 'dcm', 'bin')[i % 3]}", magic + body))
    for size in (8192, 1_000_000):  # zeros: pydicom's force=True would parse them at ~1 s/MB
        for suffix in (".dcm", "", ".png", ".nii"):
            cases.append(Case("random", f"zeros{size}{suffix}", bytes(size)))
    cases.append(Case("random", "nifti_magic_at_344.nii", bytes(344) + b"n+1\x00" + bytes(100)))
    return cases


def _wrong_type_cases(rng: np.random.Generator) -> list[Case]:
    contents = {
        "png": _png(rng.integers(0, 255, (5, 6), dtype=np.uint8)),
        "dicom": _ds_bytes(_dicom_seeds(rng)["ct_u16.dcm"]),
        "nifti": _nifti_seeds(rng)["vol_i16.nii"],
        "niftigz": _nifti_seeds(rng)["vol_f32.nii.gz"],
        "npy": _npy_bytes(np.ones((3, 3), np.float32)),
        "zip": _zip({"a.png": _png(np.zeros((3, 3), np.uint8))}),
        "text": b"hello, I am a text file\n" * 20,
        "html": b"<!doctype html><html><body>" + b"x" * 500 + b"</body></html>",
        "json": json.dumps({"shape": [2, 3], "data": list(range(6))}).encode(),
    }
    cases = []
    for kind, data in contents.items():
        for suffix in (".png", ".jpg", ".dcm", ".nii", ".nii.gz", ".npy"):
            cases.append(Case("wrong_type", f"{kind}_as{suffix}", data))
    return cases


def _memory_cases() -> list[tuple[str, Any]]:
    """In-memory things handed to ``load_study`` (name, object)."""
    rng = np.random.default_rng(SEED)
    nan = np.ones((4, 4), np.float32)
    nan[1, 1] = np.nan
    lazy = io.BytesIO(_png(rng.integers(0, 255, (40, 40), dtype=np.uint8)))
    truncated = Image.open(io.BytesIO(lazy.getvalue()[:200]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        big = Image.open(io.BytesIO(_png_bomb(10000, 10000)))  # opened lazily: nothing decoded yet
    return [
        ("ok_2d", rng.normal(size=(5, 6)).astype(np.float32)), ("ok_3d", np.zeros((3, 4, 5), np.int16)),
        ("ok_rgb", np.zeros((8, 9, 3), np.uint8)), ("nan", nan), ("inf", np.full((3, 3), np.inf)),
        ("object", np.array([{"a": 1}], dtype=object)), ("strings", np.array([["a", "b"]])),
        ("complex", np.zeros((3, 3), np.complex64)), ("structured", np.zeros(3, [("a", "<i4")])),
        ("zero_d", np.float32(3.0)), ("zero_d_array", np.array(3.0)), ("one_d", np.arange(5)),
        ("four_d", np.zeros((2, 2, 2, 2))), ("empty", np.zeros((0, 4))),
        ("broadcast_bomb", np.broadcast_to(np.float32(0), (100000, 100000))),
        ("broadcast_bomb_3d", np.broadcast_to(np.uint8(0), (4000, 4000, 4000))),
        ("datetime", np.zeros((2, 2), "M8[D]")), ("bool", np.ones((3, 3), bool)),
        ("pil_ok", Image.fromarray(np.zeros((4, 5), np.uint8))), ("pil_truncated", truncated), ("pil_bomb", big),
        ("pil_cmyk", Image.new("CMYK", (3, 3))), ("pil_i16", Image.fromarray(np.zeros((3, 3), np.uint16))),
        ("none", None), ("int", 5), ("dict", {"a": 1}), ("bytes", b"\x89PNG"), ("list", [[1, 2], [3, 4]]),
        ("float", 1.5), ("set", {1, 2}), ("empty_str", ""), ("nul_path", "a\x00b.png"),
    ]


def build_corpus(root: Path) -> dict[str, list[Case]]:
    """Every generated case by category, written under ``root``."""
    rng = np.random.default_rng(SEED)
    groups = [_pil_cases(rng), _dicom_cases(rng), _dicom_tag_cases(rng), _series_cases(rng), _nifti_cases(rng),
              _npy_cases(rng), _zip_cases(rng), _random_cases(rng), _wrong_type_cases(rng), _bomb_cases()]
    corpus: dict[str, list[Case]] = {}
    for group in groups:
        for case in group:
            folder = root / case.category / f"{len(corpus.get(case.category, [])):04d}"
            folder.mkdir(parents=True)
            case.path = folder / case.name
            if case.data is not None:
                case.path.write_bytes(case.data)
            else:
                case.path.mkdir()
                for name, data in case.files.items():
                    (case.path / name).write_bytes(data)
            corpus.setdefault(case.category, []).append(case)
    return corpus


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[str, list[Case]]:
    return build_corpus(tmp_path_factory.mktemp("fuzz"))


# --------------------------------------------------------------------------------- the checks


def _valid_array(out: Any, ndims: tuple[int, ...], dtype: Any = np.float32) -> str | None:
    if not isinstance(out, np.ndarray):
        return f"returned {type(out).__name__}, not an array"
    if out.dtype != dtype:
        return f"returned dtype {out.dtype}, expected {np.dtype(dtype)}"
    if out.ndim not in ndims or out.size == 0:
        return f"returned shape {out.shape}"
    if out.dtype.kind == "f" and not np.isfinite(out).all():
        return "returned NaN / infinite values"
    return None


def _check_image(out: Any) -> str | None:
    return _valid_array(out, (2,))


def _check_mask(out: Any) -> str | None:
    return _valid_array(out, (2,), bool)


def _check_volume(out: Any) -> str | None:
    if not (isinstance(out, tuple) and len(out) == 2 and isinstance(out[1], VolumeMeta)):
        return f"returned {type(out).__name__}, not (volume, VolumeMeta)"
    return _valid_array(out[0], (3,))


def _check_study(out: Any) -> str | None:
    if not isinstance(out, Study):
        return f"returned {type(out).__name__}, not a Study"
    problem = _valid_array(out.array, (2, 3))
    if problem is None and out.kind != ("image" if out.array.ndim == 2 else "volume"):
        problem = f"kind {out.kind!r} for shape {out.array.shape}"
    return problem


def _check_bool(out: Any) -> str | None:
    return None if isinstance(out, bool) else f"returned {type(out).__name__}, not a bool"


@dataclass
class Tally:
    """What happened: calls, successes, typed errors, problems (escapes, slow calls, bad output)."""

    calls: int = 0
    ok: int = 0
    refused: int = 0
    problems: list[str] = field(default_factory=list)
    slowest: tuple[float, str] = (0.0, "")


def _attempt(tally: Tally, label: str, fn: Callable[..., Any], args: tuple[Any, ...], check: Callable[[Any], str | None],
             case: Case | None = None, name_in_error: str | None = None) -> bool:
    """Call ``fn(*args, **case.kwargs)`` and record what happened; True where it returned."""
    tally.calls += 1
    kwargs = dict(case.kwargs) if case is not None and fn in (read_volume, study_from_bytes) else {}
    t0 = time.perf_counter()
    try:
        out = fn(*args, **kwargs)
    except ChestdxError as e:
        dt = time.perf_counter() - t0
        tally.refused += 1
        text = str(e)
        if name_in_error is not None and name_in_error not in text:
            tally.problems.append(f"{label}: the error does not name {name_in_error!r}: {text[:200]}")
        if fn is study_from_bytes and ("chestdx-upload-" in text or "chestdx-zip-" in text
                                       or (isinstance(e, DataError) and e.path != args[1])):
            tally.problems.append(f"{label}: the error names a temporary file: {text[:200]}")
        if case is not None and case.must_read:
            tally.problems.append(f"{label}: a valid seed was refused: {text[:200]}")
        slice_read = case is not None and case.slice_ok and fn in (read_image, read_mask)
        if case is not None and case.match and not slice_read and not re.search(case.match, text):
            tally.problems.append(f"{label}: the refusal does not match {case.match!r}: {text[:200]}")
        result = False
    except BaseException as e:  # noqa: BLE001 - exactly what must not happen
        dt = time.perf_counter() - t0
        if isinstance(e, (KeyboardInterrupt, SystemExit, pytest.fail.Exception)):  # e.g. pytest-timeout
            raise
        tally.problems.append(f"{label}: ESCAPED {type(e).__name__}: {str(e)[:200]}")
        result = False
    else:
        dt = time.perf_counter() - t0
        problem = check(out)
        if problem is not None:
            tally.problems.append(f"{label}: {problem}")
        elif case is not None and case.must_refuse and not (case.slice_ok and fn in (read_image, read_mask)):
            tally.problems.append(f"{label}: a bomb was read instead of refused")
        else:
            tally.ok += 1
        result = True
    if dt > MAX_SECONDS:
        tally.problems.append(f"{label}: took {dt:.1f} s (limit {MAX_SECONDS} s)")
    if dt > tally.slowest[0]:
        tally.slowest = (dt, label)
    return result


def _run_file_case(tally: Tally, case: Case, with_mask: bool) -> None:
    p = case.path
    assert p is not None
    label = f"{case.category}/{case.name}"
    is_zip = case.name.endswith(".zip")
    # read_image cannot read a zip (an unsupported file type): no promise either way
    _attempt(tally, f"{label} read_image", read_image, (p,), _check_image, None if is_zip else case, p.name)
    if with_mask and not is_zip:
        _attempt(tally, f"{label} read_mask", read_mask, (p,), _check_mask, case, p.name)
    is_vol = [False]

    def check_is_volume(out: Any) -> str | None:
        is_vol[0] = out is True
        return _check_bool(out)

    _attempt(tally, f"{label} is_volume_input", is_volume_input, (p,), check_is_volume)
    # read_volume refuses 2D images: the case's promises hold only for volumes
    _attempt(tally, f"{label} read_volume", read_volume, (p,), _check_volume, case if is_vol[0] else None, p.name)
    _attempt(tally, f"{label} load_study", load_study, (p,), _check_study, case, p.name)
    upload = f"user {case.name}"
    if case.name.endswith(".gif"):  # read from a path, but not an upload type of the service
        case = Case(case.category, case.name, case.data, must_refuse=case.must_refuse, match=case.match)
    _attempt(tally, f"{label} study_from_bytes", study_from_bytes, (case.data, upload), _check_study, case, upload)


def _run_folder_case(tally: Tally, case: Case) -> None:
    p = case.path
    assert p is not None
    label = f"{case.category}/{case.name}"
    _attempt(tally, f"{label} read_volume", read_volume, (p,), _check_volume, case, p.name)
    _attempt(tally, f"{label} load_study", load_study, (p,), _check_study, case, p.name)

    def check_list(out: Any) -> str | None:
        ok = isinstance(out, list) and all(isinstance(x, str) for x in out)
        return None if ok else f"returned {out!r}"

    _attempt(tally, f"{label} expand_inputs", expand_inputs, ([p],), check_list)


def _run_category(corpus: dict[str, list[Case]], category: str) -> Tally:
    tally = Tally()
    for i, case in enumerate(corpus[category]):
        if case.data is None:
            _run_folder_case(tally, case)
        else:
            _run_file_case(tally, case, with_mask=i % 3 == 0)
    print(f"\n{category}: {len(corpus[category])} inputs, {tally.calls} calls, {tally.ok} read, "
          f"{tally.refused} refused with a ChestdxError; slowest {tally.slowest[0] * 1000:.0f} ms "
          f"({tally.slowest[1]})")
    return tally


def _assert_clean(tally: Tally) -> None:
    assert tally.calls > 0
    assert not tally.problems, f"{len(tally.problems)} problems:\n" + "\n".join(tally.problems[:40])


# ------------------------------------------------------------------------------------ the tests


@pytest.mark.timeout(60)
@pytest.mark.parametrize("category", ["pil", "dicom", "dicom_tags", "dicom_series", "nifti", "npy", "zip", "random",
                                      "wrong_type", "bomb"])
def test_fuzz_category(corpus, category):
    """Every input of the category through every reader: a valid array or a ChestdxError, fast."""
    tally = _run_category(corpus, category)
    _assert_clean(tally)
    assert tally.refused > 0  # the corpus does hold hostile inputs
    if category != "bomb":
        assert tally.ok > 0  # and valid seeds, which must read


@pytest.mark.timeout(30)
def test_fuzz_in_memory_inputs():
    """``load_study`` on arrays, PIL images and other objects: a Study or a ChestdxError."""
    tally = Tally()
    for name, obj in _memory_cases():
        must = Case("memory", name, must_read=name.startswith("ok_") or name in ("pil_ok", "pil_cmyk", "pil_i16",
                                                                                 "bool"),
                    must_refuse="bomb" in name)
        _attempt(tally, f"memory/{name}", load_study, (obj,), _check_study, must)
    _assert_clean(tally)
    assert tally.ok >= 7 and tally.refused >= 20


@pytest.mark.timeout(30)
def test_fuzz_expand_inputs(tmp_path):
    """``expand_inputs`` on odd arguments and folders: a list of paths or a ChestdxError."""
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "a.dcm").write_bytes(bytes(8192))
    (tmp_path / "junk" / "b.png").write_bytes(b"not a png")
    (tmp_path / "nested" / "deeper").mkdir(parents=True)
    (tmp_path / "nested" / "deeper" / "x.zip").write_bytes(b"PK\x03\x04junk")
    (tmp_path / "empty").mkdir()
    (tmp_path / "loop").mkdir()
    (tmp_path / "loop" / "self").symlink_to(tmp_path / "loop")
    (tmp_path / "f.png").write_bytes(_png(np.zeros((3, 3), np.uint8)))
    args: list[Any] = [[tmp_path / "junk"], [tmp_path / "nested"], [tmp_path / "empty"], [tmp_path / "missing"],
                       str(tmp_path / "f.png"), tmp_path / "f.png", [5], [None], 5, None, [[tmp_path]], [b"x"],
                       [tmp_path / "loop"], [str(tmp_path / "f.png") + "\x00"], [""]]
    assert len(args) == N_EXPAND
    tally = Tally()

    def check_list(out: Any) -> str | None:
        ok = isinstance(out, list) and all(isinstance(x, str) for x in out)
        return None if ok else f"returned {out!r}"

    for i, a in enumerate(args):
        _attempt(tally, f"expand/{i} {a!r}", expand_inputs, (a,), check_list)
    _assert_clean(tally)
    assert tally.ok >= 3 and tally.refused >= 5


_RSS_SCRIPT = textwrap.dedent("""
    import json, resource, sys, time
    from pathlib import Path
    import chestdx

    # chestdx.predict's __init__ is lazy: the readers alone load, so the baseline is theirs
    from chestdx.predict.inputs import load_study, study_from_bytes
    from chestdx.errors import ChestdxError

    def peak_rss():
        try:  # VmHWM, reset below through clear_refs where the kernel allows it
            for line in open("/proc/self/status"):
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
        except OSError:
            pass
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    for f in sorted(Path(sys.argv[1]).iterdir()):  # load every reader's lazy imports and plugins first
        load_study(f)
        study_from_bytes(f.read_bytes(), f.name)
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")  # reset the peak to the current RSS
        reset = True
    except OSError:
        reset = False
    base = peak_rss()
    out = {}
    for f in sorted(Path(sys.argv[2]).iterdir()):
        data = f.read_bytes()
        for label, call in (("file", lambda: load_study(f)), ("upload", lambda: study_from_bytes(data, f.name))):
            t0 = time.perf_counter()
            try:
                call()
                outcome = "read"
            except ChestdxError as e:
                outcome = "refused: " + str(e)[:300]
            except BaseException as e:
                outcome = f"ESCAPED {type(e).__name__}: {e}"
            out[f"{f.name} {label}"] = [outcome, time.perf_counter() - t0]
        del data
    print(json.dumps({"growth": peak_rss() - base, "base": base, "reset": reset, "results": out}))
""")


@pytest.mark.timeout(60)
def test_bombs_bounded_rss(corpus, tmp_path):
    """In a fresh process: every bomb, as a file and as an upload, is refused, the PNG bomb in
    milliseconds, and the peak RSS grows by less than 100 MB over all of them."""
    bombs = tmp_path / "bombs"
    warm = tmp_path / "warm"
    bombs.mkdir()
    warm.mkdir()
    for case in corpus["bomb"]:
        if not case.kwargs:  # read with the default limits
            (bombs / case.name).write_bytes(case.data or b"")
    for category in ("pil", "dicom", "nifti", "npy", "zip"):
        for case in corpus[category]:
            if case.must_read and case.data is not None and not case.name.endswith(".gif"):
                (warm / f"{category}_{case.name}").write_bytes(case.data)
    src = Path(__file__).resolve().parents[2] / "src"
    proc = subprocess.run([sys.executable, "-c", _RSS_SCRIPT, str(warm), str(bombs)], capture_output=True,
                          text=True, timeout=55, env={**os.environ, "PYTHONPATH": str(src)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    results = report["results"]
    assert len(results) == 2 * len(list(bombs.iterdir()))
    for key, (outcome, seconds) in results.items():
        assert outcome.startswith("refused"), f"{key}: {outcome}"
        assert seconds < MAX_SECONDS, f"{key}: {seconds:.1f} s"
    for key in ("rgba_50000x3500.png file", "rgba_50000x3500.png upload"):
        outcome, seconds = results[key]
        assert "175,000,000 pixels" in outcome and "67,108,864" in outcome, outcome
        assert seconds < 0.5, f"{key}: {seconds * 1000:.0f} ms"
    growth_mb = report["growth"] / 1024**2
    print(f"\nbombs: {len(results)} reads refused; peak RSS grew by {growth_mb:.1f} MB over "
          f"{report['base'] / 1024**2:.0f} MB (peak {'reset' if report['reset'] else 'not reset'} before); "
          f"slowest {max(s for _, s in results.values()) * 1000:.0f} ms")
    assert report["growth"] < MAX_RSS_GROWTH, f"peak RSS grew by {growth_mb:.0f} MB"


def test_fuzz_counts(corpus):
    """The corpus is as large as promised; prints the count of inputs per category (``-s``)."""
    counts = Counter({category: len(cases) for category, cases in corpus.items()})
    counts["memory"] = len(_memory_cases())
    counts["expand_inputs"] = N_EXPAND
    total = sum(counts.values())
    print("\nfuzz inputs per category: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
          + f"; total {total}")
    assert total >= MIN_INPUTS
    assert all(counts[c] >= 8 for c in counts), counts
