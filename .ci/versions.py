"""CI: the versions a leg tested, and any integration it lacks, by name."""
import importlib.metadata as md
import platform

CORE = ["jax", "jaxlib", "numpy", "onednn-cpu-gomp"]
INTEGRATIONS = ["tensorflow", "tf2jax", "flax", "keras", "equinox", "jax2onnx",
                "onnxruntime", "torch"]


def version(dist):
  try:
    return md.version(dist)
  except md.PackageNotFoundError:
    return None


missing = [d for d in INTEGRATIONS if version(d) is None]
print(f"tested: Python {platform.python_version()}, "
      + ", ".join(f"{d} {version(d)}" for d in CORE + INTEGRATIONS
                  if version(d)))
if missing:
  print(f"NOT INSTALLED on this leg: {', '.join(missing)} "
        "(their tests fail under JAXCONV_REQUIRE_EXTRAS=1)")

from jaxconv.lowering.cpu import onednn  # noqa: E402
print("oneDNN back end: " + ("loaded, kernels for " + ", ".join(
    sorted(str(d) for d in onednn.dtypes())) if onednn.available()
    else onednn.refusal("float32")))
