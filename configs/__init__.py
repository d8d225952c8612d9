"""Run configs: each module has get_config() (see gca_jax/train/run_config.py)."""
