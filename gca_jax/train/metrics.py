"""Training telemetry: a tqdm progress bar, TensorBoard event files and `metrics.jsonl`.

`<run_dir>/metrics.jsonl` gets one JSON object per line: train records
`{"step", "loss", "lr", "grad_norm", "accuracy", "tokens_per_s", "step_time_s", "time"}` every
`log_every` steps (with recall / passkey samples also "answer_accuracy", "answer_nll",
"answer_count" of that step's batch; with the recall curriculum "stage", "seq_len", "batch"),
eval records `{"step", "eval_loss", "eval_ppl", "eval_accuracy", "eval_tokens", "time"}` every
`eval_every` steps (recall mix: also "eval_answer_accuracy", "eval_answer_nll",
"eval_answer_count" of the held-out official passkey samples), and one `{"step", "event": ...}`
record for start/resume/stop events and curriculum stage changes ("curriculum_stage").
TensorBoard scalars go to `<run_dir>/tensorboard` under the tags
`train/<name>` and `eval/<name>`.

Resume: records of steps after the resumed checkpoint (written by the interrupted run after its
last save) are dropped from `metrics.jsonl`, and TensorBoard is opened with `purge_step`, so both
show one consistent history. Only process 0 writes. On a cloud run_dir (gs://...), which has no
append, records are buffered and the object is rewritten at most every `CLOUD_FLUSH_S` seconds
and at every event, eval, flush and close.
"""

from __future__ import annotations

import json
import math
import sys
import time
from typing import Any, Mapping

from tqdm.auto import tqdm

from gca_jax.train import fs

METRICS_FILE = "metrics.jsonl"
CLOUD_FLUSH_S = 30.0
TB_SUBDIR = "tensorboard"


def _plain(v: Any) -> Any:
  if hasattr(v, "item"):
    v = v.item()
  if isinstance(v, float) and not math.isfinite(v):
    return str(v)  # JSON has no NaN/Inf; keep it readable
  return v


def read_metrics(run_dir: str) -> list[dict]:
  path = fs.join(run_dir, METRICS_FILE)
  if not fs.exists(path):
    return []
  out = []
  for line in fs.read_text(path).splitlines():
    line = line.strip()
    if line:
      try:
        out.append(json.loads(line))
      except json.JSONDecodeError:  # a line cut by a crash
        continue
  return out


class MetricsLogger:
  """Progress bar + TensorBoard + JSONL for one training run."""

  def __init__(self, run_dir: str, *, total_steps: int, start_step: int = 0,
               enabled: bool = True, progress_bar: bool | None = None):
    self.enabled = enabled
    self.run_dir = run_dir
    self.path = fs.join(run_dir, METRICS_FILE)
    self._tb = None
    self._bar = None
    self._pending: list[str] = []
    self._last_upload = time.time()
    if not enabled:
      return
    fs.makedirs(run_dir)
    self._truncate_after(start_step)
    try:
      from tensorboardX import SummaryWriter
      self._tb = SummaryWriter(fs.join(run_dir, TB_SUBDIR),
                               purge_step=start_step + 1 if start_step > 0 else None)
    except Exception as e:  # TensorBoard is telemetry; never fail training for it
      print(f"[metrics] TensorBoard disabled: {e}", file=sys.stderr)
    if progress_bar is None:
      progress_bar = sys.stderr.isatty()
    if progress_bar:
      self._bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True,
                       file=sys.stderr, smoothing=0.1)

  def _truncate_after(self, step: int) -> None:
    records = read_metrics(self.run_dir)
    if not records:
      return
    keep = [r for r in records if int(r.get("step", 0)) <= step]
    if len(keep) != len(records):
      fs.write_text_atomic(self.path, "".join(json.dumps(r) + "\n" for r in keep))

  def _write(self, record: Mapping[str, Any], now: bool = False) -> None:
    self._pending.append(json.dumps({k: _plain(v) for k, v in record.items()}) + "\n")
    if (fs.is_local(self.path) or now
        or time.time() - self._last_upload >= CLOUD_FLUSH_S):
      self._upload()

  def _upload(self) -> None:
    if self._pending:
      fs.append_lines(self.path, self._pending)
      self._pending = []
    self._last_upload = time.time()

  def message(self, text: str) -> None:
    """A log line that does not break the progress bar."""
    if not self.enabled:
      return
    if self._bar is not None:
      self._bar.write(text, file=sys.stderr)
    else:
      print(text, file=sys.stderr, flush=True)

  def event(self, step: int, event: str, **info) -> None:
    if self.enabled:
      self._write({"step": int(step), "event": event, "time": time.time(), **info}, now=True)

  def train(self, step: int, metrics: Mapping[str, Any]) -> None:
    if not self.enabled:
      return
    rec = {"step": int(step), **{k: _plain(v) for k, v in metrics.items()}, "time": time.time()}
    self._write(rec)
    if self._tb is not None:
      for k, v in metrics.items():
        v = _plain(v)
        if isinstance(v, (int, float)):
          self._tb.add_scalar(f"train/{k}", v, step)

  def eval(self, step: int, metrics: Mapping[str, Any]) -> None:
    if not self.enabled:
      return
    self._write({"step": int(step), **{k: _plain(v) for k, v in metrics.items()},
                 "time": time.time()}, now=True)
    if self._tb is not None:
      for k, v in metrics.items():
        v = _plain(v)
        if isinstance(v, (int, float)):
          self._tb.add_scalar(f"eval/{k.removeprefix('eval_')}", v, step)
      self._tb.flush()

  def progress(self, step: int, postfix: Mapping[str, Any] | None = None) -> None:
    if self._bar is None:
      return
    self._bar.n = step
    if postfix:
      self._bar.set_postfix({k: (f"{v:.4g}" if isinstance(v, float) else v)
                             for k, v in postfix.items()}, refresh=False)
    self._bar.refresh()

  def flush(self) -> None:
    if self.enabled:
      self._upload()
    if self._tb is not None:
      self._tb.flush()

  def close(self) -> None:
    if self.enabled:
      self._upload()
    if self._bar is not None:
      self._bar.close()
      self._bar = None
    if self._tb is not None:
      self._tb.flush()
      self._tb.close()
      self._tb = None
