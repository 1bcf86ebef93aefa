"""A micro spec and corpus that train in well under a second per step."""

import sysconfig
from pathlib import Path

MICRO_SPEC = """
name: micro
model:
  vocab_size: 264
  hidden_size: 32
  num_layers: 2
  residual_scaling: true
  attention: {kind: ccgqa, num_heads: 2, num_kv_heads: 1, head_dim: 16, rope_fraction: 0.5, qk_norm: l2}
  moe:
    num_experts: 3
    top_k: 1
    ffn_size: 32
    skip_expert: true
    router: {kind: zaya_mlp, hidden_size: 8}
    balancing_bias: {enabled: true, update_rate: 0.01}
diffusion: {block_size: 4, mask_token_id: 258, proposals: 2, acceptance_levels: [0, 2], loss_alpha: 1.0}
"""

# Qwen2.5-style dense: biases on q/k/v only, YaRN-scaled RoPE (positions past its original context), a ragged
# feed-forward width
MICRO_DENSE_SPEC = """
name: micro-dense
model:
  vocab_size: 264
  hidden_size: 32
  num_layers: 2
  tie_embeddings: true
  attention:
    kind: gqa
    num_heads: 4
    num_kv_heads: 2
    head_dim: 16
    bias: true
    output_bias: false
    rope_scaling: {kind: yarn, factor: 4.0, original_max_position: 8}
  mlp: {kind: swiglu, ffn_size: 40}
diffusion: {block_size: 4, mask_token_id: 258, proposals: 2, acceptance_levels: [0, 1]}
"""


def micro_spec(tmp: Path) -> Path:
    path = tmp / "micro.yaml"
    path.write_text(MICRO_SPEC)
    return path


def micro_corpus(tmp: Path, files: int = 8) -> Path:
    """A handful of stdlib modules copied into a directory: a real, small, multi-file corpus."""
    root = tmp / "corpus"
    root.mkdir(exist_ok=True)
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    names = ["abc.py", "bisect.py", "colorsys.py", "fnmatch.py", "heapq.py", "keyword.py", "numbers.py",
             "string.py", "textwrap.py", "this.py", "queue.py", "sched.py"]
    for name in names[:files]:
        (root / name).write_text((stdlib / name).read_text())
    return root
