"""Markdown tables, metrics files and a self-contained HTML report.

Number formats:

- :func:`metrics_markdown`: percent with one decimal and the interval, ``84.5 (81.2-87.9)``;
  ``n/a`` for an undefined figure (NaN / None); the value alone when its interval is undefined.
- :func:`seed_table`: mean and standard deviation over seeds / folds in percent with two decimals,
  ``95.90 +- 0.24`` (the separator is :data:`PLUS_MINUS`), as in the papers' tables.
"""

from __future__ import annotations

import base64
import html
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from chestdx.errors import DataError
from chestdx.evaluate.metrics import OVERALL_METRICS, PER_CLASS_METRICS, summarise_seeds
from chestdx.utils import as_float, write_json, write_text

__all__ = [
    "PLUS_MINUS",
    "REPORT_CSS",
    "format_figure",
    "html_report",
    "markdown_table",
    "markdown_to_html",
    "metrics_markdown",
    "seed_table",
    "write_html",
    "write_metrics",
]

#: Separator between mean and standard deviation in :func:`seed_table`.
PLUS_MINUS = "+-"

_LABELS = {
    "accuracy": "Accuracy",
    "precision": "Precision",
    "recall": "Recall",
    "sensitivity": "Sensitivity",
    "specificity": "Specificity",
    "f1": "F1",
    "auc": "AUC",
    "macro_precision": "Macro precision",
    "macro_recall": "Macro recall",
    "macro_specificity": "Macro specificity",
    "macro_f1": "Macro F1",
    "weighted_precision": "Weighted precision",
    "weighted_recall": "Weighted recall",
    "weighted_f1": "Weighted F1",
    "macro_auc": "Macro AUC",
}
_OVERALL_ROWS = OVERALL_METRICS
_CLASS_COLUMNS = PER_CLASS_METRICS


def _label(key: str) -> str:
    return _LABELS.get(key, key)


def _cell(text: Any) -> str:
    """Make a value safe inside a markdown table cell (pipes escaped, no line breaks)."""
    return str(text).replace("|", "\\|").replace("\r", " ").replace("\n", " ")


def _pct(value: Any) -> str:
    v = as_float(value)
    return "n/a" if math.isnan(v) else f"{100.0 * v:.1f}"


def format_figure(figure: Any) -> str:
    """``{"value": .845, "low": .812, "high": .879}`` -> ``"84.5 (81.2-87.9)"``; a plain number -> ``"84.5"``."""
    if isinstance(figure, Mapping):
        value = as_float(figure.get("value"))
        low, high = as_float(figure.get("low")), as_float(figure.get("high"))
    else:
        value, low, high = as_float(figure), math.nan, math.nan
    if math.isnan(value):
        return "n/a"
    if math.isnan(low) or math.isnan(high):
        return _pct(value)
    return f"{_pct(value)} ({_pct(low)}-{_pct(high)})"


