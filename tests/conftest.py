"""A strict harness: rank promotion raises, so samples × dimensions broadcasting slips fail."""

import jax
import pytest

jax.config.update("jax_numpy_rank_promotion", "raise")


@pytest.fixture
def key():
    return jax.random.key(0)
