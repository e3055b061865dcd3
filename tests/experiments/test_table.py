"""`chestdx table` and the voting sweep, end to end on a tiny two-site binary phantom."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from chestdx.cli import main
from chestdx.config import deep_merge, load_recipe
from chestdx.engine.train import train
from chestdx.evaluate.voting_sweep import sweep_voting
from chestdx.experiments.table import run_table
from tests.conftest import CAM_TINY


def test_table_two_recipes_two_seeds(phantom_binary, tmp_path):
    import json

    over = deep_merge(CAM_TINY, {"inference": {"params": {"cell": 4}}})
    table = run_table(["baseline", "full"], [phantom_binary], tmp_path / "t", seeds=2, overrides=over,
                      n_boot=20, n_boot_compare=200)
    text = (tmp_path / "t" / "table.md").read_text()
    assert table == text
    for site in ("siteA", "siteB", "all sites"):
        assert site in text
    tables, differences = text.split("## Paired differences from the baseline row (baseline)")
    rows = [line for line in tables.splitlines() if line.startswith("| baseline (baseline)") or line.startswith("| full |")]
    assert len(rows) == 6  # 2 recipes x (2 sites + all)
    assert all("+-" in r for r in rows[:3])
    assert len([line for line in differences.splitlines() if line.startswith("| full |")]) == 3
    # the full method answers by voting
    res = json.loads((tmp_path / "t" / "full" / "seed0" / "eval-test" / "metrics.json").read_text())
    assert res["procedure"] == "cam_voting" and "flipped" in res
    # the table's cells are the mean +- std of the runs' own metrics.json (positive class: covid)
    accs = [json.loads((tmp_path / "t" / "full" / f"seed{s}" / "eval-test" / "metrics.json").read_text())
            ["overall"]["positive"]["f1"]["value"] for s in (0, 1)]
    mean, std = float(np.mean(accs)), float(np.std(accs, ddof=1))
    full_all = [r for r in _site_rows(text, "all sites") if r.startswith("| full |")][0]
    assert f"{100 * mean:.2f} +- {100 * std:.2f}" in full_all.split("|")[5]
    cmp = json.loads((tmp_path / "t" / "comparisons.json").read_text())
    diff = cmp["rows"]["full"]["all sites"]["f1"]
    assert diff["b"] == pytest.approx(mean) and diff["difference"] == pytest.approx(mean - diff["a"])
    # a second call reuses finished runs (no retraining) and gives the same table
    assert run_table(["baseline", "full"], [phantom_binary], tmp_path / "t", seeds=2, overrides=over,
                     n_boot=20, n_boot_compare=200) == table


def _site_rows(text, site):
    block = text.split(f"### {site}\n", 1)[1].split("###", 1)[0]
    return [line for line in block.splitlines() if line.startswith("| ")]


def test_voting_row_answers_the_snapmix_cpe_checkpoint(phantom_binary, tmp_path):
    """`full` trains exactly like `snapmix_cpe`: the table answers snapmix_cpe's runs by voting."""
    import json

    over = deep_merge(CAM_TINY, {"inference": {"params": {"cell": 4, "k": 5}}})
    text = run_table(["snapmix_cpe", "full"], [phantom_binary], tmp_path / "t", seeds=1, overrides=over,
                     n_boot=20, n_boot_compare=200)
    assert not (tmp_path / "t" / "full").exists()  # no second training
    voted = json.loads((tmp_path / "t" / "snapmix_cpe" / "seed0" / "eval-test-full" / "metrics.json").read_text())
    plain = json.loads((tmp_path / "t" / "snapmix_cpe" / "seed0" / "eval-test" / "metrics.json").read_text())
    assert voted["procedure"] == "cam_voting" and plain["procedure"] == "plain"
    assert json.loads((tmp_path / "t" / "results.json").read_text())["full"][0]["checkpoint_of"] == "snapmix_cpe"
    assert "| full (snapmix_cpe's checkpoint) |" in text
    import csv

    rows = list(csv.DictReader(open(tmp_path / "t" / "snapmix_cpe" / "seed0" / "eval-test-full" / "predictions.csv")))
    assert [c for c in rows[0] if c.startswith("vote_p_")] == [f"vote_p_{j}" for j in range(6)]  # whole image + k = 5
    assert all(0.0 <= float(r["vote_p_3"]) <= 1.0 for r in rows)
    cmp = json.loads((tmp_path / "t" / "comparisons.json").read_text())
    assert cmp["shared_checkpoints"] == {"full": "snapmix_cpe"}
    acc = cmp["rows"]["full"]["all sites"]["accuracy"]
    assert acc["a"] == pytest.approx(plain["overall"]["accuracy"]["value"])
    assert acc["b"] == pytest.approx(voted["overall"]["accuracy"]["value"])
    # the difference is only the flipped answers: with none flipped it is exactly 0
    if voted["flipped"] == 0:
        assert acc["difference"] == 0.0 and acc["p_value"] == 1.0


