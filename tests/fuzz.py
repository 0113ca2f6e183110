"""Fuzz campaigns over the raw op, runnable in a child process.

    python -m tests.fuzz --valid 200 --invalid 1000 [--seed 0] [--log FILE]

Conv2DBackpropInput, then every function of the family (tests/family.py):

valid:   random valid configurations agree with the float64 reference
         within the per-dtype tolerance, with the right shape and dtype
         (nine in ten have work to do; the share and the classes drawn
         are printed);
invalid: random always-invalid calls raise ValueError or TypeError whose
         message names an argument, never anything else.
Before each case the log file gets its description, so a parent process
that sees this one die (abort, segfault, OOM kill) can say which case did it.
Prints 'fuzz: N passed, 0 failed' style summary lines.
"""
from __future__ import annotations

import argparse
import sys

import jax
from hypothesis import HealthCheck, given, seed, settings

from tests.helpers import assert_close, run_op, run_reference
from tests import family
from tests.strategies import (ARG_NAMES, FAMILY_ARGS, family_calls,
                              family_invalid_calls, has_work, invalid_calls,
                              raw_kwargs, valid_configs)

import jaxconv


def check_valid(cfg) -> None:
  kw = raw_kwargs(cfg)
  out = run_op(cfg, kw["filter"], kw["out_backprop"])
  assert str(out.dtype) == cfg["dtype"], (out.dtype, cfg)
  assert_close(out, run_reference(cfg, kw["filter"], kw["out_backprop"]),
               cfg["dtype"], cfg)


def check_invalid(kw, what) -> None:
  try:
    jaxconv.raw_ops.Conv2DBackpropInput(**kw)
  except (ValueError, TypeError) as e:
    message = str(e)
    assert any(name in message for name in ARG_NAMES), (what, message)
    return
  raise AssertionError(f"no error for an invalid {what}: {kw}")


def check_family_valid(case) -> None:
  out = family.run(case.fn, case.kwargs, case.arrays, case.cfg["dtype"])
  assert str(out.dtype) == case.cfg["dtype"], (out.dtype, case.fn)
  assert_close(out, family.reference_result(case.cfg, case.kwargs,
                                            case.arrays),
               case.cfg["dtype"], (case.fn, case.cfg))


def check_family_invalid(case, kw, what) -> None:
  try:
    family.run(case.fn, kw, case.arrays, case.cfg["dtype"])
  except (ValueError, TypeError) as e:
    message = str(e)
    assert any(name.strip("_") in message.replace("`", "")
               for name in FAMILY_ARGS + ARG_NAMES), (case.fn, what, message)
    return
  raise AssertionError(f"no error for an invalid {what} of {case.fn}: {kw}")


def _describe(kw):
  return {k: (getattr(v, "shape", None), str(getattr(v, "dtype", ""))) if
          hasattr(v, "shape") else v for k, v in kw.items()}


def run(valid: int, invalid: int, seed_value: int, log_path: str | None) -> int:
  log = open(log_path, "a", buffering=1) if log_path else None
  counts = {"valid": 0, "invalid": 0, "with work": 0}
  classes = {"padding": {}, "data_format": {}, "dtype": {}}
  common = dict(database=None, deadline=None, derandomize=False,
                suppress_health_check=list(HealthCheck))

  @seed(seed_value)
  @settings(max_examples=valid, **common)
  @given(valid_configs())
  def valid_campaign(cfg):
    if log:
      log.write(f"valid {cfg}\n")
    check_valid(cfg)
    counts["valid"] += 1
    counts["with work"] += has_work(cfg)
    for key in ("padding", "data_format", "dtype"):
      classes[key][cfg[key]] = classes[key].get(cfg[key], 0) + 1

  @seed(seed_value)
  @settings(max_examples=invalid, **common)
  @given(invalid_calls())
  def invalid_campaign(case):
    kw, what = case
    if log:
      log.write(f"invalid {what} {_describe(kw)}\n")
    check_invalid(kw, what)
    counts["invalid"] += 1

  @seed(seed_value)
  @settings(max_examples=valid, **common)
  @given(family_calls())
  def family_valid_campaign(case):
    if log:
      log.write(f"family valid {case.fn} {case.cfg}\n")
    check_family_valid(case)
    counts["family valid"] += 1

  @seed(seed_value)
  @settings(max_examples=invalid, **common)
  @given(family_invalid_calls())
  def family_invalid_campaign(args):
    case, kw, what = args
    if log:
      log.write(f"family invalid {case.fn} {what} {_describe(kw)}\n")
    check_family_invalid(case, kw, what)
    counts["family invalid"] += 1

  counts.update({"family valid": 0, "family invalid": 0})
  campaigns = (("valid", valid_campaign), ("invalid", invalid_campaign),
               ("family valid", family_valid_campaign),
               ("family invalid", family_invalid_campaign))
  failed = 0
  for name, campaign in campaigns:
    if not (invalid if name.endswith("invalid") else valid):
      continue
    try:
      campaign()
    except Exception as e:  # noqa: BLE001 - reported, then exit 1
      failed += 1
      print(f"fuzz {name}: FAILED: {type(e).__name__}: {e}", file=sys.stderr)
    print(f"fuzz {name}: {counts[name]} cases ran", flush=True)
    if name == "valid":
      share = counts["with work"] / max(counts["valid"], 1)
      print(f"fuzz valid: {counts['with work']} with work ({share:.0%}), "
            f"{counts['valid'] - counts['with work']} empty; {classes}")
  print(f"fuzz: {len(campaigns) - failed} passed, {failed} failed")
  return 1 if failed else 0


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--valid", type=int, default=200)
  parser.add_argument("--invalid", type=int, default=1000)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--log", help="append each case here before running it")
  args = parser.parse_args(argv)
  jax.config.update("jax_enable_x64", True)
  return run(args.valid, args.invalid, args.seed, args.log)


if __name__ == "__main__":
  sys.exit(main())
