"""Harder retrieval (issue 15): the recall recipe (configs/recall_tiny.py) with multi-key and
2-hop samples in the mix, so that the retrieval must select by what the question asks.

    python train.py --config configs/multikey_tiny.py            # DRT ret x1 -> checkpoints/multikey_drt
    python train.py --config configs/multikey_tiny_landmark.py   # Landmark, same data and budget
    python train.py --config configs/multikey_tiny_swa.py        # SWA-only, same data and budget
    python train.py --config configs/twohop_tiny_x2.py           # DRT ret x2 (upper_groups (1, 1))
    python -m gca_jax.export --run_dir runs/multikey_tiny --out checkpoints/multikey_drt --dtype bfloat16

Model, optimiser, curriculum and budget: configs/recall_tiny.py (1.9M-parameter DRT, top-k 4,
4000 steps of ~32K tokens, stages 5:8,...,16:1, training length 1008). Mix: 20% official
single needles, 30% named multi-query (up to 4), 30% multi-key (`|One of the special magic
numbers for X is Y|`, 1..16 needles at random depths, one question for a random X: most
samples hold more needles than top-k), 10% 2-hop (`|DEF X->Y|`, `|DEF Y->Z|`, answer `Y->Z`),
10% plain text. Multi-key and 2-hop samples are made by the eval builders of
gca_jax/data/passkey.py (the same strings and layout as `eval.py --kinds multikey,2hop`).
"""

from gca_jax.configs import recall_tiny


def get_config(model_kind: str = "drt", upper_groups=(2,)):
  c = recall_tiny.get_config(model_kind)
  c.model.upper_groups = tuple(upper_groups)
  r = c.data.recall
  r.p_single = 0.2
  r.p_named = 0.3
  r.p_multikey = 0.3
  r.multikey_needles = 16
  r.p_2hop = 0.1
  suffix = "" if model_kind == "drt" else "_" + model_kind
  if tuple(upper_groups) != (2,):
    suffix += "_x" + str(len(upper_groups))
  c.run_dir = f"runs/multikey_tiny{suffix}"
  return c