def test_rows_that_differ_from_the_baseline_are_marked(tmp_path):
    from chestdx.experiments.table import _comparisons, _differences_markdown
    from tests.evaluate.test_compare import _pair, _write

    files, y, pa, pb, patients = _pair()
    a = _write(tmp_path / "a.csv", files, y, pa, patients)
    b = _write(tmp_path / "b.csv", files, y, pb, patients)
    same = _write(tmp_path / "c.csv", files, y, pa, patients)
    cmp = _comparisons({"base": [a], "better": [b], "same": [same]}, "base", ["accuracy"], 2000, 0)
    assert cmp["better"]["all sites"]["accuracy"]["difference"] == pytest.approx(0.12)
    assert cmp["better"]["all sites"]["accuracy"]["low"] > 0
    assert cmp["same"]["all sites"]["accuracy"]["p_value"] == 1.0
    md = _differences_markdown(cmp, "base", ["accuracy"], 2000)
    assert "| better | +12.00 (+4.00 to +20.02) p=0.005 * |" in md
    assert "| same | +0.00 (+0.00 to +0.00) p=1 |" in md
    from chestdx.evaluate.report import seed_table

    runs = {"base": {"all sites": [{"accuracy": 0.8}]}, "better": {"all sites": [{"accuracy": 0.92}]}}
    tab = seed_table(runs, metrics=["accuracy"], marks={"all sites": {"better": {"accuracy"}}},
                     note={"base": "(baseline)"})
    assert "| base (baseline) | 80.00 +- 0.00 | 1 |" in tab and "| better | 92.00 +- 0.00 * | 1 |" in tab


def test_voting_sweep(phantom_binary, tmp_path, capsys):
    recipe = load_recipe("full", deep_merge(CAM_TINY, {"inference": {"params": {"cell": 4}}}))
    run = train(recipe, [phantom_binary], tmp_path / "run", progress=False)
    rows = sweep_voting(run, ks=[1, 3, 9], thetas=[0.1, 0.4], out=tmp_path / "sw")
    assert (tmp_path / "sw" / "voting_sweep.png").stat().st_size > 0
    with open(tmp_path / "sw" / "voting_sweep.csv") as f:
        assert len(list(csv.DictReader(f))) == len(rows) == (1 + 3 + 2) * 3
    # each row is the vote run with that k / theta on its own: compare with evaluate (plain and voting)
    from chestdx.evaluate.run import evaluate_run

    plain = evaluate_run(run, n_boot=0, procedure="plain", out=tmp_path / "plain")["overall"]
    voted = evaluate_run(run, n_boot=0, procedure="cam_voting", procedure_params={"k": 3, "theta": 0.2, "cell": 4},
                         out=tmp_path / "voted")["overall"]
    row = {(r["parameter"], r["k"], r["theta"], r["site"]): r for r in rows}
    assert row[("none", 0, 0.2, "all sites")]["accuracy"] == pytest.approx(plain["accuracy"]["value"])
    assert row[("none", 0, 0.2, "all sites")]["f1"] == pytest.approx(plain["positive"]["f1"]["value"])
    assert row[("k", 3, 0.2, "all sites")]["accuracy"] == pytest.approx(voted["accuracy"]["value"])
    assert row[("k", 3, 0.2, "all sites")]["f1"] == pytest.approx(voted["positive"]["f1"]["value"])
    assert main(["sweep-voting", str(run.path), "--k", "1", "2", "--theta", "0.2"]) == 0
    assert "| k | 2 |" in capsys.readouterr().out


def test_sweep_defaults_are_figure_3s():
    import inspect

    from chestdx.cli import build_parser

    sig = inspect.signature(sweep_voting).parameters
    assert tuple(sig["thetas"].default) == (0.1, 0.2, 0.3, 0.4, 0.5)
    assert {30, 31, 32, 33, 34, 35} <= set(sig["ks"].default) and max(sig["ks"].default) == 35
    args = build_parser().parse_args(["sweep-voting", "RUN"])
    assert args.theta == list(sig["thetas"].default) and args.k == list(sig["ks"].default)
