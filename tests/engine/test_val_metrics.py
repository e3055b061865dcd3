"""Validation metrics as torchmetrics module metrics (chestdx.engine.val_metrics).

The values must be those the engine logged before (Python lists + a functional AUROC, reproduced
here as ``_reference``), to the bit on one process; under DDP the states of every rank are
gathered before scoring (checked by driving torchmetrics' own sync path with a fake gather).
"""

from __future__ import annotations

import math
import warnings

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader
from torchmetrics.functional.classification import binary_auroc, multiclass_auroc
from torchmetrics.utilities import dim_zero_cat

from chestdx.config import load_recipe
from chestdx.engine.task import ChestTask
from chestdx.engine.val_metrics import WeightedMean, validation_metrics
from tests.conftest import TINY


def _reference(probs: torch.Tensor, labels: torch.Tensor, k: int) -> tuple[float, float]:
    """val_acc / val_auc of the whole epoch at once (macro AUC over the classes in the labels)."""
    acc = float((probs.argmax(1) == labels).float().mean())
    if len(torch.unique(labels)) < 2:
        return acc, float("nan")
    if k == 2:
        return acc, float(binary_auroc(probs[:, 1], labels))
    per_class = multiclass_auroc(probs, labels, num_classes=k, average=None)  # (K,)
    present = torch.bincount(labels, minlength=k) > 0  # a class missing from the labels is left out
    return acc, float(per_class[present].mean())


