"""Patient-level splits: train/val/test and k-fold, stratified by class, deterministic for a seed.

A patient is the pair ``(site, patient_id)``; all images of one patient always land in the same
split. Stratification uses each patient's majority label (ties -> the smaller class index).
Fractions are met by **image count** (not patient count): patients are shuffled within their
stratum and each goes to the split in whose fraction band the middle of its images falls, so a
patient with many slices does not tip a small split over.
"""

from __future__ import annotations

import warnings
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from chestdx.data.layouts import SPLITS, Sample
from chestdx.errors import ConfigError, DatasetError, PatientLeakError

__all__ = ["patient_key", "patient_split", "kfold_split", "kfold_train_val_test", "split_counts",
           "find_patient_leaks", "find_encoder_leaks", "check_patient_leaks"]

PatientKey = tuple[str, str]


def patient_key(sample: Sample) -> PatientKey:
    """``(site, patient_id)``: the unit that splits never separate."""
    return (sample.site, sample.patient_id)


def _group(samples: Sequence[Sample]) -> dict[PatientKey, list[int]]:
    groups: dict[PatientKey, list[int]] = defaultdict(list)
    for i, s in enumerate(samples):
        groups[patient_key(s)].append(i)
    return groups


def _majority_label(samples: Sequence[Sample], idx: Sequence[int]) -> int:
    counts = Counter(samples[i].label for i in idx)
    return min(counts, key=lambda lab: (-counts[lab], lab))


def _strata(samples: Sequence[Sample], groups: dict[PatientKey, list[int]], keys: Sequence[PatientKey],
            stratify: bool) -> dict[int, list[PatientKey]]:
    strata: dict[int, list[PatientKey]] = defaultdict(list)
    for k in sorted(keys):
        strata[_majority_label(samples, groups[k]) if stratify else 0].append(k)
    return strata


def patient_split(samples: Sequence[Sample], fractions: Sequence[float] = (0.7, 0.15, 0.15), seed: int = 0,
                  stratify: bool = True, overwrite: bool = False) -> list[Sample]:
    """Assign ``train`` / ``val`` / ``test`` by patient.

    Only samples whose ``split`` is None are filled, unless ``overwrite``. A patient that already
    has some split-assigned images gets the same split for its unassigned ones (its most common
    split); the fractions then apply to the patients with no assigned image at all.

    Args:
        samples: the records; not modified.
        fractions: ``(train, val, test)`` or ``(train, test)`` fractions of images, summing to 1.
        seed: the same seed (and the same set of samples, in any order) gives the same split.
        stratify: balance each patient's majority label across splits.
        overwrite: re-split every sample, ignoring existing splits.

    Returns:
        Copies of ``samples`` (same order) with ``split`` set.

    Raises:
        ConfigError: bad fractions.
    """
    fr = [float(f) for f in fractions]
    if len(fr) not in (2, 3) or any(not np.isfinite(f) or f < 0 for f in fr) or abs(sum(fr) - 1.0) > 1e-6:
        raise ConfigError(f"fractions must be 2 or 3 non-negative numbers summing to 1 "
                          f"(train, val, test) or (train, test); got {tuple(fractions)}")
    names = SPLITS if len(fr) == 3 else ("train", "test")
    out = [replace(s, split=None) if overwrite else replace(s) for s in samples]
    groups = _group(out)
    free: list[PatientKey] = []
    for key, idx in groups.items():
        fixed: Counter[str] = Counter(sp for i in idx if (sp := out[i].split) is not None)
        if not fixed:
            free.append(key)
            continue
        if len(fixed) > 1:
            warnings.warn(f"patient {key[1]!r} (site {key[0]!r}) already straddles splits {sorted(fixed)}; "
                          "left as given", UserWarning, stacklevel=2)
        majority = min(fixed, key=lambda name: (-fixed[name], name))
        for i in idx:
            if out[i].split is None:
                out[i].split = majority

    rng = np.random.default_rng(seed)
    bounds = np.cumsum(fr)
    for _label, keys in sorted(_strata(out, groups, free, stratify).items()):
        order = [keys[j] for j in rng.permutation(len(keys))]
        sizes = np.array([len(groups[k]) for k in order], dtype=float)
        total = sizes.sum()
        mids = (np.cumsum(sizes) - sizes / 2.0) / total
        for key, mid in zip(order, mids, strict=True):
            which = int(np.searchsorted(bounds, mid, side="right"))
            which = min(which, len(names) - 1)
            while fr[which] == 0 and which > 0:  # a zero-fraction split never gets a patient
                which -= 1
            for i in groups[key]:
                out[i].split = names[which]
    return out


