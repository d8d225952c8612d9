"""Streaming inference for the baselines: sliding-window ("swa") and Landmark Attention ("landmark").

Same API and return conventions as the DRT engine (`gca_jax.inference.stream`):

  stream_nll(params, config, tokens, *, segment_len, memory="auto", **kw) -> nll [B, T-1] f32
  stream_logprobs_at(params, config, tokens, positions, *, segment_len, memory="auto", **kw)
      -> (log-probs numpy [B, Q, V] f32 at text `positions`, nll [B, T-1])

dispatched on `config.model_kind`: "drt" delegates to `gca_jax.inference.stream` (all keyword
arguments passed on); "swa" and "landmark" are below; "full" raises NotImplementedError.
`segment_len` is any positive number of text tokens; every segment of a stream runs ONE
jit-compiled step with a fixed-shape state pytree (`TRACE_COUNTS` counts the traces).

SWA ("swa", no landmarks; keyword `swa_block`)
---------------------------------------------
Exact: every layer keeps the PRE-RoPE keys/values of its last W-1 positions ("swa_k"/"swa_v"
[L, B, W-1, H, Dh], "cache_n" valid rows) and runs `stream._swa_cached` (RoPE positions relative
to the cache start, float64 tables), so the NLL equals the full forward pass and no absolute
position ever enters a phase (16M+ positions are as exact as position 0). The state does not grow.

Landmark Attention ("landmark"; keywords `top_k`, `local_blocks`, `mem_block`, `query_block`)
-------------------------------------------------------------------------------------------
The model inserts one landmark after every 63 text tokens (blocks of S = chunk_size positions,
landmark at row S-1), exactly as `DRT` does; the stream lays out each segment's augmented
positions as the DRT engine does (a fixed window of P + ceil(P/63) rows, a valid prefix).

Per layer, head and query (a query at offset o of block c), as in the official LLaMA inference
(`epfml/landmark-attention`, llama/llama_mem.py, `mem_freq` path, `cache_top_k`):

  * local part: the query's own block only (keys 0..o of block c, the landmark key excluded), as
    in the training form (`gca_jax.ops.landmark`) and the official code (its "incomplete" block).
    Option `local_blocks = n` (default 0) additionally always attends the n most recent complete
    blocks (c-n .. c-1), gated by their landmarks like retrieved blocks (in the training form
    every earlier block is gated, so a "local window" is simply a forced retrieval);
  * retrieval: the `top_k` (default `config.top_k`) earlier blocks j < c with the highest score
    q . k_lmk[j] (per head and per query, as the official code without CPU offload), chosen by a
    blocked scan over the landmark keys of the earlier blocks (`mem_block` blocks per step,
    running top-k merge; no [T, T] or [T, C] matrix);
  * weights: the training form's grouped softmax restricted to the selection: the own block's
    keys and the landmark keys of the selected blocks share one softmax; a token of a selected
    block gets (softmax within its block's S-1 tokens) x (its landmark's probability). Weights
    sum to 1. With top_k >= the number of earlier blocks everything is retrieved and the result
    equals the training form, i.e. the full forward `DRT(config).apply` (tests check <= 1e-5).

RoPE (no phase ever exceeds a few blocks, so millions of tokens lose nothing): retrieved blocks
are placed, in their original order, in the block slots right before the current block (the m
selected blocks at virtual blocks c-m .. c-1), as the official inference does ("as if they sat
right before the current block"; the official code leaves a one-block gap before the most recent
top-k blocks, we do not). With everything retrieved (m = c) the virtual positions are the true
ones. For the top-k SCORES a landmark key sits at its true distance when its block is one of the
top_k + local_blocks most recent, else at the distance of block c - (top_k + local_blocks) - 1
(the official code's rule: older landmarks all share the farthest slot). Keys are cached rotated
by their offset inside their block (0..S-1); a query is rotated by o + dist*S for the slot at
`dist` blocks before it (dist <= top_k + local_blocks + 1), from a static float64 table. Absolute
positions appear only as int32 cache indices.

Memory layout (state pytree, M = block capacity, a multiple of the scan block):
  "n_text" int32 []                text tokens processed so far.
  "k", "v" [L, B, H, M*S, Dh] dt   keys (rotated by in-block offset) / values of EVERY past
                                   position (landmarks included), per layer: Landmark's memory
                                   cost, ~2*L*d*dtype bytes per position.
  "lmk"    [L, B, H, M, Dh] dt     copy of each block's landmark key (row S-1), scanned for top-k.
The step writes its window rows at the stream position (rows beyond the valid prefix are scratch,
overwritten by the next segment) and refreshes the landmark keys of the blocks it touched, then
every query gathers its own block + the selected blocks ([B, H, Qb, K+1, S, Dh], queries in
blocks of `query_block` rows). `stream_nll` sizes M for the whole stream; `LandmarkStream.feed`
doubles it (power-of-two capacities, one recompilation per doubling) when it would overflow.
memory="host" is not implemented for Landmark (NotImplementedError); "auto" means "device".
"""

