"""The page served at ``GET /``: drop a file, see the answer and the heatmap overlay.

Plain HTML and JavaScript (no framework, nothing loaded from elsewhere): the file goes to
``POST /predict`` and the JSON answer is shown as a label, probability bars and the overlay image.
"""

from __future__ import annotations

import html
from typing import Any

from chestdx.evaluate.report import REPORT_CSS

__all__ = ["page_html"]

_PAGE_CSS = """
#drop{border:3px dashed #4a78c2;border-radius:8px;padding:2.5em;text-align:center;cursor:pointer;max-width:560px}
#drop.over{background:#eef3fb}
.warn{background:#fff3cd;border:1px solid #e0b000;padding:.6em 1em;border-radius:4px}
#ood:empty{display:none}
#answer{font-size:1.6em;font-weight:600;margin:.4em 0}
#error{color:#b00020;font-weight:600}
.bar{background:#4a78c2;height:12px;display:inline-block}
#overlay{width:360px;image-rendering:pixelated;border:1px solid #ccc;display:none}
"""

_SCRIPT = """
const drop = document.getElementById('drop');
const input = document.getElementById('file');
const status = document.getElementById('status');
function reset() {
  document.getElementById('answer').textContent = '';
  document.getElementById('error').textContent = '';
  document.getElementById('ood').textContent = '';
  document.getElementById('probs').innerHTML = '';
  document.getElementById('overlay').style.display = 'none';
}
async function send(file) {
  reset();
  status.textContent = 'Answering ' + file.name + ' ...';
  const body = new FormData();
  body.append('file', file);
  let res;
  try {
    res = await fetch('predict', {method: 'POST', body});
  } catch (e) {
    status.textContent = '';
    document.getElementById('error').textContent = 'Network error: ' + e;
    return;
  }
  const data = await res.json().catch(() => ({detail: res.statusText}));
  status.textContent = '';
  if (!res.ok) {
    document.getElementById('error').textContent = 'Error ' + res.status + ': ' + (data.detail || '');
    return;
  }
  document.getElementById('answer').textContent = data.label;
  document.getElementById('ood').textContent = data.warning ? 'Warning: ' + data.warning : '';
  const rows = Object.entries(data.probs).map(([c, p]) =>
    '<tr><td>' + c + '</td><td>' + (100 * p).toFixed(1) + '%</td><td><span class="bar" style="width:' +
    Math.round(200 * p) + 'px"></span></td></tr>');
  document.getElementById('probs').innerHTML = rows.join('');
  if (data.overlay) {
    const img = document.getElementById('overlay');
    img.src = data.overlay;
    img.style.display = 'block';
  }
  if (data.kind === 'volume') {
    status.textContent = 'Scan: ' + data.n_slices + ' slices answered (' + data.aggregation +
      '); overlay of slice ' + data.overlay_slice;
  }
}
drop.addEventListener('click', () => input.click());
input.addEventListener('change', () => { if (input.files.length) send(input.files[0]); });
drop.addEventListener('dragover', e => { e.preventDefault(); drop.classList.add('over'); });
drop.addEventListener('dragleave', () => drop.classList.remove('over'));
drop.addEventListener('drop', e => {
  e.preventDefault();
  drop.classList.remove('over');
  if (e.dataTransfer.files.length) send(e.dataTransfer.files[0]);
});
"""


def page_html(card: dict[str, Any], max_upload_mb: float) -> str:
    """The upload page for the model described by ``card``."""
    name = html.escape(str(card.get("name") or "model"))
    classes = html.escape(", ".join(card.get("class_names") or []))
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>chestdx: {name}</title><style>{REPORT_CSS}{_PAGE_CSS}</style></head>
<body>
<h1>chestdx: {name}</h1>
<p class="warn">Research software, <b>not a medical device</b>: not for diagnosis or treatment decisions.</p>
<p>Classes: {classes}. <a href="model">Model card</a> &middot; <a href="docs">API</a></p>
<div id="drop" role="button" tabindex="0">Drop a chest image here (PNG, JPEG, DICOM, NIfTI, or a zip of a
DICOM series, up to {max_upload_mb:g} MB), or click to choose one.</div>
<input type="file" id="file" style="display:none">
<p id="status"></p>
<p id="error"></p>
<p id="answer"></p>
<p id="ood" class="warn"></p>
<table id="probs"></table>
<img id="overlay" alt="heatmap overlay">
<script>{_SCRIPT}</script>
</body></html>
"""
