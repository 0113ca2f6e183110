"""`jaxconv.compat.v1`: `tf.compat.v1`."""
from jaxconv.compat.v1 import nn  # noqa: F401
