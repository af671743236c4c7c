"""Shared test helpers. Tests run on CPU; float64 is enabled per test with `jax.enable_x64`."""

import os

import numpy as np
import pytest

SURREY_DIR = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "surrey")


@pytest.fixture
def rng():
  return np.random.default_rng(0)


@pytest.fixture
def x64():
  import jax
  with jax.enable_x64(True):
    yield
