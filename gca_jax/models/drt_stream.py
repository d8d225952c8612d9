"""The streaming branch of `DRT.__call__` (docs/method.md §2, §6 streaming): one segment of P text tokens
(any P >= 1, not chunk-aligned) advances the stream held in the "cache" collection.

Window layout (drt and landmark): with r = n_text % L (L = S - 1 text tokens per chunk) text
tokens of the current chunk already seen, the segment covers nv = P + nl landmark-augmented
positions (nl = (r + P) // L completed chunks), laid out in a fixed window of A = P + ceil(P/L)
rows whose first nv are valid, so ONE compiled step serves every offset within a chunk. Window
row i is augmented position S*(n_text // L) + r + i, a landmark iff (r + i) % S == S - 1; text
token j sits at row j + (r + j) // L. For the chunk encoder and GCA the window is also viewed as
NC + 1 chunk slots of S rows (NC = ceil(P/L)): slot row s holds window row s - r, and rows
s < r of slot 0 come from the carried "partial" cache (lower-layer outputs of the unfinished
chunk). A chunk is encoded and written to memory in the segment that holds its landmark; the
retrieval made at a chunk's landmark serves the next chunk (the retrievers' carry).
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from gca_jax.config import BlockConfig
from gca_jax.layers.blocks import ChunkEncoder, DecoderBlock, UpperBlock
from gca_jax.layers.common import Dense, RMSNorm
from gca_jax.layers.memory import ChunkMemory
from gca_jax.layers.retrieval import ChunkRetriever
from gca_jax.layers.stream import Segment, StreamSpec


def window_layout(n_text, P: int, S: int):
  """Index arrays of the segment window (module docstring). Returns a dict: r, nl, nv (int32 []),
  is_lmk bool [A], j_src int32 [A] (text token of each window row), a_txt int32 [P] (window row
  of each text token), slot_rows int32 [(NC+1)*S] (window row of each slot row), window_rows
  int32 [A] (slot row of each window row), lmk_rows int32 [NC] (window row of the m-th
  landmark), NC, A (static ints)."""
  L = S - 1
  NC = -(-P // L)
  A = P + NC
  r = n_text % L
  nl = (r + P) // L
  i_win = jnp.arange(A, dtype=jnp.int32)
  q_win = r + i_win
  j_txt = jnp.arange(P, dtype=jnp.int32)
  s_rows = jnp.arange((NC + 1) * S, dtype=jnp.int32)
  return dict(r=r, nl=nl, nv=P + nl, NC=NC, A=A, is_lmk=(q_win % S) == S - 1,
              j_src=jnp.clip(i_win - q_win // S, 0, P - 1), a_txt=j_txt + (r + j_txt) // L,
              slot_rows=jnp.clip(s_rows - r, 0, A - 1), window_rows=r + i_win,
              lmk_rows=jnp.clip(S * jnp.arange(1, NC + 1, dtype=jnp.int32) - r - 1, 0, A - 1))


def _stream_counter(model: nn.Module, P: int):
  """The model's "n_text" cache (text tokens before this call); advanced by P after the call."""
  n = model.variable("cache", "n_text", jnp.zeros, (), jnp.int32)
  value = n.value
  if not model.is_initializing():
    n.value = value + P
  return value


def _windowed_input(model, x_BxPxd, landmark_d, n_text, S):
  lay = window_layout(n_text, x_BxPxd.shape[1], S)
  h = jnp.where(lay["is_lmk"][None, :, None], landmark_d.astype(x_BxPxd.dtype)[None, None, :],
                jnp.take(x_BxPxd, lay["j_src"], axis=1))
  return h, lay


def plain_stream(model, x_BxPxd, bc: BlockConfig, mode: str, spec: StreamSpec):
  """swa / full: the blocks (mode "window" / "causal") in streaming mode, all rows valid.
  Returns the final hidden states [B, P, d]."""
  h = x_BxPxd
  for i in range(model.config.num_layers):
    h = DecoderBlock(bc, mode, name=f"layer_{i}")(h, stream=spec)
  return h


