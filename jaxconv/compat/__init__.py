"""`jaxconv.compat`: TF's `tf.compat` namespaces of the family."""
from jaxconv.compat import v1  # noqa: F401
