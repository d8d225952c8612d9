"""Model configuration (docs/method.md §1): `DRTConfig`, one frozen, validated dataclass for DRT and its
baselines, and `BlockConfig`, the per-layer hyper-parameters the `gca_jax.layers` modules take
(`DRTConfig.block_config()`). BlockConfig lives here, not in gca_jax.layers, because config must
not import layers (tests/test_import_graph.py); `gca_jax.layers` re-exports it."""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax.numpy as jnp

from gca_jax.ops import gca as _gca_ops
from gca_jax.ops.swa import SWA_IMPLS  # the attention `impl=` names (ops/swa.py)

MODEL_KINDS = ("drt", "swa", "full", "landmark")
GCA_RESIDUALS = ("official", "standard")
DTYPES = ("float32", "bfloat16", "float16")
LOSS_IMPLS = ("logits", "fused")


class ConfigError(ValueError):
  """A configuration value is invalid; the message names the field and the cause."""


def _is_int(v, lo: int) -> bool:
  return isinstance(v, int) and not isinstance(v, bool) and v >= lo


@dataclasses.dataclass(frozen=True)
class BlockConfig:
  """Hyper-parameters shared by the layers of `gca_jax.layers` (docs/method.md §2), one frozen,
  hashable object passed as the first argument: `DecoderBlock(bc, mode="window")`,
  `ChunkEncoder(bc, num_layers=2)`, `UpperBlock(bc)`, `SelfAttention(bc, mode="causal")`,
  `GroupedCrossAttention(bc)`, `ChunkRetriever(bc)`. A model builds it with
  `DRTConfig.block_config()`; other models build it directly.

  num_heads, head_dim: attention heads H and their width Dh (even, for RoPE); H*Dh need not
    equal the input width d (q/k/v project d -> H*Dh, o projects back to d).
  mlp_dim: SwiGLU hidden width (blocks with an MLP need it; a bare attention layer does not).
  window: sliding window W in positions, the query included (mode "window", UpperBlock).
  chunk_size: positions per chunk S including the landmark (UpperBlock's GCA chunks; the block
    size of mode "landmark").
  top_k: chunks retrieved per chunk (ChunkRetriever); the landmark streaming top-k default.
  rope_theta, norm_eps, init_std: RoPE base, RMSNorm epsilon, std of the normal init.
  dtype / param_dtype: compute / parameter storage dtype (a name or a dtype; stored as jnp.dtype).
  swa_impl: self-attention kernel (`gca_jax.ops.swa.SWA_IMPLS`), also the chunk encoder's;
    gca_impl: GCA kernel (`gca_jax.ops.available_gca_impls()`).
  gca_residual: UpperBlock's residual form, "official" or "standard" (docs/method.md §2.4).
  retrieval_proj: ChunkRetriever multiplies the normed query by a learned d x d matrix
    (identity at init) before scoring; False (default) is the official, projection-free score
    (docs/method.md §2.3, "deviations").
  An invalid value raises ConfigError (a ValueError) naming the field.
  """
  num_heads: int
  head_dim: int
  mlp_dim: int | None = None
  window: int | None = None
  chunk_size: int | None = None
  top_k: int | None = None
  rope_theta: float = 10000.0
  norm_eps: float = 1e-5
  init_std: float = 0.02
  dtype: Any = "float32"
  param_dtype: Any = "float32"
  swa_impl: str = "auto"
  gca_impl: str = "auto"
  gca_residual: str = "official"
  retrieval_proj: bool = False

  def _fail(self, field: str, why: str):
    raise ConfigError(f"BlockConfig.{field}={getattr(self, field)!r}: {why}")

  def __post_init__(self):
    for name in ("num_heads", "head_dim"):
      if not _is_int(getattr(self, name), 1):
        self._fail(name, "must be a positive integer")
    if self.head_dim % 2:
      self._fail("head_dim", "must be even for RoPE")
    for name, lo in (("mlp_dim", 1), ("window", 1), ("chunk_size", 2), ("top_k", 1)):
      v = getattr(self, name)
      if v is not None and not _is_int(v, lo):
        self._fail(name, f"must be None or an integer >= {lo}")
    for name in ("rope_theta", "norm_eps", "init_std"):
      v = getattr(self, name)
      if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
        self._fail(name, "must be a positive number")
    for name in ("dtype", "param_dtype"):
      try:
        dt = jnp.dtype(getattr(self, name))
      except TypeError:
        dt = None
      if dt is None or not jnp.issubdtype(dt, jnp.floating):
        self._fail(name, "must be a floating dtype (or its name)")
      object.__setattr__(self, name, dt)
    if self.swa_impl not in SWA_IMPLS:
      self._fail("swa_impl", f"must be one of the attention impls {SWA_IMPLS}")
    gca_impls = _gca_ops.available_gca_impls()
    if self.gca_impl not in gca_impls:
      self._fail("gca_impl", f"must be one of the registered GCA impls {gca_impls}")
    if self.gca_residual not in GCA_RESIDUALS:
      self._fail("gca_residual", f"must be one of {GCA_RESIDUALS}")
    if not isinstance(self.retrieval_proj, bool):
      self._fail("retrieval_proj", "must be True or False")

  def need(self, field: str, who: str):
    """The value of an optional `field` that `who` requires; ConfigError naming it if None."""
    v = getattr(self, field)
    if v is None:
      raise ConfigError(f"BlockConfig.{field} is None: {who} needs it")
    return v

  def replace(self, **kw) -> "BlockConfig":
    return dataclasses.replace(self, **kw)


