"""The run folder: what ``chestdx train`` writes and every later command reads.

::

    RUN/
      recipe.yaml          the resolved recipe (overrides applied); --resume continues it
      samples.csv          every image with its label, site, patient and split (the exact split used)
      data.json            sources, class names, site names, counts per split/class/site
      checkpoints/best.ckpt  the best epoch by trainer.monitor: weights and callback states, no optimiser state
      checkpoints/last.ckpt  written after every epoch, optimiser included: --resume loses at most the running epoch
      history.json         per-epoch metrics (kept across --resume); logs/version_N/metrics.csv
                           Lightning's CSV log of each (resumed) session
      train.json           wall time, epochs run, best score, chestdx version, resume record
      resume_overrides.json  only after ``--resume --force``: each resume's changed settings (old/new)

Checkpoints are only read with ``weights_only=True`` (:mod:`chestdx.engine.safe_load`): one whose
pickle would build other objects is refused, never unpickled.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from chestdx.config import Recipe, load_recipe
from chestdx.errors import RunError
from chestdx.utils import atomic_open, write_json, write_text

SAMPLE_FIELDS = ["path", "label", "patient_id", "site", "mask", "box", "split"]


def write_samples(path: Path, samples: Sequence[Any]) -> None:
    """Write sample records as CSV (atomically); ``box`` as ``x0 y0 x1 y1``."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=SAMPLE_FIELDS)
    w.writeheader()
    for s in samples:
        d = asdict(s)
        d["box"] = " ".join(str(int(v)) for v in d["box"]) if d.get("box") else ""
        d["mask"] = d.get("mask") or ""
        w.writerow({k: d.get(k, "") for k in SAMPLE_FIELDS})
    with atomic_open(path, "w", encoding="utf-8", newline="") as f:
        f.write(buf.getvalue())


def read_samples(path: Path) -> list[Any]:
    """Read what :func:`write_samples` wrote."""
    from chestdx.data.layouts import Sample

    out = []
    with open(path, encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f):
            box = tuple(int(v) for v in row["box"].split()) if row.get("box") else None
            out.append(Sample(path=row["path"], label=int(row["label"]), patient_id=row["patient_id"],
                              site=row["site"], mask=row["mask"] or None, box=box,  # type: ignore[arg-type]
                              split=row["split"] or None))
    return out


def save_run_start(out: Path, recipe: Recipe, samples: Sequence[Any], sources: Sequence[str],
                   summary: dict[str, Any], site_names: Sequence[str]) -> None:
    """Write the recipe, the samples and the data summary before training starts."""
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "recipe.yaml", recipe.to_yaml())
    write_samples(out / "samples.csv", samples)
    write_json(out / "data.json", {
        "sources": [str(Path(s).resolve()) for s in sources],
        "class_names": list(recipe.data.class_names),
        "site_names": list(site_names),
        "counts": summary,
    })


#: Run-folder file: split -> the ``metrics.json`` of the run's latest evaluation on its own split
#: (``chestdx evaluate`` writes ``RUN/eval-SPLIT`` by default, anywhere with ``--out``).
EVALUATIONS = "evaluations.json"


def record_evaluation(run_path: Path, split: str, metrics: Path) -> None:
    """Remember in ``RUN/evaluations.json`` that ``metrics`` holds the latest evaluation on ``split``."""
    f = run_path / EVALUATIONS
    try:
        known = json.loads(f.read_text()) if f.is_file() else {}
    except (OSError, ValueError):
        known = {}
    known = known if isinstance(known, dict) else {}
    known[split] = str(metrics.resolve())
    write_json(f, known)


def latest_evaluation(run_path: Path, split: str = "test") -> Path | None:
    """The ``metrics.json`` of the run's latest evaluation on its own ``split``: the one
    ``evaluations.json`` records, else ``RUN/eval-SPLIT/metrics.json`` (runs evaluated before the
    record existed), else None."""
    try:
        where = json.loads((run_path / EVALUATIONS).read_text()).get(split)
        if where and Path(where).is_file():
            return Path(where)
    except (OSError, ValueError, AttributeError):
        pass
    default = run_path / f"eval-{split}" / "metrics.json"
    return default if default.is_file() else None


class Run:
    """A trained run, loaded from its folder.

    Attributes:
        path: the run folder.
        recipe: the resolved recipe.
        data: the contents of ``data.json``.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not (self.path / "recipe.yaml").is_file():
            raise RunError(f"{self.path}: not a chestdx run folder (no recipe.yaml); "
                           "make one with `chestdx train RECIPE --data ... --out RUN`")
        self.recipe = load_recipe(self.path / "recipe.yaml")
        self.data = json.loads((self.path / "data.json").read_text()) if (self.path / "data.json").is_file() else {}

    @property
    def class_names(self) -> list[str]:
        return list(self.recipe.data.class_names)

    @property
    def site_names(self) -> list[str]:
        return list(self.data.get("site_names", []))

    def checkpoint(self, which: str = "best") -> Path:
        """Path of ``best`` (falls back to ``last``) or ``last``.

        Raises:
            RunError: no checkpoint yet.
        """
        ckdir = self.path / "checkpoints"
        for name in ([which, "last"] if which == "best" else [which]):
            p = ckdir / f"{name}.ckpt"
            if p.is_file():
                return p
        raise RunError(f"{self.path}: no checkpoint in {ckdir} (was training interrupted before the "
                       "first epoch ended? run `chestdx train ... --resume`)")

    def samples(self) -> list[Any]:
        p = self.path / "samples.csv"
        if not p.is_file():
            raise RunError(f"{self.path}: samples.csv missing; pass --data to say which images to use")
        return read_samples(p)

    def load_task(self, which: str = "best", device: Any = "cpu", ckpt: dict[str, Any] | None = None) -> Any:
        """The trained :class:`~chestdx.engine.task.ChestTask` in eval mode (from ``ckpt`` when the
        caller has already read the checkpoint, with :func:`~chestdx.engine.checkpointing.read_checkpoint`).

        Args:
            device: where the task goes: a :class:`torch.device` or an accelerator (``cpu``,
                ``cuda``, ``auto``, ...; :func:`chestdx.engine.device.resolve_device`). The
                checkpoint is always read onto the CPU, then the weights are moved.

        Raises:
            RunError: no checkpoint, or one that holds non-tensor objects (refused unread: loading it
                could run code) or is damaged.
            ConfigError: a device this machine does not have.
        """
        from chestdx.engine.checkpointing import read_checkpoint
        from chestdx.engine.device import resolve_device
        from chestdx.engine.task import ChestTask

        dev = resolve_device(device, flag="device")
        if ckpt is None:
            ckpt = read_checkpoint(self.checkpoint(which), map_location="cpu")
        hp = ckpt.get("hyper_parameters", {})
        task = ChestTask(self.recipe, hp.get("class_counts"), hp.get("in_chans", 1))
        task.load_state_dict(ckpt["state_dict"])
        task.eval()
        return task if dev.type == "cpu" else task.to(dev)

    def load_model(self, which: str = "best", device: Any = "cpu") -> Any:
        """The trained :class:`~chestdx.models.ChestModel` in eval mode, on ``device`` (see :meth:`load_task`)."""
        return self.load_task(which, device=device).model
