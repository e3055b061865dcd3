"""`chestdx export`, `predict` (folders, series, zips, bad files) and `report`, in-process."""

from __future__ import annotations

import json
import shutil
import zipfile

from chestdx.cli import main


def test_export_predict_report(tiny_run, series_dir, phantom_png, tmp_path, capsys):
    model = tmp_path / "model"
    assert main(["export", str(tiny_run), "--out", str(model)]) == 0
    assert (model / "model.safetensors").is_file()

    inputs = tmp_path / "inputs"
    (inputs / "pngs").mkdir(parents=True)
    for i in range(3):
        shutil.copy(phantom_png, inputs / "pngs" / f"img{i}.png")
    shutil.copytree(series_dir, inputs / "series")
    with zipfile.ZipFile(tmp_path / "study.zip", "w") as zf:
        for f in series_dir.iterdir():
            zf.write(f, f.name)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    capsys.readouterr()
    out = tmp_path / "answers.jsonl"
    rc = main(["predict", str(model), str(inputs), str(tmp_path / "study.zip"), str(bad), "--out", str(out),
               "--overlays", str(tmp_path / "ov"), "--scan-aggregate", "max", "--max-slices", "4"])
    err = capsys.readouterr().err
    assert rc == 1 and "bad.png" in err and "1 of 6 inputs failed" in err
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    kinds = sorted(x["kind"] for x in lines)
    assert kinds == ["image"] * 3 + ["volume"] * 2
    scan = next(x for x in lines if x["kind"] == "volume")
    assert scan["aggregation"] == "max" and scan["n_slices"] == 4 and len(scan["slice_probs"]) == 4
    assert len(list((tmp_path / "ov").glob("*_cam.png"))) == 3
    assert len(list((tmp_path / "ov" / "series").glob("slice_*_cam.png"))) == 4

    page = tmp_path / "report.html"
    assert main(["report", str(model), str(series_dir), "--out", str(page)]) == 0
    html = page.read_text()
    assert "NOT a medical device" in html and 'id="slider"' in html and html.count("data:image/png;base64,") >= 12
    assert "http://" not in html and "https://" not in html  # self-contained
    page2 = tmp_path / "one.html"
    assert main(["report", str(tiny_run), str(phantom_png), "--out", str(page2)]) == 0
    html2 = page2.read_text()
    assert "heatmap (integrated gradients per cell) overlay (8 x 8 grid, upsampled)" in html2  # the default map
    assert "A run folder, not an exported bundle" in html2 and "chestdx None" not in html2
    capsys.readouterr()
    assert main(["report", str(model), str(bad), "--out", str(tmp_path / "x.html")]) == 2
    assert "bad.png" in capsys.readouterr().err and not (tmp_path / "x.html").exists()


def test_predict_heatmap_kind_flag(tiny_run, phantom_png, tmp_path, capsys):
    """``--heatmap-kind`` picks the map drawn with each answer (``layercam8``: one backward pass, the
    fast choice); the default is the measured ``auto`` (intgrad); a misspelt kind fails before the model
    loads, with a did-you-mean."""
    for flag, want in (([], "intgrad"), (["--heatmap-kind", "layercam8"], "layercam8")):
        out = tmp_path / f"{want}.jsonl"
        assert main(["predict", str(tiny_run), str(phantom_png), "--out", str(out),
                     "--overlays", str(tmp_path / want), *flag]) == 0
        line = json.loads(out.read_text().splitlines()[0])
        assert line["heatmap_kind"] == want, line
    capsys.readouterr()
    assert main(["predict", str(tiny_run), str(phantom_png), "--heatmap-kind", "layercam"]) == 2
    err = capsys.readouterr().err
    assert "unknown heatmap kind 'layercam'" in err and "did you mean" in err
