"""Network architectures: the regionally guided CNN of the paper (§2.2) and its Inception-v3 baseline."""

from fundax.models.guided_cnn import GuidedCNN, activation_map_size
from fundax.models.inception_v3 import InceptionV3

__all__ = ["GuidedCNN", "InceptionV3", "activation_map_size"]
