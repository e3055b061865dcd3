"""Data set layouts on disk -> one list of :class:`Sample` records.

Supported layouts (:func:`load_source` tries them in this order):

1. a manifest CSV (``path,label[,class,patient_id,site,mask,split,xmin,ymin,xmax,ymax]``), given
   directly or as ``manifest.csv`` / ``labels.csv`` inside a folder (:func:`from_manifest`);
2. the COVID-CT (UCSD-AI4H) split files ``split/{COVID,NonCOVID}/{train,val,test}CT_*.txt``
   (:func:`from_covid_ct_splits`);
3. COVIDx-CT label files ``{train,val,test}_COVIDx_CT-*.txt`` (``file class xmin ymin xmax ymax``),
   given directly or found inside a folder (:func:`from_covidx_labels`);
4. class folders ``root/<class>/...`` or ``root/{train,val,test}/<class>/...``
   (:func:`from_class_folders`).

Before the manifest, a ``labels.csv`` / ``metadata.csv`` (or a CSV given directly) with the ieee8023
COVID-19 collection's columns (``patientid, finding, view``) is read by :func:`from_ieee8023`
(frontal chest X-rays, labels from ``finding``). Volumes (one scan per row or folder) are read by
:func:`load_volume_source` (a manifest or scan folders, :func:`from_scan_folders`).

Labels are integer indices into the recipe's ``class_names``; :func:`resolve_label` maps the many
spellings found in public data sets (``COVID-19``, ``CT_NonCOVID``, ``No Finding``, ...).

Modules: :mod:`~chestdx.data.layouts.base` (the record, labels, splits, CSV helpers, imported by
every layout), one module per layout (``folders``, ``manifest``, ``covid_ct``, ``covidx``,
``ieee8023``, ``volumes``), and :mod:`~chestdx.data.layouts.sources` (detection and checks).
"""

from chestdx.data.layouts.base import (
    CANONICAL_CLASSES,
    LABEL_ALIASES,
    SPLITS,
    Sample,
    canonical_class,
    normalize_split,
    read_csv_rows,
    resolve_label,
)
from chestdx.data.layouts.covid_ct import from_covid_ct_splits
from chestdx.data.layouts.covidx import from_covidx_labels, parse_covidx_ids
from chestdx.data.layouts.folders import from_class_folders
from chestdx.data.layouts.ieee8023 import FRONTAL_VIEWS, finding_category, from_ieee8023, is_ieee8023_csv
from chestdx.data.layouts.manifest import from_manifest
from chestdx.data.layouts.sources import check_samples, drop_duplicate_files, load_source, load_sources
from chestdx.data.layouts.volumes import from_scan_folders, load_volume_source, load_volume_sources

__all__ = [
    "CANONICAL_CLASSES",
    "FRONTAL_VIEWS",
    "LABEL_ALIASES",
    "SPLITS",
    "Sample",
    "canonical_class",
    "check_samples",
    "drop_duplicate_files",
    "finding_category",
    "from_class_folders",
    "from_covid_ct_splits",
    "from_covidx_labels",
    "from_ieee8023",
    "from_manifest",
    "from_scan_folders",
    "is_ieee8023_csv",
    "load_source",
    "load_sources",
    "load_volume_source",
    "load_volume_sources",
    "normalize_split",
    "parse_covidx_ids",
    "read_csv_rows",
    "resolve_label",
]
