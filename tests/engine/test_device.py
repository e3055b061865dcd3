"""Inference on the device asked for: --accelerator / --devices resolved in one place
(chestdx.engine.device), every model-running command has the flags, the CPU path is unchanged.

This machine has no GPU: the CUDA branches are checked with torch.cuda's answers patched (only
torch.device objects are made, nothing runs on a GPU), and for real with `--accelerator cuda`
refused here, naming the flag.
"""

from __future__ import annotations

import argparse
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from chestdx.cli import build_parser, main
from chestdx.config import load_recipe
from chestdx.engine.device import model_device, parse_accelerator, resolve_device, to_device
from chestdx.engine.infer import predict_loader
from chestdx.engine.task import ChestTask
from chestdx.errors import ConfigError
from chestdx.models import ModelOutput
from tests.conftest import TINY

CPU = torch.device("cpu")
MODEL_COMMANDS = ("evaluate", "ensemble", "predict", "report", "serve", "table", "sweep-voting")
"""Every subcommand that runs a trained model (export only copies weights; compare reads predictions)."""


@pytest.fixture
def two_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the answers of a machine without CUDA")
def test_cpu_machine():
    for acc in ("auto", None, "cpu", "CPU", " auto "):
        assert resolve_device(acc) == CPU
    for devices in (None, "auto", "1", 1, "0,", [0], -1):
        assert resolve_device("cpu", devices) == CPU
    assert resolve_device(CPU) == CPU
    for acc in ("cuda", "gpu", "cuda:0", torch.device("cuda")):
        with pytest.raises(ConfigError, match=r"--accelerator=.*CUDA is not available on this machine.*"
                                              r"use --accelerator cpu or auto"):
            resolve_device(acc)
    if not torch.backends.mps.is_available():
        with pytest.raises(ConfigError, match="--accelerator=mps: MPS .* not available"):
            resolve_device("mps")


def test_cuda_choices(two_gpus):
    assert resolve_device("auto") == torch.device("cuda", 0)  # auto = CUDA where available
    assert resolve_device("cuda") == resolve_device("gpu") == resolve_device("cuda", "1") == torch.device("cuda", 0)
    assert resolve_device("cuda", "1,") == resolve_device("gpu", "[1]") == resolve_device("cuda", [1]) \
        == resolve_device("cuda:1") == resolve_device("cuda:1", "1,") == torch.device("cuda", 1)
    assert resolve_device("cpu") == CPU  # asked for, even with GPUs
    with pytest.raises(ConfigError, match=r"--devices='2,': GPU 2 does not exist \(2 GPU"):
        resolve_device("cuda", "2,")
    with pytest.raises(ConfigError, match=r"--accelerator=cuda:5: GPU 5 does not exist"):
        resolve_device("cuda:5")
    with pytest.raises(ConfigError, match="name different devices"):
        resolve_device("cuda:0", "1,")


@pytest.mark.parametrize("acc, devices, says", [
    ("cdua", None, "--accelerator='cdua' is not an accelerator: choose one of auto, cpu, cuda, gpu, mps .*did you mean 'cuda'"),
    ("tpu", None, "--accelerator='tpu' is not an accelerator"),
    ("cpu:1", None, "--accelerator='cpu:1' is not an accelerator"),
    ("cpu", "2", "--devices=2: inference runs on one device"),
    ("cpu", 4, "--devices=4: inference runs on one device"),
    ("cpu", "1,", "--devices='1,': the CPU is one device"),
    ("cpu", "0,1", "--devices='0,1': give auto, 1, or one device index"),
    ("cpu", [0, 1], r"--devices=\[0, 1\]: inference runs on one device"),
    ("cpu", True, "--devices=True"),
])
def test_mistakes_name_the_flag(acc, devices, says):
    with pytest.raises(ConfigError, match=says):
        resolve_device(acc, devices)


def test_python_callers_name_their_argument():
    with pytest.raises(ConfigError, match="^device='cdua'"):
        resolve_device("cdua", flag="device")
    assert parse_accelerator("GPU") == ("cuda", None) and parse_accelerator("cuda:3") == ("cuda", 3)


