"""CAM-directed voting: flip logic on a stub whose probability depends on how many cells are masked."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from chestdx.errors import ConfigError
from chestdx.explain import VotingResult, cam_voting
from chestdx.explain.voting import cell_scores
from chestdx.models import ChestModel, ModelOutput, ResNetMLP

CELL = 8
SIZE = 32  # 4 x 4 grid of 8 x 8 cells
# CAM ranking of the 16 cells: distinct values, highest first at these raster positions
CELL_VALUES = torch.tensor([5, 16, 2, 9, 12, 1, 14, 7, 3, 11, 6, 15, 8, 4, 13, 10], dtype=torch.float32)


class MaskCountStub(ChestModel):
    """Image ``i`` is constant ``i + 1``; masked pixels are 0.

    Its positive probability is ``tables[i][n]`` where ``n`` is the number of fully masked cells.
    Features are the image times a per-cell ramp, so the CAM ranks cells as ``CELL_VALUES`` does.
    """

    def __init__(self, tables: list[list[float]]):
        super().__init__()
        self.num_classes, self.in_chans, self.feature_dim = 2, 1, 1
        self.tables = tables
        ramp = CELL_VALUES.view(4, 4).repeat_interleave(CELL, 0).repeat_interleave(CELL, 1)
        self.register_buffer("ramp", ramp)
        self.seen: list[Tensor] = []
        self.w = torch.tensor([[1.0], [2.0]])

    def forward_features(self, x: Tensor) -> Tensor:
        return x * self.ramp

    def forward_head(self, features: Tensor) -> tuple[Tensor, Tensor]:
        emb = features.mean(dim=(-2, -1))
        return emb @ self.w.T, emb

    def forward(self, x: Tensor) -> ModelOutput:
        self.seen.append(x.clone())
        feats = self.forward_features(x)
        _, emb = self.forward_head(feats)
        masked = (x[:, 0] == 0).view(-1, 4, CELL, 4, CELL).all(dim=4).all(dim=2).sum(dim=(1, 2))
        ident = x.flatten(1).amax(dim=1).round().long() - 1
        p = torch.tensor([self.tables[int(i)][int(n)] for i, n in zip(ident, masked, strict=True)])
        logit = torch.log(p / (1 - p))
        logits = torch.stack([torch.zeros_like(logit), logit], dim=1)
        return ModelOutput(logits=logits, features=feats, embedding=emb)


def images(n: int) -> Tensor:
    return torch.arange(1, n + 1, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 1, SIZE, SIZE).clone()


def test_flip_logic_by_hand():
    tables = [
        # positive original (0.9): supporting copies have p >= 0.2; three of five do not -> flip to 0
        [0.9, 0.5, 0.3, 0.1999, 0.1, 0.05],
        # positive original: only two of five below 0.2 -> kept
        [0.9, 0.5, 0.3, 0.2001, 0.1, 0.05],
        # negative original (0.4): supporting copies have p < 0.8; three of five do not -> flip to 1
        [0.4, 0.6, 0.8001, 0.85, 0.9, 0.7],
        # negative original: two of five at or above 0.8 -> kept
        [0.4, 0.6, 0.7999, 0.85, 0.9, 0.7],
    ]
    m = MaskCountStub(tables)
    res = cam_voting(m, images(4), k=5, theta=0.2, cell=CELL)
    assert isinstance(res, VotingResult)
    assert res.flipped.tolist() == [True, False, True, False]
    assert res.label.tolist() == [0, 1, 1, 0]
    assert res.original_label.tolist() == [1, 1, 0, 0]
    assert res.probs.shape == (4, 5)
    expected = torch.tensor([t[1:] for t in tables])
    assert torch.allclose(res.probs, expected, atol=1e-6)
    assert res.support[0].tolist() == [True, True, False, False, False]
    assert res.support[2].tolist() == [True, False, False, False, True]


def test_exactly_half_does_not_flip():
    # k = 4, two copies against: "more than half" is needed
    m = MaskCountStub([[0.9, 0.5, 0.5, 0.1, 0.1]])
    res = cam_voting(m, images(1), k=4, theta=0.2, cell=CELL)
    assert res.flipped.tolist() == [False] and res.label.tolist() == [1]


def test_copies_mask_the_highest_cam_cells_in_order():
    m = MaskCountStub([[0.9] * 17])
    cam_voting(m, images(1), k=6, theta=0.2, cell=CELL, chunk=4)
    copies = torch.cat(m.seen[1:])  # first call is the original
    assert copies.shape[0] == 6
    order = torch.argsort(CELL_VALUES, descending=True)
    for i in range(6):
        masked = (copies[i, 0] == 0).view(4, CELL, 4, CELL).all(dim=3).all(dim=1).flatten()
        assert set(masked.nonzero().flatten().tolist()) == set(order[: i + 1].tolist())
        # masked pixels are exactly whole cells
        assert int((copies[i, 0] == 0).sum()) == (i + 1) * CELL * CELL


def test_chunking_does_not_change_the_result():
    tables = [[0.9, 0.5, 0.3, 0.1, 0.1, 0.1, 0.1, 0.6], [0.3, 0.9, 0.9, 0.9, 0.1, 0.1, 0.9, 0.1]]
    a = cam_voting(MaskCountStub(tables), images(2), k=7, cell=CELL, chunk=3)
    b = cam_voting(MaskCountStub(tables), images(2), k=7, cell=CELL, chunk=64)
    assert torch.equal(a.label, b.label) and torch.allclose(a.probs, b.probs)


def test_cell_scores_sum_patches():
    m = torch.arange(36, dtype=torch.float32).view(1, 6, 6)
    s = cell_scores(m, 4)  # 2 x 2 grid, edge cells partly outside
    assert s.shape == (1, 2, 2)
    assert s[0, 0, 0] == m[0, :4, :4].sum() and s[0, 1, 1] == m[0, 4:, 4:].sum()
    assert math.isclose(float(s.sum()), float(m.sum()))


def test_three_classes_generalisation():
    class ThreeClass(MaskCountStub):
        def forward(self, x: Tensor) -> ModelOutput:
            out = super().forward(x)
            masked = (x[:, 0] == 0).view(-1, 4, CELL, 4, CELL).all(dim=4).all(dim=2).sum(dim=(1, 2))
            # original: class 2 with 0.7; copies: class 2 drops to 0.1 from the 2nd copy, class 0 rises
            p2 = torch.where(masked >= 2, 0.1, 0.7)
            p0 = torch.where(masked >= 2, 0.6, 0.2)
            probs = torch.stack([p0, 1 - p0 - p2, p2], dim=1)
            return ModelOutput(logits=probs.log(), features=out.features, embedding=out.embedding)

    m = ThreeClass([[0.5] * 17])
    m.num_classes = 3
    m.w = torch.tensor([[1.0], [2.0], [3.0]])
    res = cam_voting(m, images(1), k=3, theta=0.2, cell=CELL)
    assert res.original_label.tolist() == [2]
    assert res.flipped.tolist() == [True] and res.label.tolist() == [0]
    assert res.class_probs.shape == (1, 3, 3)


def test_real_model_shapes():
    torch.manual_seed(0)
    m = ResNetMLP(2, "resnet18", head_hidden=16).eval()
    res = cam_voting(m, torch.randn(2, 1, 64, 64), k=5, chunk=4)
    assert res.label.shape == (2,) and res.flipped.shape == (2,) and res.probs.shape == (2, 5)
    assert res.flipped.dtype == torch.bool
    assert ((res.probs >= 0) & (res.probs <= 1)).all()
    assert all(p.grad is None for p in m.parameters())


def test_bad_k():
    with pytest.raises(ConfigError, match="k must"):
        cam_voting(MaskCountStub([[0.9] * 17]), images(1), k=17, cell=CELL)


def test_cam_voting_procedure_maps_the_probabilities():
    """The procedure's probabilities: a flipped binary answer is mirrored (p -> 1 - p: the voted label
    is the argmax, AUC still sees a graded score), an unflipped one is the whole image's; the details
    hold the whole image's and each copy's positive probability (Figure 2)."""
    from chestdx.engine.infer import run_procedure

    tables = [[0.9, 0.5, 0.3, 0.1999, 0.1, 0.05], [0.9, 0.5, 0.3, 0.2001, 0.1, 0.05],
              [0.4, 0.6, 0.8001, 0.85, 0.9, 0.7], [0.4, 0.6, 0.7999, 0.85, 0.9, 0.7]]
    res = run_procedure("cam_voting", {"k": 5, "theta": 0.2, "cell": CELL}, MaskCountStub(tables), images(4))
    expected = torch.tensor([[0.9, 0.1], [0.1, 0.9], [0.4, 0.6], [0.6, 0.4]])
    torch.testing.assert_close(res.probs, expected, atol=1e-5, rtol=0)
    assert res.details["flipped"].tolist() == [True, False, True, False]
    torch.testing.assert_close(res.details["vote_original"], torch.tensor([0.9, 0.9, 0.4, 0.4]), atol=1e-5, rtol=0)
    torch.testing.assert_close(res.details["vote_probs"], torch.tensor([t[1:] for t in tables]), atol=1e-5, rtol=0)
