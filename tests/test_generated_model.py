"""The generated model (`zdiff compile`'s model.py, backend="triton") against the reference model:
training layout forward and every parameter gradient, plain causal sequences, and whole greedy
TiDAR / AR generations (prefill + decode layouts with a KV cache), logits compared row by row."""

import pytest
import torch

from conftest import DEVICE, assert_close
from training_helpers import MICRO_DENSE_SPEC, MICRO_SPEC
from zdiff.codegen.compile import compile_spec
from zdiff.codegen.render import load_module
from zdiff.generation import SamplingParams
from zdiff.generation.oracle import generate
from zdiff.pattern import BatchLayout, training_pattern
from zdiff.runtime import build_model
from zdiff.spec import parse_spec

GQA_SPEC = """
name: micro-gqa
model:
  vocab_size: 264
  hidden_size: 32
  num_layers: 2
  tie_embeddings: false
  attention: {kind: gqa, num_heads: 4, num_kv_heads: 2, head_dim: 16, rope_fraction: 1.0, qk_norm: rms}
  moe:
    num_experts: 4
    top_k: 2
    ffn_size: 32
    router: {kind: linear, normalize_top_k: true}
diffusion: {block_size: 4, mask_token_id: 258, proposals: 2, acceptance_levels: [0, 1]}
"""

SPECS = {"ccgqa": MICRO_SPEC, "gqa": GQA_SPEC, "dense": MICRO_DENSE_SPEC}


def _models(tmp_path, text):
    spec = parse_spec(text)
    reference = build_model(spec.model, seed=1, device=DEVICE)
    with torch.no_grad():  # move every scale and bias off its initial value so a miswired one shows
        gen = torch.Generator().manual_seed(5)
        for p in reference.parameters():
            p.add_((0.15 if p.dim() == 1 else 0.5 * p.std().item()) * torch.randn(p.shape, generator=gen).to(DEVICE))
    compile_spec(spec, "cpu", tmp_path / "build", aot=False, check_targets=False, log=lambda *_: None)
    module = load_module(tmp_path / "build" / "model.py", f"model_{tmp_path.name}")
    generated = module.GeneratedTransformer(spec.model).to(DEVICE)
    generated.load_state_dict(reference.state_dict())
    return spec, reference, generated


@pytest.fixture(params=list(SPECS))
def models(request, tmp_path):
    return _models(tmp_path, SPECS[request.param])


def test_training_layout_logits_and_gradients(models):
    spec, reference, generated = models
    S, B = 7, 2
    pattern = training_pattern(S, spec.diffusion.block_size)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 256, (B, 2 * S), generator=gen).to(DEVICE)
    ids[:, S:] = spec.diffusion.mask_token_id
    layout = BatchLayout.training(B, S, spec.diffusion.block_size)
    kwargs = dict(positions=pattern.positions().to(DEVICE), predecessors=pattern.predecessors().to(DEVICE))
    want = reference(ids, visible=pattern.dense_mask().to(DEVICE), **kwargs)
    got = generated(ids, layout=layout, **kwargs)
    assert_close(got, want, rtol=1e-4, atol=1e-4, what="logits")
    weights = torch.randn(want.shape, generator=gen).to(DEVICE)
    (want * weights).sum().backward()
    (got * weights).sum().backward()
    for (name, p), q in zip(reference.named_parameters(), generated.parameters()):
        assert_close(q.grad, p.grad, rtol=1e-3, atol=1e-4, what=f"d {name}")


def test_plain_causal_forward(models):
    _, reference, generated = models
    ids = torch.randint(0, 256, (3, 9)).to(DEVICE)
    with torch.no_grad():
        assert_close(generated(ids), reference(ids), rtol=1e-4, atol=1e-4, what="logits")


