"""Using a trained model from Python: the predictor, model bundles, explanation reports.

``chestdx predict`` / ``chestdx report`` / ``chestdx export`` and the web service
(:mod:`chestdx.serve`) are built on these::

    from chestdx.predict import load_model
    model = load_model("model/")            # a bundle (chestdx export) or a run folder
    answer = model.predict("scan.nii.gz")   # a path, a numpy array or a PIL image
    print(answer.label, answer.probs)

Modules: :mod:`~chestdx.predict.predictor` (``Predictor``, ``load_model``), :mod:`~chestdx.predict.answers`
(``Prediction``, ``ScanPrediction``), :mod:`~chestdx.predict.inputs` (files, series, uploads -> ``Study``),
:mod:`~chestdx.predict.bundle` (``export_bundle``, model cards), :mod:`~chestdx.predict.report`
(explanation reports), :mod:`~chestdx.predict.ood` (the input check). Imports are lazy:
``import chestdx.predict.inputs`` does not load torch.
"""

from typing import Any

__all__ = ["Prediction", "Predictor", "ScanPrediction", "load_model"]


def __getattr__(name: str) -> Any:
    if name in ("Predictor", "load_model"):
        from chestdx.predict import predictor

        return getattr(predictor, name)
    if name in ("Prediction", "ScanPrediction"):
        from chestdx.predict import answers

        return getattr(answers, name)
    raise AttributeError(f"module 'chestdx.predict' has no attribute {name!r}")
