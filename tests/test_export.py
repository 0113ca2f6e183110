"""jax.export artifacts: round trips, symbolic batch, platforms, VJP artifacts."""
import os
import pathlib
import subprocess
import sys
import tempfile
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import parameterized
from jax import export

import jaxconv
from jaxconv import lowering
from jaxconv.export import LayerConfig, export_layer
from tests.helpers import assert_close, run_reference

SMALL = LayerConfig(input_sizes=(3, 9, 8, 4), filter_sizes=(3, 2, 2, 6),
                    strides=(1, 2, 2, 1), padding="EXPLICIT",
                    explicit_paddings=(0, 0, 4, 1, 0, 2, 0, 0))


def _portable(config, *args):
  """The op jitted afresh in the portable form (what an export holds)."""
  with lowering.portable():
    return jax.jit(config.op_fn())(*args)


def _operands(config, batch=None, seed=0):
  rng = np.random.default_rng(seed)
  dy_shape = list(config.out_backprop_shape())
  if batch is not None:
    dy_shape[0] = batch
  return (rng.standard_normal(config.filter_sizes).astype(np.float32),
          rng.standard_normal(dy_shape).astype(np.float32))


def _cfg_dict(config, batch):
  sizes = list(config.input_sizes)
  if len(sizes) == 4:
    sizes[0] = batch
  return dict(input_sizes=sizes, strides=list(config.strides),
              padding=config.padding,
              explicit_paddings=list(config.explicit_paddings),
              data_format=config.data_format, dilations=list(config.dilations))


class ExportTest(parameterized.TestCase):

  def test_round_trip(self):
    exp = export_layer(SMALL)
    back = export.deserialize(exp.serialize())
    w, dy = _operands(SMALL)
    np.testing.assert_array_equal(back.call(w, dy), _portable(SMALL, w, dy))

  def test_runs_in_a_process_that_never_imported_jaxconv(self):
    exp = export_layer(SMALL, batch="N")
    w, dy = _operands(SMALL, batch=5)
    tmp = pathlib.Path(tempfile.mkdtemp())
    (tmp / "artifact.bin").write_bytes(exp.serialize())
    np.save(tmp / "w.npy", w)
    np.save(tmp / "dy.npy", dy)
    script = textwrap.dedent("""
        import sys
        class Block:  # jaxconv (even if installed) must not be needed
          def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("jaxconv", "lowering"):
              raise ImportError(f"blocked: {name}")
        sys.meta_path.insert(0, Block())
        import numpy as np
        from jax import export
        exp = export.deserialize(open("artifact.bin", "rb").read())
        out = exp.call(np.load("w.npy"), np.load("dy.npy"))
        np.save("out.npy", np.asarray(out))
        assert not any(m.split(".")[0] in ("jaxconv", "lowering")
                       for m in sys.modules)
    """)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    # Run from an empty directory with a path that excludes the checkout.
    subprocess.run([sys.executable, "-I", "-c", script], cwd=tmp, env=env,
                   check=True, timeout=120)
    cfg = {**_cfg_dict(SMALL, 5), "dtype": "float32"}
    assert_close(np.load(tmp / "out.npy"), run_reference(cfg, w, dy), "float32")

  def test_no_custom_calls(self):
    text = export_layer(SMALL, platforms=["cpu", "cuda", "rocm", "tpu"],
                        grad=True).mlir_module()
    self.assertNotIn("stablehlo.custom_call", text)

  @parameterized.parameters(
      SMALL, LayerConfig(input_sizes=(9, 8), filter_sizes=(3, 3, 4, 6),
                         strides=(1, 1, 2, 1), data_format="NHWC"),
      LayerConfig(input_sizes=(2, 4, 7, 7), filter_sizes=(3, 3, 2, 6),
                  strides=(1, 1, 2, 2), data_format="NCHW"))
  def test_symbolic_batch_at_two_sizes(self, config):
    exp = export_layer(config, batch="N")
    self.assertEqual(str(exp.out_avals[0].shape[0]), "N")
    for batch in (1, 4):
      w, dy = _operands(config, batch=batch)
      cfg = {**_cfg_dict(config, batch), "dtype": "float32"}
      out = exp.call(w, dy)
      self.assertEqual(out.shape[0], batch)
      assert_close(out, run_reference(cfg, w, dy), "float32")

  def test_symbolic_batch_in_mlir_is_dynamic(self):
    text = export_layer(SMALL, batch="N").mlir_module()
    self.assertRegex(text, r"-> \(tensor<\?x9x8x4xf32>")

  def test_other_symbolic_uses_are_clear_errors(self):
    b, h = export.symbolic_shape("b, h")
    w = jax.ShapeDtypeStruct((3, 3, 4, 8), np.float32)

    def op(sizes):
      return lambda w, dy: jaxconv.raw_ops.Conv2DBackpropInput(
          input_sizes=sizes, filter=w, out_backprop=dy, strides=[1, 1, 1, 1],
          padding="SAME")
    with self.assertRaisesRegex(ValueError, "only the batch dimension"):
      export.export(jax.jit(op([8, 8])))(
          w, jax.ShapeDtypeStruct((b, h, 8, 8), np.float32))
    with self.assertRaisesRegex(ValueError, "same batch size.*symbolic"):
      export.export(jax.jit(op([4, 8, 8, 4])))(
          w, jax.ShapeDtypeStruct((b, 8, 8, 8), np.float32))

  def test_multi_platform_from_cpu(self):
    exp = export_layer(SMALL, platforms=["cpu", "cuda", "rocm", "tpu"])
    self.assertEqual(exp.platforms, ("cpu", "cuda", "rocm", "tpu"))
    text = exp.mlir_module()
    self.assertIn("stablehlo.case", text)  # a platform switch
    # cpu: explicit f32 accumulation; (float32 here: same form) - every
    # branch has the reverse feeding the convolution.
    self.assertGreaterEqual(text.count("stablehlo.convolution"), 1)
    w, dy = _operands(SMALL)
    np.testing.assert_array_equal(exp.call(w, dy), _portable(SMALL, w, dy))

  @parameterized.parameters(1, 2)
  def test_vjp_artifacts(self, order):
    exp = export_layer(SMALL, batch="N")
    back = export.deserialize(exp.serialize(vjp_order=order))
    w, dy = _operands(SMALL)  # batch 3, as SMALL's input_sizes
    loss = lambda f: lambda w, dy: jnp.sum(jnp.sin(f(w, dy)))
    live = jax.grad(loss(SMALL.op_fn()), argnums=(0, 1))(w, dy)
    got = jax.grad(loss(back.call), argnums=(0, 1))(w, dy)
    for a, b in zip(got, live):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    if order == 2:  # reverse over reverse (exported calls are custom_vjp)
      gg = lambda f: jax.grad(lambda w: jnp.sum(
          jax.grad(loss(f))(w, dy) ** 2))(w)
      np.testing.assert_allclose(gg(back.call), gg(SMALL.op_fn()), rtol=1e-4,
                                 atol=1e-4)

  def test_grad_export(self):
    exp = export_layer(SMALL, grad=True, batch="N")
    w, dy = _operands(SMALL, batch=3)
    ct = np.ones((3, 9, 8, 4), np.float32)
    out, d_w, d_dy = exp.call(w, dy, ct)
    _, vjp = jax.vjp(SMALL.op_fn(), w, dy)
    want_w, want_dy = vjp(ct)
    np.testing.assert_allclose(d_w, want_w, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(d_dy, want_dy, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out, _portable(SMALL, w, dy), rtol=1e-6)
