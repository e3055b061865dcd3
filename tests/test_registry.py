"""The one Registry: duplicate names, unknown names and params keys refused with did-you-mean."""

from __future__ import annotations

import pytest

from chestdx.errors import ConfigError
from chestdx.registry import Registry, RegistryError


def _reg() -> Registry:
    reg = Registry("objective", fixed=("num_classes",))

    @reg.register("focal")
    def focal(num_classes: int, gamma: float = 2.0, alpha: float | None = None) -> tuple:
        """Focal loss."""
        return ("focal", num_classes, gamma, alpha)

    class Temp:
        def __init__(self, num_classes: int, temperature: float):
            self.t = temperature

    reg.register("supcon", lambda num_classes, **p: Temp(num_classes, **p), accepts=Temp)
    return reg


def test_build_binds_params_and_fixed_arguments():
    reg = _reg()
    assert reg.build("focal", num_classes=3, params={"gamma": 0.5}) == ("focal", 3, 0.5, None)
    assert reg.build("supcon", num_classes=2, params={"temperature": 0.1}).t == 0.1
    assert reg.names() == ["focal", "supcon"] and "focal" in reg and len(reg) == 2


def test_unknown_name_suggests_the_closest():
    with pytest.raises(ConfigError, match=r"objectives\[0\]: unknown objective 'focl'; did you mean 'focal'\?"):
        _reg().check("focl", where="objectives[0]")


def test_unknown_param_suggests_and_lists_accepted():
    with pytest.raises(ConfigError) as e:
        _reg().check("focal", {"gama": 1.0}, where="objectives[1]")
    msg = str(e.value)
    assert "objectives[1].params.gama" in msg and "did you mean 'gamma'" in msg and "alpha, gamma" in msg


def test_fixed_parameters_are_not_recipe_keys_and_required_ones_are_demanded():
    reg = _reg()
    with pytest.raises(ConfigError, match="no parameter 'num_classes'"):
        reg.check("focal", {"num_classes": 3})
    with pytest.raises(ConfigError, match="params.temperature: objective 'supcon' needs this parameter"):
        reg.check("supcon", {})


def test_duplicate_name_and_swallowing_kwargs_are_refused():
    reg = _reg()
    with pytest.raises(RegistryError, match="registered twice"):
        reg.register("focal", lambda num_classes: None)
    with pytest.raises(RegistryError, match=r"takes \*\*kwargs"):
        reg.register("loose", lambda num_classes, **_ignored: None)
    reg.register("explicit", lambda num_classes, **kw: kw, keys=("a",))
    assert reg.build("explicit", num_classes=1, params={"a": 1}) == {"a": 1}
    with pytest.raises(ConfigError, match="no parameter 'b'"):
        reg.check("explicit", {"b": 1})


def test_factory_value_errors_become_config_errors():
    reg = Registry("mixing")
    reg.register("bad", lambda alpha=1.0: (_ for _ in ()).throw(ValueError("alpha must be > 0")))
    with pytest.raises(ConfigError, match="mixing 'bad': bad params {'alpha': -1}: alpha must be > 0"):
        reg.build("bad", params={"alpha": -1})


def test_problems_lists_every_problem_without_raising():
    reg = _reg()
    assert reg.problems("focal", {"gamma": 1.0}) == []
    assert reg.problems("focl", {}, where="objectives[0]") == [
        (None, "objectives[0]: unknown objective 'focl'; did you mean 'focal'?; choose one of focal, supcon")]
    found = reg.problems("supcon", {"temp": 0.1, "gama": 1}, where="objectives[2]")
    assert [k for k, _ in found] == ["gama", "temp", "temperature"]  # unknown keys, then the missing one
    assert found[2][1] == "objectives[2].params.temperature: objective 'supcon' needs this parameter"


def test_an_engine_supplied_argument_goes_only_to_a_factory_that_names_it():
    reg = Registry("objective", fixed=("num_classes", "class_counts"))

    class NoCounts:
        def __init__(self, num_classes: int, temperature: float = 0.1):
            self.args = (num_classes, temperature)

    reg.register("nocounts", NoCounts)
    reg.register("counts", lambda num_classes, class_counts=None: (num_classes, class_counts))
    reg.register("any", lambda **kw: kw, keys=())
    assert reg.build("nocounts", num_classes=3, class_counts=[1, 2, 3], params={"temperature": 0.5}).args == (3, 0.5)
    assert reg.build("counts", num_classes=3, class_counts=[1, 2, 3]) == (3, [1, 2, 3])
    assert reg.build("any", num_classes=3, class_counts=None) == {"num_classes": 3, "class_counts": None}
    # a keyword that is not engine-supplied is passed as given (and refused by the factory)
    with pytest.raises(ConfigError, match="bad params"):
        reg.build("nocounts", num_classes=3, extra=1)
