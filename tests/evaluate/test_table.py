"""`chestdx table` and the voting sweep, end to end on a tiny two-site binary phantom."""

from __future__ import annotations

import csv

from chestdx.cli import main
from chestdx.config import deep_merge, load_recipe
from chestdx.engine.train import train
from chestdx.evaluate.table import run_table
from chestdx.evaluate.voting_sweep import sweep_voting
from tests.conftest import CAM_TINY


def test_table_two_recipes_two_seeds(phantom_binary, tmp_path):
    over = deep_merge(CAM_TINY, {"inference": {"params": {"cell": 4}}})
    table = run_table(["baseline", "full"], [phantom_binary], tmp_path / "t", seeds=2, overrides=over,
                      n_boot=20)
    text = (tmp_path / "t" / "table.md").read_text()
    assert table == text
    for site in ("siteA", "siteB", "all sites"):
        assert site in text
    rows = [line for line in text.splitlines() if line.startswith("| baseline") or line.startswith("| full")]
    assert len(rows) == 6  # 2 recipes x (2 sites + all)
    assert all("+-" in r for r in rows)
    assert (tmp_path / "t" / "full" / "seed1" / "eval-test" / "metrics.json").is_file()
    # the full method answers by voting
    import json

    res = json.loads((tmp_path / "t" / "full" / "seed0" / "eval-test" / "metrics.json").read_text())
    assert res["procedure"] == "cam_voting" and "flipped" in res
    # a second call reuses finished runs (no retraining) and gives the same table
    assert run_table(["baseline", "full"], [phantom_binary], tmp_path / "t", seeds=2, overrides=over,
                     n_boot=20) == table


def test_voting_sweep(phantom_binary, tmp_path, capsys):
    recipe = load_recipe("full", deep_merge(CAM_TINY, {"inference": {"params": {"cell": 4}}}))
    run = train(recipe, [phantom_binary], tmp_path / "run", progress=False)
    rows = sweep_voting(run, ks=[1, 3, 9], thetas=[0.1, 0.4], out=tmp_path / "sw")
    assert (tmp_path / "sw" / "voting_sweep.png").stat().st_size > 0
    with open(tmp_path / "sw" / "voting_sweep.csv") as f:
        assert len(list(csv.DictReader(f))) == len(rows) == (1 + 3 + 2) * 3
    assert all(0 <= r["accuracy"] <= 1 for r in rows)
    assert main(["sweep-voting", str(run.path), "--k", "1", "2", "--theta", "0.2"]) == 0
    assert "| k | 2 |" in capsys.readouterr().out
