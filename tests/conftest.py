"""Test-wide setup.  x64 is on for the whole suite (the reference is
float64; the op takes float64 only with x64); the default mode users run
is exercised through the CLI's subprocesses.  Keras runs on its TF
backend for the integration tests, which need the optional extras
(`tests.helpers.require`)."""
import os

import jax

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
jax.config.update("jax_enable_x64", True)
