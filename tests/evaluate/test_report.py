"""Tests of chestdx.evaluate.report: exact markdown, metrics files, self-contained escaped HTML."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from chestdx.errors import DataError
from chestdx.evaluate.metrics import classification_metrics
from chestdx.evaluate.plots import png_bytes, save_png
from chestdx.evaluate.report import (
    format_figure,
    html_report,
    markdown_table,
    markdown_to_html,
    metrics_markdown,
    seed_table,
    write_html,
    write_metrics,
)


def fig(value, low=float("nan"), high=float("nan")):
    return {"value": value, "low": low, "high": high}


SMALL = {
    "n": 120,
    "class_names": ["non-COVID", "COVID"],
    "interval": {"method": "percentile bootstrap", "n_boot": 1000, "ci": 0.95, "seed": 0},
    "accuracy": fig(0.845, 0.812, 0.879),
    "macro_f1": fig(0.8333333, 0.8, 0.86666),
    "macro_auc": fig(float("nan")),
    "per_class": {
        "non-COVID": {
            "precision": fig(0.9, 0.85, 0.95),
            "recall": fig(0.8),
            "specificity": fig(0.9, 0.85, 0.95),
            "f1": fig(0.847, 0.8, 0.9),
            "auc": fig(0.91, 0.87, 0.95),
            "support": 60,
        },
        "COVID": {
            "precision": fig(0.8, 0.7, 0.9),
            "recall": fig(0.9, 0.85, 0.95),
            "specificity": fig(0.8),
            "f1": fig(0.847, 0.8, 0.9),
            "auc": fig(0.91, 0.87, 0.95),
            "support": 60,
        },
    },
    "confusion_matrix": [[48, 12], [6, 54]],
    "positive": {"class": "COVID", "index": 1},
}

SMALL_MD = """## Test set

N = 120 cases; intervals: 95% percentile bootstrap, 1000 resamples.

| Metric | Value (95% CI) |
|---|---|
| Accuracy | 84.5 (81.2-87.9) |
| Macro F1 | 83.3 (80.0-86.7) |
| Macro AUC | n/a |

Positive class: COVID.

| Class | Precision | Recall | Specificity | F1 | AUC | Support |
|---|---|---|---|---|---|---|
| non-COVID | 90.0 (85.0-95.0) | 80.0 | 90.0 (85.0-95.0) | 84.7 (80.0-90.0) | 91.0 (87.0-95.0) | 60 |
| COVID | 80.0 (70.0-90.0) | 90.0 (85.0-95.0) | 80.0 | 84.7 (80.0-90.0) | 91.0 (87.0-95.0) | 60 |

Confusion matrix (rows = true class, columns = predicted):

