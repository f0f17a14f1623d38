"""Gradient estimators, one file per family."""

from expectax.estimators.base import Context, Estimator, magic_box
from expectax.estimators.pathwise import Pathwise
from expectax.estimators.score_function import ScoreFunction

__all__ = ["Context", "Estimator", "Pathwise", "ScoreFunction", "magic_box"]
