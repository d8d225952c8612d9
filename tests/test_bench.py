"""The profile attribution of bench/train_step.py (kernel -> HLO instruction -> jax source path
-> model part), on a synthetic HLO dump and perfetto trace."""

import gzip
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench"))

from train_step import hlo_op_names, kernel_breakdown, scope_of  # noqa: E402

HLO = """HloModule jit_step, is_scheduled=true, entry_computation_layout={()}

%fused_computation.7 (p: bf16[4]) -> bf16[4] {
  %p = bf16[4]{0} parameter(0)
  ROOT %m = bf16[4]{0} multiply(%p, %p), metadata={op_name="jit(step)/transpose(jvp(DRT))/upper_2/mlp/mul"}
}

ENTRY %main (a: bf16[4]) -> bf16[4] {
  %a = bf16[4]{0} parameter(0)
  %fusion.7 = bf16[4]{0} fusion(%a), kind=kLoop, calls=%fused_computation.7
  %custom-call.3 = bf16[4]{0} custom-call(%a), custom_call_target="__gpu$xla.gpu.triton", metadata={op_name="jit(step)/jvp(DRT)/upper_0/gca/pallas_call"}
  ROOT %dot.1 = bf16[4]{0} dot(%a, %a), metadata={op_name="jit(step)/adamw/mul"}
}
"""


def test_scope_of():
  assert scope_of("jit(step)/jvp(DRT)/upper_3/gca/pallas_call") == "fwd upper/gca"
  assert scope_of("jit(step)/transpose(jvp(DRT))/lower_0/attn/q_proj/dot_general") == "bwd lower/attn"
  assert scope_of("jit(step)/jvp(DRT)/encoder/layer_1/mlp/mul") == "fwd encoder/mlp"
  assert scope_of("jit(step)/jvp(DRT)/upper_1/norm2/mul") == "fwd upper/other"
  assert scope_of("jit(step)/transpose(jvp(DRT))/retriever_0/top_k") == "bwd retriever"
  assert scope_of("jit(step)/jvp(DRT)/mem_k/dot_general") == "fwd mem_k"
  assert scope_of("jit(step)/clip_by_global_norm/mul") == "optimizer/other"


def test_hlo_op_names_and_breakdown(tmp_path):
  dump = tmp_path / "hlo"
  dump.mkdir()
  (dump / "module_0001.jit_step.sm_9.0_gpu_after_optimizations.txt").write_text(HLO)
  ops = hlo_op_names(str(dump))
  assert ops[("jit_step", "custom-call.3")].endswith("upper_0/gca/pallas_call")
  assert ops[("jit_step", "fusion.7")].endswith("upper_2/mlp/mul")  # via the called computation
  trace = tmp_path / "trace" / "plugins" / "profile" / "run"
  trace.mkdir(parents=True)
  ev = [{"ph": "M", "name": "process_name", "pid": 1, "args": {"name": "/device:GPU:0"}},
        {"ph": "M", "name": "process_name", "pid": 2, "args": {"name": "/host:CPU"}},
        {"ph": "X", "pid": 1, "name": "gca_fwd", "dur": 3000.0,
         "args": {"hlo_module": "jit_step", "hlo_op": "custom-call.3"}},
        {"ph": "X", "pid": 1, "name": "loop_multiply_fusion_7", "dur": 1500.0,
         "args": {"hlo_module": "jit_step", "hlo_op": "fusion.7"}},
        {"ph": "X", "pid": 1, "name": "nvjet_gemm", "dur": 600.0,
         "args": {"hlo_module": "jit_step", "hlo_op": "dot.1"}},
        {"ph": "X", "pid": 1, "name": "mystery", "dur": 300.0,
         "args": {"hlo_module": "jit_step", "hlo_op": "command_buffer_1"}},
        {"ph": "X", "pid": 2, "name": "host_thing", "dur": 9e6, "args": {}}]
  with gzip.open(trace / "x.trace.json.gz", "wt") as f:
    json.dump({"traceEvents": ev}, f)
  out = kernel_breakdown(str(tmp_path / "trace"), steps=3, dump_dir=str(dump))
  assert out["gca_kernel"] == 1.0 and out["matmul"] == 0.2
  assert out["total_kernel_ms"] == 1.8  # host events excluded; 5.4 ms over 3 steps
  assert out["by_scope"] == {"fwd upper/gca": 1.0, "bwd upper/mlp": 0.5,
                             "optimizer/other": 0.2, "unmapped": 0.1}
  assert out["unmapped_sample"][0]["name"] == "mystery"