def kfold_split(samples: Sequence[Sample], k: int, fold: int, seed: int = 0, stratify: bool = True) -> list[Sample]:
    """Patient-grouped (stratified) k-fold: fold ``fold`` is ``test``, the rest ``train``.

    Every existing split is replaced. Within each stratum patients are shuffled with ``seed`` and
    each goes to the fold holding the fewest images of that stratum so far, so folds are balanced
    by image count and class. The same ``seed`` gives the same folds for every ``fold`` value, so
    the ``k`` calls partition the patients.

    Args:
        samples: the records; not modified.
        k: number of folds (>= 2).
        fold: which fold is the test fold, ``0 <= fold < k``.
        seed: shuffling seed.
        stratify: balance majority labels across folds.

    Returns:
        Copies of ``samples`` with ``split`` ``"train"`` or ``"test"``.

    Raises:
        ConfigError: bad ``k`` / ``fold``.
        DatasetError: fewer patients than folds.
    """
    if int(k) != k or k < 2:
        raise ConfigError(f"k must be an integer >= 2, got {k!r}")
    if int(fold) != fold or not 0 <= fold < k:
        raise ConfigError(f"fold must be in 0..{k - 1}, got {fold!r}")
    out = [replace(s) for s in samples]
    groups = _group(out)
    if len(groups) < k:
        raise DatasetError(f"only {len(groups)} patient(s); cannot make {k} patient-disjoint folds")
    rng = np.random.default_rng(seed)
    fold_total = np.zeros(k, dtype=int)
    for _label, keys in sorted(_strata(out, groups, list(groups), stratify).items()):
        order = [keys[j] for j in rng.permutation(len(keys))]
        # bigger patients first packs better; the shuffle breaks ties between equal sizes
        order.sort(key=lambda key: -len(groups[key]))
        in_stratum = np.zeros(k, dtype=int)
        for key in order:
            f = int(np.lexsort((np.arange(k), fold_total, in_stratum))[0])
            in_stratum[f] += len(groups[key])
            fold_total[f] += len(groups[key])
            for i in groups[key]:
                out[i].split = "test" if f == fold else "train"
    return out


