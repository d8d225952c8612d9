"""DRT ret x2 of configs/multikey_tiny.py: two retrieval groups of one upper layer each
(upper_groups (1, 1), docs/method.md §2.3: group 2's query is the landmark row after group 1),
the same layers, data (incl. 10% 2-hop samples), curriculum and budget as the ret x1 model
(configs/multikey_tiny.py, upper_groups (2,)).

    python train.py --config configs/twohop_tiny_x2.py     # -> runs/multikey_tiny_x2
    python -m gca_jax.export --run_dir runs/multikey_tiny_x2 --out checkpoints/twohop_drt_x2 --dtype bfloat16
"""

from gca_jax.configs import multikey_tiny


def get_config():
  return multikey_tiny.get_config("drt", upper_groups=(1, 1))
