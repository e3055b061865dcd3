"""Using a trained model: bundles, the predictor (Python and ``chestdx predict``), HTML reports and
the web service. Imports are lazy: ``import chestdx.serve.inputs`` does not load torch."""

from typing import Any

__all__ = ["Prediction", "Predictor"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from chestdx.serve import predictor

        return getattr(predictor, name)
    raise AttributeError(f"module 'chestdx.serve' has no attribute {name!r}")
