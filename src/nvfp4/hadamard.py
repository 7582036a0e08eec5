"""Kept so that ``import nvfp4.hadamard`` keeps working: the transform lives in ``nvfp4.formats.hadamard``."""

from nvfp4.formats.hadamard import (  # noqa: F401
    DEFAULT_SIGNS_16,
    default_signs,
    hadamard_matrix,
    random_hadamard_transform,
)