@pytest.mark.parametrize("mode", ["tidar", "ar"])
def test_greedy_generation_matches_reference_row_by_row(models, mode):
    """Prefill and decode layouts through the real loop: same tokens, same acceptance, same logits."""
    spec, reference, generated = models
    records = {}
    for name, model in (("reference", reference), ("generated", generated)):
        calls = records[name] = []
        forward = model.forward

        def recording(*args, _forward=forward, _calls=calls, **kwargs):
            logits = _forward(*args, **kwargs)
            _calls.append((logits.detach().cpu(), kwargs["layout"]))
            return logits
        model.forward = recording
        records[name + "_result"] = generate(model, [[5, 9, 2, 7, 1], [3, 4]], SamplingParams(sampler="greedy"),
                                             diffusion=spec.diffusion, mode=mode, max_new_tokens=9)
    ref, out = records["reference_result"], records["generated_result"]
    assert out.tokens == ref.tokens and out.accepted == ref.accepted
    assert len(records["generated"]) == len(records["reference"]) >= 3
    for (got, layout), (want, _) in zip(records["generated"], records["reference"]):
        for b, n in enumerate(layout.rows):
            assert_close(got[b, :n], want[b, :n], rtol=1e-4, atol=1e-4, what=f"{layout.kind} logits of sequence {b}")


def test_generated_model_uses_the_shipped_autotune_tables(tmp_path):
    """zaya1-8b for mi300x: the static tables in zdiff/autotune/tables/mi300x configure the generated modules."""
    from zdiff.spec import load_spec

    spec = load_spec("zaya1-8b")
    compile_spec(spec, "mi300x", tmp_path / "build", aot=False, log=lambda *_: None)
    module = load_module(tmp_path / "build" / "model.py", f"model8b_{tmp_path.name}")
    assert "rmsnorm_d2048_fwd" in module.TUNED
    table = module.MODULES["rmsnorm_d2048"].TABLES["rmsnorm_d2048_fwd"]
    assert table and all("num_warps" in config for config in table.values())


def test_load_model_with_the_triton_backend(tmp_path, monkeypatch):
    """zdiff.load_model(..., backend="triton") renders the kernels into $ZDIFF_CACHE once and returns the
    generated model with the checkpoint's weights."""
    import zdiff
    from zdiff.checkpoint.store import save_checkpoint

    monkeypatch.setenv("ZDIFF_CACHE", str(tmp_path / "cache"))
    spec = parse_spec(MICRO_SPEC)
    reference = build_model(spec.model, seed=4)
    save_checkpoint(reference, spec, tmp_path / "ckpt")
    model = zdiff.load_model(tmp_path / "ckpt", backend="triton", device=DEVICE, dtype=torch.float32)
    assert type(model).__name__ == "GeneratedTransformer"
    assert len(list((tmp_path / "cache" / "compiled").glob("micro-*-cpu-*/model.py"))) == 1
    ids = torch.randint(0, 256, (2, 6)).to(DEVICE)
    with torch.no_grad():
        assert_close(model(ids), reference.to(DEVICE)(ids), rtol=1e-4, atol=1e-4, what="logits")
    with pytest.raises(Exception, match="no model.py"):
        zdiff.load_model(tmp_path / "ckpt", backend="triton", kernels_dir=tmp_path / "empty")


