"""The one place that touches tf2jax's internals: its converter table.

tf2jax has no public way to replace an op's converter.  Its converters live
in the dict `tf2jax._src.ops._jax_ops` (op name -> parser of a NodeDef),
which `tf2jax._src.ops.get_parser` reads while converting a graph.  Checked
with tf2jax 0.3.8 (the range pyproject.toml's `tf2jax` extra declares); if
that table or its lookup changes, `swap` raises instead of letting tf2jax's
own converters run.
"""
from __future__ import annotations

import importlib.metadata

SUPPORTED = ">=0.3.8,<0.4"


def _broken(what: str) -> RuntimeError:
  version = importlib.metadata.version("tf2jax")
  return RuntimeError(
      f"jaxconv.tf2jax cannot install its converters into tf2jax {version}: "
      f"{what}.  jaxconv.tf2jax supports tf2jax {SUPPORTED}; install one of "
      f"those (pip install 'jaxconv[tf2jax]').")


def swap(converters: dict) -> dict:
  """Put `converters` into tf2jax's table; return what they replaced
  (None where tf2jax had no converter), for `restore`."""
  try:
    from tf2jax._src import ops  # noqa: PLC0415
    table, lookup, unsupported = (ops._jax_ops, ops.get_parser,  # noqa: SLF001
                                  ops.get_unsupported_operations)
  except (ImportError, AttributeError) as e:
    raise _broken(f"its converter table is gone ({e})") from e
  if not isinstance(table, dict):
    raise _broken("tf2jax._src.ops._jax_ops is no longer a dict")
  saved = {name: table.get(name) for name in converters}
  table.update(converters)
  if any(lookup(name) is not fn or unsupported([name])
         for name, fn in converters.items()):
    restore(saved)
    raise _broken(
        "its converter lookup no longer reads tf2jax._src.ops._jax_ops")
  return saved


def restore(saved: dict) -> None:
  """Undo `swap`."""
  from tf2jax._src import ops  # noqa: PLC0415
  for name, fn in saved.items():
    if fn is None:
      ops._jax_ops.pop(name, None)  # noqa: SLF001
    else:
      ops._jax_ops[name] = fn  # noqa: SLF001
