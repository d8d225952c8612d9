"""Shipped run configs: each module has get_config() (see gca_jax/train/run_config.py).

`gca-train --config tiny` / `python train.py --config configs/tiny.py` load these files.
"""
