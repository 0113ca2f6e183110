"""`jaxconv.raw_ops`: TF raw ops by their TF names (keyword-only, as tf.raw_ops)."""
from jaxconv.api import Conv2DBackpropInput

__all__ = ["Conv2DBackpropInput"]
