"""chestdx: diagnose COVID-19 and other pneumonia from chest imaging, and show why.

The package is organised by role (see ``docs/architecture.md``):

- :mod:`chestdx.data`        readers, layouts, transforms, the synthetic phantom
- :mod:`chestdx.models`      backbones and classifiers sharing one interface
- :mod:`chestdx.objectives`  losses
- :mod:`chestdx.mixing`      label-changing batch augmentations
- :mod:`chestdx.explain`     CAM / Grad-CAM, overlays, maps to masks
- :mod:`chestdx.engine`      the one Lightning training loop
- :mod:`chestdx.evaluate`    metrics with confidence intervals, plots, reports
- :mod:`chestdx.recipes`     one YAML file per method / ablation
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
