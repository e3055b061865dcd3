"""``chestdx report MODEL INPUT --out report.html``: one self-contained HTML page per study.

The page holds the answer and its probabilities, the image with the heatmap overlaid (for a scan: a
slice browser with each slice's heatmap and answer, and a strip of the per-slice probability of the
scan's class), the procedure's details (CAM voting flips) and the model card, with the warning that
the model is not a medical device. Images are embedded as base64 PNG; the page loads nothing from
anywhere and works offline.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from chestdx.evaluate.report import REPORT_CSS, image_data_uri, markdown_to_html, write_html
from chestdx.explain.overlays import overlay_answer
from chestdx.predict.bundle import card_markdown

if TYPE_CHECKING:
    from chestdx.predict.predictor import Predictor

__all__ = ["study_report", "write_study_report"]

_EXTRA_CSS = """
.warn{background:#fff3cd;border:1px solid #e0b000;padding:.6em 1em;border-radius:4px;font-weight:600}
.answer{font-size:1.5em;margin:.3em 0}
.bars td{padding:2px 8px}.bar{background:#4a78c2;height:12px;display:inline-block}
.pair{display:flex;gap:16px;flex-wrap:wrap}.pair figure{margin:0}
.pair img,.browser img{width:320px;image-rendering:pixelated;border:1px solid #ccc}
.strip{display:flex;align-items:flex-end;height:60px;gap:1px;margin:.5em 0;max-width:640px}
.strip div{background:#c24a4a;flex:1;min-width:2px;cursor:pointer}
.strip div.cur{background:#222}
"""


def _bars(probs: dict[str, float]) -> str:
    rows = "".join(f"<tr><td>{html.escape(c)}</td><td>{100 * p:.1f}%</td>"
                   f'<td><span class="bar" style="width:{int(200 * p)}px"></span></td></tr>'
                   for c, p in probs.items())
    return f'<table class="bars">{rows}</table>'


def _image_section(answer: Any) -> str:
    if answer.image is None:
        return "<p>(no heatmap computed)</p>"
    return ('<div class="pair">'
            f'<figure><img src="{image_data_uri(answer.image)}" alt="input"><figcaption>input (preprocessed)</figcaption></figure>'
            f'<figure><img src="{image_data_uri(overlay_answer(answer))}" alt="heatmap overlay">'
            f"<figcaption>heatmap ({html.escape(_kind_name(answer))}) overlay{html.escape(_grid_note(answer))}: "
            "where the model looked</figcaption>"
            "</figure></div>")


def _kind_name(answer: Any) -> str:
    kind = answer.details.get("heatmap_kind", "cam")
    return {"cam": "CAM", "att2": "ATT2 attention", "attention": "MAG-SD attention", "layercam8": "LayerCAM, stride 8",
            "layercam16": "LayerCAM, stride 16", "gradcam16": "Grad-CAM, stride 16",
            "fused16": "CAM x Grad-CAM, stride 16", "occlusion": "occlusion (probability drop per covered cell)",
            "intgrad": "integrated gradients per cell"}.get(kind, kind)


def _grid_note(answer: Any) -> str:
    grid = answer.details.get("heatmap_grid")
    return f" ({grid[0]} x {grid[1]} grid, upsampled)" if grid else ""


def _browser(answer: Any, class_names: list[str]) -> str:
    k = class_names.index(answer.label)
    weights = answer.slice_weights
    frames, overlays, labels, score = [], [], [], []
    for j, (i, s) in enumerate(zip(answer.slice_indices, answer.slices, strict=True)):
        frames.append(image_data_uri(s.image) if s.image is not None else "")
        overlays.append(image_data_uri(overlay_answer(s)) if s.heatmap is not None else "")
        if weights is not None:
            labels.append(f"slice {i}: attention weight {weights[j]:.3f}")
        else:
            labels.append(f"slice {i}: {s.label} ({100 * max(s.probs.values()):.0f}%)")
        score.append(float(list(s.probs.values())[k]))
    if weights is not None:  # a sequence model: the strip shows how much each slice counted
        top = max(weights) or 1.0
        score = [w / top for w in weights]
    start = int(np.argmax(score))
    what = ("The sequence model's attention weight of each slice" if weights is not None
            else f"Per-slice probability of <b>{html.escape(answer.label)}</b>")
    strip = "".join(f'<div data-i="{j}" title="{html.escape(labels[j])}" style="height:{max(2, int(60 * v))}px">'
                    "</div>" for j, v in enumerate(score))
    data = json.dumps({"frames": frames, "overlays": overlays, "labels": labels})
    return f"""
<p>{what} (click a bar; the slider moves through the {len(score)} answered slices):</p>
<div class="strip" id="strip">{strip}</div>
<input type="range" id="slider" min="0" max="{len(score) - 1}" value="{start}" style="width:640px">
<p id="slice-label"></p>
<div class="pair browser"><figure><img id="frame" alt="slice"><figcaption>slice</figcaption></figure>
<figure><img id="overlay" alt="slice heatmap"><figcaption>heatmap overlay</figcaption></figure></div>
<script>
const D = {data};
const slider = document.getElementById('slider');
const bars = document.querySelectorAll('#strip div');
function show(i) {{
  slider.value = i;
  document.getElementById('frame').src = D.frames[i];
  document.getElementById('overlay').src = D.overlays[i];
  document.getElementById('slice-label').textContent = D.labels[i];
  bars.forEach((b, j) => b.classList.toggle('cur', j === +i));
}}
slider.addEventListener('input', e => show(+e.target.value));
bars.forEach(b => b.addEventListener('click', () => show(+b.dataset.i)));
show({start});
</script>"""


def study_report(answer: Any, card: dict[str, Any], class_names: list[str]) -> str:
    """The HTML page of one answered study (a :class:`~chestdx.predict.predictor.Prediction` or
    :class:`~chestdx.predict.predictor.ScanPrediction`)."""
    is_scan = getattr(answer, "slices", None) is not None
    name = html.escape(Path(str(answer.source).rstrip("/")).name or str(answer.source))
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             '<meta name="viewport" content="width=device-width, initial-scale=1">',
             f"<title>chestdx report: {name}</title><style>{REPORT_CSS}{_EXTRA_CSS}</style></head><body>",
             f"<h1>chestdx report: {name}</h1>",
             '<p class="warn">Research software, NOT a medical device. This answer must not be used to make or '
             "change a diagnosis or a treatment decision; a qualified reader must check it against the images.</p>",
             "<section><h2>Answer</h2>",
             f'<p class="answer" id="answer">{html.escape(answer.label)}</p>', _bars(answer.probs)]
    warning = getattr(answer, "warning", None) or getattr(answer, "details", {}).get("warning")
    if warning:
        parts.append(f'<p class="warn" id="ood">Warning: {html.escape(warning)}</p>')
    if is_scan:
        parts.append(f"<p>Scan of {len(answer.slices)} answered slices; scan answer = {answer.aggregation} of the "
                     "slice answers.</p>")
    details = {k: v for k, v in answer.to_json().items()
               if k not in ("file", "kind", "label", "probs", "slice_probs", "slice_labels", "slice_indices")}
    if details:
        parts.append(f"<details><summary>details</summary><pre>{html.escape(json.dumps(details, indent=1, default=str))}"
                     "</pre></details>")
    parts.append("</section><section><h2>Where the model looked</h2>")
    parts.append(_browser(answer, class_names) if is_scan else _image_section(answer))
    parts.append("</section><section>")
    parts.append(markdown_to_html(card_markdown(card).replace("# Model card", "## Model card", 1)))
    parts.append("</section></body></html>")
    return "\n".join(parts) + "\n"


def write_study_report(predictor: Predictor, x: Any, out: str | Path, aggregate: str = "mean",
                       max_slices: int | None = 64, series_uid: str | None = None) -> Path:
    """Answer ``x`` with ``predictor`` (heatmaps on) and write its report page atomically.

    Raises:
        DataError: unreadable input (names it).
    """
    answer = predictor.predict(x, heatmap=True, aggregate=aggregate, max_slices=max_slices, series_uid=series_uid)
    return write_html(out, study_report(answer, predictor.card, predictor.class_names))
