"""Experiments that train: the paper tables (``chestdx table``, :mod:`chestdx.experiments.table`) and
patient-grouped k-fold cross-validation (``chestdx train --folds``, :mod:`chestdx.experiments.kfold`).

Everything here trains runs (resumably) and then evaluates them with :mod:`chestdx.evaluate`; the
evaluation of one run and the statistics live there.
"""
