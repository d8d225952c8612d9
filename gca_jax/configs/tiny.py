"""Tiny DRT on the shipped Moby-Dick corpus: trains + evaluates on 2 CPU cores in a few minutes.

    python train.py --config configs/tiny.py
    python eval.py --run_dir runs/tiny --task all --lengths 1008,2016

Float32 compute: on CPU, bfloat16 matmuls are emulated and slower than float32, and the point of
this config is a quick end-to-end check, not speed on an accelerator (set
`--config.model.dtype=bfloat16` there).
"""

from gca_jax.train.run_config import base_config


def get_config():
  c = base_config()
  m = c.model
  m.vocab_size = 4096          # data/tokenizer/gca_tiny.model
  m.d_model = 128
  m.num_heads = 4
  m.mlp_dim = 384
  m.lower_layers = 2
  m.upper_groups = (2,)
  m.encoder_layers = 2
  m.window = 128
  m.top_k = 4
  m.dtype = "float32"
  m.param_dtype = "float32"

  c.data.seq_len = 1008        # 16 chunks of 63 text tokens
  c.data.eval_windows = 8

  t = c.train
  t.steps = 200
  t.global_batch_size = 4
  t.lr = 2e-3
  t.warmup_frac = 0.05
  t.log_every = 10
  t.eval_every = 100
  t.eval_batch_size = 4

  c.checkpoint.every = 100
  c.checkpoint.keep = 2
  c.run_dir = "runs/tiny"
  return c
