"""`chestdx demo --quick` runs the whole path and writes a self-contained report."""

from __future__ import annotations

from chestdx.cli import main


def test_demo_quick(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--quick", "--no-progress"]) == 0
    report = out / "report.html"
    html = report.read_text()
    assert "chestdx demo" in html and "Accuracy" in html
    assert "data:image/png;base64," in html and "http://" not in html.replace("http://www.w3.org", "")
    assert len(list((out / "heatmaps").glob("*.png"))) == 6  # 2 test images per class
    assert (out / "eval" / "metrics.json").is_file()
    assert (out / "model" / "model.safetensors").is_file() and "chestdx serve" in html
    assert "NOT a medical device" in (out / "study_report.html").read_text()
    # a second run reuses the finished run and still writes the report
    assert main(["demo", "--out", str(out), "--quick", "--no-progress"]) == 0
    assert str(report) in capsys.readouterr().out
