"""Data: data set layouts and splits, preprocessing and augmentation, cached datasets.

Reading one file is :mod:`chestdx.io`; the synthetic chest phantom is :mod:`chestdx.phantom`."""
