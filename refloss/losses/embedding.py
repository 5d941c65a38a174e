"""Embedding and regularizer losses (being written)."""

__all__: list = []
