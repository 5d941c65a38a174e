"""The loss families; importing this package registers every loss (one module per family)."""

from . import box, classification, embedding, margin, regression, segmentation  # noqa: F401
