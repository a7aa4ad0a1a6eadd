"""Network architectures: the regionally guided CNN of the paper (§2.2) and its Inception-v3 baseline.

Each module gives ``receptive_field_grid(image_size_px)``: where the receptive fields of its
activation map's cells are centred on the input (:class:`fundax.regions.CellGrid`).
"""

from fundax.models.guided_cnn import GuidedCNN, activation_map_size
from fundax.models.inception_v3 import InceptionV3

__all__ = ["GuidedCNN", "InceptionV3", "activation_map_size"]
