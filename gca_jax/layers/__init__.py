"""Flax Linen layers usable in other models (docs/method.md §2); each streams with `stream=StreamSpec`.

The attention / block / retrieval modules take one `BlockConfig` (re-exported from gca_jax.config;
`DRTConfig.block_config()` builds it for a DRT model): `DecoderBlock(bc, mode="window")`."""

from gca_jax.config import BlockConfig
from gca_jax.layers.attention import SelfAttention, SlidingWindowAttention
from gca_jax.layers.blocks import ChunkEncoder, DecoderBlock, UpperBlock
from gca_jax.layers.common import MLP, Dense, RMSNorm, apply_rope, rope_tables
from gca_jax.layers.gca import GroupedCrossAttention
from gca_jax.layers.memory import ChunkMemory
from gca_jax.layers.retrieval import (ChunkRetriever, blocked_topk_retrieval, masked_topk_weights,
                                      shift_to_next_chunk)
from gca_jax.layers.stream import Segment, StreamSpec

__all__ = [
    "BlockConfig", "ChunkEncoder", "ChunkMemory", "ChunkRetriever", "Dense", "DecoderBlock",
    "GroupedCrossAttention", "MLP", "RMSNorm", "Segment", "SelfAttention", "SlidingWindowAttention",
    "StreamSpec", "UpperBlock", "apply_rope", "blocked_topk_retrieval", "masked_topk_weights",
    "rope_tables", "shift_to_next_chunk",
]
