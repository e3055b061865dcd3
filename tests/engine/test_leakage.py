"""The leakage guard of a run (engine/datamodule.py: patient_leak_check), against its encoder run too."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from chestdx.config import load_recipe
from chestdx.data.layouts import Sample
from chestdx.data.splits import patient_split
from chestdx.engine.datamodule import leakage_markdown, patient_leak_check
from chestdx.engine.run import write_samples
from chestdx.errors import PatientLeakError


def _slices(n_patients=9, per=4):
    return [Sample(f"/d/p{p}_{k:02d}.png", p % 3 and 1, f"p{p}", "A") for p in range(n_patients) for k in range(per)]


def _bilstm(encoder, **data):
    return load_recipe("att2_bilstm", {"model": {"params": {"encoder": str(encoder)}}, "data": data})


def test_bilstm_run_refuses_test_patients_its_encoder_trained_on(tmp_path):
    enc_run = tmp_path / "att2"
    (enc_run / "checkpoints").mkdir(parents=True)
    (enc_run / "checkpoints" / "best.ckpt").write_bytes(b"")
    encoder_split = patient_split(_slices(), (0.6, 0.2, 0.2), seed=0)
    write_samples(enc_run / "samples.csv", encoder_split)
    # this run: the encoder's test patients trained on, one encoder-trained patient tested
    enc_train = sorted({s.patient_id for s in encoder_split if s.split == "train"})
    mine = [replace(s, split="test" if s.patient_id == enc_train[0] else "train") for s in encoder_split]
    with pytest.raises(PatientLeakError, match=f"A/{enc_train[0]} \\(test here, seen by the encoder\\)") as e:
        patient_leak_check(_bilstm(enc_run), mine, tmp_path / "seq")
    assert "1 of 1 test patients" in str(e.value) and str(enc_run) in str(e.value)
    assert not (tmp_path / "seq" / "leakage.json").exists()
    # a checkpoint file as the encoder names the same run folder
    with pytest.raises(PatientLeakError):
        patient_leak_check(_bilstm(enc_run / "checkpoints" / "best.ckpt"), mine)
    # allowed: trained, and the report says so
    rep = patient_leak_check(_bilstm(enc_run, allow_patient_leaks=True), mine, tmp_path / "seq")
    assert rep["allowed"] and not rep["ok"] and rep["leaks_with_encoder"] == 1
    assert json.loads((tmp_path / "seq" / "leakage.json").read_text())["leaks_with_encoder"] == 1
    assert "FAILED" in leakage_markdown(rep) and "allowed by data.allow_patient_leaks" in leakage_markdown(rep)
    # the encoder's own split: passes, and says it checked the encoder
    ok = patient_leak_check(_bilstm(enc_run), encoder_split)
    assert ok["ok"] and ok["encoder_checked"]
    assert leakage_markdown(ok).startswith("Leakage check: passed") and "encoder run's train/val" in leakage_markdown(ok)
    # evaluation only reports
    assert not patient_leak_check(_bilstm(enc_run), mine, refuse=False)["ok"]


def test_slice_run_checks_its_own_splits(tmp_path):
    samples = patient_split(_slices(), (0.6, 0.2, 0.2), seed=0)
    rep = patient_leak_check(load_recipe("demo"), samples, tmp_path)
    assert rep["ok"] and rep["encoder"] is None and (tmp_path / "leakage.json").is_file()
    samples[0] = replace(samples[0], split="test" if samples[0].split != "test" else "train")
    with pytest.raises(PatientLeakError, match="A/p0"):
        patient_leak_check(load_recipe("demo"), samples)


def test_training_refuses_a_leak_and_the_evaluation_states_the_check(phantom_slices, tmp_path, capsys):
    from chestdx.cli import main
    from chestdx.engine.train import train
    from chestdx.evaluate.run import evaluate_run
    from chestdx.tasks import load_samples
    from tests.conftest import TINY

    recipe = load_recipe("demo", TINY)
    samples = load_samples([phantom_slices], recipe)
    i = next(i for i, s in enumerate(samples) if s.split == "test")
    j = next(j for j, s in enumerate(samples) if s.split == "train")
    samples[i] = replace(samples[i], patient_id=samples[j].patient_id, site=samples[j].site)  # now in train and test
    with pytest.raises(PatientLeakError, match=f"{samples[j].site}/{samples[j].patient_id} \\(test, train\\)"):
        train(recipe, [phantom_slices], tmp_path / "refused", samples=samples, progress=False)
    assert not (tmp_path / "refused" / "checkpoints").exists()
    run = train(load_recipe("demo", [*TINY, "data.allow_patient_leaks=true"]), [phantom_slices], tmp_path / "run",
                samples=samples, progress=False)
    assert json.loads((run.path / "leakage.json").read_text())["allowed"] is True
    res = evaluate_run(run, n_boot=0)
    assert res["leakage"]["leaks_between_splits"] == 1
    assert "Leakage check: **FAILED**: 1 patient(s) in two splits" in (run.path / "eval-test" / "metrics.md").read_text()
    # a clean run says it passed
    clean = train(recipe, [phantom_slices], tmp_path / "clean", progress=False)
    evaluate_run(clean, n_boot=0)
    assert "Leakage check: passed: no patient in two splits" in (clean.path / "eval-test" / "metrics.md").read_text()
    # the CLI flag
    capsys.readouterr()
    assert main(["train", "demo", "--data", str(phantom_slices), "--out", str(tmp_path / "cli"), "--no-progress",
                 "--allow-patient-leaks", *[a for t in TINY for a in ("--set", t)]]) == 0
    assert load_recipe(tmp_path / "cli" / "recipe.yaml").data.allow_patient_leaks is True