def test_to_device_and_model_device():
    out = ModelOutput(logits=torch.ones(2, 3), maps={"a": torch.zeros(2, 4, 4)})
    batch = {"image": torch.ones(2, 1), "meta": ["x", 1], "pair": (torch.zeros(1), 3), "out": out}
    moved = to_device(batch, "cpu")
    assert moved["image"] is batch["image"]  # already there: no copy
    assert moved["meta"] == ["x", 1] and moved["pair"][1] == 3
    assert isinstance(moved["out"], ModelOutput) and moved["out"].maps["a"] is out.maps["a"]
    assert model_device(torch.nn.Linear(2, 2)) == CPU
    assert model_device(torch.nn.Identity()) == CPU


def _loader(n=10, k=3):
    g = torch.Generator().manual_seed(0)
    images = torch.randn(n, 1, 32, 32, generator=g)
    items = [{"image": images[i], "label": torch.tensor(i % k), "site": torch.tensor(0), "index": torch.tensor(i)}
             for i in range(n)]
    return images, DataLoader(items, batch_size=4)


def test_predict_loader_on_the_cpu_is_unchanged():
    """device=None (where the model is), "cpu" and device("cpu") give the same bits as a plain forward."""
    torch.manual_seed(0)
    model = ChestTask(load_recipe("demo", TINY)).model.eval()
    images, loader = _loader()
    with torch.no_grad():
        ref = torch.cat([model(images[i:i + 4]).probs for i in range(0, 10, 4)]).numpy()  # the loader's batches
    for device in (None, "cpu", CPU, "auto" if not torch.cuda.is_available() else "cpu"):
        res = predict_loader(model, loader, device=device)
        assert np.array_equal(res["probs"], ref), device
        assert res["probs"].dtype == np.float32 and res["index"].tolist() == list(range(10))
    with pytest.raises(ConfigError, match="^device="):
        predict_loader(model, loader, device="cdua")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal of a machine without CUDA")
def test_predict_loader_refuses_a_missing_gpu():
    model = ChestTask(load_recipe("demo", TINY)).model
    with pytest.raises(ConfigError, match="device=cuda: CUDA is not available"):
        predict_loader(model, _loader()[1], device="cuda")
    assert model_device(model) == CPU  # nothing was moved


def _subparsers():
    for a in build_parser()._actions:
        if isinstance(a, argparse._SubParsersAction):
            return dict(a.choices)
    raise AssertionError


@pytest.mark.parametrize("name", MODEL_COMMANDS)
def test_every_model_command_has_the_flags(name):
    sp = _subparsers()[name]
    flags = {f: a for a in sp._actions for f in a.option_strings}
    assert "--accelerator" in flags and "--devices" in flags, name
    text = sp.format_help()
    assert "--accelerator" in text and "--devices" in text
    if name != "table":  # table's are the training flags (its evaluations use the first device)
        assert flags["--accelerator"].default == "auto" and "cuda:N" in flags["--accelerator"].help


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal of a machine without CUDA")
@pytest.mark.parametrize("argv", [
    ["evaluate", "RUN"], ["ensemble", "RUN", "RUN2"], ["predict", "RUN", "a.png"], ["report", "RUN", "a.png",
                                                                                   "--out", "r.html"],
    ["serve", "RUN"], ["sweep-voting", "RUN"], ["table", "demo", "--data", "RUN", "--out", "t"],
])
def test_cuda_on_this_machine_is_refused_before_any_work(argv, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for d in ("RUN", "RUN2"):
        (tmp_path / d).mkdir()
    (tmp_path / "a.png").write_bytes(b"")
    assert main([*argv, "--accelerator", "cuda"]) == 2
    err = capsys.readouterr().err
    assert "--accelerator=cuda: CUDA is not available on this machine" in err, err
    assert not (tmp_path / "t").exists() and not (tmp_path / "r.html").exists()


def test_a_typo_is_refused_before_torch_loads(tmp_path):
    code = ("import sys; from chestdx.cli import main\n"
            "try:\n    main(['evaluate', '.', '--accelerator', 'cdua'])\n"
            "except SystemExit as e:\n    print('torch' in sys.modules, e.code)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert out.stdout.split() == ["False", "2"], out.stdout + out.stderr
    assert "argument --accelerator: 'cdua' is not an accelerator" in out.stderr and "did you mean 'cuda'" in out.stderr
