"""The loss families; importing this package registers every loss (one module per family)."""

from . import classification, embedding, regression  # noqa: F401