def test_engine_on_the_generated_model_matches_the_reference_and_never_syncs(models, monkeypatch):
    """The decode engine over the generated kernels and the fused verifier and draft sampler (the whole step as
    kernels, as on a GPU): the same tokens as the reference model with the torch verifier, greedy and seeded
    stochastic (one randomness scheme on both paths; AR and TiDAR requests in one batch, more requests than
    slots), logits row by row equal, no dense mask built, every commit (prefill chunks included) the one-launch
    commit kernel from the stash scratch, and no host sync in the step (engine modules, the verifier and
    generated kernel modules)."""
    from sync_guard import no_host_sync

    from zdiff.generation import decode_step as step_module
    from zdiff.generation import engine as engine_module
    from zdiff.generation.engine import Engine, RequestParams
    from zdiff.generation.slots import SlotCache
    from zdiff.pattern import batch as batch_module

    spec, reference, generated = models
    prompts = [[5, 9, 2, 7, 1], [3, 4], [8, 8, 1]]
    runs = {}
    for name, model in (("reference", reference), ("generated", generated)):
        if name == "generated":
            def no_mask(*args, **kwargs):
                raise AssertionError("the generated model's path built a dense mask")

            monkeypatch.setattr(batch_module, "dense_visible", no_mask)

            def per_layer_commit(*args, **kwargs):
                raise AssertionError("the generated model's stash was committed layer by layer, not by the kernel")

            monkeypatch.setattr(SlotCache, "commit_torch", per_layer_commit)

            def guarded(*args, _step=step_module.decode_step, **kwargs):
                with no_host_sync():
                    return _step(*args, **kwargs)

            monkeypatch.setattr(engine_module, "decode_step", guarded)
        logits = runs[name + "_logits"] = []
        forward = model.forward

        def recording(*args, _forward=forward, _logits=logits, **kwargs):
            out = _forward(*args, **kwargs)
            logits = out.logits if kwargs.get("return_routings") else out  # the engine asks for hidden states
            _logits.append((logits.detach().clone().cpu(), kwargs["layout"].rows.tolist()))
            return out
        model.forward = recording
        engine = Engine(model, diffusion=spec.diffusion, max_slots=2, max_len=32, proposals=2, prefill_chunk=3,
                        verifier="fused" if name == "generated" else "torch")
        requests = [RequestParams(max_new_tokens=7, sampler="greedy"),
                    RequestParams(max_new_tokens=7, mode="ar", temperature=0.9, seed=4),
                    RequestParams(max_new_tokens=7, sampler="lossless", seed=5, top_k=6)]
        ids = [engine.add(p, r) for p, r in zip(prompts, requests)]
        results = engine.run()
        runs[name] = [results[i].tokens for i in ids]
        model.forward = forward
    assert runs["generated"] == runs["reference"]
    assert len(runs["generated_logits"]) == len(runs["reference_logits"]) >= 5
    for step, ((got, rows), (want, _)) in enumerate(zip(runs["generated_logits"], runs["reference_logits"])):
        for b, n in enumerate(rows):  # valid rows; padding rows differ by design (zeros vs self-attention)
            assert_close(got[b, :n], want[b, :n], rtol=1e-4, atol=1e-4, what=f"forward {step} slot {b}")


@pytest.mark.gpu
def test_the_card_s_own_render_matches_the_reference_in_bf16(tmp_path, monkeypatch):
    """On a GPU, load_model(backend="triton") renders for the card's target (its default configs and autotune
    tables, the JIT compiling for the device) and its bf16 logits are no further from the fp64 reference than
    twice the bf16 reference's own error (plus a small floor)."""
    import zdiff
    from zdiff.checkpoint.store import save_checkpoint
    from zdiff.spec import load_spec

    monkeypatch.setenv("ZDIFF_CACHE", str(tmp_path / "cache"))
    spec = load_spec("zaya1-tiny")
    reference = build_model(spec.model, seed=4)
    save_checkpoint(reference, spec, tmp_path / "ckpt")
    model = zdiff.load_model(tmp_path / "ckpt", backend="triton", device="cuda", dtype=torch.bfloat16)
    assert not list((tmp_path / "cache" / "compiled").glob("*-cpu-*"))  # a GPU target, not the interpreter's
    ids = torch.randint(0, 256, (3, 70), device="cuda")
    with torch.no_grad():
        golden = build_model(spec.model, seed=4, dtype=torch.float64, device="cuda")(ids)
        bf16 = build_model(spec.model, seed=4, dtype=torch.bfloat16, device="cuda")(ids)
        bf16_error = (bf16 - golden).abs().max().item()
        error = (model(ids) - golden).abs().max().item()
    assert error <= 2 * bf16_error + 1e-2, (error, bf16_error)


