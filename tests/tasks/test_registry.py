"""Tasks are objects in one registry; each owns its data section, refused in another task's recipe."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from chestdx.config import (
    DATA_SECTIONS,
    LesionDataConfig,
    SequenceDataConfig,
    SliceDataConfig,
    VolumeDataConfig,
    load_recipe,
    recipe_names,
    validate_recipe,
)
from chestdx.errors import ConfigError
from chestdx.tasks import TASKS, get_task, task_names

SRC = Path(__file__).resolve().parents[2] / "src" / "chestdx"

#: one shipped recipe per task
SHIPPED = {"slice": "baseline", "sequence": "att2_bilstm", "volume": "cmc_model1", "lesion": "affinity_32"}


def test_every_task_is_registered_with_its_data_section():
    assert task_names() == TASKS.names() == sorted(DATA_SECTIONS)  # a task and its data section, or neither
    assert {"lesion", "sequence", "slice", "volume"} <= set(task_names())
    for name in task_names():  # every task, shipped or added, names the section config.py has for it
        assert get_task(name).name == name and get_task(name).data_config is DATA_SECTIONS[name]
    expected = {"slice": SliceDataConfig, "sequence": SequenceDataConfig, "volume": VolumeDataConfig,
                "lesion": LesionDataConfig}
    for name, section in expected.items():
        task = get_task(name)
        assert task.name == name and task.data_config is section is DATA_SECTIONS[name]
        assert get_task(load_recipe(SHIPPED[name])) is task  # one object per task, found from a recipe
    facts = {n: (get_task(n).case_unit, get_task(n).per_slice, get_task(n).heatmap_localisation,
                 get_task(n).scan_aggregation, get_task(n).measure_training_speed) for n in expected}
    assert facts == {"slice": ("image", True, True, True, True), "sequence": ("sequence", False, False, False, True),
                     "volume": ("scan", False, False, True, True), "lesion": ("image", True, False, True, False)}
    with pytest.raises(ConfigError, match=r"unknown task 'volum'; did you mean 'volume'"):
        get_task("volum")


def test_each_task_names_its_input_shape():
    shapes = {}
    for name, recipe in SHIPPED.items():
        r = load_recipe(recipe, {"data": {"image_size": 32, "batch_size": 3}})
        shapes[name] = get_task(r).example_shape(r, in_chans=1)
        from chestdx.engine.precision import example_shape

        assert example_shape(r, 1) == shapes[name]
    assert shapes == {"slice": (3, 1, 32, 32), "lesion": (3, 1, 32, 32), "volume": (3, 1, 128, 32, 32),
                      "sequence": (3, 16, 1, 32, 32)}
    r = load_recipe("cmc_model1", {"data": {"image_size": 32, "volume_depth": 8}})
    assert get_task(r).example_shape(r, 2, batch=1) == (1, 2, 8, 32, 32)


@pytest.mark.parametrize(("recipe", "key", "value", "reader"), [
    ("baseline", "volume_depth", 64, "volume"),
    ("baseline", "sequence_length", 8, "sequence"),
    ("baseline", "segmentation_sources", ["seg"], "lesion"),
    ("cmc_model1", "modality", "cxr", "slice"),
    ("affinity_32", "cache_dir", "/tmp/c", "volume"),
])
def test_an_option_of_another_task_is_refused_naming_key_and_task(recipe, key, value, reader):
    task = load_recipe(recipe).task
    with pytest.raises(ConfigError) as e:
        load_recipe(recipe, [f"data.{key}={yaml.safe_dump(value, default_flow_style=True).strip()}"])
    msg = str(e.value)
    assert f"data.{key}: an option of task '{reader}', which task '{task}' does not read" in msg
    assert "set by an override" in msg
    with pytest.raises(ConfigError, match=rf"data\.{key}: an option of task '{reader}'"):  # in a file too
        validate_recipe({**load_recipe(recipe).model_dump(mode="json"), "data": {key: value}})


def test_a_misspelt_option_of_the_task_gets_did_you_mean():
    with pytest.raises(ConfigError, match=r"data\.volume_dept: unknown key .*did you mean data\.volume_depth"):
        load_recipe("cmc_model1", ["data.volume_dept=8"])


@pytest.mark.parametrize("name", sorted(SHIPPED.values()))
def test_each_task_data_section_round_trips(name, tmp_path):
    r = load_recipe(name)
    assert type(r.data) is DATA_SECTIONS[r.task]
    dumped = r.model_dump(mode="json")
    assert set(dumped["data"]) == set(DATA_SECTIONS[r.task].model_fields)  # its own options, no other task's
    assert validate_recipe(dumped) == r
    p = tmp_path / "r.yaml"
    p.write_text(r.to_yaml())
    again = load_recipe(p)
    assert again == r and type(again.data) is type(r.data)


def test_every_shipped_recipe_has_its_tasks_data_section():
    for name in recipe_names():
        r = load_recipe(name)
        assert type(r.data) is DATA_SECTIONS[r.task], name


def test_task_cxr_is_slice_with_the_cxr_modality():
    magsd = load_recipe("magsd")
    assert (magsd.task, magsd.data.modality) == ("slice", "cxr")
    old = {**magsd.model_dump(mode="json"), "task": "cxr"}  # how runs and bundles before this wrote it
    old["data"] = {k: v for k, v in old["data"].items() if k != "modality"}
    assert validate_recipe(old) == magsd
    assert load_recipe("baseline").data.modality == "ct"
    with pytest.raises(ConfigError, match=r"data\.modality: task 'cxr' means task 'slice' with data\.modality: cxr"):
        validate_recipe({**old, "data": {**old["data"], "modality": "ct"}})


def test_a_recipe_dumped_with_the_flat_data_section_still_loads():
    """Run folders, checkpoints and bundles written before per-task sections hold every task's options."""
    flat = {"volume_depth": 128, "cache_dir": None, "sequence_length": 16, "short_scans": "skip",
            "segmentation_sources": [], "min_lesion_area": 4}
    for name in SHIPPED.values():
        r = load_recipe(name)
        d = r.model_dump(mode="json")
        d["data"] = {**flat, **{k: v for k, v in d["data"].items() if k != "modality"}}
        assert validate_recipe(d) == r, name
    partial = {**load_recipe("baseline").model_dump(mode="json")}
    partial["data"] = {**partial["data"], "volume_depth": 128}  # one foreign key is not a flat dump: refused
    with pytest.raises(ConfigError, match="data.volume_depth: an option of task 'volume'"):
        validate_recipe(partial)