def markdown_table(
    rows: Sequence[Mapping[str, Any]], columns: Sequence[str], float_format: str = "{:.4g}"
) -> str:
    """A GitHub-flavoured markdown table.

    Args:
        rows: one dict per row; a missing key or ``None`` gives an empty cell.
        columns: keys to show, in order; also the header.
        float_format: format of float cells (NaN is written ``n/a``).

    Returns:
        The table, lines joined by ``\\n``, ending with a newline. Pipes in cells are escaped.
    """

    def fmt(v: Any) -> str:
        if v is None:
            return ""
        if isinstance(v, (float, np.floating)):
            return "n/a" if math.isnan(float(v)) else float_format.format(float(v))
        return _cell(v)

    lines = [
        "| " + " | ".join(_cell(c) for c in columns) + " |",
        "|" + "|".join("---" for _ in columns) + "|",
    ]
    lines += ["| " + " | ".join(fmt(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def metrics_markdown(metrics: Mapping[str, Any], title: str | None = None) -> str:
    """A readable markdown summary of a :func:`~chestdx.evaluate.metrics.classification_metrics` dict.

    Layout: optional ``## title``; a line with N and the interval method; a line naming the
    resampling unit of the intervals (patient or case, from ``interval.unit``); a table of the overall
    figures (header ``Value (95% CI)``, or ``Value`` without a bootstrap) (those present, in the order accuracy, macro precision / recall / specificity, macro F1,
    weighted F1, macro AUC); for a binary task a line naming the positive class; a table with one row
    per class (precision, recall, specificity, F1, AUC, support); the confusion matrix.
    Figures are percent with one decimal and the interval: ``84.5 (81.2-87.9)``.
    """
    out: list[str] = []
    if title:
        out += [f"## {title}", ""]
    intro = []
    if "n" in metrics:
        intro.append(f"N = {metrics['n']} cases")
    interval = metrics.get("interval")
    value_header = "Value"
    if isinstance(interval, Mapping) and interval.get("n_boot"):
        ci = as_float(interval.get("ci", 0.95))
        intro.append(f"intervals: {100 * ci:g}% percentile bootstrap, {interval['n_boot']} resamples")
        value_header = f"Value ({100 * ci:g}% CI)"
    if intro:
        out += ["; ".join(intro) + ".", ""]
    if isinstance(interval, Mapping) and interval.get("n_boot") and interval.get("unit"):
        line = f"Resampling unit: {_cell(interval['unit'])}"
        if interval.get("n_units") is not None:
            line += f" ({interval['n_units']} resampled)"
        if interval.get("note"):
            line += f"; {_cell(interval['note'])}"
        out += [line + ".", ""]

    overall = [
        {"Metric": _label(k), value_header: format_figure(metrics[k])} for k in _OVERALL_ROWS if k in metrics
    ]
    if overall:
        out.append(markdown_table(overall, ["Metric", value_header]))

    positive = metrics.get("positive")
    if isinstance(positive, Mapping) and "class" in positive:
        out += [f"Positive class: {_cell(positive['class'])}.", ""]

    per_class = metrics.get("per_class")
    if isinstance(per_class, Mapping) and per_class:
        rows = []
        for name, figs in per_class.items():
            row: dict[str, Any] = {"Class": name}
            for key in _CLASS_COLUMNS:
                row[_label(key)] = format_figure(figs[key]) if key in figs else ""
            row["Support"] = figs.get("support", "")
            rows.append(row)
        out.append(markdown_table(rows, ["Class", *(_label(k) for k in _CLASS_COLUMNS), "Support"]))

    cm = metrics.get("confusion_matrix")
    names = metrics.get("class_names") or (list(per_class) if isinstance(per_class, Mapping) else None)
    if cm is not None and names is not None and len(cm) == len(names):
        out += ["Confusion matrix (rows = true class, columns = predicted):", ""]
        header = "true \\ predicted"
        rows = [
            {header: name, **{str(j): int(c) for j, c in enumerate(cm[i])}} for i, name in enumerate(names)
        ]
        table = markdown_table(rows, [header, *(str(j) for j in range(len(names)))])
        head, rest = table.split("\n", 1)
        head = "| " + " | ".join(_cell(c) for c in [header, *names]) + " |"
        out.append(head + "\n" + rest)
    return "\n".join(out).rstrip("\n") + "\n"


def _json_ready(obj: Any) -> Any:
    """Nested copy with NaN / inf floats replaced by ``None`` (strict JSON) and numpy made plain."""
    if isinstance(obj, Mapping):
        return {str(k): _json_ready(v) for k, v in obj.items()}
    if isinstance(obj, np.ndarray):
        return _json_ready(obj.tolist())
    if isinstance(obj, (list, tuple)):
        return [_json_ready(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_metrics(
    out_dir: str | Path, metrics: Mapping[str, Any], prefix: str = "metrics"
) -> tuple[Path, Path]:
    """Write ``{prefix}.json`` and ``{prefix}.md`` into ``out_dir``, each atomically.

    The JSON is strict: NaN (an undefined figure) is written as ``null``.

    Returns:
        ``(json_path, markdown_path)``.
    """
    out = Path(out_dir)
    json_path, md_path = out / f"{prefix}.json", out / f"{prefix}.md"
    write_json(json_path, _json_ready(metrics))
    write_text(md_path, metrics_markdown(metrics))
    return json_path, md_path


def _fmt_mean_std(mean: float, std: float) -> str:
    if math.isnan(mean):
        return "n/a"
    return f"{100.0 * mean:.2f} {PLUS_MINUS} {100.0 * std:.2f}"


def seed_table(
    results: Mapping[str, Mapping[str, Sequence[Mapping[str, Any]]]],
    metrics: Sequence[str] = ("accuracy", "precision", "recall", "f1"),
    row_header: str = "Method",
    marks: Mapping[str, Mapping[str, Any]] | None = None,
    note: Mapping[str, str] | None = None,
) -> str:
    """Mean +- std over seeds / folds, one markdown table per site, as in the papers' tables.

    Args:
        results: ``{row_name: {site: [metrics dict per seed]}}``.
        metrics: figure names resolved by :func:`~chestdx.evaluate.metrics.get_metric`: a plain
            name means the top-level figure, else the positive class's figure (binary), else the
            macro average (multiclass); dotted paths (``"per_class.COVID.recall"``) also work.
        row_header: header of the first column.
        marks: ``{site: {row_name: {metric, ...}}}``: those cells get a trailing ``*`` (``chestdx
            table``: the row differs from the baseline row in that figure).
        note: ``{row_name: text}`` appended to the row's name, e.g. ``"(baseline)"``.

    Returns:
        For each site (in order of first appearance) a ``### site`` heading and a table whose cells
        are ``95.90 +- 0.24`` (percent, two decimals; std with ddof=1, 0 for a single seed), followed
        by the number of seeds in the last column. A row without that site shows empty cells; a
        figure missing from the metrics dicts (or undefined in all of them) shows ``n/a``.
    """
    sites: list[str] = []
    for per_site in results.values():
        for site in per_site:
            if site not in sites:
                sites.append(site)
    columns = [row_header, *(_label(m) for m in metrics), "n"]
    blocks = []
    for site in sites:
        rows = []
        for name, per_site in results.items():
            row: dict[str, Any] = {row_header: f"{name} {note[name]}" if note and name in note else name}
            runs = per_site.get(site)
            marked = (marks or {}).get(site, {}).get(name, ())
            if runs:
                for m in metrics:
                    try:
                        row[_label(m)] = _fmt_mean_std(*summarise_seeds(runs, [m])[m])
                    except KeyError:
                        row[_label(m)] = "n/a"
                    if m in marked:
                        row[_label(m)] += " *"
                row["n"] = len(runs)
            rows.append(row)
        blocks.append(f"### {site}\n\n" + markdown_table(rows, columns))
    return "\n".join(blocks)


# --------------------------------------------------------------------------------------------
# HTML
# --------------------------------------------------------------------------------------------

#: The style sheet of every chestdx HTML page (reports, the study report, the service page).
REPORT_CSS = """
body { font-family: system-ui, -apple-system, Segoe UI, sans-serif; margin: 2rem auto; max-width: 60rem;
       padding: 0 1rem; color: #1d2330; line-height: 1.45; }
h1 { border-bottom: 2px solid #d6dbe4; padding-bottom: .3rem; }
h2 { margin-top: 2rem; }
table { border-collapse: collapse; margin: .8rem 0; }
th, td { border: 1px solid #d6dbe4; padding: .25rem .6rem; text-align: left; }
th { background: #f1f4f8; }
pre { background: #f6f8fa; padding: .6rem; overflow-x: auto; }
figure { display: inline-block; margin: .6rem; vertical-align: top; }
figure img { max-width: 100%; border: 1px solid #d6dbe4; }
figcaption { font-size: .9rem; color: #4a5364; }
"""


def _inline(text: str) -> str:
    """Escape, then render ``**bold**`` and ```code``` spans."""
    out = html.escape(text, quote=True)
    out = re.sub(r"`([^`]+)`", r"<code>\1</code>", out)
    return re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", out)


def _split_row(line: str) -> list[str]:
    body = line.strip()
    body = body[1:] if body.startswith("|") else body
    body = body[:-1] if body.endswith("|") and not body.endswith("\\|") else body
    cells = re.split(r"(?<!\\)\|", body)
    return [c.strip().replace("\\|", "|") for c in cells]


def markdown_to_html(text: str) -> str:
    """Render the small markdown subset chestdx writes, with every piece of text escaped.

    Supported: ``#`` headings (rendered from ``<h3>`` down, under the section's ``<h2>``), pipe
    tables, ``-`` / ``*`` bullet lists, fenced code blocks, ``**bold**``, ```code``` and paragraphs.
    Anything else is shown as escaped text; raw HTML is never passed through.
    """
    lines = text.splitlines()
    out: list[str] = []
    para: list[str] = []
    i = 0

    def flush() -> None:
        if para:
            out.append("<p>" + _inline(" ".join(para)) + "</p>")
            para.clear()

    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        if stripped.startswith("```"):
            flush()
            i += 1
            code = []
            while i < len(lines) and not lines[i].strip().startswith("```"):
                code.append(lines[i])
                i += 1
            out.append("<pre>" + html.escape("\n".join(code), quote=True) + "</pre>")
            i += 1
        elif stripped.startswith("#"):
            flush()
            hashes = len(stripped) - len(stripped.lstrip("#"))
            level = min(6, max(3, hashes + 1))
            out.append(f"<h{level}>{_inline(stripped[hashes:].strip())}</h{level}>")
            i += 1
        elif stripped.startswith("|"):
            flush()
            table = []
            while i < len(lines) and lines[i].strip().startswith("|"):
                table.append(_split_row(lines[i]))
                i += 1
            body = [r for r in table if not all(re.fullmatch(r":?-{3,}:?", c) for c in r if c)]
            if body:
                rows = ["<tr>" + "".join(f"<th>{_inline(c)}</th>" for c in body[0]) + "</tr>"]
                rows += ["<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in r) + "</tr>" for r in body[1:]]
                out.append("<table>\n" + "\n".join(rows) + "\n</table>")
        elif stripped.startswith(("- ", "* ")):
            flush()
            items = []
            while i < len(lines) and lines[i].strip().startswith(("- ", "* ")):
                items.append("<li>" + _inline(lines[i].strip()[2:]) + "</li>")
                i += 1
            out.append("<ul>" + "".join(items) + "</ul>")
        elif not stripped:
            flush()
            i += 1
        else:
            para.append(stripped)
            i += 1
    flush()
    return "\n".join(out)


def image_data_uri(image: Any) -> str:
    """``data:`` URI of a PNG / JPEG file, of PNG bytes, or of an image array."""
    if isinstance(image, (str, Path)):
        path = Path(image)
        if not path.is_file():
            raise DataError(path, "image file for the report not found")
        data = path.read_bytes()
        source: Any = path
    elif isinstance(image, (bytes, bytearray)):
        data, source = bytes(image), "<bytes>"
    else:
        from chestdx.evaluate.plots import png_bytes

        data, source = png_bytes(image), "<array>"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        mime = "image/png"
    elif data.startswith(b"\xff\xd8\xff"):
        mime = "image/jpeg"
    else:
        raise DataError(source, "report images must be PNG or JPEG")
    return f"data:{mime};base64," + base64.b64encode(data).decode("ascii")


def html_report(
    title: str,
    sections: Sequence[tuple[str, str]],
    images: Sequence[tuple[str, Any]] = (),
) -> str:
    """One self-contained HTML page: inline CSS, images embedded as base64, no external resource.

    Args:
        title: page title and ``<h1>``.
        sections: ``(heading, body)`` pairs; a body is markdown of the subset rendered by
            :func:`markdown_to_html` (e.g. the output of :func:`metrics_markdown`). All text is
            escaped: ``<script>`` in a title or body shows as text.
        images: ``(caption, image)`` pairs; an image is a PNG / JPEG file path, PNG bytes, or an
            array accepted by :func:`chestdx.evaluate.plots.png_bytes`.

    Returns:
        The HTML document as a string.

    Raises:
        DataError: an image file is missing or not PNG / JPEG.
    """
    t = html.escape(str(title), quote=True)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{t}</title>",
        f"<style>{REPORT_CSS}</style>",
        "</head>",
        "<body>",
        f"<h1>{t}</h1>",
    ]
    for heading, body in sections:
        parts.append("<section>")
        parts.append(f"<h2>{html.escape(str(heading), quote=True)}</h2>")
        parts.append(markdown_to_html(str(body)))
        parts.append("</section>")
    if images:
        parts.append("<section>")
        parts.append("<h2>Figures</h2>")
        for caption, image in images:
            cap = html.escape(str(caption), quote=True)
            parts.append(
                f'<figure><img src="{image_data_uri(image)}" alt="{cap}"><figcaption>{cap}</figcaption></figure>'
            )
        parts.append("</section>")
    parts += ["</body>", "</html>"]
    return "\n".join(parts) + "\n"


def write_html(path: str | Path, html_text: str) -> Path:
    """Write an HTML page atomically (UTF-8). Returns ``path`` as a :class:`~pathlib.Path`."""
    path = Path(path)
    write_text(path, html_text)
    return path