@dataclasses.dataclass(frozen=True)
class DRTConfig:
  """Architecture of a DRT model (docs/method.md §1-2) or of one of its baselines.

  model_kind:
    "drt"  - lower SWA layers, chunk encoder, retrieval, upper SWA+GCA groups (docs/method.md §2).
    "swa"  - sliding-window-only LM: `num_layers` plain SWA blocks, no landmarks.
    "full" - full-causal-attention LM: `num_layers` plain blocks, no landmarks.
    "landmark" - Landmark Attention (docs/method.md §6, training-time form): landmarks inserted as for DRT
      (one after every `chunk_size - 1` text tokens, the learned `landmark` row), then
      `num_layers` plain blocks whose attention is the grouped softmax over blocks of
      `chunk_size` positions (`gca_jax.ops.landmark`).
    Baselines have depth `lower_layers + sum(upper_groups) + baseline_extra_layers`.
  chunk_size: positions per chunk including the landmark (64 = 63 text + 1 landmark).
  window: sliding-window size W in positions (counted on the landmark-augmented sequence
    for DRT), the query included.
  gca_residual: "official" = `h1 + MLP(norm(h1 + GCA(h1)))` (docs/method.md §2.4, default);
    "standard" = `h2 = h1 + GCA(h1); h2 + MLP(norm(h2))`.
  retrieval_proj: a learned d x d query matrix in each retriever (identity at init; default
    False = the official projection-free score, docs/method.md §2.3).
  swa_impl: attention kernel, one of `gca_jax.ops.swa.SWA_IMPLS`; gca_impl: GCA kernel, one of
    `gca_jax.ops.available_gca_impls()` ("auto", "xla" and the kernels registered on import).
  dtype: compute dtype of activations and matmuls; param_dtype: storage dtype of params.
  remat: "none"; "block" (each block recomputed in the backward pass except the GCA kernel's
    q / output / log-sum-exp); "full" (each block recomputed whole: the least memory).
  loss_impl: the training loss (`gca_jax.models.loss.loss_sums`, docs/method.md §2.6): "fused"
    (`gca_jax.ops.lm_head_loss`, blockwise, no [B,T,V] float32 logits) or "logits" (`tied_head`
    logits + `cross_entropy_loss`). Same loss, gradients and metrics; not an architecture field.
  The landmark token has id `vocab_size` (its own embedding row); logits cover `vocab_size`.
  """

  vocab_size: int = 4096
  d_model: int = 128
  num_heads: int = 4
  mlp_dim: int = 384
  lower_layers: int = 2
  upper_groups: tuple[int, ...] = (2,)
  encoder_layers: int = 2
  window: int = 128
  chunk_size: int = 64
  top_k: int = 4
  model_kind: str = "drt"
  baseline_extra_layers: int = 0
  gca_residual: str = "official"
  retrieval_proj: bool = False
  swa_impl: str = "auto"
  gca_impl: str = "auto"
  rope_theta: float = 10000.0
  norm_eps: float = 1e-5
  init_std: float = 0.02
  dtype: str = "bfloat16"
  param_dtype: str = "float32"
  remat: str = "none"
  loss_impl: str = "fused"

  def __post_init__(self):
    if isinstance(self.upper_groups, list):
      object.__setattr__(self, "upper_groups", tuple(self.upper_groups))
    self.validate()

  def _fail(self, field: str, why: str):
    raise ConfigError(f"DRTConfig.{field}={getattr(self, field)!r}: {why}")

  def validate(self) -> None:
    for name in ("vocab_size", "d_model", "num_heads", "mlp_dim", "window", "chunk_size"):
      v = getattr(self, name)
      if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
        self._fail(name, "must be a positive integer")
    for name in ("lower_layers", "encoder_layers", "baseline_extra_layers"):
      v = getattr(self, name)
      if not isinstance(v, int) or isinstance(v, bool) or v < 0:
        self._fail(name, "must be a non-negative integer")
    if self.model_kind not in MODEL_KINDS:
      self._fail("model_kind", f"must be one of {MODEL_KINDS}")
    if self.d_model % self.num_heads:
      self._fail("d_model", f"must be divisible by num_heads={self.num_heads}")
    if self.head_dim % 2:
      self._fail("num_heads", f"head_dim={self.head_dim} must be even for RoPE")
    if not isinstance(self.upper_groups, tuple) or not all(
        isinstance(g, int) and not isinstance(g, bool) and g > 0 for g in self.upper_groups):
      self._fail("upper_groups", "must be a tuple of positive layer counts, one per group")
    if self.model_kind == "landmark" and self.chunk_size < 2:
      self._fail("chunk_size", "must hold at least one text token and the landmark")
    if self.model_kind == "drt":
      if not self.upper_groups:
        self._fail("upper_groups", "a DRT model needs at least one retrieval group")
      if self.encoder_layers < 1:
        self._fail("encoder_layers", "a DRT model needs at least one chunk-encoder layer")
      if self.chunk_size < 2:
        self._fail("chunk_size", "must hold at least one text token and the landmark")
      if not isinstance(self.top_k, int) or isinstance(self.top_k, bool) or self.top_k < 1:
        self._fail("top_k", "must be a positive integer")
    if self.num_layers < 1:
      self._fail("lower_layers", "the model has no layers")
    if self.gca_residual not in GCA_RESIDUALS:
      self._fail("gca_residual", f"must be one of {GCA_RESIDUALS}")
    if not isinstance(self.retrieval_proj, bool):
      self._fail("retrieval_proj", "must be True or False")
    if self.swa_impl not in SWA_IMPLS:
      self._fail("swa_impl", f"must be one of the attention impls {SWA_IMPLS}")
    gca_impls = _gca_ops.available_gca_impls()
    if self.gca_impl not in gca_impls:
      self._fail("gca_impl", f"must be one of the registered GCA impls {gca_impls}")
    if self.dtype not in DTYPES:
      self._fail("dtype", f"must be one of {DTYPES}")
    if self.param_dtype not in DTYPES:
      self._fail("param_dtype", f"must be one of {DTYPES}")
    if self.remat not in ("none", "block", "full"):
      self._fail("remat", "must be 'none', 'block' or 'full'")
    if self.loss_impl not in LOSS_IMPLS:
      self._fail("loss_impl", f"must be one of {LOSS_IMPLS}")
    if not self.rope_theta > 0:
      self._fail("rope_theta", "must be positive")
    if not self.norm_eps > 0:
      self._fail("norm_eps", "must be positive")
    if not self.init_std > 0:
      self._fail("init_std", "must be positive")

  @property
  def head_dim(self) -> int:
    return self.d_model // self.num_heads

  @property
  def text_per_chunk(self) -> int:
    return self.chunk_size - 1

  @property
  def landmark_id(self) -> int:
    return self.vocab_size

  @property
  def num_layers(self) -> int:
    """Decoder depth: lower + upper for DRT; the same plus extra layers for baselines."""
    n = self.lower_layers + sum(self.upper_groups)
    return n if self.model_kind == "drt" else n + self.baseline_extra_layers

  def block_config(self) -> BlockConfig:
    """The per-layer hyper-parameters for `gca_jax.layers` (chunk_size / top_k only for the
    kinds that use them: drt, landmark)."""
    chunked = self.model_kind in ("drt", "landmark")
    return BlockConfig(
        num_heads=self.num_heads, head_dim=self.head_dim, mlp_dim=self.mlp_dim,
        window=self.window, chunk_size=self.chunk_size if chunked else None,
        top_k=self.top_k if chunked else None, rope_theta=self.rope_theta,
        norm_eps=self.norm_eps, init_std=self.init_std, dtype=self.dtype,
        param_dtype=self.param_dtype, swa_impl=self.swa_impl, gca_impl=self.gca_impl,
        gca_residual=self.gca_residual, retrieval_proj=self.retrieval_proj)

  def replace(self, **kw) -> "DRTConfig":
    return dataclasses.replace(self, **kw)

  def to_dict(self) -> dict[str, Any]:
    d = dataclasses.asdict(self)
    d["upper_groups"] = list(self.upper_groups)
    return d

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> "DRTConfig":
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
      raise ConfigError(f"DRTConfig: unknown field(s) {unknown}; known: {sorted(names)}")
    d = dict(d)
    if "upper_groups" in d:
      d["upper_groups"] = tuple(d["upper_groups"])
    return cls(**d)
