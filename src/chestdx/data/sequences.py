"""Slice sequences (COVIDx-SeqCT, resnet50-att2-bilstm-covidx-ct.txt Section II): scans grouped from
slice records, exactly ``L`` (16) slices taken uniformly from each, and a dataset of them.

Scan ids come from the file names (:func:`scan_id_of`): COVIDx-CT names ``NCP_96_1328_0032.png``
give the scan ``NCP_96_1328`` (class, patient, scan; :func:`~chestdx.data.layouts.parse_covidx_ids`);
other names give the stem before the last ``_`` (the phantom's ``<scan>_<k>.png``); a name without
``_`` is grouped by the patient id. Slices are ordered by the last number in their file name.

Uniform selection (:func:`uniform_indices`): slice ``i`` of ``L`` is
``round_half_up(i * (n - 1) / (L - 1))``, so the first and the last slice of the scan are always
taken and the rest are evenly spaced between them. The paper discards scans with fewer than 16
slices (``short="skip"``, the default); ``short="repeat"`` keeps them with the same formula, which
then repeats slices in order (nearest-neighbour resampling). Slices beyond the ``L`` chosen are not
used; the count of skipped scans is reported.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from chestdx.config import DataConfig
from chestdx.data.layouts import Sample, parse_covidx_ids
from chestdx.errors import ConfigError, DataError, DatasetError

__all__ = [
    "SequenceReport",
    "SequenceSample",
    "SequenceDataset",
    "build_sequences",
    "embed_slices",
    "group_scans",
    "scan_id_of",
    "slice_number",
    "uniform_indices",
]

_COVIDX_NAME = re.compile(r"^(NCP|CP|Normal)_[^_]+_[^_]+_", re.IGNORECASE)


def scan_id_of(sample: Sample) -> str:
    """The scan a slice belongs to: ``site/<scan from the file name>`` (see the module doc).

    The patient id of a sample already carries a ``site/`` prefix when it came through
    :func:`~chestdx.data.layouts.load_sources`; the scan id keeps the same prefix.
    """
    name = Path(sample.path).name
    pid = str(sample.patient_id)
    prefix = pid.split("/", 1)[0] + "/" if "/" in pid else ""
    if _COVIDX_NAME.match(name):
        return prefix + parse_covidx_ids(name)[1]
    stem = Path(name).stem
    if "_" in stem:
        return prefix + stem.rsplit("_", 1)[0]
    return pid


def slice_number(path: str) -> tuple[int, str]:
    """Sort key of a slice within its scan: the last integer in the file name (then the name)."""
    name = Path(path).name
    nums = re.findall(r"\d+", Path(name).stem)
    return (int(nums[-1]) if nums else -1, name)


def uniform_indices(n: int, length: int = 16) -> list[int]:
    """Indices of ``length`` slices taken uniformly from a scan of ``n``: first and last included.

    ``i -> floor(i * (n - 1) / (length - 1) + 1/2)`` in exact integer arithmetic. For ``n < length``
    the indices repeat (in order).

    Raises:
        ConfigError: ``n < 1`` or ``length < 1``.
    """
    if n < 1 or length < 1:
        raise ConfigError(f"uniform_indices needs n >= 1 and length >= 1, got n={n}, length={length}")
    if length == 1:
        return [(n - 1) // 2]
    den = 2 * (length - 1)
    return [(2 * i * (n - 1) + (length - 1)) // den for i in range(length)]


@dataclass
class SequenceSample:
    """One scan as a fixed-length slice sequence.

    Attributes:
        scan_id: the scan (``site/scan``).
        label: class index (every slice of a scan has it).
        patient_id, site, split: as the slices'.
        slices: the ``L`` chosen slice records, in order (repeats when padded).
        n_slices: slices the scan had.
        indices: positions of the chosen slices in the scan.
    """

    scan_id: str
    label: int
    patient_id: str
    site: str
    split: str | None
    slices: list[Sample]
    n_slices: int
    indices: list[int] = field(default_factory=list)

    @property
    def path(self) -> str:
        """The scan id (so prediction files name the scan where slice datasets name the file)."""
        return self.scan_id

    @property
    def mask(self) -> str | None:
        return next((s.mask for s in self.slices if s.mask), None)


@dataclass
class SequenceReport:
    """What :func:`build_sequences` did: scans seen, kept, skipped (too short) and padded."""

    scans: int = 0
    kept: int = 0
    skipped_short: int = 0
    padded: int = 0
    length: int = 16
    skipped_ids: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"scans": self.scans, "kept": self.kept, "skipped_short": self.skipped_short,
                "padded": self.padded, "length": self.length}


def group_scans(samples: Sequence[Sample]) -> dict[str, list[Sample]]:
    """Slices grouped by :func:`scan_id_of`, each group ordered by :func:`slice_number`.

    Raises:
        DatasetError: a scan whose slices disagree on label or split (all such scans listed).
    """
    groups: dict[str, list[Sample]] = {}
    for s in samples:
        groups.setdefault(scan_id_of(s), []).append(s)
    problems: list[DataError] = []
    for sid, group in groups.items():
        group.sort(key=lambda s: slice_number(s.path))
        if len({s.label for s in group}) > 1 or len({s.split for s in group}) > 1:
            problems.append(DataError(group[0].path, f"scan {sid!r} has slices with labels "
                                      f"{sorted({s.label for s in group})} / splits {sorted({str(s.split) for s in group})}"
                                      "; a scan must have one label and one split"))
    if problems:
        raise DatasetError(f"{len(problems)} scan(s) mix labels or splits", problems)
    return groups


def build_sequences(samples: Sequence[Sample], length: int = 16, short: str = "skip"
                    ) -> tuple[list[SequenceSample], SequenceReport]:
    """COVIDx-SeqCT: one sequence of exactly ``length`` slices per scan.

    Args:
        samples: slice records (any layout; grouped with :func:`group_scans`).
        length: slices per sequence (16 in the paper).
        short: ``"skip"`` scans with fewer slices (the paper) or ``"repeat"`` slices to fill them.

    Returns:
        the sequences (in scan order of first appearance) and a :class:`SequenceReport`.

    Raises:
        ConfigError: bad ``length`` or ``short``.
        DatasetError: mixed labels / splits within a scan.
    """
    if length < 1:
        raise ConfigError(f"sequence length must be >= 1, got {length}")
    if short not in ("skip", "repeat"):
        raise ConfigError(f"short scans: choose 'skip' or 'repeat', got {short!r}")
    report = SequenceReport(length=length)
    out: list[SequenceSample] = []
    for sid, group in group_scans(samples).items():
        report.scans += 1
        n = len(group)
        if n < length:
            if short == "skip":
                report.skipped_short += 1
                report.skipped_ids.append(sid)
                continue
            report.padded += 1
        idx = uniform_indices(n, length)
        first = group[0]
        out.append(SequenceSample(sid, first.label, first.patient_id, first.site, first.split,
                                  [group[i] for i in idx], n, idx))
        report.kept += 1
    return out, report


class SequenceDataset(torch.utils.data.Dataset):
    """Sequences of preprocessed slices; training augmentation acts on the whole sequence at once.

    Every distinct slice is read and preprocessed once (cached by an inner
    :class:`~chestdx.data.datasets.SliceDataset`); the random augmentation (one draw of flips,
    affine and blur per sequence, as the paper applies it "to the whole sequence") runs per item.

    Items: ``image (T, 1, S, S)``, ``lesion (T, 1, S, S)``, ``has_mask (T,)`` bool, ``label``,
    ``site`` and ``index`` (position in ``sequences``) long.

    With an ``encoder`` the slices are embedded once, up front (no augmentation, batches of
    ``batch_size``), and ``image`` is the embedding sequence ``(T, D)`` instead (no ``lesion``):
    the fast path for a frozen encoder when the images need no augmentation.

    Args:
        sequences: the records of :func:`build_sequences`.
        cfg: the recipe's data section.
        train: apply the augmentation (ignored with ``encoder``).
        site_names: ordered site names (index = ``site`` value).
        cache: cache preprocessed slices (default ``cfg.cache``).
        encoder: a frozen :class:`~chestdx.models.ChestModel` whose ``embedding`` is precomputed.
    """

    def __init__(self, sequences: Sequence[SequenceSample], cfg: DataConfig, train: bool = False,
                 site_names: Sequence[str] | None = None, cache: bool | None = None, encoder: Any = None):
        from chestdx.data.datasets import SliceDataset
        from chestdx.data.transforms import Augment

        self.sequences = list(sequences)
        self.site_names = list(site_names) if site_names else sorted({s.site for s in self.sequences})
        self._site_index = {n: i for i, n in enumerate(self.site_names)}
        unique: dict[str, int] = {}
        slices: list[Sample] = []
        self._rows: list[list[int]] = []
        for seq in self.sequences:
            row = []
            for s in seq.slices:
                if s.path not in unique:
                    unique[s.path] = len(slices)
                    slices.append(s)
                row.append(unique[s.path])
            self._rows.append(row)
        self.slices = SliceDataset(slices, cfg, train=False, site_names=self.site_names, cache=cache)
        self.augment = Augment(cfg.augment) if train and encoder is None else None
        self.embeddings: torch.Tensor | None = None
        if encoder is not None:
            self.embeddings = embed_slices(encoder, self.slices, cfg.batch_size)

    def __len__(self) -> int:
        return len(self.sequences)

    def __getitem__(self, i: int) -> dict[str, Any]:
        seq = self.sequences[i]
        if self.embeddings is not None:
            return {"image": self.embeddings[self._rows[i]],
                    "has_mask": torch.tensor([bool(s.mask) for s in seq.slices]),
                    "label": torch.tensor(seq.label, dtype=torch.long),
                    "site": torch.tensor(self._site_index.get(seq.site, 0), dtype=torch.long),
                    "index": torch.tensor(i, dtype=torch.long)}
        items = [self.slices[j] for j in self._rows[i]]
        image = torch.stack([it["image"] for it in items])  # (T, 1, S, S)
        lesion = torch.stack([it["lesion"] for it in items])
        if self.augment is not None:
            aug = self.augment({"image": image, "lesion": lesion})
            image, lesion = aug["image"], aug["lesion"]
        return {
            "image": image,
            "lesion": lesion,
            "has_mask": torch.stack([it["has_mask"] for it in items]),
            "label": torch.tensor(seq.label, dtype=torch.long),
            "site": torch.tensor(self._site_index.get(seq.site, 0), dtype=torch.long),
            "index": torch.tensor(i, dtype=torch.long),
        }


def embed_slices(encoder: Any, slices: Any, batch_size: int = 32) -> torch.Tensor:
    """Embeddings ``(N, D)`` of every item of a slice dataset by a frozen model (eval mode, no grad)."""
    from torch.utils.data import DataLoader

    encoder.eval()
    out = []
    with torch.no_grad():
        for batch in DataLoader(slices, batch_size=batch_size, shuffle=False):
            emb = encoder(batch["image"]).embedding
            if emb is None:
                raise ConfigError(f"the encoder {type(encoder).__name__} gives no embedding")
            out.append(emb.float())
    return torch.cat(out)
