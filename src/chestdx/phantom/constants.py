"""Constants of the chest phantom shared by the patient model, the voxeliser and the renderers."""

from __future__ import annotations

__all__ = ["AIR_HU", "BLOOD_HU", "CLASS_NAMES_2", "CLASS_NAMES_3", "FAT_HU", "FOV_MM", "MUSCLE_HU", "Z_EXTENT_MM"]

CLASS_NAMES_3 = ("normal", "pneumonia", "covid")
CLASS_NAMES_2 = ("noncovid", "covid")

FOV_MM = 340.0
"""In-plane field of view of a volume (square), in mm."""
Z_EXTENT_MM = 300.0
"""Craniocaudal extent of the phantom (thoracic inlet at 0 to upper abdomen at 1), in mm."""

AIR_HU = -1000.0
"""Air (outside the body, airways), in HU."""
FAT_HU = -100.0
"""Subcutaneous and mediastinal fat, in HU."""
MUSCLE_HU = 45.0
"""Muscle, in HU."""
BLOOD_HU = 40.0
"""Blood (heart, great vessels, pulmonary vessels), in HU."""
