"""Execution modes (chestdx.engine.precision): settings, hardware support, ``auto`` and its cache,
and bf16 / channels-last against fp32 on a small trained model (labels, probabilities, maps, training).

Tolerances (bf16 keeps 8 bits of mantissa; the maps are computed in float32 from bf16 features):

- probabilities: max abs difference to fp32 <= 0.03 (bf16), <= 1e-4 (channels-last fp32);
- labels: identical on the fixed test set;
- CAM (each map scaled to [0, 1]): max abs difference <= 0.1, mean <= 0.02;
- attention heatmaps (ATT2, MAG-SD; scaled by their maximum): max abs difference <= 0.1;
- training: the bf16 + channels-last run's validation accuracy >= the fp32 run's - 0.1;
- an answer with its stage heatmap (one float32 pass with gradients): exactly the plain answer in the
  same mode, its map that of heatmap() to 1e-5 (tests/explain/test_heatmap.py: under bf16 autocast
  the map still comes from a float32 pass).
"""

from __future__ import annotations

import json

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from chestdx.config import load_recipe
from chestdx.engine import precision as P
from chestdx.engine.precision import ExecMode, parse_speed
from chestdx.errors import ConfigError

BF16_OK = "bf16" in P.supported_computes("cpu")
needs_bf16 = pytest.mark.skipif(not BF16_OK, reason="this CPU has no native bf16 (amx_bf16 / avx512_bf16)")

SMALL = {"data": {"image_size": 64, "batch_size": 16, "class_names": ["noncovid", "covid"]},
         "model": {"name": "resnet_mlp", "backbone": "resnet18", "weights": "none", "head_hidden": 16,
                   "dropout": 0.0},
         "optim": {"name": "adam", "lr": 2e-3, "scheduler": "none"}, "trainer": {"epochs": 5}, "seed": 0}


