"""The SnD splatting teacher: context-view features → target-view token targets, as one component.

- :mod:`.stages`: upsample, splat (lift + render), blend, resample and coverage, each stage's
  ``apply`` beside its linear map ``weights``;
- :mod:`.splat_teacher`: :class:`SplatTeacher`, whose ``forward`` applies the stages and whose
  ``operator`` composes their weights;
- :mod:`.operator`: :class:`TeacherOperator`, the composed map, applied to any features of the
  same views;
- :mod:`.cache`: :class:`OperatorCache`, each target view's rows built once per training run.
"""

from .cache import OperatorCache, view_key
from .operator import TeacherOperator
from .splat_teacher import SplatTeacher, TeacherTargets
from .stages import Blend, Resample, Splat, Upsample, token_coverage

__all__ = [
    "Blend",
    "OperatorCache",
    "Resample",
    "Splat",
    "SplatTeacher",
    "TeacherOperator",
    "TeacherTargets",
    "Upsample",
    "token_coverage",
    "view_key",
]