from __future__ import annotations

import math

import flax
import jax
import jax.numpy as jnp
import numpy as np

from gca_jax.config import DRTConfig
from gca_jax.inference import stream as _drt
from gca_jax.inference.stream import (_check_memory, _check_segment, _check_tokens, _dense,
                                      _mlp, _norm, _round_up, _swa_cached, effective_mem_block)
from gca_jax.layers.common import dtype_of, rope_tables

_NEG = -1e30
_FORCE = 1e30  # selection score of forced (local) blocks
# Python side-effect counters: incremented each time a segment step is traced (tests use them).
TRACE_COUNTS: dict[str, int] = {"swa_step": 0, "landmark_step": 0}

_SWA_KW = ("swa_block",)
_LM_KW = ("top_k", "local_blocks", "mem_block", "query_block")


def _check_kind(config: DRTConfig) -> str:
  kind = config.model_kind
  if kind == "full":
    raise NotImplementedError(
        "streaming inference for model_kind='full' is not implemented: full causal attention "
        "needs the K/V of every past position with absolute RoPE positions (no bounded state); "
        "score it with the full forward pass DRT(config).apply")
  if kind not in ("drt", "swa", "landmark"):
    raise ValueError(f"unknown model_kind {kind!r}")
  return kind


def _check_kw(kind: str, kw: dict) -> None:
  allowed = _SWA_KW if kind == "swa" else _LM_KW
  bad = sorted(set(kw) - set(allowed))
  if bad:
    raise TypeError(f"streaming model_kind={kind!r}: unexpected keyword(s) {bad}; "
                    f"accepted: {list(allowed)}")


def _head(params, h_BxPxd, targets_BxP, select_Q, n_select):
  emb = params["embedding"]
  logits = jnp.einsum("btd,vd->btv", h_BxPxd, emb.astype(h_BxPxd.dtype),
                      preferred_element_type=jnp.float32)
  logp = jax.nn.log_softmax(logits, axis=-1)
  nll = -jnp.take_along_axis(logp, targets_BxP[..., None].astype(jnp.int32), axis=-1)[..., 0]
  sel = jnp.take(logp, select_Q, axis=1) if n_select else None
  return nll, sel


# ----------------------------------------------------------------------------- SWA baseline


def swa_init_state(config: DRTConfig, batch: int):
  cfg = config
  dt = dtype_of(cfg.dtype)
  shape = (cfg.num_layers, batch, cfg.window - 1, cfg.num_heads, cfg.head_dim)
  return {"cache_n": jnp.zeros((), jnp.int32), "swa_k": jnp.zeros(shape, dt),
          "swa_v": jnp.zeros(shape, dt)}


def _swa_step(params, state, tokens_BxP, targets_BxP, select_Q, *, config: DRTConfig,
              n_select: int, swa_block: int = 256):
  """One segment of P tokens of the SWA baseline -> (state, nll [B, P], log-probs or None)."""
  TRACE_COUNTS["swa_step"] += 1
  cfg = config
  dt = dtype_of(cfg.dtype)
  B, P = tokens_BxP.shape
  h = jnp.take(params["embedding"], tokens_BxP, axis=0).astype(dt)
  cache_n = state["cache_n"]
  new_k, new_v = [], []
  for i in range(cfg.num_layers):
    p = params[f"layer_{i}"]
    out, kc, vc = _swa_cached(p["attn"], _norm(p["norm1"], h, cfg, dt), state["swa_k"][i],
                              state["swa_v"][i], cache_n, cfg, dt, swa_block)
    h = h + out
    h = h + _mlp(p["mlp"], _norm(p["norm2"], h, cfg, dt), cfg, dt)
    new_k.append(kc)
    new_v.append(vc)
  h = _norm(params["final_norm"], h, cfg, dt)
  nll, sel = _head(params, h, targets_BxP, select_Q, n_select)
  new_state = {"cache_n": jnp.minimum(cache_n + P, cfg.window - 1),
               "swa_k": jnp.stack(new_k).astype(state["swa_k"].dtype).reshape(state["swa_k"].shape),
               "swa_v": jnp.stack(new_v).astype(state["swa_v"].dtype).reshape(state["swa_v"].shape)}
  return new_state, nll, sel


