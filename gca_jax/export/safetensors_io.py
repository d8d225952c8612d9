"""A dependency-free reader/writer of the safetensors format (numpy + ml_dtypes for bfloat16).

File layout: 8 bytes (little-endian uint64) header size N, then N bytes of JSON
`{name: {"dtype": "F32", "shape": [...], "data_offsets": [begin, end]}, ...,
"__metadata__": {str: str}}` (padded with spaces to a multiple of 8 bytes), then the raw
little-endian tensor bytes; offsets are relative to the end of the header, tensors are
contiguous, without gaps, and together cover the whole data section.
"""

from __future__ import annotations

import json
import os
import struct
import sys
from typing import Mapping

import ml_dtypes
import numpy as np

DTYPES = {
    "F64": np.dtype(np.float64), "F32": np.dtype(np.float32), "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "I64": np.dtype(np.int64), "I32": np.dtype(np.int32), "I16": np.dtype(np.int16),
    "I8": np.dtype(np.int8),
    "U64": np.dtype(np.uint64), "U32": np.dtype(np.uint32), "U16": np.dtype(np.uint16),
    "U8": np.dtype(np.uint8), "BOOL": np.dtype(np.bool_),
}
_NAMES = {v: k for k, v in DTYPES.items()}
_MAX_HEADER = 100 * 1024 * 1024


class SafetensorsError(ValueError):
  """A safetensors file is malformed or a tensor cannot be stored; the message names it."""


def dtype_name(dtype) -> str:
  """The safetensors dtype name ("F32", "BF16", ...) of a numpy dtype."""
  dt = np.dtype(dtype)
  if dt not in _NAMES:
    raise SafetensorsError(f"dtype {dt} has no safetensors name; supported: "
                           f"{sorted(str(d) for d in _NAMES)}")
  return _NAMES[dt]


def _le_bytes(x: np.ndarray) -> bytes:
  x = np.ascontiguousarray(x)
  if sys.byteorder == "big" and x.dtype.itemsize > 1:
    x = x.byteswap()
  return x.tobytes()


def write(f, tensors: Mapping[str, np.ndarray], metadata: Mapping[str, str] | None = None):
  """Writes `tensors` (name -> array, in the given order) to the binary file object `f`."""
  header: dict = {}
  if metadata:
    bad = [k for k, v in metadata.items() if not (isinstance(k, str) and isinstance(v, str))]
    if bad:
      raise SafetensorsError(f"__metadata__ keys and values must be strings; not: {bad}")
    header["__metadata__"] = dict(metadata)
  arrays = []
  offset = 0
  for name, x in tensors.items():
    if not isinstance(name, str) or not name or name == "__metadata__":
      raise SafetensorsError(f"tensor name {name!r}: must be a non-empty string, not "
                             "'__metadata__'")
    x = np.asarray(x)
    if not x.dtype.isnative:
      x = x.astype(x.dtype.newbyteorder("="))
    nbytes = x.size * x.dtype.itemsize
    header[name] = {"dtype": dtype_name(x.dtype), "shape": [int(d) for d in x.shape],
                    "data_offsets": [offset, offset + nbytes]}
    arrays.append(x)
    offset += nbytes
  raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
  raw += b" " * (-len(raw) % 8)
  f.write(struct.pack("<Q", len(raw)))
  f.write(raw)
  for x in arrays:
    f.write(_le_bytes(x))


def save_file(path: str, tensors: Mapping[str, np.ndarray],
              metadata: Mapping[str, str] | None = None) -> None:
  """Writes a safetensors file at `path` and fsyncs it (not atomic by itself)."""
  with open(path, "wb") as f:
    write(f, tensors, metadata)
    f.flush()
    os.fsync(f.fileno())


def read_header(path: str) -> tuple[dict, int]:
  """(header dict, byte offset of the data section) of the safetensors file `path`."""
  size = os.path.getsize(path)
  with open(path, "rb") as f:
    head = f.read(8)
    if len(head) < 8:
      raise SafetensorsError(f"{path}: {size} bytes, too short for a safetensors header")
    (n,) = struct.unpack("<Q", head)
    if n > _MAX_HEADER or 8 + n > size:
      raise SafetensorsError(f"{path}: header size {n} does not fit the file ({size} bytes); "
                             "not a safetensors file?")
    raw = f.read(n)
  try:
    header = json.loads(raw.decode("utf-8"))
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    raise SafetensorsError(f"{path}: header is not valid JSON ({e})") from e
  if not isinstance(header, dict):
    raise SafetensorsError(f"{path}: header is not a JSON object")
  return header, 8 + n


def load_file(path: str) -> tuple[dict[str, np.ndarray], dict[str, str]]:
  """(name -> numpy array in file order, metadata) of the safetensors file `path`."""
  header, start = read_header(path)
  metadata = header.pop("__metadata__", None) or {}
  data_len = os.path.getsize(path) - start
  entries = []
  for name, e in header.items():
    try:
      dt = DTYPES[e["dtype"]]
      shape = tuple(int(d) for d in e["shape"])
      b, end = (int(o) for o in e["data_offsets"])
    except (KeyError, TypeError, ValueError) as err:
      raise SafetensorsError(f"{path}: tensor {name!r} has a malformed entry {e!r} "
                             f"(known dtypes: {sorted(DTYPES)})") from err
    n = int(np.prod(shape, dtype=np.int64)) * dt.itemsize
    if end - b != n:
      raise SafetensorsError(f"{path}: tensor {name!r} {e['dtype']}{list(shape)} needs {n} "
                             f"bytes, its data_offsets {[b, end]} span {end - b}")
    entries.append((b, end, name, dt, shape))
  entries.sort(key=lambda t: (t[0], t[1]))
  pos = 0
  for b, end, name, _, _ in entries:
    if b != pos:
      raise SafetensorsError(f"{path}: tensor {name!r} starts at byte {b}, expected {pos} "
                             "(tensors must be contiguous, without gaps or overlap)")
    pos = end
  if pos != data_len:
    raise SafetensorsError(f"{path}: tensors cover {pos} bytes, the data section has "
                           f"{data_len} (truncated or trailing bytes)")
  buf = bytearray(data_len)
  with open(path, "rb") as f:
    f.seek(start)
    if f.readinto(buf) != data_len:
      raise SafetensorsError(f"{path}: short read")
  by_name = {t[2]: t for t in entries}
  out = {}
  for name in header:
    b, end, _, dt, shape = by_name[name]
    x = np.frombuffer(buf, dtype=dt, count=(end - b) // dt.itemsize, offset=b)
    if sys.byteorder == "big" and dt.itemsize > 1:
      x = x.byteswap()
    out[name] = x.reshape(shape)
  return out, dict(metadata)
