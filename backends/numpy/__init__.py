"""The portable backend: each loss's array-API definition runs as written (see ``refloss.loss``)."""

NAME = "numpy"
