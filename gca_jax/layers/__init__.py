"""Flax Linen layers usable in other models (SPEC §2)."""

from gca_jax.layers.attention import SelfAttention, SlidingWindowAttention
from gca_jax.layers.blocks import ChunkEncoder, DecoderBlock, UpperBlock
from gca_jax.layers.common import MLP, Dense, RMSNorm, apply_rope, rope_tables
from gca_jax.layers.gca import GroupedCrossAttention
from gca_jax.layers.retrieval import ChunkRetriever, masked_topk_weights, shift_to_next_chunk

__all__ = [
    "ChunkEncoder", "ChunkRetriever", "Dense", "DecoderBlock", "GroupedCrossAttention", "MLP",
    "RMSNorm", "SelfAttention", "SlidingWindowAttention", "UpperBlock", "apply_rope",
    "masked_topk_weights", "rope_tables", "shift_to_next_chunk",
]
