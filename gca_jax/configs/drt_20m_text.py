"""Issue 15, item 3: a 22.2M-parameter DRT trained on real text (SOTU) with 4032-token samples
(64 chunks) through the recall recipe: single needles + named multi-query + multi-key, the
accuracy-gated length curriculum up to 64 chunks; sized for one <= 9-minute H200 call
(untested on a device: see docs/results/session8_2026-12-03/README.md).

    python train.py --config configs/drt_20m_text.py
    python -m gca_jax.export --run_dir runs/drt_20m_text --out checkpoints/drt_20m_text --dtype bfloat16

Model: d 384, 6 heads, SwiGLU 1152, window 256, 4 lower + 4 upper layers (ret x1), 2-layer
chunk encoder, top-k 4, tied 4096-piece vocabulary. Budget: 1500 steps of ~64K tokens
(~98M tokens), AdamW 1e-3 (100 warmup, cosine to 0.1x), b2 0.95, wd 1e-3, clip 1.
"""

from gca_jax.configs import multikey_tiny

STAGES = "5:8,5:2,5:1,8:1,16:1,32:1,64:1"


def get_config(model_kind: str = "drt"):
  c = multikey_tiny.get_config(model_kind)
  m = c.model
  m.d_model = 384
  m.num_heads = 6
  m.mlp_dim = 1152
  m.lower_layers = 4
  m.upper_groups = (4,)
  m.encoder_layers = 2
  m.window = 256
  m.baseline_extra_layers = 0 if model_kind == "drt" else 2
  d = c.data
  d.seq_len = 4032                        # 64 chunks of 63 text tokens (the last stage)
  d.eval_windows = 8
  r = d.recall
  r.p_single, r.p_named, r.p_multikey, r.p_2hop = 0.4, 0.3, 0.2, 0.0
  cu = d.curriculum
  cu.stages = STAGES
  cu.tokens_per_step = 65536              # 208 x 315 ... 16 x 4032
  t = c.train
  t.steps = 1500
  t.global_batch_size = 16                # = 65536 // 4032
  t.lr = 1e-3
  t.warmup_frac = 100 / 1500
  t.eval_every = 250
  t.eval_batch_size = 8
  c.checkpoint.every = 500
  c.run_dir = f"runs/drt_20m_text{'' if model_kind == 'drt' else '_' + model_kind}"
  return c