@pytest.fixture
def budget_models(tmp_path):
    """The GQA micro spec with 8 experts: with 4 (top-2) the verify rows of a step load every expert. (The CCA
    path is the same plumbing; tests/test_draft_expert_budget.py and test_codegen_moe.py cover the rest.)"""
    return _models(tmp_path, GQA_SPEC.replace("num_experts: 4", "num_experts: 8"))


def test_draft_expert_budget_matches_reference_and_keeps_verify_rows_bit_exact(budget_models):
    """Greedy TiDAR with the draft rows' expert budget (the `_restrict` router tail): every forward's verify
    rows are bit-identical to the same forward without the budget, some draft row changes, and the logits
    match the reference model's under the same budget row by row."""
    spec, reference, generated = budget_models
    records = {}
    for name, model in (("reference", reference), ("generated", generated)):
        calls = records[name] = []
        forward = model.forward

        def recording(*args, _forward=forward, _calls=calls, **kwargs):
            free = _forward(*args, **kwargs).detach().cpu()
            logits = _forward(*args, draft_expert_budget=0, **kwargs)
            _calls.append((free, logits.detach().cpu(), kwargs["layout"]))
            return logits
        model.forward = recording
        records[name + "_result"] = generate(model, [[5, 9, 2, 7, 1]], SamplingParams(sampler="greedy"),
                                             diffusion=spec.diffusion, mode="tidar", max_new_tokens=6)
    assert records["generated_result"].tokens == records["reference_result"].tokens
    moved = 0
    for (free, got, layout), (_, want, _) in zip(records["generated"], records["reference"]):
        for b, (causal, n) in enumerate(zip(layout.causal_rows, layout.rows)):
            assert torch.equal(got[b, :causal], free[b, :causal]), f"{layout.kind} verify rows of sequence {b}"
            moved += int(not torch.equal(got[b, causal:n], free[b, causal:n]))
            assert_close(got[b, :n], want[b, :n], rtol=1e-4, atol=1e-4, what=f"{layout.kind} logits of sequence {b}")
    assert moved > 0  # the budget changed some draft rows: the comparison has teeth


def test_training_layout_under_expert_budget_logits_and_gradients(budget_models):
    """Budget-aware training (mask blocks route among the experts their verify window chose): the generated
    model's logits and every parameter gradient equal the reference's, and the budget changes the mask rows."""
    spec, reference, generated = budget_models
    S, B = 7, 2
    pattern = training_pattern(S, spec.diffusion.block_size)
    gen = torch.Generator().manual_seed(3)
    ids = torch.randint(0, 256, (B, 2 * S), generator=gen).to(DEVICE)
    ids[:, S:] = spec.diffusion.mask_token_id
    layout = BatchLayout.training(B, S, spec.diffusion.block_size, draft_expert_budget=0)
    kwargs = dict(positions=pattern.positions().to(DEVICE), predecessors=pattern.predecessors().to(DEVICE))
    want = reference(ids, layout=layout, **kwargs)
    got = generated(ids, layout=layout, **kwargs)
    assert_close(got, want, rtol=1e-4, atol=1e-4, what="logits")
    # the kernels' rows are bit-independent of the other rows' expert groups; the same (autograd) path as `got`:
    # without a gradient the inference kernels (fused router, q/k RoPE) run, whose rounding differs
    free = generated(ids, layout=BatchLayout.training(B, S, spec.diffusion.block_size), **kwargs).detach()
    assert torch.equal(free[:, :S], got[:, :S].detach()) and not torch.allclose(free[:, S:], got[:, S:])
    weights = torch.randn(want.shape, generator=gen).to(DEVICE)
    (want * weights).sum().backward()
    (got * weights).sum().backward()
    for (name, p), q in zip(reference.named_parameters(), generated.parameters()):
        assert_close(q.grad, p.grad, rtol=1e-3, atol=1e-4, what=f"d {name}")
