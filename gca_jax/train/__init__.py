"""Training system: run config, optimizer, sharded train state, jitted steps, checkpoints, loop."""

from gca_jax.train.checkpoint import Checkpointer, CheckpointError
from gca_jax.train.optim import make_optimizer, make_schedule
from gca_jax.train.run_config import RunConfigError, base_config, model_config, validate
from gca_jax.train.state import (TrainState, init_state, mesh_context, place_batch,
                                 state_shardings)
from gca_jax.eval.perplexity import make_eval_step
from gca_jax.train.step import make_train_step, train_step_fn
from gca_jax.train.trainer import NonFiniteLossError, TrainHooks, TrainResult, train

__all__ = [
    "CheckpointError", "Checkpointer", "NonFiniteLossError", "RunConfigError", "TrainHooks",
    "TrainResult", "TrainState", "base_config", "init_state", "make_eval_step",
    "make_optimizer", "make_schedule", "make_train_step", "mesh_context", "model_config",
    "place_batch", "state_shardings", "train", "train_step_fn", "validate",
]
