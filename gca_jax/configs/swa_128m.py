"""Sliding-window baseline ("base LM +2 layers", docs/method.md §5): 14 SWA layers, window 512, no retrieval.

Depth = lower 6 + upper 6 + 2 extra layers standing in for DRT's 2-layer chunk encoder, so the
parameter count is close to DRT's. Same data and optimiser as configs/drt_128m.py.
"""

from gca_jax.configs import drt_128m


def get_config():
  c = drt_128m.get_config()
  c.model.model_kind = "swa"
  c.model.baseline_extra_layers = 2
  c.run_dir = "runs/swa_128m"
  return c
