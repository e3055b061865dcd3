"""Figure 3 of cam-snapmix-cpe-tta-covid-ct.txt: sensitivity of CAM-directed voting to k and theta.

The masked copies are computed once with ``k_max = max(ks)``; every (k, theta) is then re-voted on
the first k copies with :func:`~chestdx.explain.voting.binary_votes` (copy i masks the i
highest-CAM cells whatever k is, so this equals running the vote with each k separately).

Writes ``OUT/voting_sweep.csv`` (parameter, value, site, accuracy, f1) and ``OUT/voting_sweep.png``
(panel a: k at the recipe's theta; panel b: theta at the recipe's k).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from chestdx.data.datasets import SliceDataset
from chestdx.engine.device import model_device
from chestdx.engine.run import Run
from chestdx.errors import ConfigError, DatasetError
from chestdx.explain.voting import binary_votes, cam_voting
from chestdx.utils import atomic_open


def accuracy_f1(y: np.ndarray, pred: np.ndarray) -> tuple[float, float]:
    """Accuracy and the positive class's (class 1) F1 of binary labels and predictions ``(N,)``.

    Computed by :func:`chestdx.evaluate.metrics.label_metrics`, the one implementation behind the
    figures ``chestdx evaluate`` reports (``accuracy`` and ``positive.f1`` of
    :func:`~chestdx.evaluate.metrics.classification_metrics`): a zero division gives 0, so a
    setting that never predicts COVID has F1 0.
    """
    from chestdx.evaluate.metrics import label_metrics

    m = label_metrics(y, pred, 2)
    return m["accuracy"], m["f1"][1]


#: Figure 3 of the paper: theta in {0.1, ..., 0.5} (Sec. 4, "all tested values"), and k over a range
#: whose best values lie "between k = 30 and k = 35" (peak at 31), every k of 30-35 included.
PAPER_KS: tuple[int, ...] = (1, 5, 10, 15, 20, 25, 30, 31, 32, 33, 34, 35)
PAPER_THETAS: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5)


def sweep_voting(run: Run | str | Path, ks: Sequence[int] = PAPER_KS,
                 thetas: Sequence[float] = PAPER_THETAS, split: str = "test",
                 out: str | Path | None = None, cell: int | None = None,
                 speed: str | None = None, device: Any = "cpu") -> list[dict[str, Any]]:
    """Accuracy and F1 (positive class) of the voted labels for each k and each theta, per site.

    ``speed``: execution mode setting (see :mod:`chestdx.engine.precision`); default the recipe's
    ``inference.speed``. ``device``: where the model runs (a :class:`torch.device` or an
    accelerator, :func:`chestdx.engine.device.resolve_device`).

    Returns:
        the rows written to ``voting_sweep.csv``; ``k = 0`` / the first row is the unvoted model.

    Raises:
        ConfigError: not a binary task, or a device this machine does not have.
        DatasetError: empty split.
    """
    run = run if isinstance(run, Run) else Run(run)
    if len(run.class_names) != 2:
        raise ConfigError("the voting sweep is defined for the binary task (COVID vs non-COVID)")
    params = dict(run.recipe.inference.params)
    k_ref, theta_ref = int(params.get("k", 31)), float(params.get("theta", 0.2))
    cell = cell or int(params.get("cell", 8))
    samples = [s for s in run.samples() if s.split == split]
    if not samples:
        raise DatasetError(f"{run.path}: no '{split}' images")
    model = run.load_model(device=device)
    on = model_device(model)
    ds = SliceDataset(samples, run.recipe.data, train=False, site_names=run.site_names or None, cache=False)
    k_max = max([*ks, k_ref])
    p0, pc, ys, sites = [], [], [], []
    from chestdx.engine.precision import InferenceSpeed

    control = InferenceSpeed(model, speed or run.recipe.inference.speed, on)
    for batch in DataLoader(ds, batch_size=16):
        with control.run(batch["image"].to(on)) as images:
            res = cam_voting(model, images, k=k_max, theta=theta_ref, cell=cell)
        p0.append(res.original_prob.cpu())
        pc.append(res.probs.cpu())
        ys.append(batch["label"])
        sites.append(batch["site"])
    p_orig, p_copies = torch.cat(p0), torch.cat(pc)
    y, site = torch.cat(ys).numpy(), torch.cat(sites).numpy()
    names = run.site_names or ["all"]
    groups = {"all sites": np.ones_like(y, dtype=bool)}
    if len(set(site.tolist())) > 1:
        groups.update({names[i]: site == i for i in sorted(set(site.tolist()))})
    rows: list[dict[str, Any]] = []
    settings = [("none", 0, theta_ref)] + [("k", k, theta_ref) for k in ks] + \
        [("theta", k_ref, t) for t in thetas]
    for param, k, theta in settings:
        orig = (p_orig > 0.5).long()
        if k == 0:
            pred = orig
        else:
            _, flipped = binary_votes(p_orig, p_copies[:, :k], theta)
            pred = torch.where(flipped, 1 - orig, orig)
        pred_np = pred.numpy()
        for gname, m in groups.items():
            acc, f1 = accuracy_f1(y[m], pred_np[m])
            rows.append({"parameter": param, "k": k, "theta": theta, "site": gname,
                         "accuracy": acc, "f1": f1})
    out = Path(out) if out else run.path / "voting-sweep"
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
    with atomic_open(out / "voting_sweep.csv", "w", encoding="utf-8", newline="") as f:
        f.write(buf.getvalue())
    _plot(rows, groups, k_ref, theta_ref, out / "voting_sweep.png")
    return rows


def _plot(rows: list[dict[str, Any]], groups: dict[str, Any], k_ref: int, theta_ref: float, path: Path) -> None:
    from chestdx.evaluate.plots import new_figure, save_figure

    fig = new_figure(10, 4)
    for ax, param, xlabel in ((fig.add_subplot(1, 2, 1), "k", "k (masked copies)"),
                              (fig.add_subplot(1, 2, 2), "theta", "theta (certainty threshold)")):
        for g in groups:
            sel = [r for r in rows if r["parameter"] == param and r["site"] == g]
            xs = [r[param] for r in sel]
            ax.plot(xs, [100 * r["accuracy"] for r in sel], "o-", label=f"{g} accuracy")
            ax.plot(xs, [100 * r["f1"] for r in sel], "s--", label=f"{g} F1")
            base = next(r for r in rows if r["parameter"] == "none" and r["site"] == g)
            ax.axhline(100 * base["accuracy"], color="grey", lw=0.8, ls=":")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("%")
        fixed = f"theta = {theta_ref:g}" if param == "k" else f"k = {k_ref}"
        ax.set_title(f"({'a' if param == 'k' else 'b'}) {fixed}")
        ax.legend(fontsize=7)
    save_figure(fig, path)
