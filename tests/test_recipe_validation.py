"""Recipes are checked whole when they load: every model / objective / mixing / inference name
registered and every ``params`` key taken by its factory, all problems at once, with did-you-mean,
blamed on the override that set them; nothing is built to check them."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from chestdx.config import load_recipe, part_problems, recipe_names, validate_recipe
from chestdx.engine.infer import PROCEDURES, run_procedure
from chestdx.errors import ConfigError
from chestdx.experiments.table import load_rows, row_overrides
from chestdx.mixing import MIXERS
from chestdx.models import MODELS
from chestdx.objectives import OBJECTIVES
from chestdx.registry import RegistryError


def _problem(name: str, overrides: list[str] | dict) -> str:
    with pytest.raises(ConfigError) as e:
        load_recipe(name, overrides)
    return str(e.value)


def _recipe_file(tmp_path, **body) -> str:
    p = tmp_path / "r.yaml"
    p.write_text(yaml.safe_dump(body))
    return str(p)


def test_every_shipped_recipe_validates_whole():
    for name in recipe_names():
        r = load_recipe(name)
        assert part_problems(r) == [], name


# --- a misspelt name, in each place a recipe names a registered part --------------------------------

def test_misspelt_inference_name_fails_at_load_not_after_training():
    msg = _problem("full", ["inference.name=cam_votin"])
    assert "inference: unknown inference procedure 'cam_votin'; did you mean 'cam_voting'?" in msg
    assert "with the overrides given" in msg and "[set by an override" in msg


def test_misspelt_model_name():
    msg = _problem("magsd", ["model.name=magds"])
    assert "model: unknown model 'magds'; did you mean 'magsd'?" in msg


def test_misspelt_mixing_name():
    msg = _problem("snapmix", ["mixing.name=snapmx"])
    assert "mixing: unknown mixing 'snapmx'; did you mean 'snapmix'?" in msg


def test_misspelt_objective_name_in_a_file_is_blamed_on_the_file(tmp_path):
    path = _recipe_file(tmp_path, base="snapmix_cpe", name="r", objectives=[{"name": "ce"}, {"name": "cep"}])
    msg = _problem(path, [])
    assert msg.startswith(f"{path}: invalid recipe")  # not "with the overrides given"
    assert "objectives[1]: unknown objective 'cep'; did you mean 'ce' or 'cpe'?" in msg
    assert "[set by an override" not in msg


def test_misspelt_objective_inside_an_uncertainty_group(tmp_path):
    groups = [[{"name": "supcon", "params": {"temperatur": 0.1}}], [{"name": "ce"}, {"name": "mixup"}]]
    path = _recipe_file(tmp_path, base="cmc_model4", name="r",
                        objectives=[{"name": "uncertainty", "params": {"groups": groups}}])
    msg = _problem(path, [])
    assert "objectives[0].params.groups[0][0].params.temperatur: objective 'supcon' has no parameter " \
           "'temperatur'; did you mean 'temperature'?" in msg
    assert "objectives[0].params.groups[1][1]: unknown objective 'mixup'; did you mean 'mixup_ce'?" in msg
    # a misspelt entry key ("wieght") is not swallowed either
    bad = [[{"name": "ce", "wieght": 2.0}]]
    msg = _problem(_recipe_file(tmp_path, base="cmc_model4", name="r",
                                objectives=[{"name": "uncertainty", "params": {"groups": bad}}]), [])
    assert "objectives[0].params.groups[0][0]: unknown key 'wieght'; did you mean 'weight'?" in msg


# --- a misspelt params key, of each kind of part ---------------------------------------------------

@pytest.mark.parametrize("recipe, override, says", [
    ("baseline", "inference.params.k=3", "inference.params.k: inference procedure 'plain' has no parameter 'k' "
                                         "(it accepts: none)"),
    ("full", "inference.params.thta=0.3", "inference.params.thta: inference procedure 'cam_voting' has no "
                                          "parameter 'thta'; did you mean 'theta'? (it accepts: cell, chunk, "
                                          "fill, k, positive, theta)"),
    ("cmc_model1", "inference={name: intra_ensemble, params: {veiws: 3}}",
     "inference.params.veiws: inference procedure 'intra_ensemble' has no parameter 'veiws'; did you mean "
     "'views'?"),
    ("snapmix", "mixing.params.alpah=0.5", "mixing.params.alpah: mixing 'snapmix' has no parameter 'alpah'; "
                                           "did you mean 'alpha'? (it accepts: alpha, seed)"),
    ("magsd", "model.params.num_map=8", "model.params.num_map: model 'magsd' has no parameter 'num_map'; did "
                                        "you mean 'num_maps'? (it accepts: feature_norm, num_maps, pooling, "
                                        "scales)"),
    ("att2", "model.params.tail_block=2", "model.params.tail_block: model 'resnet_att2' has no parameter "
                                          "'tail_block'; did you mean 'tail_blocks'? (it accepts: "
                                          "compatibility, tail_blocks)"),
    ("att2_bilstm", "model.params.chunks=8", "model.params.chunks: model 'att2_bilstm' has no parameter 'chunks'; "
                                             "did you mean 'chunk'? (it accepts: chunk, compatibility, encoder, "
                                             "precompute_embeddings, tail_blocks)"),
    ("baseline", "model.params.dropout=0.5", "model.params.dropout: model 'resnet_mlp' has no parameter 'dropout' "
                                             "(it accepts: none)"),
])
def test_misspelt_params_key_fails_at_load(recipe, override, says):
    msg = _problem(recipe, [override])
    assert says in msg and "[set by an override" in msg


def test_misspelt_objective_params_key_set_by_an_override_of_the_list():
    msg = _problem("baseline", ["objectives=[{name: ce, params: {label_smothing: 0.1}}]"])
    assert "objectives[0].params.label_smothing: objective 'ce' has no parameter 'label_smothing'; did you mean " \
           "'label_smoothing'? (it accepts: class_weights, label_smoothing) [set by an override" in msg


def test_engine_supplied_arguments_are_not_recipe_keys():
    msg = _problem("baseline", ["objectives=[{name: ce, params: {num_classes: 3}}]"])
    assert "objective 'ce' has no parameter 'num_classes'" in msg
    msg = _problem("snapmix", ["mixing.params.prob=0.5"])
    assert "mixing 'snapmix' has no parameter 'prob'" in msg  # mixing.prob is the section's own key


def test_all_problems_are_reported_at_once():
    msg = _problem("full", ["model.params.hidden=3", "mixing.name=snapmx", "inference.params.thta=0.3",
                            "objectives=[{name: ce}, {name: cpe, params: {normalise: true}}]"])
    lines = msg.splitlines()
    assert lines[0] == "chestdx/recipes/full.yaml with the overrides given: invalid recipe"
    assert [line.split(":")[0].strip() for line in lines[1:]] == \
        ["model.params.hidden", "objectives[1].params.normalise", "mixing", "inference.params.thta"]
    assert "did you mean 'normalize'" in lines[2] and "did you mean 'snapmix'" in lines[3]


def test_schema_errors_come_first_and_parts_are_checked_only_then():
    """A recipe that fails its schema reports the schema (the parts are not looked at)."""
    msg = _problem("full", ["optim.lrr=1", "inference.name=cam_votin"])
    assert "optim.lrr: unknown key" in msg and "cam_votin" not in msg


def test_schema_only_loading_skips_the_parts():
    r = load_recipe("full", ["inference.name=cam_votin"], parts=False)
    assert r.inference.name == "cam_votin"
    with pytest.raises(ConfigError, match="did you mean 'cam_voting'"):
        validate_recipe(r.model_dump(mode="json"), "stored")


def test_validation_builds_nothing(monkeypatch):
    """Checking the parts reads signatures only: no module (network, loss, mixer) is constructed."""
    import torch

    for name in ("affinity_64", "att2_bilstm", "cmc_model4", "full", "magsd"):
        load_recipe(name)  # registries imported
    built = []
    real = torch.nn.Module.__init__

    def counting(self, *args, **kwargs):
        built.append(type(self).__name__)
        real(self, *args, **kwargs)

    monkeypatch.setattr(torch.nn.Module, "__init__", counting)
    for name in recipe_names():
        load_recipe(name)
    assert built == []


# --- the procedures themselves refuse unknown params too ----------------------------------------------

def _small_model():
    from chestdx.config import ModelConfig
    from chestdx.models import build_model

    return build_model(ModelConfig(backbone="resnet18", head_hidden=8), num_classes=2).eval()


def test_plain_refuses_params_when_called_through_the_registry():
    import torch

    model = _small_model()
    x = torch.rand(2, 1, 32, 32)
    assert run_procedure("plain", {}, model, x).probs.shape == (2, 2)
    with pytest.raises(ConfigError, match="inference.params.cell: inference procedure 'plain' has no parameter"):
        run_procedure("plain", {"cell": 4}, model, x)
    with pytest.raises(ConfigError, match=r"inference.params.veiws: .* did you mean 'views'"):
        run_procedure("intra_ensemble", {"veiws": 1}, model, x)


# --- duplicate names ---------------------------------------------------------------------------------

@pytest.mark.parametrize("registry, name", [(MODELS, "magsd"), (OBJECTIVES, "ce"), (MIXERS, "snapmix"),
                                            (PROCEDURES, "plain")])
def test_a_second_registration_under_a_taken_name_raises(registry, name):
    before = registry.entry(name)
    with pytest.raises(RegistryError, match=f"'{name}' is registered twice: by {before.origin} and by"):
        registry.register(name, lambda cfg=None: None)
    assert registry.entry(name) is before  # the first one stays


# --- a table's shared inference.params override goes to the rows that take it --------------------

def test_a_table_override_of_voting_params_goes_to_the_voting_rows_only():
    over = {"inference": {"params": {"cell": 4}}, "trainer": {"epochs": 1}}
    assert row_overrides("baseline", over) == {"trainer": {"epochs": 1}}
    assert row_overrides("full", over) == over
    baseline, full = load_rows(["baseline", "full"], over)
    assert baseline.inference.params == {} and baseline.trainer.epochs == 1
    assert full.inference.params == {"k": 31, "theta": 0.2, "cell": 4}
    # outside a table the same override on a plain recipe is an error
    with pytest.raises(ConfigError, match="inference procedure 'plain' has no parameter 'cell'"):
        load_recipe("baseline", over)


def test_a_table_override_no_row_takes_is_refused():
    with pytest.raises(ConfigError, match=r"inference.params.cell \[set by an override: --set or a flag\]: no row "
                                          r"of this table answers with a procedure that takes it \(rows: baseline: "
                                          r"plain, snapmix: plain\)"):
        load_rows(["baseline", "snapmix"], {"inference": {"params": {"cell": 4}}})
    with pytest.raises(ConfigError, match=r"inference.params.cel .* takes it; did you mean 'cell'\? \(rows: "
                                          r"baseline: plain, full: cam_voting\)"):
        load_rows(["baseline", "full"], {"inference": {"params": {"cel": 4}}})


# --- the CLI: schema mistakes before torch, part mistakes before training -----------------------------

def test_cli_reports_a_misspelt_param_before_anything_runs(capsys, tmp_path, monkeypatch):
    from chestdx.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["train", "full", "--data", ".", "--out", "x", "--set", "inference.params.thta=0.3"]) == 2
    err = capsys.readouterr().err
    assert "did you mean 'theta'" in err and not (tmp_path / "x").exists()
    rc = main(["table", "baseline", "full", "--data", ".", "--out", "t", "--set", "inference.params.cel=2"])
    assert rc == 2 and "did you mean 'cell'" in capsys.readouterr().err


def test_path_mistakes_of_a_valid_recipe_are_still_found_before_torch_is_imported(tmp_path):
    code = ("import sys; from chestdx.cli import main; "
            "rc = main(['train', 'full', '--data', '/no/such/dir', '--out', 'x']); "
            "print('torch' in sys.modules, rc)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert out.stdout.split() == ["False", "2"], out.stdout + out.stderr
    assert "--data: /no/such/dir not found" in out.stderr