swa_segment_step = jax.jit(_swa_step, static_argnames=("config", "n_select", "swa_block"),
                           donate_argnames=("state",))


class SWAStream:
  """Incremental SWA-baseline stream: `feed(tokens [B, segment_len], targets)` -> nll."""

  def __init__(self, params, config: DRTConfig, batch: int, *, segment_len: int,
               swa_block: int = 256):
    if config.model_kind != "swa":
      raise ValueError(f"SWAStream needs model_kind='swa', got {config.model_kind!r}")
    _check_segment(config, segment_len)
    self.params = flax.core.meta.unbox(params)
    self.config = config
    self.segment_len = int(segment_len)
    self.swa_block = swa_block
    self.state = swa_init_state(config, batch)

  def close(self) -> None:
    pass

  def feed(self, tokens_BxL, targets_BxL=None, select=None):
    tokens = jnp.asarray(tokens_BxL, jnp.int32)
    if tokens.shape[1] != self.segment_len:
      raise ValueError(f"feed: expected {self.segment_len} tokens per segment, got {tokens.shape[1]}")
    targets = jnp.zeros_like(tokens) if targets_BxL is None else jnp.asarray(targets_BxL, jnp.int32)
    sel = jnp.zeros((0,), jnp.int32) if select is None else jnp.asarray(select, jnp.int32)
    self.state, nll, lp = swa_segment_step(self.params, self.state, tokens, targets, sel,
                                           config=self.config, n_select=int(sel.shape[0]),
                                           swa_block=self.swa_block)
    return nll if select is None else (nll, lp)


# ----------------------------------------------------------------------------- Landmark baseline


def landmark_init_state(config: DRTConfig, batch: int, capacity: int, *, mem_block: int = 4096):
  """Empty Landmark stream state with room for `capacity` blocks (rounded up to a multiple of the
  scan block, see `stream.effective_mem_block`)."""
  cfg = config
  dt = dtype_of(cfg.dtype)
  M = _round_up(max(capacity, 1), effective_mem_block(capacity, mem_block))
  nL, H, Dh, S = cfg.num_layers, cfg.num_heads, cfg.head_dim, cfg.chunk_size
  return {"n_text": jnp.zeros((), jnp.int32),
          "k": jnp.zeros((nL, batch, H, M * S, Dh), dt),
          "v": jnp.zeros((nL, batch, H, M * S, Dh), dt),
          "lmk": jnp.zeros((nL, batch, H, M, Dh), dt)}


def landmark_grow_state(state, config: DRTConfig, capacity: int, *, mem_block: int = 4096):
  """`state` with room for `capacity` blocks (never shrinks)."""
  S = config.chunk_size
  M = state["lmk"].shape[3]
  newM = _round_up(max(capacity, M), effective_mem_block(capacity, mem_block))
  if newM == M:
    return state
  pad = lambda x, n: jnp.pad(x, [(0, 0)] * 3 + [(0, n), (0, 0)])
  return {"n_text": state["n_text"], "k": pad(state["k"], (newM - M) * S),
          "v": pad(state["v"], (newM - M) * S), "lmk": pad(state["lmk"], newM - M)}


def _rot(x, pos, cos_t, sin_t):
  """RoPE of x [..., D] by integer positions `pos` (broadcastable to x[..., 0]) read from static
  (float64-built) tables [N, D/2]; f32 math, x's dtype out (as layers.common.apply_rope)."""
  d2 = x.shape[-1] // 2
  c = jnp.take(cos_t, pos, axis=0)
  s = jnp.take(sin_t, pos, axis=0)
  xf = x.astype(jnp.float32)
  x1, x2 = xf[..., :d2], xf[..., d2:]
  return jnp.concatenate([x1 * c - x2 * s, x2 * c + x1 * s], axis=-1).astype(x.dtype)


