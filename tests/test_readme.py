"""README's "Porting" examples run as written (one namespace, in order)."""
import pathlib
import re

from tests.helpers import require

require("flax", "keras", "tensorflow", "torch", "tf2jax", "equinox")

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def _section(title: str) -> str:
  text = README.read_text()
  start = text.index(f"## {title}")
  end = text.find("\n## ", start + 1)
  return text[start:end]


def test_porting_examples_run():
  blocks = re.findall(r"```python\n(.*?)```", _section(
      "Porting from TensorFlow / Keras / PyTorch"), re.S)
  assert len(blocks) == 4
  namespace = {}
  for block in blocks:
    exec(compile(block, str(README), "exec"), namespace)  # noqa: S102
  assert namespace["y"].shape == (2, 34, 34, 4)
