"""Gradient estimators, one file per family."""

from expectax.estimators.arm import ARM, DisARM
from expectax.estimators.base import Context, Estimator, magic_box
from expectax.estimators.measure_valued import MeasureValued
from expectax.estimators.multi_sample import VIMCO, SumAndSample, UnorderedSet
from expectax.estimators.pathwise import Pathwise
from expectax.estimators.relax import REBAR, RELAX, fit_control_variate, variance_gradient
from expectax.estimators.relaxed import GumbelSoftmax, StraightThrough, temperature_schedule
from expectax.estimators.score_function import ScoreFunction

__all__ = [
    "ARM",
    "RELAX",
    "REBAR",
    "VIMCO",
    "Context",
    "DisARM",
    "Estimator",
    "GumbelSoftmax",
    "MeasureValued",
    "Pathwise",
    "ScoreFunction",
    "StraightThrough",
    "SumAndSample",
    "UnorderedSet",
    "fit_control_variate",
    "magic_box",
    "temperature_schedule",
    "variance_gradient",
]
