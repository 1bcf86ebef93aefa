"""Human-readable and JSON summaries of a spec (what `zdiff check` prints)."""

from __future__ import annotations

from .spec import Spec, count_model


def _b(n: int) -> str:
    return f"{n / 1e9:.3f} B" if n >= 1e8 else f"{n / 1e6:.3f} M"


def spec_summary(spec: Spec, context: int = 4096, dtype_bytes: int = 2) -> dict:
    m = spec.model
    c = count_model(m, dtype_bytes=dtype_bytes)
    return {
        "name": spec.name,
        "spec_hash": spec.hash(),
        "params": {
            "total": c.total_params,
            "embedding_matrix": c.embedding_params,
            "untied_lm_head": c.lm_head_params,
            "without_embeddings": c.non_embedding_params,
            "active_per_token_without_embeddings": c.active_params,
            "attention": c.attention_params,
            "router": c.router_params,
            "experts": c.expert_params,
            "dense_mlp": c.mlp_params,
            "norms_and_scales": c.other_params,
        },
        "decode_flops_per_token": {"context": context, "flops": c.decode_flops_per_token(m, context)},
        "kv_cache_bytes_per_token": c.kv_bytes_per_token,
        "cca_state_bytes_per_sequence": c.cca_state_bytes_per_sequence,
        "dtype_bytes": dtype_bytes,
        "diffusion": {"block_size": spec.diffusion.block_size, "proposals": spec.diffusion.proposals,
                      "acceptance_levels": list(spec.diffusion.acceptance_levels)},
        "targets": list(spec.targets),
    }


def format_summary(spec: Spec, summary: dict) -> str:
    m, p = spec.model, summary["params"]
    a, moe = m.attention, m.moe
    if moe is None:
        ffn, active = f"dense SwiGLU MLP of width {m.ffn_size}", "every weight"
    else:
        skip = " (+ skip expert)" if moe.skip_expert else ""
        ffn = f"{moe.num_experts} experts top-{moe.top_k}{skip}, {moe.router.kind} router"
        active = f"top-{moe.top_k} experts"
    ctx = summary["decode_flops_per_token"]["context"]
    rows = [
        f"spec {spec.name}  (hash {summary['spec_hash']})",
        f"  model: {m.num_layers} layers, hidden {m.hidden_size}, vocab {m.vocab_size}; {a.kind} attention "
        f"{a.num_heads}q/{a.num_kv_heads}kv x {a.head_dim}; {ffn}",
        "  parameters:",
        f"    total, tied embedding counted once      {_b(p['total']):>12}",
        f"      embedding matrix (vocab x hidden)     {_b(p['embedding_matrix']):>12}",
    ]
    if p["untied_lm_head"]:
        rows.append(f"      untied LM head                        {_b(p['untied_lm_head']):>12}")
    rows += [
        f"    without embeddings / LM head            {_b(p['without_embeddings']):>12}",
        f"      attention {_b(p['attention'])}, router {_b(p['router'])}, experts {_b(p['experts'])}, "
        f"dense MLP {_b(p['dense_mlp'])}, norms+scales {_b(p['norms_and_scales'])}",
        f"    active per token, without embeddings    {_b(p['active_per_token_without_embeddings']):>12}"
        f"   ({active})",
        f"  AR decode step: {summary['decode_flops_per_token']['flops'] / 1e9:.3f} GFLOP per token at context {ctx} "
        "(2 x active weights + LM head + attention)",
        f"  KV cache: {summary['kv_cache_bytes_per_token']:,} bytes per token "
        f"({summary['dtype_bytes']}-byte elements)",
    ]
    if summary["cca_state_bytes_per_sequence"]:
        rows.append(f"  CCA state (conv rows + delayed value half): {summary['cca_state_bytes_per_sequence']:,} "
                    "bytes per sequence, independent of length")
    d = summary["diffusion"]
    rows.append(f"  TiDAR: block {d['block_size']}, {d['proposals']} proposals at acceptance levels "
                f"{d['acceptance_levels']}; targets {', '.join(summary['targets'])}")
    return "\n".join(rows)