| true \\ predicted | non-COVID | COVID |
|---|---|---|
| non-COVID | 48 | 12 |
| COVID | 6 | 54 |
"""


def test_format_figure():
    assert format_figure(fig(0.845, 0.812, 0.879)) == "84.5 (81.2-87.9)"
    assert format_figure(fig(1.0, 1.0, 1.0)) == "100.0 (100.0-100.0)"
    assert format_figure(fig(0.5)) == "50.0"
    assert format_figure(fig(float("nan"))) == "n/a"
    assert format_figure({"value": None, "low": None, "high": None}) == "n/a"
    assert format_figure(0.25) == "25.0"


def test_metrics_markdown_exact():
    assert metrics_markdown(SMALL, title="Test set") == SMALL_MD


def test_metrics_markdown_on_real_output():
    y = np.array([0, 0, 0, 1, 1, 2])
    p = np.array(
        [[0.7, 0.2, 0.1], [0.6, 0.3, 0.1], [0.3, 0.5, 0.2], [0.2, 0.6, 0.2], [0.1, 0.4, 0.5], [0.1, 0.2, 0.7]]
    )
    md = metrics_markdown(classification_metrics(y, p, ["normal", "pneu|monia", "COVID"], n_boot=20))
    assert md.startswith("N = 6 cases; intervals: 95% percentile bootstrap, 20 resamples.")
    assert "| Accuracy | 66.7 (" in md
    assert "| Weighted F1 |" in md and "| Macro specificity |" in md
    assert "| pneu\\|monia |" in md  # pipes in names escaped
    assert "Positive class" not in md


def test_markdown_table_exact():
    rows = [{"name": "a", "x": 0.123456, "y": 3}, {"name": "b|c", "x": float("nan")}]
    assert markdown_table(rows, ["name", "x", "y"]) == (
        "| name | x | y |\n|---|---|---|\n| a | 0.1235 | 3 |\n| b\\|c | n/a |  |\n"
    )


def run(acc, prec, rec, f1):
    return {"accuracy": fig(acc), "positive": {"precision": fig(prec), "recall": fig(rec), "f1": fig(f1)}}


def test_seed_table_exact():
    results = {
        "baseline": {"SARS-CoV-2 CT": [run(0.96, 0.95, 0.97, 0.96), run(0.9566, 0.95, 0.97, 0.96)]},
        "full": {
            "SARS-CoV-2 CT": [run(0.99, 0.98, 0.99, 0.985)],
            "COVID-CT": [run(0.9, 0.9, 0.9, 0.9), run(0.8, 0.7, 0.6, 0.5), run(0.7, 0.5, 0.3, 0.1)],
        },
    }
    expected = (
        "### SARS-CoV-2 CT\n\n"
        "| Method | Accuracy | Precision | Recall | F1 | n |\n"
        "|---|---|---|---|---|---|\n"
        "| baseline | 95.83 +- 0.24 | 95.00 +- 0.00 | 97.00 +- 0.00 | 96.00 +- 0.00 | 2 |\n"
        "| full | 99.00 +- 0.00 | 98.00 +- 0.00 | 99.00 +- 0.00 | 98.50 +- 0.00 | 1 |\n"
        "\n"
        "### COVID-CT\n\n"
        "| Method | Accuracy | Precision | Recall | F1 | n |\n"
        "|---|---|---|---|---|---|\n"
        "| baseline |  |  |  |  |  |\n"
        "| full | 80.00 +- 10.00 | 70.00 +- 20.00 | 60.00 +- 30.00 | 50.00 +- 40.00 | 3 |\n"
    )
    assert seed_table(results) == expected


def test_seed_table_missing_and_undefined_figures():
    runs = [{"accuracy": {"value": 0.5}, "macro_auc": {"value": None}}]
    table = seed_table({"m": {"s": runs}}, metrics=("accuracy", "dice", "macro_auc"))
    assert table.endswith("| m | 50.00 +- 0.00 | n/a | n/a | 1 |\n")
    assert "| Method | Accuracy | dice | Macro AUC | n |" in table


def test_write_metrics(tmp_path):
    json_path, md_path = write_metrics(tmp_path / "run", SMALL)
    assert json_path.name == "metrics.json" and md_path.name == "metrics.md"
    text = json_path.read_text()
    assert "NaN" not in text  # strict JSON: NaN -> null
    data = json.loads(text)
    assert data["macro_auc"]["value"] is None
    assert data["accuracy"] == {"value": 0.845, "low": 0.812, "high": 0.879}
    assert md_path.read_text() == SMALL_MD.split("\n", 2)[2]  # no title
    write_metrics(tmp_path / "run", SMALL, prefix="test_metrics")
    assert (tmp_path / "run" / "test_metrics.md").exists()
    assert not [p for p in (tmp_path / "run").iterdir() if p.name.endswith(".tmp")]


def test_html_is_self_contained_and_escaped(tmp_path):
    png = save_png(np.linspace(0, 1, 64).reshape(8, 8), tmp_path / "a.png")
    page = html_report(
        "<script>alert(1)</script> report",
        [
            ("Metrics <b>", metrics_markdown(SMALL)),
            ("Notes", "x < y & <script>bad()</script>\n\n- **one**\n- `two`"),
        ],
        [
            ("ROC <i>", png),
            ("overlay", np.zeros((4, 4, 3), dtype=np.uint8)),
            ("raw", png_bytes(np.ones((2, 2)))),
        ],
    )
    assert page.startswith("<!DOCTYPE html>")
    assert "<script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt; report" in page
    assert "Metrics &lt;b&gt;" in page and "ROC &lt;i&gt;" in page
    assert "x &lt; y &amp; &lt;script&gt;bad()&lt;/script&gt;" in page
    assert "<li><strong>one</strong></li>" in page and "<code>two</code>" in page
    assert page.count('src="data:image/png;base64,') == 3
    srcs = re.findall(r'(?:src|href)="([^"]*)"', page)
    assert srcs and all(s.startswith("data:") for s in srcs)
    assert "http://" not in page and "https://" not in page
    assert "<th>Metric</th>" in page and "<td>84.5 (81.2-87.9)</td>" in page
    out = write_html(tmp_path / "report" / "index.html", page)
    assert out.read_text(encoding="utf-8") == page


def test_markdown_to_html_table_and_pipes():
    out = markdown_to_html("### Head\n\n| a | b\\|c |\n|---|---|\n| 1 | <2> |\n\ntext")
    assert "<h4>Head</h4>" in out
    assert "<tr><th>a</th><th>b|c</th></tr>" in out
    assert "<tr><td>1</td><td>&lt;2&gt;</td></tr>" in out
    assert out.endswith("<p>text</p>")


def test_html_missing_or_bad_image(tmp_path):
    with pytest.raises(DataError, match="not found"):
        html_report("t", [], [("x", tmp_path / "missing.png")])
    (tmp_path / "x.txt").write_text("hello")
    with pytest.raises(DataError, match="PNG or JPEG"):
        html_report("t", [], [("x", tmp_path / "x.txt")])


def test_evaluation_report_names_the_resampling_unit():
    from chestdx.evaluate.run import evaluate_predictions, metrics_report_markdown

    rng = np.random.default_rng(0)
    y = np.repeat(np.array([0, 1] * 6), 5)  # 12 patients x 5 slices
    p1 = np.clip(y * 0.6 + rng.uniform(0, 0.4, y.size), 0, 1)
    probs = np.stack([1 - p1, p1], axis=1)
    patients = [f"p{i // 5}" for i in range(y.size)]
    sites = ["A" if i < 30 else "B" for i in range(y.size)]
    res = evaluate_predictions(probs, y, sites, patients, ["n", "c"], n_boot=50, aggregate="mean")
    assert res["overall"]["ci_unit"] == "patient" and res["overall"]["interval"]["n_units"] == 12
    assert res["sites"]["A"]["interval"]["n_units"] == 6
    assert res["patient"]["ci_unit"] == "patient" and res["patient"]["n"] == 12
    md = metrics_report_markdown(res, "r")
    assert "Resampling unit: patient (12 resampled); cluster bootstrap: 12 patients resampled, each with all " \
           "its images (60 in all)." in md
    assert "Resampling unit: patient (6 resampled)" in md
    # one image per patient id: the report says the images were resampled one by one
    one = evaluate_predictions(probs, y, sites, [f"x{i}" for i in range(y.size)], ["n", "c"], n_boot=50)
    assert one["overall"]["ci_unit"] == "image"
    assert "Resampling unit: image (60 resampled); images resampled one by one: no patient id is shared" \
        in metrics_report_markdown(one, "r")