# ------------------------------------------------------------------------------ no task branches

_BRANCH = re.compile(
    r"""\.task\s*(==|!=)"""  # recipe.task == "volume"
    r"""|\.task\s+(not\s+)?in\b"""  # recipe.task in ("slice", "cxr")
    r"""|\btask\s*(==|!=)\s*["']"""  # task == "sequence"
    r"""|["'](slice|sequence|volume|lesion|cxr)["']\s*(==|!=|in)\s*[\w.]*task\b"""  # "lesion" == recipe.task
    r"""|\.get\(\s*[\w.]*\.task\b"""  # {"volume": "scan"}.get(recipe.task, ...)
)


def task_branches(root: Path = SRC) -> list[str]:
    """``"path:line: code"`` for each comparison of a task name outside ``chestdx/tasks/``."""
    out = []
    for p in sorted(root.rglob("*.py")):
        if "tasks" in p.relative_to(root).parts[:1]:
            continue
        for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
            code = line.split("#", 1)[0]
            if _BRANCH.search(code):
                out.append(f"{p.relative_to(root)}:{i}: {line.strip()}")
    return out


def test_the_branch_finder_sees_task_branches(tmp_path):
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "own.py").write_text('if recipe.task == "slice":\n    pass\n')  # allowed there
    (tmp_path / "a.py").write_text('if recipe.task == "volume":\n    x = 1\nelif cfg.task in ("a", "b"):\n'
                                   '    pass\nif task == "sequence": pass\nunit = {"volume": "scan"}.get(r.task, "i")\n'
                                   'ok = recipe.task  # a value, not a branch\nname = "task: lesion"\n')
    (tmp_path / "b.py").write_text('if "lesion" != run.recipe.task:\n    pass\n# recipe.task == "x" in a comment\n')
    assert task_branches(tmp_path) == ['a.py:1: if recipe.task == "volume":', 'a.py:3: elif cfg.task in ("a", "b"):',
                                       'a.py:5: if task == "sequence": pass',
                                       'a.py:6: unit = {"volume": "scan"}.get(r.task, "i")',
                                       'b.py:1: if "lesion" != run.recipe.task:']


def test_no_task_branch_outside_the_tasks_package():
    found = task_branches()
    assert not found, "compare task names in chestdx/tasks/ only (ask get_task(recipe)):\n" + "\n".join(found)