def _landmark_attend(q_BxHxQxD, c_Q, o_Q, k_all, v_all, lmk_all, layer: int, *, S: int,
                     top_k: int, local: int, block: int, cos_t, sin_t):
  """Retrieval + grouped-softmax attention for Q queries (block ids c, in-block offsets o) of one
  layer over the caches (already holding this segment's keys). Returns [B, H, Q, Dh]."""
  B, H, Q, Dh = q_BxHxQxD.shape
  M = lmk_all.shape[3]
  Kt = top_k + local
  scale = 1.0 / math.sqrt(Dh)
  base = (layer * B + jnp.arange(B, dtype=jnp.int32)[:, None]) * H + jnp.arange(H, dtype=jnp.int32)
  base = (base * M)[:, :, None, None]  # [B, H, 1, 1] flat row of block 0 of (layer, b, h)
  q = q_BxHxQxD
  o4 = o_Q[None, None, :]

  # (1) older blocks j < c - Kt: blocked top-k scan, landmark at distance Kt+1 blocks
  q_old = _rot(q, o4 + (Kt + 1) * S, cos_t, sin_t)
  hi = c_Q - Kt
  n_blocks = jnp.clip((jnp.max(hi) + block - 1) // block, 0, M // block)

  def body(carry):
    b, vals, idx = carry
    lb = jax.lax.dynamic_slice(lmk_all, (layer, 0, 0, b * block, 0), (1, B, H, block, Dh))[0]
    s = jnp.einsum("bhqd,bhmd->bhqm", q_old, lb, preferred_element_type=jnp.float32) * scale
    j = b * block + jnp.arange(block, dtype=jnp.int32)
    s = jnp.where((j[None, :] < hi[:, None])[None, None], s, -jnp.inf)
    allv = jnp.concatenate([vals, s], axis=-1)
    alli = jnp.concatenate([idx, jnp.broadcast_to(j, (B, H, Q, block))], axis=-1)
    v, p = jax.lax.top_k(allv, top_k)
    return b + 1, v, jnp.take_along_axis(alli, p, axis=-1)

  vals0 = jnp.full((B, H, Q, top_k), -jnp.inf, jnp.float32)
  idx0 = jnp.zeros((B, H, Q, top_k), jnp.int32)
  _, vals, idx = jax.lax.while_loop(lambda cr: cr[0] < n_blocks, body,
                                    (jnp.zeros((), jnp.int32), vals0, idx0))

  # (2) the Kt most recent blocks at their true distance; the `local` nearest are forced
  dist_r = Kt - np.arange(Kt)  # static: block c-Kt+u is Kt-u blocks back
  jr = c_Q[:, None] - Kt + jnp.arange(Kt, dtype=jnp.int32)[None, :]  # [Q, Kt]
  lr = jnp.take(lmk_all.reshape(-1, Dh), base + jnp.clip(jr, 0, M - 1)[None, None], axis=0,
                mode="clip")  # [B, H, Q, Kt, Dh]
  qr = _rot(q[:, :, :, None, :], o4[..., None] + jnp.asarray(dist_r * S, jnp.int32), cos_t, sin_t)
  sr = jnp.einsum("bhqkd,bhqkd->bhqk", qr, lr, preferred_element_type=jnp.float32) * scale
  sr = jnp.where(jnp.asarray(dist_r <= local), _FORCE, sr)
  sr = jnp.where((jr >= 0)[None, None], sr, -jnp.inf)
  v, p = jax.lax.top_k(jnp.concatenate([vals, sr], -1), Kt)
  sel = jnp.take_along_axis(jnp.concatenate([idx, jnp.broadcast_to(jr, (B, H, Q, Kt))], -1), p, -1)
  sel = jnp.sort(jnp.where(v > -jnp.inf, sel, M + 1), axis=-1)  # original order, invalid last
  ok = sel <= M
  m = jnp.sum(ok, axis=-1, keepdims=True).astype(jnp.int32)
  dist = jnp.where(ok, m - jnp.arange(Kt, dtype=jnp.int32), 0)  # slots right before block c

  # (3) gather own block + selected blocks, grouped softmax
  blocks = jnp.concatenate([jnp.where(ok, sel, 0), jnp.broadcast_to(c_Q[:, None], (B, H, Q, 1))], -1)
  dists = jnp.concatenate([dist, jnp.zeros((B, H, Q, 1), jnp.int32)], -1)  # [B, H, Q, Kt+1]
  slot_ok = jnp.concatenate([ok, jnp.ones((B, H, Q, 1), bool)], -1)
  flat = base + jnp.clip(blocks, 0, M - 1)
  kg = jnp.take(k_all.reshape(-1, S, Dh), flat, axis=0, mode="clip")  # [B, H, Q, Kt+1, S, Dh]
  vg = jnp.take(v_all.reshape(-1, S, Dh), flat, axis=0, mode="clip")
  qs = _rot(q[:, :, :, None, :], o4[..., None] + dists * S, cos_t, sin_t)  # [B, H, Q, Kt+1, Dh]
  s = jnp.einsum("bhqkd,bhqktd->bhqkt", qs, kg, preferred_element_type=jnp.float32) * scale
  t = np.arange(S)
  is_own = jnp.asarray(np.arange(Kt + 1) == Kt)[:, None]  # [Kt+1, 1]
  own_m = ((t[None, :] <= o_Q[:, None]) & jnp.asarray(t != S - 1))[:, None, :]  # [Q, 1, S]
  lmk_t = jnp.asarray(t == S - 1)
  top_mask = jnp.where(is_own, own_m, slot_ok[..., None] & lmk_t)  # [B, H, Q, Kt+1, S]
  within_mask = ~is_own & slot_ok[..., None] & ~lmk_t
  top = jax.nn.softmax(jnp.where(top_mask, s, _NEG).reshape(B, H, Q, (Kt + 1) * S), axis=-1)
  top = top.reshape(B, H, Q, Kt + 1, S)
  within = jax.nn.softmax(jnp.where(within_mask, s, _NEG), axis=-1)
  w = (jnp.where(top_mask & is_own, top, 0.0)
       + jnp.where(within_mask, within * top[..., S - 1:], 0.0))
  out = jnp.einsum("bhqkt,bhqktd->bhqd", w.astype(vg.dtype), vg,
                   preferred_element_type=jnp.float32)
  return out.astype(q.dtype)


def _landmark_step(params, state, tokens_BxP, targets_BxP, select_Q, *, config: DRTConfig,
                   n_select: int, top_k: int, local_blocks: int, mem_block: int,
                   query_block: int):
  """One segment of P text tokens (any P >= 1) of the Landmark baseline -> (state, nll [B, P],
  log-probs [B, n_select, V] or None). Window layout as `stream._segment_step`: with r = n_text %
  63, window row i holds augmented position pos0 + i (pos0 = 64 * (n_text // 63) + r); it is a
  landmark iff (r + i) % 64 == 63; the first P + (r + P) // 63 rows are valid."""
  TRACE_COUNTS["landmark_step"] += 1
  cfg = config
  dt = dtype_of(cfg.dtype)
  S, L = cfg.chunk_size, cfg.text_per_chunk
  H, Dh = cfg.num_heads, cfg.head_dim
  B, P = tokens_BxP.shape
  NC = -(-P // L)
  A = P + NC
  M = state["lmk"].shape[3]
  block = effective_mem_block(M, mem_block)
  if M % block:
    block = math.gcd(M, block)
  Kt = top_k + local_blocks
  cos_t, sin_t = rope_tables(np.arange((Kt + 2) * S), Dh, cfg.rope_theta)  # static, float64-built

  n_text = state["n_text"]
  r = n_text % L
  c0 = n_text // L
  pos0 = c0 * S + r
  i_win = jnp.arange(A, dtype=jnp.int32)
  q_win = r + i_win
  is_lmk = (q_win % S) == S - 1
  j_src = jnp.clip(i_win - q_win // S, 0, P - 1)
  x = jnp.take(params["embedding"], tokens_BxP, axis=0).astype(dt)
  h = jnp.where(is_lmk[None, :, None], params["landmark"].astype(dt)[None, None, :],
                jnp.take(x, j_src, axis=1))
  o_win = q_win % S
  c_win = c0 + q_win // S
  # query blocks (padding rows repeat row 0's block/offset: they are discarded)
  qb = max(1, min(query_block, A))
  nb = -(-A // qb)
  padq = nb * qb - A
  c_pad = jnp.concatenate([c_win, jnp.full((padq,), c0, jnp.int32)]).reshape(nb, qb)
  o_pad = jnp.concatenate([o_win, jnp.zeros((padq,), jnp.int32)]).reshape(nb, qb)

  k_all, v_all, lmk_all = state["k"], state["v"], state["lmk"]
  for li in range(cfg.num_layers):
    p = params[f"layer_{li}"]
    pa = p["attn"]
    xin = _norm(p["norm1"], h, cfg, dt)
    q = _dense(pa["q_proj"], xin, dt).reshape(B, A, H, Dh).transpose(0, 2, 1, 3)
    k = _dense(pa["k_proj"], xin, dt).reshape(B, A, H, Dh).transpose(0, 2, 1, 3)
    v = _dense(pa["v_proj"], xin, dt).reshape(B, A, H, Dh).transpose(0, 2, 1, 3)
    k = _rot(k, o_win[None, None, :], cos_t, sin_t)  # cached rotated by in-block offset
    k_all = jax.lax.dynamic_update_slice(k_all, k[None].astype(k_all.dtype), (li, 0, 0, pos0, 0))
    v_all = jax.lax.dynamic_update_slice(v_all, v[None].astype(v_all.dtype), (li, 0, 0, pos0, 0))
    rows = jax.lax.dynamic_slice(k_all, (li, 0, 0, c0 * S, 0), (1, B, H, (NC + 1) * S, Dh))
    rows = rows.reshape(1, B, H, NC + 1, S, Dh)[:, :, :, :, S - 1]
    lmk_all = jax.lax.dynamic_update_slice(lmk_all, rows, (li, 0, 0, c0, 0))
    qp = jnp.pad(q, ((0, 0), (0, 0), (0, padq), (0, 0))).reshape(B, H, nb, qb, Dh)

    def attend(xs, k_all=k_all, v_all=v_all, lmk_all=lmk_all, li=li):
      qx, cx, ox = xs
      return _landmark_attend(qx, cx, ox, k_all, v_all, lmk_all, li, S=S, top_k=top_k,
                              local=local_blocks, block=block, cos_t=cos_t, sin_t=sin_t)

    o = jax.lax.map(attend, (qp.transpose(2, 0, 1, 3, 4), c_pad, o_pad))  # [nb, B, H, qb, Dh]
    o = o.transpose(1, 0, 3, 2, 4).reshape(B, nb * qb, H * Dh)[:, :A]
    h = h + _dense(pa["o_proj"], o, dt)
    h = h + _mlp(p["mlp"], _norm(p["norm2"], h, cfg, dt), cfg, dt)

  h = _norm(params["final_norm"], h, cfg, dt)
  j_txt = jnp.arange(P, dtype=jnp.int32)
  ht = jnp.take(h, j_txt + (r + j_txt) // L, axis=1)  # text rows
  nll, sel = _head(params, ht, targets_BxP, select_Q, n_select)
  new_state = {"n_text": n_text + P, "k": k_all, "v": v_all, "lmk": lmk_all}
  return new_state, nll, sel


landmark_segment_step = jax.jit(
    _landmark_step,
    static_argnames=("config", "n_select", "top_k", "local_blocks", "mem_block", "query_block"),
    donate_argnames=("state",))


class LandmarkStream:
  """Incremental Landmark-Attention stream: `feed(tokens [B, segment_len], targets)` -> nll.

  Keeps the K/V of every past position (capacity in blocks of chunk_size positions, doubled
  with power-of-two capacities when a segment would overflow it: one recompilation per doubling).
  `top_k` (default config.top_k) blocks retrieved per layer, head and query, plus the
  `local_blocks` most recent blocks always attended (default 0: the own block only, as trained);
  see the module docstring."""

  def __init__(self, params, config: DRTConfig, batch: int, *, segment_len: int,
               capacity: int = 64, top_k: int | None = None, local_blocks: int = 0,
               mem_block: int = 4096, query_block: int = 128):
    if config.model_kind != "landmark":
      raise ValueError(f"LandmarkStream needs model_kind='landmark', got {config.model_kind!r}")
    self.n = _check_segment(config, segment_len)
    top_k = config.top_k if top_k is None else top_k
    for name, val, lo in (("top_k", top_k, 1), ("local_blocks", local_blocks, 0),
                          ("mem_block", mem_block, 1), ("query_block", query_block, 1)):
      if isinstance(val, bool) or not isinstance(val, (int, np.integer)) or val < lo:
        raise ValueError(f"{name}={val!r} must be an int >= {lo}")
    self.params = flax.core.meta.unbox(params)
    self.config = config
    self.segment_len = int(segment_len)
    self.kw = dict(top_k=int(top_k), local_blocks=int(local_blocks), mem_block=int(mem_block),
                   query_block=int(query_block))
    self.state = landmark_init_state(config, batch, capacity, mem_block=mem_block)
    self.n_text = 0

  def close(self) -> None:
    pass

  def memory_bytes(self) -> dict[str, int]:
    return {"device": sum(int(x.nbytes) for x in jax.tree.leaves(self.state)), "host": 0}

  def feed(self, tokens_BxL, targets_BxL=None, select=None):
    tokens = jnp.asarray(tokens_BxL, jnp.int32)
    if tokens.shape[1] != self.segment_len:
      raise ValueError(f"feed: expected {self.segment_len} tokens per segment, got {tokens.shape[1]}")
    targets = jnp.zeros_like(tokens) if targets_BxL is None else jnp.asarray(targets_BxL, jnp.int32)
    need = self.n_text // self.config.text_per_chunk + self.n + 1  # blocks the step may touch
    if need > self.state["lmk"].shape[3]:
      self.state = landmark_grow_state(self.state, self.config, 1 << math.ceil(math.log2(need)),
                                       mem_block=self.kw["mem_block"])
    sel = jnp.zeros((0,), jnp.int32) if select is None else jnp.asarray(select, jnp.int32)
    self.state, nll, lp = landmark_segment_step(self.params, self.state, tokens, targets, sel,
                                                config=self.config, n_select=int(sel.shape[0]),
                                                **self.kw)
    self.n_text += self.segment_len
    return nll if select is None else (nll, lp)


# ----------------------------------------------------------------------------- drivers


def _run(params, config: DRTConfig, tokens, segment_len: int, memory: str, kw: dict,
         positions=None):
  kind = config.model_kind
  tokens = _check_tokens(tokens)
  n = _check_segment(config, segment_len)
  B, T = tokens.shape
  nseg = _drt.num_segments(T, segment_len)
  if kind == "swa":
    stream = SWAStream(params, config, B, segment_len=segment_len, **kw)
  else:
    if memory == "host":
      raise NotImplementedError("Landmark streaming keeps its K/V cache on the device; "
                                "memory='host' is not implemented (use 'device' or 'auto')")
    cap = ((nseg - 1) * segment_len) // config.text_per_chunk + n + 1
    stream = LandmarkStream(params, config, B, segment_len=segment_len, capacity=cap, **kw)
  return _drt.run_segments(stream, tokens, segment_len, positions)


def stream_nll(params, config: DRTConfig, tokens, *, segment_len: int, memory: str = "auto", **kw):
  """Per-token NLL [B, T-1] float32 of token t+1 given tokens <= t, streamed segment by segment
  (one compiled step per stream), for model_kind "drt" (delegated to `gca_jax.inference.stream`,
  `kw` passed on), "swa" (exact: equals the full forward pass; kw: swa_block) or "landmark"
  (top-k block retrieval; kw: top_k, local_blocks, mem_block, query_block; equals the full
  forward pass when top_k >= the number of blocks). "full": NotImplementedError."""
  kind = _check_kind(config)
  if kind == "drt":
    return _drt.stream_nll(params, config, tokens, segment_len=segment_len, memory=memory, **kw)
  _check_memory(memory)
  _check_kw(kind, kw)
  nll, _ = _run(params, config, tokens, segment_len, memory, kw)
  return nll


def stream_logprobs_at(params, config: DRTConfig, tokens, positions, *, segment_len: int,
                       memory: str = "auto", **kw):
  """Log-probabilities [B, Q, V] (f32 numpy) of the token following each text position in
  `positions` (int [Q], each < T-1), given tokens <= that position, and the NLL [B, T-1], without
  materialising [T, V]. Returns (logprobs, nll). Model kinds and `kw` as `stream_nll`."""
  kind = _check_kind(config)
  if kind == "drt":
    return _drt.stream_logprobs_at(params, config, tokens, positions, segment_len=segment_len,
                                   memory=memory, **kw)
  _check_memory(memory)
  _check_kw(kind, kw)
  positions = np.asarray(positions, np.int64)
  T = _check_tokens(tokens).shape[1]
  if positions.ndim != 1 or np.any(positions >= T - 1) or np.any(positions < 0):
    raise ValueError(f"positions must be 1-D text positions in [0, {T - 1}), got {positions}")
  nll, lp = _run(params, config, tokens, segment_len, memory, kw, positions)
  return lp, nll


stream_logits_at = stream_logprobs_at
