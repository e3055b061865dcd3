"""The synthetic chest phantom: labelled CT slices, chest X-rays, CT scans and volumes with no download.

- :mod:`chestdx.phantom.anatomy`    the patient model (:class:`ChestPhantom`, :func:`sample_patient`)
- :mod:`chestdx.phantom.voxels`     its voxelisation (:meth:`ChestPhantom.render`)
- :mod:`chestdx.phantom.sites`      acquisition sites (:class:`SiteProfile`, :func:`default_sites`)
- :mod:`chestdx.phantom.render`     a site's CT slice of a volume (:func:`render_ct_slice`)
- :mod:`chestdx.phantom.writer`     the one data set writer skeleton (:func:`~chestdx.phantom.writer.write_phantom_set`)
- :mod:`chestdx.phantom.slices`, :mod:`~chestdx.phantom.cxr`, :mod:`~chestdx.phantom.sequences`,
  :mod:`~chestdx.phantom.volumes`   the four kinds (``chestdx synth --kind slice|cxr|sequence|volume``)
"""

from chestdx.phantom.anatomy import ChestPhantom, make_chest_volume, sample_patient
from chestdx.phantom.constants import CLASS_NAMES_2, CLASS_NAMES_3, FOV_MM, Z_EXTENT_MM
from chestdx.phantom.cxr import synthesize_cxr
from chestdx.phantom.render import render_ct_slice, window_to_uint8
from chestdx.phantom.sequences import synthesize_sequences
from chestdx.phantom.sites import SiteProfile, default_sites
from chestdx.phantom.slices import synthesize_slices
from chestdx.phantom.volumes import synthesize_volumes

__all__ = [
    "CLASS_NAMES_2",
    "CLASS_NAMES_3",
    "FOV_MM",
    "Z_EXTENT_MM",
    "ChestPhantom",
    "SiteProfile",
    "default_sites",
    "make_chest_volume",
    "render_ct_slice",
    "sample_patient",
    "synthesize_cxr",
    "synthesize_sequences",
    "synthesize_slices",
    "synthesize_volumes",
    "window_to_uint8",
]
