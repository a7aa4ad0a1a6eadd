"""fundax: regionally guided CNNs for findings in fundus photographs (Son et al.), in JAX/Flax."""

__version__ = "0.1.0"
