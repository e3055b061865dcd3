"""Data: readers (PNG/JPG/TIFF, DICOM, NIfTI, .npy), data set layouts and splits, preprocessing and
augmentation, cached datasets, and the synthetic chest phantom (:mod:`chestdx.data.phantom`)."""
