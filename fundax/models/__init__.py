"""Network architectures: the regionally guided CNN of the paper (§2.2)."""

from fundax.models.guided_cnn import GuidedCNN, activation_map_size

__all__ = ["GuidedCNN", "activation_map_size"]
