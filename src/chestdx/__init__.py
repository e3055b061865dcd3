"""chestdx: diagnose COVID-19 and other pneumonia from chest imaging, and show why.

The package is organised by role (see ``docs/architecture.md``):

- :mod:`chestdx.io`          readers of images and scans (PNG/JPEG/TIFF, DICOM, NIfTI, ``.npy``, zips)
- :mod:`chestdx.data`        layouts, splits, transforms, datasets
- :mod:`chestdx.phantom`     the synthetic chest phantom (slices, X-rays, scans, volumes)
- :mod:`chestdx.models`      backbones and classifiers sharing one interface
- :mod:`chestdx.objectives`  losses
- :mod:`chestdx.mixing`      label-changing batch augmentations
- :mod:`chestdx.explain`     CAM / Grad-CAM, overlays, maps to masks
- :mod:`chestdx.engine`      the one Lightning training loop
- :mod:`chestdx.evaluate`    metrics with confidence intervals, plots, reports
- :mod:`chestdx.recipes`     one YAML file per method / ablation
- :mod:`chestdx.tasks`       one object per task (slice, sequence, volume, lesion): data, module, evaluation
- :mod:`chestdx.experiments` trainings of many runs: paper tables, k-fold
- :mod:`chestdx.predict`     the Python API of a trained model: bundles, the predictor, explanation reports
- :mod:`chestdx.serve`       the web service (FastAPI) over a predictor

Use a trained model from Python::

    import chestdx
    model = chestdx.load_model("model/")       # a bundle from `chestdx export`, or a run folder
    answer = model.predict("scan.nii.gz")      # path, numpy array or PIL image
    print(answer.label, answer.probs)
"""

from typing import Any

from chestdx.version import __version__

__all__ = ["__version__", "load_model"]


def __getattr__(name: str) -> Any:  # lazy: `import chestdx` does not import torch
    if name == "load_model":
        from chestdx.predict import load_model

        return load_model
    raise AttributeError(f"module 'chestdx' has no attribute {name!r}")
