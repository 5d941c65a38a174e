"""Margin losses beyond the seeds: Sub-center ArcFace, AdaCos, CurricularFace, MagFace, AdaFace.

(In progress.)
"""

from __future__ import annotations

__all__: list[str] = []
