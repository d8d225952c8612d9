"""Full-causal-attention baseline: 14 layers of full attention, same size and data as DRT 128M.

Depth = 6 + 6 + 2 extra layers (as configs/swa_128m.py). Attention cost is quadratic in
seq_len; on GPU use the cuDNN kernel (`model.swa_impl="auto"` picks it for bf16).
"""

from gca_jax.configs import drt_128m


def get_config():
  c = drt_128m.get_config()
  c.model.model_kind = "full"
  c.model.baseline_extra_layers = 2
  c.run_dir = "runs/full_128m"
  return c
