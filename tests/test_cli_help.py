"""The command line a newcomer meets first: every flag has help, defaults are shown, every
subcommand is listed, one meaning per flag name, and mistakes are reported before torch loads."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from chestdx.cli import build_parser, main


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for a in parser._actions:
        if isinstance(a, argparse._SubParsersAction):
            return dict(a.choices)
    raise AssertionError("no subcommands")


def test_every_flag_has_help_and_every_subcommand_is_listed():
    parser = build_parser()
    subs = _subparsers(parser)
    top = parser.format_help()
    for name in subs:
        assert name in top, f"top-level help does not list {name}"
    missing = [f"{name} {'/'.join(a.option_strings) or a.dest}" for name, sp in subs.items() for a in sp._actions
               if not isinstance(a, argparse._HelpAction) and not (a.help or "").strip()]
    assert missing == []


def test_defaults_are_shown():
    subs = _subparsers(build_parser())
    text = subs["serve"].format_help()
    assert "(default: 8000)" in text and "(default: 127.0.0.1)" in text
    assert "(default: best)" in subs["predict"].format_help()


def test_one_meaning_per_flag_name():
    """``--aggregate`` is patient-level aggregation (evaluate); slice -> scan is ``--scan-aggregate``."""
    subs = _subparsers(build_parser())
    for name in ("predict", "report"):
        flags = {f for a in subs[name]._actions for f in a.option_strings}
        assert "--aggregate" not in flags and "--scan-aggregate" in flags and "--series-uid" in flags
    assert "--no-progress" in {f for a in subs["predict"]._actions for f in a.option_strings}


@pytest.mark.parametrize("argv, says", [
    (["train", "baselin", "--data", ".", "--out", "x"], "Did you mean baseline"),
    (["train", "demo", "--data", ".", "--out", "x", "--set", "optim.weight_decy=1e-4"],
     "did you mean optim.weight_decay"),
    (["train", "demo", "--data", "/no/such/dir", "--out", "x"], "--data: /no/such/dir not found"),
    (["train", "demo", "--out", "x"], "--data is required"),
    (["evaluate", "/no/such/run"], "RUN: /no/such/run not found"),
    (["predict", "/no/such/model", "a.png"], "MODEL: /no/such/model not found"),
])
def test_mistakes_name_the_flag_or_key(argv, says, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    assert says in capsys.readouterr().err


def test_bad_number_names_the_flag(capsys):
    with pytest.raises(SystemExit):
        main(["train", "demo", "--data", ".", "--out", "x", "--epochs", "-1"])
    assert "argument --epochs: must be above 0" in capsys.readouterr().err


def test_mistakes_are_found_before_torch_is_imported(tmp_path):
    code = ("import sys; from chestdx.cli import main; rc = main(['train', 'baselin', '--data', '.', '--out', 'x']); "
            "print('torch' in sys.modules, 'lightning' in sys.modules, rc)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert out.stdout.split() == ["False", "False", "2"], out.stdout + out.stderr
