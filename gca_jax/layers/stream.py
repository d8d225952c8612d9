"""Streaming mode of the layers: the static spec and the per-call segment position (docs/method.md §8)."""

import dataclasses
import math

import flax
import jax


@dataclasses.dataclass(frozen=True)
class StreamSpec:
  """Static (hashable) streaming options, passed as `stream=` to modules.

  capacity_tokens: text tokens the caches must be able to hold.
  memory: "device" | "host": where growable chunk memories live.
  mem_block: blocked top-k scan block (chunks).
  swa_block: query block of the cached sliding-window attention.
  query_block: landmark query rows per block.
  landmark_top_k: landmark inference top-k (None: config.top_k).
  landmark_local_blocks: landmark local blocks always attended.
  """
  capacity_tokens: int
  memory: str = "device"
  mem_block: int = 4096
  swa_block: int = 256
  query_block: int = 256
  landmark_top_k: int | None = None
  landmark_local_blocks: int = 0

  def __post_init__(self):
    if self.memory not in ("device", "host"):
      raise ValueError(f"StreamSpec.memory must be 'device' or 'host', got {self.memory!r}")
    for name in ("capacity_tokens", "mem_block", "swa_block", "query_block"):
      if getattr(self, name) < 1:
        raise ValueError(f"StreamSpec.{name} must be >= 1, got {getattr(self, name)}")


@flax.struct.dataclass
class Segment:
  """Traced position of one call in its stream, built by the model per call.

  n_text: int32 []: text tokens of the stream before this segment.
  n_valid: int32 []: valid (non-padding) rows of this call's window.
  """
  n_text: jax.Array
  n_valid: jax.Array


def round_up(x: int, m: int) -> int:
  return -(-x // m) * m


def effective_mem_block(rows: int, mem_block: int) -> int:
  """Block of the blocked top-k scans: `mem_block`, or `rows` rounded up to a power of two when
  that is smaller (so small memories are one block)."""
  return max(1, min(mem_block, 1 << max(0, math.ceil(math.log2(max(rows, 1))))))


def memory_rows(spec: StreamSpec, tokens_per_row: int) -> int:
  """Rows of a growable per-chunk buffer for `spec.capacity_tokens` text tokens: every chunk of
  `tokens_per_row` text tokens, plus 2 rows of room (a step writes ceil(P / tokens_per_row)
  rows at the chunk count, the ones past the completed chunks scratch), rounded up to a multiple
  of the scan block (`effective_mem_block`)."""
  need = spec.capacity_tokens // tokens_per_row + 2
  return round_up(need, effective_mem_block(need, spec.mem_block))


def scan_block(rows: int, mem_block: int) -> int:
  """The scan block for a buffer of `rows` rows: `effective_mem_block`, reduced to divide rows."""
  blk = effective_mem_block(rows, mem_block)
  return blk if rows % blk == 0 else math.gcd(rows, blk)
