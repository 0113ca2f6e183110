import jax

# The reference is float64; the op supports float64 only with x64 enabled.
jax.config.update("jax_enable_x64", True)
