"""The training loop: data, sharded state, jitted step, evals, checkpoints, telemetry, preemption.

`train(config)` runs (or resumes) the run described by a validated run config
(gca_jax/train/run_config.py) and returns a `TrainResult`. Steps are counted in optimizer
updates: "step N" is the state after N updates and the N-th batch; checkpoints, metrics and
messages all use this count.

Loop order per step: dispatch the jitted update on the current batch (asynchronous), fetch and
place the *next* batch on the host while the device computes, then wait for this step's metrics
(one small device->host copy per step), check them, log, evaluate, save. The iterator state
saved with step N is the snapshot taken right after batch N was drawn, so a resumed run sees
batch N+1 next, exactly as an uninterrupted one.

Stops:
  - completion: final eval, final save (unless that step is saved already), wait for the save.
  - SIGTERM (preemption) or SIGINT (Ctrl-C): the current step finishes, the state is saved and
    the save waited for; `TrainResult.status == "preempted"` (train.py exits 0). A repeated
    SIGTERM during that save is ignored; a second SIGINT aborts (KeyboardInterrupt). With several processes the flag is
    agreed on by all of them each step, so every host saves the same step.
  - NaN/Inf loss or gradient norm: `NonFiniteLossError` naming the step; the jitted step left
    the state untouched and nothing is saved, so the last checkpoint is the last good state.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import threading
import time
from typing import Any, Callable

import jax
import numpy as np

from gca_jax.models.drt import DRT, resolved_impls
from gca_jax.models.loss import ANSWER_KINDS
from gca_jax.sharding import make_mesh
from gca_jax.train import distributed, fs, run_config as rc
from gca_jax.data.corpus import CorpusError
from gca_jax.train.checkpoint import Checkpointer, CheckpointError
from gca_jax.train.metrics import MetricsLogger
from gca_jax.train.optim import make_optimizer
from gca_jax.train.state import (batch_shardings, check_divisible, init_state, param_count,
                                 place_batch, state_shardings)
from gca_jax.eval.perplexity import make_eval_step
from gca_jax.train.step import make_train_step

class NonFiniteLossError(FloatingPointError):
  """The loss or gradient norm became NaN/Inf; the message names the step."""


@dataclasses.dataclass
class TrainHooks:
  """Test/instrumentation hooks (all optional).

  on_batch(step, batch): called with the host batch of step `step` (1-based) before placement.
  transform_batch(step, batch) -> batch: may rewrite the host batch (e.g. poison it).
  on_step(step, metrics): after each completed step, with host metrics.
  """
  on_batch: Callable[[int, dict], None] | None = None
  transform_batch: Callable[[int, dict], dict] | None = None
  on_step: Callable[[int, dict], None] | None = None


@dataclasses.dataclass
class TrainResult:
  status: str                 # "completed" | "preempted"
  step: int                   # last completed step
  start_step: int             # step the run (re)started from
  last_metrics: dict
  last_eval: dict | None
  run_dir: str


class _Preemption:
  """SIGTERM / SIGINT -> flag (save and stop); restores the previous handlers on exit.

  The handlers stay installed until the last save is committed, so a second SIGTERM during the
  preemption save is ignored (it cannot cut the save short); a second SIGINT (Ctrl-C twice)
  aborts with KeyboardInterrupt. No-op outside the main thread.
  """

  def __init__(self):
    self.flag = threading.Event()
    self.signal_name = "SIGTERM"
    self._old = {}

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      for sig in (signal.SIGTERM, signal.SIGINT):
        self._old[sig] = signal.signal(sig, self._handler)
    return self

  def _handler(self, signum, frame):
    del frame
    if self.flag.is_set():
      if signum == signal.SIGINT:
        raise KeyboardInterrupt("second SIGINT: aborted without waiting for the save")
      return   # a repeated SIGTERM: the save already under way is finished first
    self.signal_name = signal.Signals(signum).name
    self.flag.set()

  def __exit__(self, *exc):
    for sig, old in self._old.items():
      signal.signal(sig, old)
    self._old = {}

  def requested(self) -> bool:
    mine = self.flag.is_set()
    if jax.process_count() == 1:
      return mine
    from jax.experimental import multihost_utils
    return bool(np.any(multihost_utils.process_allgather(np.asarray(mine))))


# -- data ------------------------------------------------------------------------------------

@dataclasses.dataclass
class RunData:
  tokenizer: Any
  train_ds: Any                 # Grain dataset (LM windows) or a RecallIterator (recall mix)
  eval_windows: dict | None
  train_tokens: int
  eval_tokens: np.ndarray | None
  batch_keys: tuple[str, ...]   # keys of every training batch
  recall_eval: dict | None = None   # held-out official passkey samples at seq_len (recall mix)


BASE_KEYS = ("inputs", "targets", "loss_weights")


def _recall_data(config, model_cfg, tok, train_tokens, eval_tokens, batch_multiple: int):
  """(RecallIterator, held-out samples or None) of config.data.recall / .curriculum."""
  from gca_jax.data import (Gate, RecallIterator, Stage, curriculum_stages,
                            make_recall_sample, parse_stages, prompt_ids)
  from gca_jax.data.recall import TextFiller, mix_spec
  d, r, cu = config.data, config.data.recall, config.data.curriculum
  tpc = model_cfg.text_per_chunk
  gbs = int(config.train.global_batch_size)
  mix = mix_spec(r)   # every config.data.recall field, multi-key / 2-hop included
  if cu.stages:
    tps = int(cu.tokens_per_step) or gbs * int(d.seq_len)
    stages = curriculum_stages(parse_stages(cu.stages), chunk_text=tpc, tokens_per_step=tps,
                               batch_multiple=batch_multiple)
    field, value = "data.curriculum.stages", cu.stages
  else:
    stages = (Stage(int(d.seq_len), 1, gbs),)
    field, value = "data.seq_len", d.seq_len
  ids = prompt_ids(tok)
  try:
    it = RecallIterator(train_tokens, ids, mix, stages,
                        Gate(float(cu.gate_accuracy), int(cu.min_steps), int(cu.window)),
                        chunk_text=tpc, seed=int(d.shuffle_seed), steps=int(config.train.steps),
                        process_index=jax.process_index(), process_count=jax.process_count(),
                        num_workers=int(d.num_workers))
  except ValueError as e:
    raise rc.RunConfigError(f"config.{field}={value!r}: {e}") from e
  held = None
  if eval_tokens is not None and r.eval_samples > 0:
    rng = np.random.default_rng([12345, int(d.seq_len)])
    filler = TextFiller(eval_tokens)
    ss = [make_recall_sample(rng, ids, filler, int(d.seq_len), chunk_text=tpc,
                             key_len=r.key_len, answer_offset=r.answer_offset)
          for _ in range(int(r.eval_samples))]
    toks = np.stack([x.tokens for x in ss])
    mask = np.zeros((len(ss), int(d.seq_len)), np.float32)
    for i, x in enumerate(ss):
      mask[i, x.answer_targets[0, 0]] = 1.0
    held = {"inputs": toks[:, :-1], "targets": toks[:, 1:],
            "loss_weights": np.stack([x.weights for x in ss]), "answer_mask": mask}
  return it, held


def build_data(config, model_cfg, batch_multiple: int = 1, *, run_dir: str | None = None,
               say: Callable[[str], None] | None = None) -> RunData:
  """Tokenizer, training data (this process's shard) and held-out eval data.

  `batch_multiple`: what every global batch must be a multiple of (mesh data*fsdp*grad_accum);
  used for the curriculum stages' batch sizes. With `run_dir`, what the corpus reading skipped
  (non-UTF-8 files, malformed JSONL lines, ...) is written to `<run_dir>/corpus_report.json`;
  any skip is also reported through `say`, and a "too short" error says how much was skipped.
  """
  from gca_jax.data import Tokenizer, tokenize_corpus
  d = config.data
  tok = Tokenizer.load(d.tokenizer)
  cache = d.cache_dir or None
  train_stream = tokenize_corpus(d.train_path, tok, cache)
  streams = {"train": train_stream}
  windows = eval_tokens = None
  if config.train.eval_every >= 0:
    streams["eval"] = tokenize_corpus(d.eval_path, tok, cache)
    eval_tokens = np.asarray(streams["eval"].tokens)
  report = corpus_report(streams)
  if run_dir is not None and jax.process_index() == 0:
    _write_json(fs.join(run_dir, CORPUS_REPORT), report)
  for name, st in streams.items():
    if st.stats.skipped or st.stats.ignored_files:
      (say or print)(f"warning: corpus data.{name}_path: {st.stats.summary()} (all names in "
                     f"{CORPUS_REPORT} of the run_dir)")
  try:
    return _build_data(config, model_cfg, tok, train_stream, eval_tokens, batch_multiple)
  except CorpusError as e:
    skipped = [f"data.{n}_path: {st.stats.summary()}" for n, st in streams.items()
               if st.stats.skipped or st.stats.ignored_files]
    if skipped:
      raise CorpusError(f"{e}; of the corpus, " + "; ".join(skipped)) from e
    raise


CORPUS_REPORT = "corpus_report.json"


def corpus_report(streams: dict) -> dict:
  """{name: CorpusStats dict + tokens} of the token streams (what was read and skipped)."""
  return {name: {**st.stats.to_dict(), "skipped": st.stats.skipped, "tokens": int(len(st.tokens)),
                 "from_cache": bool(st.from_cache)} for name, st in streams.items()}


def _build_data(config, model_cfg, tok, train_stream, eval_tokens, batch_multiple) -> RunData:
  from gca_jax.data import PasskeyConfig, make_eval_windows
  d = config.data
  windows = None
  if eval_tokens is not None:
    windows = make_eval_windows(eval_tokens, d.seq_len, d.eval_windows)
  if rc.recall_enabled(config):
    ds, held = _recall_data(config, model_cfg, tok, np.asarray(train_stream.tokens),
                            eval_tokens, batch_multiple)
    from gca_jax.data.pipeline import has_kind_metrics  # noqa: PLC0415
    kinds = ("answer_kind",) if has_kind_metrics(ds.mix) else ()
    return RunData(tok, ds, windows, int(len(train_stream.tokens)), eval_tokens,
                   BASE_KEYS + ("answer_mask",) + kinds, held)
  passkey = None
  if d.passkey_fraction > 0:
    passkey = PasskeyConfig(fraction=float(d.passkey_fraction), key_len_train=d.passkey_key_len,
                            answer_offset=d.passkey_answer_offset,
                            chunk_text=model_cfg.text_per_chunk)
  ds = distributed.train_dataset(   # the same global batches on any process count
      train_stream.tokens, seq_len=d.seq_len, global_batch_size=config.train.global_batch_size,
      seed=d.shuffle_seed, process_index=jax.process_index(),
      process_count=jax.process_count(), passkey=passkey, tokenizer=tok)
  keys = BASE_KEYS + (("answer_mask",) if passkey is not None else ())
  return RunData(tok, ds, windows, int(len(train_stream.tokens)), eval_tokens, keys)


# -- helpers ---------------------------------------------------------------------------------

def _check_resume_config(saved: dict, current: dict, step: int, msg: Callable[[str], None]):
  diff = rc.model_diff(saved.get("model", {}), current["model"])
  if diff:
    raise CheckpointError(
        f"run_dir already holds a checkpoint (step {step}) of a different model; "
        f"resuming would not fit. Differences (saved != given):\n  " + "\n  ".join(diff) +
        "\nUse a new config.run_dir, or the saved model config.")
  for sec, fields in (("data", ("train_path", "seq_len", "shuffle_seed", "passkey_fraction",
                                 "recall", "curriculum")),
                      ("train", ("global_batch_size", "seed"))):
    for f in fields:
      a, b = saved.get(sec, {}).get(f), current[sec].get(f)
      if a != b:
        msg(f"warning: config.{sec}.{f} changed since the checkpoint ({a!r} -> {b!r}); the "
            f"resumed data order / randomness will differ from an uninterrupted run")


def _fmt_eta(seconds: float) -> str:
  if not math.isfinite(seconds) or seconds < 0:
    return "?"
  h, rem = divmod(int(seconds), 3600)
  m, s = divmod(rem, 60)
  return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def _write_json(path: str, obj) -> None:
  fs.write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True))


def _write_config_json(run_dir: str, cfg_dict: dict) -> None:
  _write_json(fs.join(run_dir, "config.json"), cfg_dict)


# -- the loop --------------------------------------------------------------------------------

def train(config, *, hooks: TrainHooks | None = None, devices=None,
          message: Callable[[str], None] | None = None) -> TrainResult:
  """Runs or resumes the training run of `config`; see the module docstring.

  The run_dir is locked for the run (`<run_dir>/train.lock`, gca_jax/train/lock.py): a second
  trainer on it raises `RunDirLockedError` naming the holder.
  """
  from gca_jax.train.lock import RunDirLock
  run_dir = config.get("run_dir") if hasattr(config, "get") else None
  if not isinstance(run_dir, str) or not run_dir or jax.process_index() != 0:
    return _train(config, hooks=hooks, devices=devices, message=message)
  fs.makedirs(fs.abspath(run_dir))
  lock = RunDirLock(fs.abspath(run_dir), warn=message or print).acquire()
  try:
    return _train(config, hooks=hooks, devices=devices, message=message)
  finally:
    lock.release()


def _train(config, *, hooks: TrainHooks | None = None, devices=None,
           message: Callable[[str], None] | None = None) -> TrainResult:
  hooks = hooks or TrainHooks()
  devices = list(jax.devices() if devices is None else devices)
  model_cfg = rc.validate(config, num_devices=len(devices))
  cfg_dict = rc.to_dict(config)
  run_dir = fs.abspath(config.run_dir)
  is_main = jax.process_index() == 0
  if is_main:
    fs.makedirs(run_dir)

  def say(text: str):
    if is_main:
      (message or print)(text)

  tc = config.train
  mesh = make_mesh(config.mesh.data, config.mesh.fsdp, config.mesh.tensor, devices=devices,
                   context=int(config.mesh.get("context", 1)))
  accum = int(tc.grad_accum)
  ckpt = Checkpointer(run_dir, keep=config.checkpoint.keep,
                      async_save=config.checkpoint.async_save)
  latest = ckpt.latest_step()
  try:
    if latest is not None:   # refuse a mismatched resume before anything is written
      _, saved_cfg = ckpt.restore_config(latest)
      _check_resume_config(saved_cfg, cfg_dict, latest, say)
    if is_main:
      _write_config_json(run_dir, cfg_dict)
    data = build_data(config, model_cfg,
                      math.lcm(mesh.shape["data"] * mesh.shape["fsdp"] * accum,
                               jax.process_count()), run_dir=run_dir, say=say)
  except BaseException:
    ckpt.close()
    raise

  model = DRT(model_cfg)
  tx, schedule = make_optimizer(tc)
  abstract, shardings = state_shardings(model, tx, mesh, tc.seed)
  try:
    check_divisible(abstract, mesh)
  except ValueError as e:
    raise rc.RunConfigError(f"config.mesh: {e}") from e

  it = iter(data.train_ds)
  feedback = hasattr(it, "report")   # the curriculum reads each step's answer accuracy
  tokens_seen = 0
  if latest is not None:
    saved_pc = distributed.saved_process_count(ckpt.directory, latest)
    resliced = saved_pc is not None and saved_pc != jax.process_count()
    # same process count: the newest intact step (a damaged newer one is skipped with a warning)
    latest, state, _ = ckpt.restore(latest if resliced else None, abstract,
                                    iterator=None if resliced else it)
    if resliced:   # saved by another process count: the same data position, re-sliced
      distributed.restore_resliced(ckpt.directory, latest, it, jax.process_count())
      say(f"data-iterator state of {saved_pc} process(es) re-sliced for {jax.process_count()}"
          + ("; the recall batches differ from an uninterrupted run" if feedback else ""))
    start_step = int(jax.device_get(state.step))
    if start_step != latest:
      raise CheckpointError(f"checkpoint {latest} holds state.step={start_step}")
    tokens_seen = int(ckpt.restore_meta(latest).get("tokens_seen", 0))
    say(f"resumed from {ckpt.directory}/{latest}")
  else:
    state = init_state(model, tx, mesh, tc.seed, shardings)
    start_step = 0

  steps = int(tc.steps)
  if start_step >= steps:
    say(f"nothing to train: run_dir {run_dir} already holds step {start_step} >= "
        f"config.train.steps={steps} (raise train.steps to continue, or use a new run_dir)")
  gbs, seq_len = int(tc.global_batch_size), int(config.data.seq_len)
  if feedback:
    cur = it.current
    gbs = cur.batch
    stages = ", ".join(f"{st.length}x{st.batch} (needles x{st.repeat})" for st in it.stages)
    mx = it.mix
    say(f"recall mix: single {mx.p_single}, named {mx.p_named} (up to {mx.n_queries} queries), "
        f"multi-key {mx.p_multikey} (up to {mx.multikey_needles} needles), 2-hop {mx.p_2hop}, "
        f"text the rest; curriculum stages (tokens x batch): {stages}; at stage {it.stage}")
  say(f"model {model_cfg.model_kind}: {param_count(state.params) / 1e6:.2f}M params; mesh "
      f"{dict(mesh.shape)} on {len(devices)} {devices[0].platform} device(s); batch {gbs} x "
      f"{it.current.length if feedback else seq_len} tokens (grad_accum {tc.grad_accum}); "
      f"train stream {data.train_tokens} tokens; "
      f"steps {start_step} -> {steps}; run_dir {run_dir}")
  impls = resolved_impls(model_cfg, gbs // max(1, len(devices)) // int(tc.grad_accum), seq_len)
  say("kernels (impl='auto' resolves to): " + ", ".join(f"{k}={v}" for k, v in impls.items()))

  logger = MetricsLogger(run_dir, total_steps=steps, start_step=start_step, enabled=is_main,
                         progress_bar=bool(tc.progress_bar) and _stderr_tty())
  if message is None:
    say = logger.message if is_main else (lambda _t: None)  # noqa: F811 - route through the bar
  logger.event(start_step, "resume" if start_step else "start", steps=steps)

  b_shard = batch_shardings(mesh, {k: np.zeros((1, 1)) for k in data.batch_keys})
  train_step = make_train_step(model, tx, schedule, mesh, shardings, b_shard,
                               grad_accum=int(tc.grad_accum))
  evaluator = None
  if data.eval_windows is not None:
    from gca_jax.eval import Evaluator
    evaluator = Evaluator(model, mesh, shardings.params)

  def run_eval(step: int) -> dict:
    t0 = time.time()
    r = evaluator.perplexity(state.params, data.eval_windows, int(tc.eval_batch_size))
    out = {"eval_loss": r["loss"], "eval_ppl": r["ppl"], "eval_accuracy": r["accuracy"],
           "eval_tokens": r["tokens"]}
    text = (f"step {step}: eval loss {r['loss']:.4f} ppl {r['ppl']:.2f} acc "
            f"{r['accuracy']:.3f} ({r['tokens']} tokens")
    if data.recall_eval is not None:
      a = recall_eval(data.recall_eval)
      out.update(a)
      text += (f"; held-out passkey first-token acc {a['eval_answer_accuracy']:.3f} of "
               f"{a['eval_answer_count']} at {seq_len} tokens")
    logger.eval(step, out)
    say(text + f", {time.time() - t0:.1f}s)")
    return out

  recall_step = None

  def recall_eval(samples: dict) -> dict:
    nonlocal recall_step
    bs = int(tc.eval_batch_size)
    if recall_step is None:
      recall_step = make_eval_step(model, mesh, shardings.params, b_shard)
    hits = count = nll = 0.0
    n = samples["inputs"].shape[0]
    for i in range(0, n, bs):
      rows = {k: v[i:i + bs] for k, v in samples.items()}
      pad = bs - rows["inputs"].shape[0]
      rows = {k: np.pad(v, ((0, pad), (0, 0))) for k, v in rows.items()}
      per = bs // jax.process_count()
      lo = per * jax.process_index()
      hi = lo + per
      o = jax.device_get(recall_step(state.params, place_batch(
          {k: v[lo:hi] for k, v in rows.items()}, mesh, b_shard)))
      hits += float(o["answer_correct"])
      count += float(o["answer_count"])
      nll += float(o["answer_nll"])
    return {"eval_answer_accuracy": hits / max(count, 1.0),
            "eval_answer_nll": nll / max(count, 1.0), "eval_answer_count": int(count)}

  def save(step: int, it_state, reason: str) -> None:
    if ckpt.save(step, state, it_state, cfg_dict,
                 {"reason": reason, "tokens_seen": tokens_seen}):
      logger.event(step, "checkpoint", reason=reason)

  def fetch(step: int):
    batch = next(it)
    snap = it.get_state()
    if hooks.on_batch:
      hooks.on_batch(step, batch)
    if hooks.transform_batch:
      batch = hooks.transform_batch(step, batch)
    return place_batch(batch, mesh, b_shard), snap

  step = start_step
  last_metrics: dict = {}
  last_eval = None
  status = "completed"
  every = int(config.checkpoint.every)
  eval_every = int(tc.eval_every)
  window_t0, window_steps, window_tokens = None, 0, 0
  compile_s = None
  try:
    with _Preemption() as preempt:
      if step < steps:
        placed, snap = fetch(step + 1)
      while step < steps:
        t_dispatch = time.time()
        shape = placed["inputs"].shape
        step_tokens = int(shape[0] * shape[1])
        stage_trained = it.stage if feedback else None
        state, metrics = train_step(state, placed)
        step += 1
        if not feedback:   # fetch the next batch while the device computes
          cur_snap = snap
          if step < steps:
            placed, snap = fetch(step + 1)
        m = {k: v.item() for k, v in jax.device_get(metrics).items()}
        now = time.time()
        if not m["finite"]:
          logger.event(step, "non_finite", loss=m["loss"], grad_norm=m["grad_norm"])
          raise NonFiniteLossError(
              f"non-finite loss/gradient at step {step} (loss={m['loss']}, grad_norm="
              f"{m['grad_norm']}, lr={m['lr']:.3g}); training stopped, this update was not "
              f"applied and nothing was saved; last checkpoint: {ckpt.latest_step()}")
        tokens_seen += step_tokens
        window_tokens += step_tokens
        if feedback:   # the gate reads this step's accuracy before the next batch is drawn
          st_before = it.current
          if it.report(step, m.get("answer_accuracy") if m.get("answer_count") else None):
            st = it.current
            logger.event(step, "curriculum_stage", stage=it.stage, seq_len=st.length,
                         batch=st.batch, repeat=st.repeat)
            say(f"step {step}: curriculum stage {it.stage}: {st_before.length} -> {st.length} "
                f"tokens, batch {st.batch}, needles x{st.repeat} (a new shape compiles once)")
          cur_snap = it.get_state()
          if step < steps:
            placed, _ = fetch(step + 1)
        if compile_s is None:
          compile_s = now - t_dispatch
          window_t0, window_steps, window_tokens = now, 0, 0
          say(f"step {step}: first step (incl. compilation) took {compile_s:.1f}s")
        else:
          window_steps += 1
        elapsed = now - window_t0 if window_t0 is not None else 0.0
        tps = window_tokens / elapsed if elapsed > 0 and window_steps else 0.0
        eta = (steps - step) * elapsed / window_steps if window_steps else float("nan")
        last_metrics = {"loss": m["loss"], "lr": m["lr"], "grad_norm": m["grad_norm"],
                        "accuracy": m["accuracy"], "tokens_per_s": tps}
        if "answer_accuracy" in m:
          last_metrics.update(answer_accuracy=m["answer_accuracy"], answer_nll=m["answer_nll"],
                              answer_count=m["answer_count"])
          for n, _ in ANSWER_KINDS:
            if f"answer_count_{n}" in m:
              last_metrics[f"answer_accuracy_{n}"] = m[f"answer_accuracy_{n}"]
              last_metrics[f"answer_count_{n}"] = m[f"answer_count_{n}"]
        if feedback:
          last_metrics.update(stage=stage_trained, seq_len=shape[1], batch=shape[0])
        logger.progress(step, {"loss": m["loss"], "tok/s": f"{tps:,.0f}"})
        if hooks.on_step:
          hooks.on_step(step, m)
        if step % int(tc.log_every) == 0 or step == steps:
          logger.train(step, {**last_metrics,
                              "step_time_s": elapsed / window_steps if window_steps else 0.0})
          extra = ""
          if "answer_accuracy" in m:
            extra = f" answer_acc {m['answer_accuracy']:.3f}"
            per_kind = [f"{n} {m[f'answer_accuracy_{n}']:.2f}" for n, _ in ANSWER_KINDS
                        if m.get(f"answer_count_{n}")]
            if per_kind:
              extra += " (" + ", ".join(per_kind) + ")"
          if feedback:
            extra += f" stage {stage_trained} ({shape[1]} tokens x {shape[0]})"
          say(f"step {step}/{steps}: loss {m['loss']:.4f}{extra} lr {m['lr']:.3g} grad_norm "
              f"{m['grad_norm']:.3f} tokens/s {tps:,.0f} eta {_fmt_eta(eta)}")
          window_t0, window_steps, window_tokens = time.time(), 0, 0
        if evaluator is not None and ((eval_every > 0 and step % eval_every == 0)
                                      or step == steps):
          last_eval = run_eval(step)
          window_t0, window_steps, window_tokens = time.time(), 0, 0
        if (every > 0 and step % every == 0) or step == steps:
          save(step, cur_snap, "final" if step == steps else "periodic")
          window_t0, window_steps, window_tokens = time.time(), 0, 0
        if step < steps and preempt.requested():
          say(f"{preempt.signal_name} received: saving step {step} and exiting")
          save(step, cur_snap, "preemption")
          logger.event(step, "preempted")
          status = "preempted"
          break
      ckpt.wait()   # inside: a second SIGTERM cannot cut the save short
      if status == "completed":
        logger.event(step, "completed")
  finally:
    if feedback:
      it.close()
    logger.close()
    ckpt.close()
  return TrainResult(status=status, step=step, start_step=start_step, last_metrics=last_metrics,
                     last_eval=last_eval, run_dir=run_dir)


def _stderr_tty() -> bool:
  import sys
  try:
    return sys.stderr.isatty()
  except Exception:
    return False
