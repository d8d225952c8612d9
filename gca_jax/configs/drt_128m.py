"""DRT "ret x1", the paper's 128M model and training setup (docs/method.md §1, §4).

d_model 768, 12 heads of 64, SwiGLU 2048, 6 lower SWA layers, one retrieval group of 6 upper
layers, 2-layer chunk encoder, window 512, top-k 8; 16K-token samples (16128 = 256 chunks of 63
text tokens), global batch 32, 60K steps, AdamW 2e-3 (0.9, 0.95), wd 1e-3, 2% warmup, cosine,
clip 1.0, bf16 compute with f32 params.

The data paths are placeholders for the user's PG19 (or other book) corpus and a 32000-piece
SentencePiece tokenizer (scripts/prepare_corpus.py trains one): override them, e.g.

    python train.py --config configs/drt_128m.py \\
      --config.data.train_path=/data/pg19/train --config.data.eval_path=/data/pg19/validation \\
      --config.data.tokenizer=/data/pg19_32k.model --config.run_dir=/ckpt/drt_128m

Memory: `remat="block"` (each block recomputed in the backward pass) is on, since 32 x 16K
tokens of activations and float32 logits (32000 wide) do not fit otherwise; with 8 GPUs the
batch is 4 sequences per device (mesh fsdp = all devices). Use grad_accum to keep the global
batch on fewer devices (global_batch_size must be divisible by devices x grad_accum).
"""

from gca_jax.train.run_config import base_config


def get_config():
  c = base_config()
  m = c.model
  m.vocab_size = 32000
  m.d_model = 768
  m.num_heads = 12
  m.mlp_dim = 2048
  m.lower_layers = 6
  m.upper_groups = (6,)
  m.encoder_layers = 2
  m.window = 512
  m.chunk_size = 64
  m.top_k = 8
  m.model_kind = "drt"
  m.dtype = "bfloat16"
  m.param_dtype = "float32"
  m.remat = "block"

  d = c.data
  d.train_path = "data/pg19/train"
  d.eval_path = "data/pg19/validation"
  d.tokenizer = "data/tokenizer/pg19_32k.model"
  d.seq_len = 16128            # 256 chunks x 63 text tokens
  d.eval_windows = 64

  t = c.train
  t.steps = 60_000
  t.global_batch_size = 32
  t.grad_accum = 1
  t.lr = 2e-3
  t.warmup_frac = 0.02
  t.b1, t.b2 = 0.9, 0.95
  t.weight_decay = 1e-3
  t.clip = 1.0
  t.log_every = 10
  t.eval_every = 1000
  t.eval_batch_size = 8

  c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 1, -1, 1
  c.checkpoint.every = 1000
  c.checkpoint.keep = 3
  c.run_dir = "runs/drt_128m"
  return c
