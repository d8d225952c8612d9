"""DRT "ret x2": configs/drt_128m.py with two retrieval groups of 3 upper layers (docs/method.md §1)."""

from gca_jax.configs import drt_128m


def get_config():
  c = drt_128m.get_config()
  c.model.upper_groups = (3, 3)
  c.run_dir = "runs/drt_128m_x2"
  return c