def landmark_stream(model, x_BxPxd, landmark_d, bc: BlockConfig, spec: StreamSpec):
  """Landmark Attention: window layout with landmarks, blocks in streaming landmark mode."""
  cfg = model.config
  n_text = _stream_counter(model, x_BxPxd.shape[1])
  h, lay = _windowed_input(model, x_BxPxd, landmark_d, n_text, cfg.chunk_size)
  seg = Segment(n_text=n_text, n_valid=lay["nv"])
  for i in range(cfg.num_layers):
    h = DecoderBlock(bc, "landmark", name=f"layer_{i}")(h, stream=spec, segment=seg)
  h = RMSNorm(cfg.norm_eps, name="final_norm", dtype=bc.dtype, param_dtype=bc.param_dtype)(h)
  return jnp.take(h, lay["a_txt"], axis=1)


def drt_stream(model, x_BxPxd, landmark_d, bc: BlockConfig, spec: StreamSpec):
  """DRT: lower SWA layers, chunk encoder on the completed chunks, memory write, per group
  blocked retrieval + gather-then-project of the selected chunks, upper SWA + GCA layers.
  Returns the final-normed hidden states of the P text tokens [B, P, d]."""
  cfg = model.config
  B, P, d = x_BxPxd.shape
  S, H, Dh, K = cfg.chunk_size, cfg.num_heads, cfg.head_dim, cfg.top_k
  dt, pdt = bc.dtype, bc.param_dtype
  n_text = _stream_counter(model, P)
  h, lay = _windowed_input(model, x_BxPxd, landmark_d, n_text, S)
  NC, nl, r = lay["NC"], lay["nl"], lay["r"]
  seg = Segment(n_text=n_text, n_valid=lay["nv"])
  for i in range(cfg.lower_layers):
    h = DecoderBlock(bc, "window", name=f"lower_{i}")(h, stream=spec, segment=seg)

  # chunk slots of lower-layer outputs; slot 0 rows < r come from the carried partial chunk
  NS = (NC + 1) * S
  partial = model.variable("cache", "partial", jnp.zeros, (B, S, d), dt)
  s_rows = jnp.arange(NS, dtype=jnp.int32)
  z = jnp.where((s_rows < r)[None, :, None],
                jnp.pad(partial.value.astype(h.dtype), ((0, 0), (0, NS - S), (0, 0))),
                jnp.take(h, lay["slot_rows"], axis=1))
  if not model.is_initializing():
    partial.value = jnp.asarray(
        jnp.take(z, nl * S + jnp.arange(S, dtype=jnp.int32), axis=1), partial.value.dtype)

  enc = ChunkEncoder(bc, num_layers=cfg.encoder_layers, name="encoder")(
      z[:, :NC * S].reshape(B, NC, S, d))
  lmk_buf, c0, fetch = ChunkMemory(S - 1, dt, name="memory")(enc, nl, stream=spec)
  sink = (jnp.arange(S) < S - 1)[None, None, :, None, None]
  mem_kw = dict(std=cfg.init_std, dtype=dt, param_dtype=pdt)
  mem_k = Dense(H * Dh, ("embed", "heads"), name="mem_k", **mem_kw)
  mem_v = Dense(H * Dh, ("embed", "heads"), name="mem_v", **mem_kw)
  n_sel = (NC + 1) * K
  sel_idx = jnp.broadcast_to(jnp.arange(n_sel, dtype=jnp.int32).reshape(NC + 1, K),
                             (B, NC + 1, K))
  chunk_ids = c0 + jnp.arange(NC, dtype=jnp.int32)
  slots = (lay["slot_rows"], lay["window_rows"])

  layer = 0
  for g, n in enumerate(cfg.upper_groups):
    query = jnp.take(h, lay["lmk_rows"], axis=1)  # [B, NC, d] landmark rows at group entry
    sidx, sw, _ = ChunkRetriever(bc, name=f"retriever_{g}")(
        query, lmk_buf, stream=spec, chunk_ids=chunk_ids, n_complete=nl)
    # the selected chunks' memory K/V [B, (NC+1)*K, S, H, Dh]: gathered, then projected
    gathered = fetch(sidx.reshape(B, n_sel))
    k_mem = jnp.where(sink, mem_k(gathered).reshape(B, n_sel, S, H, Dh), 0).astype(dt)
    v_mem = jnp.where(sink, mem_v(gathered).reshape(B, n_sel, S, H, Dh), 0).astype(dt)
    for _ in range(n):
      h = UpperBlock(bc, name=f"upper_{layer}")(
          h, k_mem, v_mem, sel_idx, sw, stream=spec, segment=seg, slots=slots)
      layer += 1
  h = RMSNorm(cfg.norm_eps, name="final_norm", dtype=dt, param_dtype=pdt)(h)
  return jnp.take(h, lay["a_txt"], axis=1)