def kfold_train_val_test(samples: Sequence[Sample], k: int, fold: int, seed: int = 0,
                         val_fraction: float = 0.15) -> list[Sample]:
    """Fold ``fold`` of a patient-grouped k-fold as ``test``; its training patients split again into
    ``train`` and ``val`` (``val_fraction`` of the images, patient-grouped, stratified) for model
    selection.

    Returns:
        Copies of ``samples`` with ``split`` ``train``, ``val`` or ``test``.

    Raises:
        ConfigError: bad ``k``, ``fold`` or ``val_fraction``; DatasetError: fewer patients than folds.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ConfigError(f"val_fraction must lie in (0, 1), got {val_fraction!r}")
    out = kfold_split(samples, k, fold, seed)
    train = [replace(s, split=None) for s in out if s.split == "train"]
    train = patient_split(train, (1.0 - val_fraction, val_fraction, 0.0), seed=seed)
    it = iter(train)
    return [next(it) if s.split == "train" else s for s in out]


def find_patient_leaks(samples: Sequence[Sample]) -> dict[PatientKey, list[str]]:
    """Patients whose images lie in more than one split: ``{(site, patient_id): [splits]}``."""
    seen: dict[PatientKey, set[str]] = defaultdict(set)
    for s in samples:
        if s.split is not None:
            seen[patient_key(s)].add(s.split)
    return {key: sorted(sp) for key, sp in seen.items() if len(sp) > 1}


def find_encoder_leaks(samples: Sequence[Sample], encoder_samples: Sequence[Sample]) -> dict[PatientKey, list[str]]:
    """Patients this run validates or tests on that its (frozen, pretrained) encoder saw.

    A sequence model on top of an ATT2 encoder trained on other splits of the same data is tested
    on patients the encoder was trained on when the two runs split differently (another seed).
    Seen: a ``test`` patient of this run in the encoder's ``train`` or ``val`` (trained on, or used
    to pick its checkpoint); a ``val`` patient of this run in the encoder's ``train``. Two runs that
    split alike (same data, seed and fractions) have none.

    Args:
        samples: this run's records.
        encoder_samples: the encoder run's records (its ``samples.csv``).

    Returns:
        ``{(site, patient_id): [this run's splits, e.g. "test"]}`` for each leaking patient.
    """
    enc_train = {patient_key(s) for s in encoder_samples if s.split == "train"}
    enc_seen = enc_train | {patient_key(s) for s in encoder_samples if s.split == "val"}
    out: dict[PatientKey, set[str]] = defaultdict(set)
    for s in samples:
        key = patient_key(s)
        if (s.split == "test" and key in enc_seen) or (s.split == "val" and key in enc_train):
            out[key].add(s.split)
    return {key: sorted(sp) for key, sp in sorted(out.items())}


def check_patient_leaks(samples: Sequence[Sample], *, encoder_samples: Sequence[Sample] | None = None,
                        encoder: str | None = None, allow: bool = False) -> dict[str, Any]:
    """The leakage guard every run passes when training starts (and its evaluation reports).

    Checks (1) that no patient's images lie in two splits of this run, (2) with ``encoder_samples``,
    that the encoder run did not see this run's test / val patients (:func:`find_encoder_leaks`).

    Args:
        samples: this run's records, splits assigned.
        encoder_samples: the encoder run's records, or None when the run has no trained encoder.
        encoder: where the encoder run is (named in the report and the error).
        allow: report leaks instead of refusing them (``data.allow_patient_leaks``).

    Returns:
        ``{"checked": True, "patients": n, "leaks_between_splits": n, "encoder": path or None,
        "encoder_checked": bool, "leaks_with_encoder": n, "leaking_patients": [up to 20 "site/patient"],
        "allowed": allow, "ok": no leak}``.

    Raises:
        PatientLeakError: a leak, unless ``allow``; the message names the patients and the way out.
    """
    within = find_patient_leaks(samples)
    with_enc = find_encoder_leaks(samples, encoder_samples) if encoder_samples is not None else {}
    names = [f"{k[0]}/{k[1]} ({', '.join(v)})" for k, v in within.items()]
    names += [f"{k[0]}/{k[1]} ({', '.join(v)} here, seen by the encoder)" for k, v in with_enc.items()]
    report: dict[str, Any] = {
        "checked": True,
        "patients": len({patient_key(s) for s in samples}),
        "leaks_between_splits": len(within),
        "encoder": encoder,
        "encoder_checked": encoder_samples is not None,
        "leaks_with_encoder": len(with_enc),
        "leaking_patients": names[:20],
        "allowed": bool(allow),
        "ok": not within and not with_enc,
    }
    if (within or with_enc) and not allow:
        parts = []
        if within:
            parts.append(f"{len(within)} patient(s) have images in more than one split")
        if with_enc:
            n_test = len({patient_key(s) for s in samples if s.split == "test"})
            parts.append(f"{len(with_enc)} patient(s) of this run's val/test ({sum('test' in v for v in with_enc.values())} "
                         f"of {n_test} test patients) are in the training or validation split of the encoder run "
                         f"{encoder}")
        fix = ("split by patient (give each patient one split in the manifest, or leave splits to chestdx)" if within
               else "split this run's data exactly as the encoder run did (train it on the same data with the "
                    "encoder's seed, `--seed N`), or train the encoder on this run's training patients only")
        raise PatientLeakError(
            "patient leak: " + "; ".join(parts) + f": {', '.join(names[:10])}" + (" ..." if len(names) > 10 else "")
            + f". The test figures would be optimistic. Fix: {fix}; or, knowingly, "
            "--set data.allow_patient_leaks=true (recorded in leakage.json and the evaluation report).")
    return report


def split_counts(samples: Sequence[Sample], class_names: Sequence[str] | None = None) -> dict[str, Any]:
    """Summary for logs and reports.

    Args:
        samples: the records.
        class_names: names for the class keys; default the integer labels.

    Returns:
        ``{"samples": n, "patients": n, "sites": {site: n}, "classes": {class: n},
        "splits": {split: {"samples": n, "patients": n, "classes": {class: n}, "sites": {site: n}}},
        "leaking_patients": n}`` where an unassigned split is ``"none"``. Keys are sorted
        (splits in train, val, test order).
    """
    def cname(label: int) -> str | int:
        if class_names is not None and 0 <= label < len(class_names):
            return class_names[label]
        return label

    def summary(items: Sequence[Sample]) -> dict[str, Any]:
        classes = Counter(s.label for s in items)
        sites = Counter(s.site for s in items)
        return {
            "samples": len(items),
            "patients": len({patient_key(s) for s in items}),
            "classes": {cname(c): classes[c] for c in sorted(classes)},
            "sites": {site: sites[site] for site in sorted(sites)},
        }

    by_split: dict[str, list[Sample]] = defaultdict(list)
    for s in samples:
        by_split[s.split or "none"].append(s)
    order = [sp for sp in SPLITS if sp in by_split] + sorted(sp for sp in by_split if sp not in SPLITS)
    out = summary(list(samples))
    out["splits"] = {sp: summary(by_split[sp]) for sp in order}
    out["leaking_patients"] = len(find_patient_leaks(samples))
    return out
