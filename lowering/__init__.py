"""Back end: StableHLO lowerings of the backprop-input primitive.

`platform_rules()` tells the front end which rule to register for which
platform, `partner_rules()` the same for the op's two partner convolutions;
the front end never needs to know how a platform lowers.
"""
from . import canonical, cpu, partners
from ._compat import lower_fun
from .cpu import (CpuOnlyExportWarning, force_strategy, portable,
                  xla_strategies)
from .geometry import ConvSpec

__all__ = ["ConvSpec", "CpuOnlyExportWarning", "force_strategy", "lower_fun",
           "partner_rules", "platform_rules", "portable", "xla_strategies"]


def platform_rules():
  """{platform (None = every other platform): lowering rule}."""
  return {
      # GPU/TPU: the canonical form, which cuDNN / the TPU compiler recognise
      # and which accumulate half precision in float32 in hardware.
      None: canonical.lower,
      # CPU: a strategy chosen per configuration (see lowering/cpu/).
      "cpu": cpu.lower,
  }


def partner_rules():
  """{"forward" | "backprop_filter": {platform (None = every other): fn}};
  fn(a, b, *, spec, ...) is written in jax ops (lower it with `lower_fun`,
  which also handles explicit sharding)."""
  return {
      "forward": {None: partners.forward, "cpu": cpu.forward},
      "backprop_filter": {None: partners.backprop_filter,
                          "cpu": cpu.backprop_filter},
  }
