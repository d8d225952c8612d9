"""Evaluation (docs/method.md §4): full-forward perplexity and passkey cross-check (`perplexity`), the
passkey sample builder and scorer (`passkey`), long-context tasks on the streaming engine with
their memory check (`long`), and plots (`plots`)."""

from gca_jax.eval.long import (LengthFitError, available_memory, check_fit, estimate_memory,
                               passkey_grid, plan_passkey_grid, plan_ppl_vs_length, ppl_vs_length)
from gca_jax.eval.passkey import (FORMATS, KINDS, KeyScore, answer_positions, grid_table,
                                  make_grid_sample, run_grid, score_key, summary)
from gca_jax.eval.perplexity import Evaluator, score_fn

__all__ = ["FORMATS", "KINDS", "Evaluator", "KeyScore", "LengthFitError", "answer_positions",
           "available_memory", "check_fit", "estimate_memory", "grid_table", "make_grid_sample",
           "passkey_grid", "plan_passkey_grid", "plan_ppl_vs_length", "ppl_vs_length",
           "run_grid", "score_fn", "score_key", "summary"]
