"""Every documented upper bound on user input, in one place (README, "Reliability").

The bounds are far above any real model (ZAYA1-8B, Qwen3-MoE-235B, Llama-3-405B all fit) and
far below what would make a run hang or allocate without end before a later check could
say no. A value past a bound is refused with the field, the value and the bound.
"""

from __future__ import annotations

# --- spec files ---------------------------------------------------------------------------

SPEC_MAX_BYTES = 1 << 20  # a spec file is read whole; real ones are ~2 KB
YAML_MAX_NODES = 10_000  # scalars + collections after expanding every alias (a preset has ~60)
YAML_MAX_DEPTH = 16  # nesting of mappings / sequences (a spec uses 4)
SPEC_NAME_MAX_CHARS = 128  # `name` becomes a path component (build/<name>/<target>)

# Largest value of every numeric spec field (dotted path as in error messages). Floats are
# also required to be finite, and the lower bounds live with the field rules in validate.py.
SPEC_MAXIMUM: dict[str, int | float] = {
    "model.vocab_size": 1 << 22,  # 4,194,304 ids (ZAYA1: 262,272)
    "model.hidden_size": 1 << 16,
    "model.num_layers": 1024,
    "model.norm_eps": 1.0,
    "model.attention.num_heads": 1024,
    "model.attention.num_kv_heads": 1024,
    "model.attention.head_dim": 1024,
    "model.attention.rope_theta": 1e12,
    "model.attention.rope_scaling.factor": 1e4,
    "model.attention.rope_scaling.original_max_position": 1 << 24,
    "model.attention.rope_scaling.low_freq_factor": 1e4,
    "model.attention.rope_scaling.high_freq_factor": 1e4,
    "model.attention.rope_scaling.beta_fast": 1e4,
    "model.attention.rope_scaling.beta_slow": 1e4,
    "model.attention.rope_scaling.attention_factor": 1e4,
    "model.attention.cca.depthwise_kernel": 64,
    "model.attention.cca.grouped_kernel": 64,
    "model.moe.num_experts": 4096,
    "model.moe.top_k": 4096,
    "model.moe.ffn_size": 1 << 18,
    "model.moe.router.hidden_size": 1 << 16,
    "model.moe.balancing_bias.update_rate": 1.0,
    "model.moe.balancing_bias.skip_init": 1e4,  # and at least -1e4
    "model.mlp.ffn_size": 1 << 18,
    "diffusion.block_size": 256,
    "diffusion.proposals": 256,
    "diffusion.loss_alpha": 1e4,
    "diffusion.loss.data_weight": 1e4,
    "diffusion.loss.distill_weight": 1e4,
    "sampler.temperature": 1e4,
    "sampler.top_k": 1 << 22,
}
SPEC_MINIMUM: dict[str, float] = {"model.moe.balancing_bias.skip_init": -1e4}

# --- command line -------------------------------------------------------------------------

MAX_STEPS = 100_000_000  # zdiff train --steps, --checkpoint-every, --eval-every, --warmup
MAX_BATCH_SIZE = 65_536  # zdiff train --batch-size, zdiff cost --batch
MAX_WORKERS = 1024  # zdiff tokenize --workers
MAX_SEQ_LEN = 131_072  # zdiff train --seq-len (the memory formula refuses what a device cannot hold)
MAX_CONTEXT = 1 << 24  # zdiff check / cost --context (a count, nothing is allocated)
# the reference decoding path builds dense (T x T) masks over prompt + new tokens: past ~32k
# tokens that alone is gigabytes (a 100k-character byte prompt took more than 8 GB)
MAX_NEW_TOKENS = 32_768  # zdiff generate --max-new-tokens
MAX_PROMPT_CHARS = 32_768  # zdiff generate --prompt, each (a byte tokenizer makes one token per byte)
MAX_PROMPTS = 4096  # zdiff generate: --prompt given this often at most
MAX_BUDGET_S = 7 * 24 * 3600.0  # zdiff autotune --budget
MAX_LR = 10.0  # zdiff train --lr
MAX_CLIP = 1e6  # zdiff train --clip (gradient-norm clipping threshold)
MAX_WEIGHT_DECAY = 10.0

# --- sampling parameters (engine API, reference loop, HTTP requests) ----------------------

MAX_TEMPERATURE = 1e4  # as the spec's sampler.temperature: far past "uniform", far from fp32 overflow
# temperature and top_p are computed with at least these values: below them the answer is the greedy
# token anyway (any two logits 1e-18 apart differ by e^-100 after dividing by 1e-20; top_p under 1/vocab
# keeps only the top token), and above them nothing overflows or rounds to zero in fp32
MIN_EFFECTIVE_TEMPERATURE = 1e-20
MIN_EFFECTIVE_TOP_P = 1e-30
MAX_STOP_STRINGS = 16  # an HTTP request's `stop` list (OpenAI allows 4)
MAX_STOP_STRING_CHARS = 256  # each stop string

# --- zdiff serve: connection limits (flags; defaults here) ----------------------------------

SERVE_HEADER_TIMEOUT_S = 10.0  # a request head complete within this of its first byte
SERVE_BODY_TIMEOUT_S = 60.0  # a request body complete within this of its head
SERVE_KEEP_ALIVE_S = 5.0  # an idle keep-alive connection is closed after this
SERVE_MAX_HEADER_BYTES = 16_384  # a request head larger than this is refused (400)
SERVE_DRAIN_S = 30.0  # SIGTERM: requests in flight get this long to finish, then are cancelled
SERVE_MAX_TIMEOUT_S = 3600.0
