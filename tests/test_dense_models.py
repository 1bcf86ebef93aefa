"""Dense (Llama / Qwen2.5 / Qwen3-style) models end to end on the CPU: a tiny dense spec trained AR, converted
to TiDAR, decoded with every sampler and served; an imported Hugging Face Qwen2 checkpoint with its tokenizer
converted and decoded. (The generated model on a dense spec, greedy generations and the engine against the
reference: tests/test_generated_model.py.)"""

import json

import pytest
import torch

import zdiff
from conftest import REPO, run_cli
from training_helpers import micro_corpus
from zdiff.generation import SamplingParams
from zdiff.spec import load_spec

FAST = ["--batch-size", "4", "--seq-len", "24", "--warmup", "2", "--eval-windows", "4", "--lr", "3e-3"]
PROMPTS = [list(b"def f(x):"), list(b"import os\n"), list(b"class")]


def _records(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """dense-tiny trained AR for 3 steps, then converted (TiDAR training from the AR checkpoint) for 3."""
    root = tmp_path_factory.mktemp("dense")
    corpus = micro_corpus(root, files=3)
    ar = run_cli("train", "dense-tiny", "--data", corpus, "--mode", "ar", "--steps", "3", "--out", root / "ar", *FAST)
    assert ar.returncode == 0, ar.stderr[-2000:]
    td = run_cli("train", "dense-tiny", "--data", corpus, "--mode", "tidar", "--steps", "3", "--init",
                 root / "ar" / "final", "--out", root / "td", *FAST)
    assert td.returncode == 0, td.stderr[-2000:]
    return root


def test_ar_training_then_conversion(converted):
    ar, td = _records(converted / "ar"), _records(converted / "td")
    steps_ar, steps_td = [r for r in ar if "loss" in r], [r for r in td if "loss" in r]
    assert len(steps_ar) == len(steps_td) == 3
    assert all(r["diffusion_loss"] is None for r in steps_ar)
    assert all(r["diffusion_loss"] is not None and r["diffusion_loss"] > 0 for r in steps_td)
    assert steps_td[0]["ar_loss"] < steps_ar[0]["ar_loss"]  # the conversion started from the AR weights
    spec = load_spec(converted / "td" / "final" / "spec.yaml")
    assert spec.model.dense and spec.diffusion.mask_token_id is not None


@pytest.mark.parametrize("sampler", [dict(sampler="lossless", temperature=0.8, top_k=40, top_p=0.95),
                                     dict(sampler="logit_mix", mix_weight=0.7), dict(sampler="greedy")])
def test_the_converted_model_decodes_with_every_sampler(converted, sampler):
    model = zdiff.load_model(converted / "td" / "final")
    spec = load_spec(converted / "td" / "final" / "spec.yaml")
    params = SamplingParams(banned=(spec.diffusion.mask_token_id,), **sampler)
    runs = {mode: zdiff.generate(model, PROMPTS, params, diffusion=spec.diffusion, mode=mode, max_new_tokens=12,
                                 seed=4) for mode in ("tidar", "ar")}
    for run in runs.values():
        assert [len(t) for t in run.tokens] == [12] * len(PROMPTS)
        assert all(spec.diffusion.mask_token_id not in t for t in run.tokens)
    assert sum(runs["tidar"].forward_passes) < sum(runs["ar"].forward_passes)  # drafts were accepted
    if sampler["sampler"] == "greedy":  # lossless greedy: TiDAR commits exactly AR's tokens
        assert runs["tidar"].tokens == runs["ar"].tokens


def test_the_converted_model_is_served(converted):
    openai = pytest.importorskip("openai")
    pytest.importorskip("fastapi")
    pytest.importorskip("uvicorn")
    from zdiff.serve.launcher import ServerProcess, child_env

    checkpoint = converted / "td" / "final"
    template = "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}<|assistant|>"
    (checkpoint / "tokenizer_config.json").write_text(json.dumps({"chat_template": template}))
    with ServerProcess(checkpoint, "--max-slots", "2", "--max-len", "128", "--served-model-name", "dense",
                       log=converted / "server.log", env=child_env(REPO)) as live:
        client = openai.OpenAI(base_url=live.base_url, api_key="unused", max_retries=0, timeout=120.0)
        chat = client.chat.completions.create(model="dense", messages=[{"role": "user", "content": "hi"}],
                                              max_tokens=6, temperature=0, extra_body={"return_token_ids": True})
        completion = client.completions.create(model="dense", prompt="import", max_tokens=6, temperature=0,
                                               extra_body={"return_token_ids": True})
    assert chat.usage.prompt_tokens == len("<|user|>hi\n<|assistant|>".encode())
    assert chat.usage.completion_tokens == len(chat.choices[0].model_extra["token_ids"]) > 0
    model = zdiff.load_model(checkpoint)
    spec = load_spec(checkpoint / "spec.yaml")
    local = zdiff.generate(model, [list(b"import")], SamplingParams(sampler="greedy"), diffusion=spec.diffusion,
                           max_new_tokens=6)
    assert completion.choices[0].model_extra["token_ids"] == local.tokens[0]


def test_an_imported_qwen2_checkpoint_converts_and_decodes(tmp_path):
    """transformers Qwen2 (q/k/v biases, YaRN RoPE) with its tokenizer.json -> zdiff import -> TiDAR conversion
    -> greedy TiDAR decoding equal to greedy AR."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    from hf_models import tiny_qwen2

    corpus = micro_corpus(tmp_path, files=3)
    tok = Tokenizer(models.BPE(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel()
    tok.train([str(p) for p in sorted(corpus.iterdir())], trainers.BpeTrainer(vocab_size=90, special_tokens=["[UNK]"]))
    hf_dir = tmp_path / "hf"
    rope = {"rope_type": "yarn", "rope_theta": 1e6, "factor": 4.0, "original_max_position_embeddings": 16}
    tiny_qwen2(0, rope_parameters=rope, max_position_embeddings=64).save_pretrained(hf_dir)
    tok.save(str(hf_dir / "tokenizer.json"))
    assert run_cli("import", hf_dir, tmp_path / "ck").returncode == 0
    r = run_cli("train", tmp_path / "ck" / "spec.yaml", "--data", corpus, "--mode", "tidar", "--steps", "2",
                "--init", tmp_path / "ck", "--out", tmp_path / "conv", *FAST)
    assert r.returncode == 0, r.stderr[-2000:]
    final = tmp_path / "conv" / "final"
    spec = load_spec(final / "spec.yaml")
    assert spec.model.dense and spec.model.attention.rope_scaling.kind == "yarn"
    assert spec.diffusion.mask_token_id == tok.get_vocab_size() and (final / "tokenizer.json").is_file()
    model = zdiff.load_model(final)
    prompts = [tok.encode("def f(x):").ids, tok.encode("import os").ids]
    greedy = SamplingParams(sampler="greedy", banned=(spec.diffusion.mask_token_id,))
    with torch.no_grad():
        runs = {mode: zdiff.generate(model, prompts, greedy, diffusion=spec.diffusion, mode=mode, max_new_tokens=10)
                for mode in ("tidar", "ar")}
    assert runs["tidar"].tokens == runs["ar"].tokens and all(len(t) == 10 for t in runs["ar"].tokens)
