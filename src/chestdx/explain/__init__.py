"""Explanations: CAM / Grad-CAM maps and CAM-directed test-time voting.

Everything here reads model outputs and never changes the model (no hooks, no parameter grads).
"""

from chestdx.explain.cam import cam, cam_from_features, normalize_maps, upsample_map
from chestdx.explain.voting import VotingResult, cam_voting

__all__ = ["VotingResult", "cam", "cam_from_features", "cam_voting", "normalize_maps", "upsample_map"]