def _data(k: int, n: int, labels: str, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    probs = torch.softmax(torch.randn(n, k, generator=g) * 2, 1)
    if labels == "all":
        y = torch.arange(n) % k
        y = y[torch.randperm(n, generator=g)]
    elif labels == "one":
        y = torch.full((n,), 1)
    else:  # "missing": classes 0 and 1 only, class 2.. never occurs
        y = torch.randint(0, 2, (n,), generator=g)
    return probs, y


def _same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == b


@pytest.mark.parametrize("k", [2, 3, 4])
@pytest.mark.parametrize("labels", ["all", "one", "missing"])
def test_batch_by_batch_equals_the_whole_epoch(k, labels):
    probs, y = _data(k, 37, labels)
    m = validation_metrics(k)
    for i in range(0, 37, 5):  # uneven last batch
        m.update(probs[i:i + 5], y[i:i + 5])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchmetrics: "no positive samples" for a missing class
        out = m.compute()
        acc, auc = _reference(probs, y, k)
    assert float(out["val_acc"]) == acc  # bit for bit
    assert _same(float(out["val_auc"]), auc), (float(out["val_auc"]), auc)
    if labels == "one":
        assert math.isnan(float(out["val_auc"]))  # undefined, not torchmetrics' 0 / 0.5
    else:
        assert 0.0 <= float(out["val_auc"]) <= 1.0
    m.reset()
    m.update(probs[:4], y[:4])  # reset really empties the states
    assert float(m.compute()["val_acc"]) == _reference(probs[:4], y[:4], k)[0]


def test_known_values():
    """Hand-computed: 2 of 4 right; AUC of class 1 = 3/4 (pairs (0.9,0.2) (0.9,0.6) (0.4,0.2) won, (0.4,0.6) lost)."""
    probs = torch.tensor([[0.1, 0.9], [0.8, 0.2], [0.6, 0.4], [0.4, 0.6]])
    y = torch.tensor([1, 0, 1, 0])
    m = validation_metrics(2)
    m.update(probs[:1], y[:1])
    m.update(probs[1:], y[1:])
    out = m.compute()
    assert float(out["val_acc"]) == pytest.approx(0.5)  # rows 0, 1 right; 2 (0.6 vs 0.4) and 3 wrong
    assert float(out["val_auc"]) == pytest.approx(0.75)


def _fake_ddp(rank0, rank1):
    """Make ``rank0.compute()`` gather its states with ``rank1``'s, as ``gather_all_tensors`` does."""
    sent: list[torch.Tensor] = []
    rank1.sync(dist_sync_fn=lambda x, group=None: sent.append(x) or [x], distributed_available=lambda: True)
    rank1.unsync()
    rank0.dist_sync_fn = lambda x, group=None: [x, sent.pop(0)]
    rank0.distributed_available_fn = lambda: True


@pytest.mark.parametrize("k", [2, 3])
def test_states_are_gathered_across_ranks(k):
    """Each rank sees half the validation set; both score the whole set after the gather."""
    probs, y = _data(k, 40, "all", seed=3)
    ranks = [validation_metrics(k), validation_metrics(k)]
    for i in range(0, 40, 4):  # DistributedSampler-style interleaved shards
        ranks[(i // 4) % 2].update(probs[i:i + 4], y[i:i + 4])
    order = torch.cat([torch.arange(i, i + 4) for r in (0, 1) for i in range(0, 40, 4) if (i // 4) % 2 == r])
    for name in ("val_acc", "val_auc"):
        _fake_ddp(ranks[0][name], ranks[1][name])
    out = ranks[0].compute()
    acc, auc = _reference(probs[order], y[order], k)
    assert float(out["val_acc"]) == acc
    assert float(out["val_auc"]) == auc
    alone = _reference(probs[order[:20]], y[order[:20]], k)  # what one rank scored before
    assert (float(out["val_acc"]), float(out["val_auc"])) != alone


def test_what_ddp_needs():
    """States reduce by sum / concatenation, are synced once in compute(), not on every step, and
    are not persistent (a checkpoint holds no metric state: old runs load strictly)."""
    for k in (2, 3):
        m = validation_metrics(k)
        for metric in (m["val_acc"], m["val_auc"]):
            assert metric.dist_sync_on_step is False and metric.sync_on_compute is True
            assert not any(metric._persistent.values())
        assert set(m["val_acc"]._reductions) == {"tp", "fp", "tn", "fn"}
        assert all(fx is dim_zero_cat for fx in m["val_auc"]._reductions.values())
    task = ChestTask(load_recipe("demo", TINY))
    assert not [key for key in task.state_dict() if "val_" in key]
    w = WeightedMean()
    assert all(fx is dim_zero_cat for fx in w._reductions.values()) and not any(w._persistent.values())


def test_weighted_mean_matches_the_stacked_sum():
    values = [torch.tensor(0.3), torch.tensor(1.7), torch.tensor(2.25)]
    ns = [4, 4, 3]
    w = WeightedMean()
    with pytest.warns(UserWarning, match="before the ``update``"):
        assert float(w.compute()) == 0.0  # nothing validated
    for v, n in zip(values, ns, strict=True):
        w.update(v, n)
    ref = torch.stack([v * n for v, n in zip(values, ns, strict=True)]).sum() / torch.stack(
        [torch.tensor(float(n)) for n in ns]).sum()
    assert float(w.compute()) == float(ref)
    assert float(w.compute()) == pytest.approx((0.3 * 4 + 1.7 * 4 + 2.25 * 3) / 11)
    rank0, rank1 = WeightedMean(), WeightedMean()
    for v, n in zip(values, ns, strict=True):
        rank0.update(v, n)
    rank1.update(torch.tensor(10.0), 1)
    _fake_ddp(rank0, rank1)
    assert float(rank0.compute()) == pytest.approx((0.3 * 4 + 1.7 * 4 + 2.25 * 3 + 10.0) / 12)


def _validate(task: ChestTask, loader: DataLoader) -> dict[str, float]:
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return trainer.validate(task, dataloaders=loader, verbose=False)[0]


@pytest.mark.parametrize("one_class", [False, True])
def test_chest_task_logs_the_epoch_figures(one_class):
    """A Lightning validation loop over 3 batches logs the whole-epoch val_acc / val_auc."""
    torch.manual_seed(0)
    task = ChestTask(load_recipe("demo", TINY)).eval()
    k = task.recipe.data.num_classes
    images = torch.randn(20, 1, 32, 32)
    labels = torch.full((20,), 2) if one_class else torch.arange(20) % k
    items = [{"image": images[i], "label": labels[i]} for i in range(20)]
    logged = _validate(task, DataLoader(items, batch_size=8))
    with torch.no_grad():
        probs = task.model(images).probs
    acc, auc = _reference(probs, labels, k)
    assert logged["val_acc"] == pytest.approx(acc, abs=1e-6)
    assert _same(logged["val_auc"], auc) or logged["val_auc"] == pytest.approx(auc, abs=1e-6)
    assert math.isnan(logged["val_auc"]) == one_class
    again = _validate(task, DataLoader(items[:8], batch_size=8))  # the states were reset
    assert again["val_acc"] == pytest.approx(_reference(probs[:8], labels[:8], k)[0], abs=1e-6)


def test_two_process_ddp_scores_the_whole_validation_set():
    """``strategy="ddp_spawn"``, 2 CPU processes (gloo): each rank validates every other item
    (DistributedSampler), and the logged val_acc / val_auc are those of all items, as on one process.
    The labels are made so that rank 0's own half is all right and rank 1's all wrong: a rank-local
    figure would be 1.0 on rank 0, the whole set's is 0.5. (About 25 s: two processes start.)"""
    torch.manual_seed(0)
    task = ChestTask(load_recipe("demo", TINY)).eval()
    k = task.recipe.data.num_classes
    images = torch.randn(16, 1, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        pred = task.model(images).probs.argmax(1)
    labels = torch.where(torch.arange(16) % 2 == 0, pred, (pred + 1) % k)  # even items right, odd wrong
    items = [{"image": images[i], "label": labels[i]} for i in range(16)]
    loader = DataLoader(items, batch_size=4)
    one = _validate(task, loader)
    assert one["val_acc"] == pytest.approx(0.5)
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp_spawn", logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        two = trainer.validate(task, dataloaders=loader, verbose=False)[0]
    assert two["val_acc"] == pytest.approx(one["val_acc"], abs=1e-6)
    assert two["val_auc"] == pytest.approx(one["val_auc"], abs=1e-6)
    assert two["val_loss"] == pytest.approx(one["val_loss"], abs=1e-6)