def _blobs(n: int, size: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Phantom-like images ``(n, 1, size, size)``: noise, and for class 1 a bright 6 x 6 patch (at
    64 px the small ResNet-18's last features are 2 x 2, enough for a CAM that is not constant)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, size, size, generator=g) * 0.5
    y = torch.arange(n) % 2
    for i in range(n):
        if y[i]:
            r, c = torch.randint(0, size - 6, (2,), generator=g).tolist()
            x[i, 0, r:r + 6, c:c + 6] += 2.0
    return x, y


def _loader(x: torch.Tensor, y: torch.Tensor, shuffle: bool = False) -> DataLoader:
    items = [{"image": x[i], "label": y[i], "site": torch.tensor(0), "index": torch.tensor(i)} for i in range(len(y))]
    return DataLoader(items, batch_size=16, shuffle=shuffle, generator=torch.Generator().manual_seed(0))


def _fit(speed: str) -> tuple[L.LightningModule, dict[str, float]]:
    """Train the small model on blobs the way chestdx.engine.train does (mode -> Lightning precision,
    task.exec_mode); returns the task and its final validation metrics."""
    from chestdx.engine.task import ChestTask

    L.seed_everything(0, verbose=False)
    recipe = load_recipe("baseline", {**SMALL, "trainer": {**SMALL["trainer"], "speed": speed}})
    task = ChestTask(recipe, [32, 32])
    task.exec_mode = P.training_mode(recipe, task.model)
    xt, yt = _blobs(64, seed=1)
    xv, yv = _blobs(32, seed=2)
    trainer = L.Trainer(max_epochs=recipe.trainer.epochs, accelerator="cpu", devices=1,
                        precision=P.lightning_precision(recipe, task.exec_mode), logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0, deterministic=False)
    trainer.fit(task, _loader(xt, yt, shuffle=True), _loader(xv, yv))
    return task, {k: float(v) for k, v in trainer.callback_metrics.items()}


@pytest.fixture(scope="module")
def trained():
    """The small fp32 model after 5 epochs (eval mode) and its fp32 validation metrics."""
    task, metrics = _fit("fp32")
    return task.model.eval(), metrics


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    """An empty cache folder, ``auto`` really meaning auto, and no in-process memo."""
    monkeypatch.setenv("CHESTDX_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("CHESTDX_SPEED", raising=False)
    P.clear_memo()
    yield tmp_path / "precision.json"
    P.clear_memo()


# ---------------------------------------------------------------------------------------- settings


@pytest.mark.parametrize("text,name,fmt,compute,lightning", [
    ("fp32", "fp32", "contiguous", "fp32", "32-true"),
    ("channels_last", "channels_last", "channels_last", "fp32", "32-true"),
    ("bf16", "bf16", "contiguous", "bf16", "bf16-mixed"),
    ("channels_last+bf16", "channels_last+bf16", "channels_last", "bf16", "bf16-mixed"),
    (" BF16+Channels_Last ", "channels_last+bf16", "channels_last", "bf16", "bf16-mixed"),
    ("contiguous+bf16", "bf16", "contiguous", "bf16", "bf16-mixed"),
    ("channels_last+fp32", "channels_last", "channels_last", "fp32", "32-true"),
    ("fp16", "fp16", "contiguous", "fp16", "16-mixed"),
    ("channels_last+fp16", "channels_last+fp16", "channels_last", "fp16", "16-mixed"),
])
def test_forced_settings_parse(text, name, fmt, compute, lightning):
    mode = parse_speed(text)
    assert mode == ExecMode(fmt, compute)
    assert mode.name == name and mode.lightning_precision == lightning
    assert P.validate_speed(text) == name
    assert parse_speed(mode.name) == mode  # the canonical name round-trips


def test_auto_parses_to_none():
    assert parse_speed("auto") is None and parse_speed(" Auto ") is None
    assert P.validate_speed("AUTO") == "auto"


@pytest.mark.parametrize("bad,hint", [("bf61", "'bf16'"), ("chanels_last", "'channels_last'"),
                                      ("channels_last+bf61", "'channels_last+bf16'"), ("atuo", "'auto'")])
def test_bad_setting_says_did_you_mean(bad, hint):
    with pytest.raises(ConfigError, match="(?i)did you mean") as e:
        parse_speed(bad)
    assert repr(bad) in str(e.value) and hint in str(e.value)
    assert "channels_last+bf16" in str(e.value)  # the list of settings


def test_two_precisions_refused():
    with pytest.raises(ConfigError, match="more than one"):
        parse_speed("fp32+bf16")
    with pytest.raises(ConfigError, match="more than one"):
        parse_speed("channels_last+contiguous")


def test_recipe_fields_validate_and_default():
    r = load_recipe("baseline")
    assert r.trainer.speed == "auto" and r.inference.speed == "auto" and r.trainer.precision is None
    r = load_recipe("baseline", ["trainer.speed=BF16+channels_last", "inference.speed=channels_last"])
    assert r.trainer.speed == "channels_last+bf16" and r.inference.speed == "channels_last"
    for key in ("trainer.speed", "inference.speed"):
        with pytest.raises(ConfigError, match="(?i)did you mean 'bf16'") as e:
            load_recipe("baseline", [f"{key}=bf61"])
        assert key in str(e.value)


def test_env_setting_replaces_auto_only(monkeypatch):
    model = torch.nn.Conv2d(1, 2, 3)
    monkeypatch.setenv("CHESTDX_SPEED", "channels_last")
    assert P.resolve_mode("auto", model, (1, 1, 8, 8)).name == "channels_last"
    assert P.resolve_mode("bf16", model, (1, 1, 8, 8)).name == "bf16"  # forced wins
    monkeypatch.setenv("CHESTDX_SPEED", "fast")
    with pytest.raises(ConfigError, match="CHESTDX_SPEED"):
        P.resolve_mode("auto", model, (1, 1, 8, 8))


# ---------------------------------------------------------------------------------------- hardware


def test_supported_computes_follow_cpu_flags(monkeypatch):
    P._supported.cache_clear()
    try:
        monkeypatch.setattr(P, "_cpuinfo", lambda: ("Test CPU", frozenset({"avx2", "sse4_2"})))
        assert P.supported_computes("cpu") == ("fp32",)
        P._supported.cache_clear()
        monkeypatch.setattr(P, "_cpuinfo", lambda: ("Test CPU", frozenset({"avx512f", "avx512_bf16"})))
        assert P.supported_computes("cpu") == ("fp32", "bf16")
        names = [m.name for m in P.candidate_modes("cpu", ndim=4)]
        assert names == ["fp32", "channels_last", "bf16", "channels_last+bf16"]
        assert [m.name for m in P.candidate_modes("cpu", ndim=5)] == ["fp32", "bf16"]
        assert [m.name for m in P.candidate_modes("cpu", ndim=4, compute="fp32")] == ["fp32", "channels_last"]
        P._supported.cache_clear()
        monkeypatch.setattr(P, "_cpuinfo", lambda: ("Test CPU", frozenset({"amx_bf16", "amx_fp16"})))
        assert "fp16" in P.supported_computes("cpu")
        assert "fp16" in [m.compute for m in P.candidate_modes("cpu", 4)]
        assert "fp16" not in [m.compute for m in P.candidate_modes("cpu", 4, phase="train")]  # no CPU fp16 AMP
    finally:
        P._supported.cache_clear()


def test_cuda_computes_and_candidates(monkeypatch):
    """The CUDA branch without a GPU: bf16 only where torch says the GPU has it; training keeps fp16
    (CUDA has fp16 AMP, ``16-mixed``), unlike a CPU."""
    import torch

    P._supported.cache_clear()
    try:
        monkeypatch.setattr(P, "_device", lambda d: torch.device("cuda", 0))
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
        assert P.supported_computes("cuda") == ("fp32", "fp16")
        P._supported.cache_clear()
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
        assert P.supported_computes("cuda") == ("fp32", "bf16", "fp16")
        train = [m.name for m in P.candidate_modes("cuda", ndim=4, phase="train")]
        assert train == ["fp32", "channels_last", "bf16", "channels_last+bf16", "fp16", "channels_last+fp16"]
        assert [m.lightning_precision for m in P.candidate_modes("cuda", ndim=5, phase="train")] == [
            "32-true", "bf16-mixed", "16-mixed"]
    finally:
        P._supported.cache_clear()


def test_this_machine_supports_fp32_first():
    sup = P.supported_computes("cpu")
    assert sup[0] == "fp32" and set(sup) <= {"fp32", "bf16", "fp16"}
    assert P.device_description("cpu").startswith("cpu: ")


# -------------------------------------------------------------------------------- auto and its cache


def test_auto_measures_once_and_caches(fresh_cache, monkeypatch):
    from chestdx.models import build_model

    calls = []
    fake = {"fp32": 1.0, "channels_last": 0.8, "bf16": 0.6, "channels_last+bf16": 0.4}

    def measure(model, shape, phase, device, modes, **kw):
        calls.append((tuple(shape), phase, [m.name for m in modes]))
        return {m.name: fake[m.name] for m in modes}

    monkeypatch.setattr(P, "measure_modes", measure)
    model = build_model(load_recipe("baseline", SMALL).model, num_classes=2, in_chans=1)
    mode = P.resolve_mode("auto", model, (16, 1, 64, 64), "train")
    supported = P.candidate_modes("cpu", 4)
    assert mode in supported
    assert mode == min(supported, key=lambda m: fake[m.name])  # the fastest supported
    assert len(calls) == 1 and calls[0][1] == "train"
    data = json.loads(fresh_cache.read_text())
    (key, entry), = data.items()
    assert entry["mode"] == mode.name
    assert "train" in key and P.device_description("cpu") in key and torch.__version__ in key

    P.clear_memo()  # the second call reads the file, it does not measure
    assert P.resolve_mode("auto", model, (16, 1, 64, 64), "train") == mode
    assert len(calls) == 1
    # another phase / shape is another entry; inference batches > 1 share one (measured at <= 8)
    P.resolve_mode("auto", model, (32, 1, 64, 64), "inference")
    assert len(calls) == 2 and calls[1][0] == (8, 1, 64, 64)
    P.resolve_mode("auto", model, (16, 1, 64, 64), "inference")
    assert len(calls) == 2
    P.resolve_mode("auto", model, (1, 1, 64, 64), "inference")
    assert len(calls) == 3 and len(json.loads(fresh_cache.read_text())) == 3


def test_modes_per_job(fresh_cache, monkeypatch):
    """The predictor's ``auto`` resolves per job: a plain answer with its stage heatmap among the float32
    modes (keyed ``... fp32``: the map needs a float32 pass, which then also gives the answer), one
    without a heatmap among all; CAM voting of one image for a batch (its k copies); forced settings
    and $CHESTDX_SPEED stay as they are."""
    from chestdx.models import build_model
    from chestdx.predict.predictor import Predictor

    seen = []
    fake = {"fp32": 1.0, "channels_last": 0.8, "bf16": 0.6, "channels_last+bf16": 0.4}
    monkeypatch.setattr(P, "supported_computes", lambda device="cpu": ("fp32", "bf16"))
    monkeypatch.setattr(P, "measure_modes", lambda m, s, ph, d, modes, **k: (
        seen.append((tuple(s), [x.name for x in modes])) or {x.name: fake[x.name] for x in modes}))
    model = build_model(load_recipe("baseline", SMALL).model, num_classes=2, in_chans=1)
    x, _ = _blobs(1, seed=9)
    plain = Predictor.from_model(load_recipe("baseline", SMALL), model, speed="auto")
    plain.heatmap_kind = "layercam8"
    plain.predict_tensor(x, ["a"], heatmap=True)
    plain.predict_tensor(x, ["a"], heatmap=False)
    assert {k: m.name for k, m in plain.speed.modes.items()} == {"1x1x64x64 fp32": "channels_last",
                                                                  "1x1x64x64": "channels_last+bf16"}
    assert seen == [((1, 1, 64, 64), ["fp32", "channels_last"]),
                    ((1, 1, 64, 64), ["fp32", "channels_last", "bf16", "channels_last+bf16"])]
    assert plain.resolve_speed((1, 4)) == {"1x1x64x64 fp32": "channels_last", "1x1x64x64": "channels_last+bf16",
                                           "Nx1x64x64": "channels_last+bf16", "Nx1x64x64 fp32": "channels_last"}
    from chestdx.engine.infer import pass_batch

    assert (pass_batch("cam_voting", {"k": 5}, 1), pass_batch("cam_voting", {}, 2), pass_batch("plain", {}, 3)) == (5, 62, 3)
    vote = load_recipe("baseline", {**SMALL, "inference": {"name": "cam_voting", "params": {"k": 5, "cell": 8}}})
    voting = Predictor.from_model(vote, model, speed="auto")
    voting.predict_tensor(x, ["a"], heatmap=True)
    assert list(voting.speed.modes) == ["Nx1x64x64"]  # the 5 copies' batch, whatever the heatmap
    forced = Predictor.from_model(load_recipe("baseline", SMALL), model, speed="channels_last+bf16")
    forced.heatmap_kind = "layercam8"
    forced.predict_tensor(x, ["a"], heatmap=True)
    assert forced.speed.modes == {"1x1x64x64": parse_speed("channels_last+bf16")}
    monkeypatch.setenv("CHESTDX_SPEED", "bf16")
    env = Predictor.from_model(load_recipe("baseline", SMALL), model, speed="auto")
    env.heatmap_kind = "layercam8"
    env.predict_tensor(x, ["a"], heatmap=True)
    assert env.speed.modes == {"1x1x64x64": parse_speed("bf16")}


@needs_bf16
def test_occlusion_maps_in_float32_at_the_copies_batch(trained, fresh_cache, monkeypatch):
    """An occlusion heatmap (64 forwards of occluded copies) is computed in float32 even in a bf16
    mode (the answer stays bf16), and ``auto`` resolves a float32 mode for the batch of its copies."""
    occlusion = pytest.importorskip("chestdx.explain.occlusion")
    from chestdx.predict.answers import unit_scale
    from chestdx.predict.predictor import Predictor

    model, _ = trained
    x, _ = _blobs(2, seed=12)
    pred = Predictor.from_model(load_recipe("baseline", SMALL), model, speed="channels_last+bf16")
    pred.heatmap_kind = "occlusion"
    got = pred.predict_tensor(x, ["a", "b"], heatmap=True)
    plain = pred.predict_tensor(x, ["a", "b"], heatmap=False)
    assert [a.probs for a in got] == [b.probs for b in plain]  # the bf16 answer
    want = occlusion.occlusion_map(model, x)  # float32 (contiguous input: summation order differs slightly)
    with P.running(model, parse_speed("channels_last+bf16")):
        in_bf16 = occlusion.occlusion_map(model, P.to_mode_input(x, parse_speed("channels_last+bf16")))
    for a, w in zip(got, want, strict=True):
        assert a.details["heatmap_kind"] == "occlusion" and abs(a.heatmap - unit_scale(w.numpy())).max() <= 0.01
    # what bf16 passes would have drawn (the probability drops are small next to bf16's rounding)
    assert max(abs(unit_scale(u.numpy()) - unit_scale(w.numpy())).max() for u, w in zip(in_bf16, want, strict=True)) > 0.05
    fake = {"fp32": 1.0, "channels_last": 0.8, "bf16": 0.6, "channels_last+bf16": 0.4}
    monkeypatch.setattr(P, "measure_modes", lambda m, s, ph, d, modes, **k: {x.name: fake[x.name] for x in modes})
    auto = Predictor.from_model(load_recipe("baseline", SMALL), model, speed="auto")
    auto.heatmap_kind = "occlusion"
    auto.predict_tensor(x[:1], ["a"], heatmap=True)
    assert {k: m.name for k, m in auto.speed.modes.items()} == {"Nx1x64x64 fp32": "channels_last"}


def test_answer_with_heatmap_is_the_plain_answer(trained):
    """In a float32 mode the answer that comes with its heatmap (one pass with gradients) is exactly
    the plain answer, and the map is the one heatmap() draws."""
    from chestdx.explain.heatmap import heatmap
    from chestdx.predict.answers import unit_scale
    from chestdx.predict.predictor import Predictor

    model, _ = trained
    x, _ = _blobs(4, seed=10)
    for speed in ("fp32", "channels_last"):
        pred = Predictor.from_model(load_recipe("baseline", SMALL), model, speed=speed)
        pred.heatmap_kind = "layercam8"
        with_map = pred.predict_tensor(x, list("abcd"), heatmap=True)
        without = pred.predict_tensor(x, list("abcd"), heatmap=False)
        assert [a.probs for a in with_map] == [b.probs for b in without]
        want, kind = heatmap(model, x, "layercam8")
        assert all(a.details["heatmap_kind"] == kind == "layercam8" for a in with_map)
        for a, w in zip(with_map, want, strict=True):
            assert abs(a.heatmap - unit_scale(w.numpy())).max() <= 1e-5


def test_auto_keeps_fp32_within_margin():
    assert P._pick({"fp32": 1.0, "channels_last": 1.2, "bf16": 0.97}).name == "fp32"
    assert P._pick({"fp32": 1.0, "channels_last": 0.99, "bf16": 0.5}).name == "bf16"
    assert P._pick({"fp32": 1.0, "channels_last": 0.7, "bf16": 0.69}).name == "channels_last"
    assert P._pick({}).name == "fp32"


def test_auto_real_measurement_on_a_tiny_model(fresh_cache):
    """No fake: the measurement runs every candidate and picks a supported one."""
    from chestdx.models import build_model

    model = build_model(load_recipe("baseline", SMALL).model, num_classes=2, in_chans=1)
    before = [p.clone() for p in model.parameters()]
    mode = P.resolve_mode("auto", model, (2, 1, 32, 32), "train")
    assert mode in P.candidate_modes("cpu", 4)
    entry = next(iter(json.loads(fresh_cache.read_text()).values()))
    assert set(entry["seconds_per_step"]) == {m.name for m in P.candidate_modes("cpu", 4)}
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))  # a copy was timed
    assert all(p.grad is None for p in model.parameters())


def test_precision_forces_compute_and_lesion_skips_measuring(fresh_cache, monkeypatch):
    from chestdx.models import build_model

    seen = []
    monkeypatch.setattr(P, "measure_modes", lambda m, s, ph, d, modes, **k: (
        seen.append([x.name for x in modes]) or {x.name: 1.0 + i for i, x in enumerate(modes)}))
    recipe = load_recipe("baseline", {**SMALL, "trainer": {"precision": "32-true"}})
    model = build_model(recipe.model, num_classes=2, in_chans=1)
    mode = P.training_mode(recipe, model)
    assert seen == [["fp32", "channels_last"]] and mode.compute == "fp32"
    assert P.lightning_precision(recipe, mode) == "32-true"
    recipe = load_recipe("baseline", {**SMALL, "trainer": {"precision": "bf16-mixed", "speed": "channels_last"}})
    assert P.training_mode(recipe, model).name == "channels_last+bf16"
    assert P.lightning_precision(recipe, P.training_mode(recipe, model)) == "bf16-mixed"
    lesion = recipe.model_copy(update={"task": "lesion", "trainer": recipe.trainer.model_copy(
        update={"precision": None, "speed": "auto"})})
    from chestdx.tasks import get_task

    measure = get_task(lesion).measure_training_speed  # False: the lesion task trains in its own loop
    assert P.training_mode(lesion, model, measure=measure).name == "fp32" and len(seen) == 1
    P.training_mode(lesion.model_copy(update={"task": "slice"}), model, measure=get_task("slice").measure_training_speed)
    assert len(seen) == 2  # a slice recipe's auto is measured


def test_unwritable_cache_still_resolves(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("CHESTDX_CACHE_DIR", str(blocker))
    monkeypatch.delenv("CHESTDX_SPEED", raising=False)
    monkeypatch.setattr(P, "measure_modes", lambda m, s, ph, d, modes, **k: {x.name: 1.0 for x in modes})
    P.clear_memo()
    try:
        assert P.resolve_mode("auto", torch.nn.Conv2d(1, 2, 3), (1, 1, 8, 8)).name == "fp32"
    finally:
        P.clear_memo()


# ------------------------------------------------------------------------- running in a mode


def test_running_converts_and_casts_back():
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.Flatten(), torch.nn.LazyLinear(2))
    model(torch.zeros(1, 1, 8, 8))
    mode = parse_speed("channels_last+bf16")
    x = torch.randn(2, 1, 8, 8)
    with P.running(model, mode):
        xm = P.to_mode_input(x, mode)
        assert xm.is_contiguous(memory_format=torch.channels_last) and torch.equal(xm, x)
        y = model(xm)
        assert torch.is_autocast_enabled("cpu")
    assert y.dtype == torch.float32  # cast back by the hook
    assert model[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert not model._forward_hooks  # the hook is gone
    with P.running(model, P.FP32):
        assert model(x).dtype == torch.float32
    assert model[0].weight.is_contiguous()  # a contiguous mode undoes chestdx's conversion
    assert P.to_mode_input(torch.zeros(2, 3), mode).shape == (2, 3)  # not 4D: untouched


def test_channels_last_converts_only_4d_weights():
    """A 3D model's 5D weights stay contiguous (``Module.to(memory_format=...)`` would raise)."""
    m = torch.nn.ModuleDict({"c3": torch.nn.Conv3d(2, 2, 3), "c2": torch.nn.Conv2d(3, 4, 3)})
    P.set_memory_format(m, True)
    assert m["c2"].weight.is_contiguous(memory_format=torch.channels_last) and not m["c2"].weight.is_contiguous()
    assert m["c3"].weight.is_contiguous()
    P.set_memory_format(m, False)
    assert m["c2"].weight.is_contiguous()
    vol = torch.nn.Conv3d(1, 2, 3)
    with P.running(vol, parse_speed("channels_last")):
        assert vol(torch.randn(1, 1, 4, 8, 8)).shape == (1, 2, 2, 6, 6)


def _probs(model, x, speed):
    from chestdx.engine.infer import predict_loader

    return torch.from_numpy(predict_loader(model, _loader(x, torch.zeros(len(x), dtype=torch.long)),
                                           speed=speed)["probs"])


@needs_bf16
def test_bf16_same_labels_probs_close(trained):
    model, metrics = trained
    assert metrics["val_acc"] >= 0.8  # a model that has learned, so labels mean something
    x, _ = _blobs(48, seed=5)
    ref = _probs(model, x, "fp32")
    for speed in ("bf16", "channels_last+bf16"):
        p = _probs(model, x, speed)
        assert torch.equal(p.argmax(1), ref.argmax(1)), speed
        assert (p - ref).abs().max() <= 0.03, (speed, float((p - ref).abs().max()))
    p = _probs(model, x, "channels_last")
    assert (p - ref).abs().max() <= 1e-4


@needs_bf16
def test_bf16_cam_close_to_fp32(trained):
    from chestdx.explain.cam import cam, normalize_maps

    model, _ = trained
    x, _ = _blobs(8, seed=6)
    ref = normalize_maps(cam(model, x))
    mode = parse_speed("channels_last+bf16")
    with P.running(model, mode):
        xm = P.to_mode_input(x, mode)
        with torch.no_grad():
            out = model(xm)
        maps = cam(model, xm, out=out)
    assert maps.dtype == torch.float32 and out.features.dtype == torch.float32
    diff = (normalize_maps(maps) - ref).abs()
    assert diff.max() <= 0.1 and diff.mean() <= 0.02, (float(diff.max()), float(diff.mean()))


@needs_bf16
@pytest.mark.parametrize("recipe,kind", [("att2", "att2"), ("magsd", "attention")])
def test_bf16_attention_maps_close_to_fp32(recipe, kind):
    from chestdx.explain.heatmap import heatmap
    from chestdx.models import build_model

    torch.manual_seed(0)
    r = load_recipe(recipe, {"model": {"backbone": "resnet18", "weights": "none"}, "data": {"image_size": 64}})
    model = build_model(r.model, num_classes=r.data.num_classes, in_chans=1).eval()
    x, _ = _blobs(4, seed=7)
    ref, k = heatmap(model, x, kind)
    assert k == kind
    mode = parse_speed("bf16")
    with P.running(model, mode), torch.no_grad():
        out = model(x)
        maps, k = heatmap(model, x, kind, out=out)
    assert maps.dtype == torch.float32 and all(v.dtype == torch.float32 for v in out.maps.values())
    assert (maps - ref).abs().max() <= 0.1, float((maps - ref).abs().max())


@needs_bf16
@pytest.mark.parametrize("k", [5, 31])
def test_predictor_and_voting_in_bf16(trained, k):
    """CAM voting in channels-last + bf16 (the 6 images' k copies in one pass) against fp32: the same
    labels and flips (k = 31: the paper's vote), probabilities and heatmaps within the tolerances."""
    from chestdx.predict.predictor import Predictor

    model, _ = trained
    recipe = load_recipe("baseline", {**SMALL, "inference": {"name": "cam_voting", "params": {"k": k, "cell": 8,
                                                                                               "chunk": 6 * k}}})
    x, _ = _blobs(6, seed=8)
    ref = Predictor.from_model(recipe, model, speed="fp32").predict_tensor(x, list("abcdef"), heatmap=True)
    fast = Predictor.from_model(recipe, model, speed="channels_last+bf16")
    got = fast.predict_tensor(x, list("abcdef"), heatmap=True)
    assert fast.speed.modes == {"Nx1x64x64": parse_speed("channels_last+bf16")}
    assert [a.label for a in got] == [b.label for b in ref]
    for a, b in zip(got, ref, strict=True):
        assert abs(a.probs["covid"] - b.probs["covid"]) <= 0.03
        assert a.heatmap.dtype == b.heatmap.dtype == "float32"
        assert abs(a.heatmap - b.heatmap).max() <= 0.15
        assert a.details["flipped"] == b.details["flipped"]
        # a copy masks the k top CAM cells; where two cells' sums nearly tie, bf16 features can rank
        # them the other way and that copy hides another cell (an overconfident model then answers it
        # 0 or 1): a tenth of the copies may differ, the vote (flips, labels) may not
        off = sum(abs(u - v) > 0.03 for u, v in zip(a.details["vote_probs"], b.details["vote_probs"], strict=True))
        assert off <= max(1, k // 10), off
    assert any(b.details["flipped"] for b in ref)  # votes that flip are compared too (k = 31: 2 of the 6)


# ------------------------------------------------------------------------------------- training


@needs_bf16
def test_bf16_training_reaches_fp32_metric(trained):
    _, ref = trained
    task, got = _fit("channels_last+bf16")
    assert task.exec_mode.name == "channels_last+bf16"
    w = task.model.backbone.layer1[0].conv1.weight  # (64, 64, 3, 3): the formats differ (a 1-channel one would not)
    assert w.is_contiguous() and not w.is_contiguous(memory_format=torch.channels_last)  # back after fit
    assert got["val_acc"] >= ref["val_acc"] - 0.1, (got, ref)


def test_train_applies_the_mode(phantom_binary, tmp_path, monkeypatch):
    """chestdx.engine.train: Lightning's precision and the task's memory format come from trainer.speed."""
    from chestdx.engine.task import ChestTask
    from chestdx.engine.train import train

    speed = "channels_last+bf16" if BF16_OK else "channels_last"
    seen = {}
    original = ChestTask.compute_losses

    def spy(self, batch):
        seen["autocast"] = torch.is_autocast_enabled("cpu")
        seen["weight_cl"] = self.model.backbone.layer1[0].conv1.weight.is_contiguous(memory_format=torch.channels_last)
        return original(self, batch)

    monkeypatch.setattr(ChestTask, "compute_losses", spy)
    recipe = load_recipe("baseline", {**SMALL, "trainer": {"epochs": 1, "speed": speed, "limit_train_batches": 1}})
    run = train(recipe, [str(phantom_binary)], tmp_path / "run", progress=False)
    assert json.loads((run.path / "train.json").read_text())["speed"] == speed
    assert seen == {"autocast": BF16_OK, "weight_cl": True}

    from chestdx.evaluate.run import evaluate_run

    res = evaluate_run(run, split="val", n_boot=10, speed="channels_last", out=tmp_path / "eval")
    assert res["speed"] == "channels_last"
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["speed"] == "channels_last"


def test_measuring_leaves_the_global_rng_as_it_was():
    """The timed training steps run dropout: they must not move the RNG that training draws from."""
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.Flatten(), torch.nn.Dropout(0.5),
                                torch.nn.LazyLinear(2))
    model(torch.zeros(1, 1, 8, 8))
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    secs = P.measure_modes(model, (2, 1, 8, 8), "train", "cpu", [P.FP32], warmup=1, iters=2)
    assert set(secs) == {"fp32"}
    assert torch.equal(torch.rand(3), expected)


def test_a_run_that_measures_trains_like_one_that_reads_the_cache(phantom_binary, tmp_path, fresh_cache):
    """speed: auto measured on the first run (dropout 0.5 in the head) and read from the cache on the
    second: the same losses, epoch by epoch (before the fix the measured run drew other dropout masks)."""
    from chestdx.engine.train import train

    cfg = {**SMALL, "model": {**SMALL["model"], "dropout": 0.5},
           "trainer": {"epochs": 2, "speed": "auto", "limit_train_batches": 2}}
    histories = []
    for name in ("measured", "cached"):
        train(load_recipe("baseline", cfg), [str(phantom_binary)], tmp_path / name, progress=False)
        hist = json.loads((tmp_path / name / "history.json").read_text())
        histories.append([(h["train_loss"], h["val_loss"]) for h in hist])
    assert fresh_cache.is_file()  # the first run measured and wrote the cache
    assert histories[0] == histories[1]


def test_cli_speed_flags(capsys):
    from chestdx.cli import _overrides_from_args, build_parser

    p = build_parser()
    args = p.parse_args(["train", "demo", "--out", "x", "--speed", "BF16+channels_last"])
    assert _overrides_from_args(args) == {"trainer": {"speed": "channels_last+bf16"}}
    for cmd in (["evaluate", "run"], ["predict", "m", "a.png"], ["serve", "m"], ["report", "m", "a", "--out", "r"],
                ["ensemble", "r1"], ["sweep-voting", "r"]):
        assert p.parse_args([*cmd, "--speed", "auto"]).speed == "auto"
    with pytest.raises(SystemExit) as e:
        p.parse_args(["predict", "m", "a.png", "--speed", "chanels_last"])
    assert e.value.code == 2 and "Did you mean 'channels_last'" in capsys.readouterr().err


def test_task_converts_batches_in_channels_last_modes():
    from chestdx.engine.task import ChestTask

    task = ChestTask(load_recipe("baseline", SMALL), [1, 1], in_chans=3)
    batch = {"image": torch.randn(2, 3, 8, 8), "label": torch.tensor([0, 1])}
    same = task.on_after_batch_transfer(batch, 0)
    assert same["image"].is_contiguous() and not same["image"].is_contiguous(memory_format=torch.channels_last)
    task.exec_mode = parse_speed("channels_last")
    got = task.on_after_batch_transfer(batch, 0)
    assert got["image"].is_contiguous(memory_format=torch.channels_last) and torch.equal(got["image"], batch["image"])
    assert batch["image"].is_contiguous()  # the caller's dict is not changed
    assert task.on_after_batch_transfer({"seg": [1]}, 0) == {"seg": [1]}  # lesion batches pass through


def test_one_channel_inputs_run_channels_last():
    """A grey ``(B, 1, H, W)`` batch gets channels-last strides (PyTorch keeps the NCHW ones for one
    channel, and a convolution then answers NCHW), so the network runs channels-last from the stem on;
    the training batches too."""
    from chestdx.engine.task import ChestTask

    conv = P.set_memory_format(torch.nn.Conv2d(1, 8, 3), True)
    mode = parse_speed("channels_last")
    x = torch.randn(2, 1, 8, 8)
    xm = P.to_mode_input(x, mode)
    assert xm.stride() == (64, 1, 8, 1) and torch.equal(xm, x) and xm.data_ptr() == x.data_ptr()  # a view
    assert conv(xm).is_contiguous(memory_format=torch.channels_last)
    assert not conv(x.contiguous(memory_format=torch.channels_last)).is_contiguous(memory_format=torch.channels_last)
    assert P.to_mode_input(x, P.FP32) is x
    task = ChestTask(load_recipe("baseline", SMALL), [1, 1], in_chans=1)
    task.exec_mode = mode
    assert task.on_after_batch_transfer({"image": x, "label": torch.tensor([0, 1])}, 0)["image"].stride(1) == 1


@pytest.mark.parametrize("backbone", ["resnet18", "efficientnet_lite0"])
def test_batchnorm_folded_outside_fp32(backbone, monkeypatch):
    """Outside fp32 inference runs on a copy with every batch norm folded into its convolution
    (ResNet's conv / bn pairs and downsample, timm's BatchNormAct2d keeping its activation): the same
    logits, features and input gradients up to rounding, no norm left; fp32 and a training model run
    as they are; the copy is made once per weights and remade when they change; predict_loader and
    the predictor answer through it."""
    from chestdx.engine.infer import predict_loader
    from chestdx.models import build_model

    monkeypatch.delenv("CHESTDX_FOLD_BN", raising=False)
    rec = load_recipe("baseline", {**SMALL, "model": {**SMALL["model"], "backbone": backbone}})
    torch.manual_seed(0)
    model = build_model(rec.model, num_classes=2, in_chans=1)
    model.train()
    x = torch.randn(6, 1, 64, 64)
    for _ in range(3):  # running statistics away from 0 / 1
        model(x * 3 + 1)
    model.eval()
    mode = parse_speed("channels_last")
    assert P.inference_model(model, P.FP32, x) is model
    fast = P.inference_model(model, mode, x)
    assert fast is not model and P.inference_model(model, mode, x) is fast  # cached
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fast.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())  # the model is untouched
    xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    a, b = model(xa), fast(xb)
    torch.testing.assert_close(b.logits, a.logits, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(b.features, a.features, rtol=1e-4, atol=1e-4)
    ga, = torch.autograd.grad(a.logits[:, 1].sum(), xa)
    gb, = torch.autograd.grad(b.logits[:, 1].sum(), xb)
    torch.testing.assert_close(gb, ga, rtol=1e-3, atol=1e-5)
    with torch.no_grad():
        next(model.parameters()).mul_(2)
    again = P.inference_model(model, mode, x)
    assert again is not fast  # new weights, new copy
    torch.testing.assert_close(again(x).logits, model(x).logits, rtol=1e-4, atol=1e-4)
    items = [{"image": x[i], "label": torch.tensor(i % 2), "site": torch.tensor(0), "index": torch.tensor(i)}
             for i in range(len(x))]
    with torch.no_grad():
        want = model(x).probs.numpy()
    got = predict_loader(model, DataLoader(items, batch_size=3), speed="channels_last")["probs"]
    assert abs(got - want).max() < 1e-4
    assert P.inference_model(model.train(), mode, x) is model
