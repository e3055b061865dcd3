"""The model card says which heatmap the model draws and how it scored on the test set's lesion masks."""

from __future__ import annotations

from chestdx.predict.bundle import card_markdown, model_card


def _fig(v: float, lo: float, hi: float) -> dict[str, float]:
    return {"value": v, "ci_low": lo, "ci_high": hi}


def _info(loc):
    overall = {"accuracy": _fig(0.875, 0.806, 0.931), "macro_f1": _fig(0.87, 0.8, 0.93),
               "macro_auc": _fig(0.97, 0.95, 0.99)}
    return {"name": "demo", "task": "classification", "class_names": ["a", "b"],
            "metrics": {"split": "test", "n_images": 144, "overall": overall, "heatmap_localisation": loc}}


def test_card_states_heatmap_scores():
    s = {k: _fig(0.156, 0.062, 0.26) for k in ("pointing", "energy", "iou", "dice")}
    p = {k: _fig(0.062, 0.021, 0.125) for k in ("pointing", "energy", "iou", "dice")}
    loc = {"default_kind": "layercam8", "n_images": 96, "maps": {"layercam8": s, "cam": s},
           "references": {"centre_prior": p, "body": p}}
    card = model_card(_info(loc))
    assert card["heatmap"]["kind"] == "layercam8" and card["heatmap"]["pointing"] == "0.156 [0.062, 0.260]"
    assert card["heatmap"]["centre_prior"]["pointing"] == "0.062 [0.021, 0.125]"
    md = card_markdown(card)
    assert "Heatmap `layercam8` against the lesion masks of 96 test images: pointing game 0.156 [0.062, 0.260] " \
           "(centre prior 0.062 [0.021, 0.125])" in md


def test_card_without_heatmap_scores():
    card = model_card(_info(None))
    assert card["heatmap"] is None and "Heatmap `" not in card_markdown(card)
