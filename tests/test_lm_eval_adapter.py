"""The lm-eval adapter: exact AR loglikelihoods (against a direct forward), rolling scores, generate_until on the
engine with stop sequences, and lm-eval run fully offline on the local tasks in tests/lm_eval_tasks."""

import math
import socket

import pytest
import torch

from conftest import REPO
from zdiff.checkpoint.store import save_checkpoint
from zdiff.errors import ZdiffError
from zdiff.runtime import build_model
from zdiff.spec import load_spec

lm_eval = pytest.importorskip("lm_eval")
from lm_eval.api.instance import Instance  # noqa: E402

from zdiff.eval.lm_adapter import ZdiffLM, cut_at_stop  # noqa: E402

TASKS = REPO / "tests" / "lm_eval_tasks"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    spec = load_spec("zaya1-tiny")
    directory = tmp_path_factory.mktemp("eval") / "ckpt"
    save_checkpoint(build_model(spec.model, seed=11), spec, directory)
    return directory


@pytest.fixture(scope="module")
def manager():
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=str(TASKS), include_defaults=False)  # the local tasks only: fast


@pytest.fixture(autouse=True)
def no_network(monkeypatch, tmp_path):
    """Any attempt at a network connection fails the test; datasets' cache goes to tmp."""
    for var in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.setenv(var, "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "datasets"))
    real_connect = socket.socket.connect

    def connect(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6) and address[0] not in ("127.0.0.1", "::1", "localhost"):
            raise AssertionError(f"network access attempted: {address}")
        return real_connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", connect)


def _requests(kind, args_list):
    return [Instance(request_type=kind, doc={}, arguments=args, idx=i) for i, args in enumerate(args_list)]


def _direct(lm, context: str, continuation: str):
    """log p(continuation | context) from one unbatched forward of the reference model (the text split into
    tokens as lm-eval splits it: a context's trailing spaces belong to the continuation)."""
    ctx, cont = lm._encode_pair(context, continuation)
    ids = torch.tensor([ctx + cont])
    with torch.no_grad():
        logp = torch.log_softmax(lm.model(ids).double(), dim=-1)[0]
    picked = [logp[len(ctx) - 1 + i, t].item() for i, t in enumerate(cont)]
    greedy = all(logp[len(ctx) - 1 + i].argmax().item() == t for i, t in enumerate(cont))
    return sum(picked), greedy


def test_loglikelihood_equals_a_direct_forward(checkpoint):
    lm = ZdiffLM(str(checkpoint), batch_size=3)
    gen = torch.Generator().manual_seed(0)
    pairs = []
    for n in range(7):  # ragged lengths, batched 3 at a time, longest first
        context = "".join(chr(97 + int(c)) for c in torch.randint(0, 26, (3 + 5 * n,), generator=gen))
        pairs.append((context, " " + "xyz"[: 1 + n % 3]))
    results = lm.loglikelihood(_requests("loglikelihood", pairs))
    assert len(results) == len(pairs)
    for (context, continuation), (logprob, greedy) in zip(pairs, results):
        ref, ref_greedy = _direct(lm, context, continuation)
        assert math.isclose(logprob, ref, rel_tol=1e-5, abs_tol=1e-4) and greedy == ref_greedy
    # the greedy flag can be true: score the model's own argmax continuation
    ids = lm.tok_encode("def f(")
    with torch.no_grad():
        best = lm.model(torch.tensor([ids]))[0, -1].argmax().item()
    if best < 256:
        (_, greedy), = lm.loglikelihood(_requests("loglikelihood", [("def f(", chr(best))]))
        assert greedy


def test_loglikelihood_rolling_scores_every_token_once(checkpoint):
    text = "import os\nimport sys\n\ndef main():\n    return 0\n"
    short = ZdiffLM(str(checkpoint), max_length=2048)
    (full,) = short.loglikelihood_rolling(_requests("loglikelihood_rolling", [(text,)]))
    ids = [short.eot_token_id] + short.tok_encode(text)
    with torch.no_grad():
        logp = torch.log_softmax(short.model(torch.tensor([ids])).double(), dim=-1)[0]
    ref = sum(logp[j - 1, ids[j]].item() for j in range(1, len(ids)))
    assert math.isclose(full, ref, rel_tol=1e-5)
    windowed = ZdiffLM(str(checkpoint), max_length=8, batch_size=4)
    (parts,) = windowed.loglikelihood_rolling(_requests("loglikelihood_rolling", [(text,)]))
    assert parts < 0 and parts != pytest.approx(full, rel=1e-6)  # shorter contexts: a different, finite score


def test_generate_until_cuts_at_stop_sequences(checkpoint):
    lm = ZdiffLM(str(checkpoint), mode="tidar", sampler="lossless", seed=3, max_gen_toks=12)
    prompts = [("def f(x):\n", {"until": ["\n"], "max_gen_toks": 12}), ("class A", {"until": ["e", "a"]}),
               ("x = ", {"until": []})]
    texts = lm.generate_until(_requests("generate_until", prompts))
    assert len(texts) == 3 and not any(s in texts[1] for s in "ea") and "\n" not in texts[0]
    assert lm.generated_tokens > 0 and lm.forward_passes > 0 and lm.tokens_per_forward >= 1.0
    again = ZdiffLM(str(checkpoint), mode="tidar", sampler="lossless", seed=3, max_gen_toks=12)
    assert again.generate_until(_requests("generate_until", prompts)) == texts  # the seed decides
    assert cut_at_stop("abcXdefYg", ["Y", "X"]) == "abc" and cut_at_stop("abc", ["Z", ""]) == "abc"


def test_adapter_refuses_bad_model_args(checkpoint, tmp_path):
    with pytest.raises(ZdiffError, match="unknown model_args colour"):
        ZdiffLM(str(checkpoint), colour="red")
    assert ZdiffLM.create_from_arg_string(f"checkpoint={checkpoint}", {"batch_size": "auto", "max_batch_size": 8,
                                                                        "device": "cpu"}).batch_size == 8
    if not torch.cuda.is_available():
        with pytest.raises(ZdiffError, match="device cuda: no CUDA"):
            ZdiffLM(str(checkpoint), device="cuda")
    with pytest.raises(ZdiffError, match="mode must be"):
        ZdiffLM(str(checkpoint), mode="nar")
    spec = load_spec("zaya1-tiny")
    import dataclasses

    ar = dataclasses.replace(spec, diffusion=dataclasses.replace(spec.diffusion, mask_token_id=None))
    save_checkpoint(build_model(ar.model, seed=1), ar, tmp_path / "ar")
    with pytest.raises(ZdiffError, match="mode=tidar needs a converted checkpoint"):
        ZdiffLM(str(tmp_path / "ar"), mode="tidar")


def test_lm_eval_runs_offline_on_the_local_tasks(checkpoint, manager):
    from lm_eval import simple_evaluate

    results = simple_evaluate(model="zdiff", model_args=f"checkpoint={checkpoint},mode=tidar,sampler=logit_mix,"
                              "mix_weight=0.5,max_gen_toks=16", tasks=["zdiff_python_mc", "zdiff_python_gen"],
                              task_manager=manager, bootstrap_iters=0,
                              log_samples=True)
    mc, gen = results["results"]["zdiff_python_mc"], results["results"]["zdiff_python_gen"]
    assert 0.0 <= mc["acc,none"] <= 1.0 and 0.0 <= gen["exact_match,none"] <= 1.0
    samples = results["samples"]
    assert len(samples["zdiff_python_mc"]) == 10 and len(samples["zdiff_python_gen"]) == 6
    lm = ZdiffLM(str(checkpoint))
    first = samples["zdiff_python_mc"][0]
    for (logprob, greedy), args in zip((r[0] for r in first["resps"]), first["arguments"]):
        ref, _ = _direct(lm, *args)  # the scores lm-eval saw are the direct forward's
        assert math.isclose(float(logprob), ref, rel_tol=1e-5, abs_tol=1e-4)
    assert all("\n" not in s["filtered_resps"][0] for s in samples["zdiff_python_gen"])


def test_zdiff_eval_prints_the_table_and_writes_the_json(checkpoint, tmp_path, capsys):
    import json

    from zdiff.cli import main

    out = tmp_path / "res" / "scores.json"
    code = main(["eval", str(checkpoint), "--tasks", "zdiff_python_mc,zdiff_python_gen", "--include-path", str(TASKS),
                 "--limit", "3", "--mode", "tidar", "--sampler", "lossless", "--output", str(out)])
    printed = capsys.readouterr().out
    assert code == 0 and "zdiff_python_mc" in printed and "acc" in printed and "T/NFE" in printed
    saved = json.loads(out.read_text())
    assert saved["zdiff"]["mode"] == "tidar" and saved["zdiff"]["sampler"] == "lossless"
    assert saved["zdiff"]["forward_passes"] > 0 and "zdiff_python_gen" in saved["results"]
    assert main(["eval", str(checkpoint), "--tasks", "no_such_task", "--include-path", str(TASKS)]) == 2
    assert "unknown lm-eval task(s) no_such_task" in capsys.readouterr().err


def _byte_level_hf_tokenizer(directory):
    """tokenizer.json (GPT-2 byte level, id = byte value, <bos> <eos> <mask> at 256..258) that both
    transformers' AutoTokenizer and zdiff read: the byte tokenizer of the tiny specs, in HF form."""
    import json

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    extra = iter(range(256, 512))
    char_of = {b: chr(b if b in printable else next(extra)) for b in range(256)}
    tok = Tokenizer(models.BPE({char_of[b]: b for b in range(256)}, []))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(["<bos>", "<eos>", "<mask>"])
    tok.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<bos>", "eos_token": "<eos>"}))
    (directory / "generation_config.json").write_text(json.dumps({"eos_token_id": 257, "bos_token_id": 256}))


def test_lm_eval_local_completions_against_zdiff_serve_matches_the_adapter(tmp_path, manager):
    """lm-eval's own OpenAI-completions model, talking to a live `zdiff serve` (token-id batches, echo +
    logprobs for loglikelihood, stop strings for generate_until), scores the local tasks as the adapter does."""
    pytest.importorskip("fastapi")
    pytest.importorskip("uvicorn")
    from lm_eval import simple_evaluate

    from zdiff.serve.launcher import ServerProcess, child_env

    spec = load_spec("zaya1-tiny")
    ckpt = tmp_path / "ckpt"
    save_checkpoint(build_model(spec.model, seed=12), spec, ckpt)
    _byte_level_hf_tokenizer(ckpt)
    adapter = ZdiffLM(str(ckpt), mode="ar", sampler="greedy", max_gen_toks=24)
    assert adapter.tok_encode("é x") == list("é x".encode()) and adapter.eot_token_id == 257
    tasks = ["zdiff_python_mc", "zdiff_python_gen"]
    ours = simple_evaluate(model=adapter, tasks=tasks, task_manager=manager, bootstrap_iters=0, log_samples=True)
    with ServerProcess(ckpt, "--max-slots", "4", "--max-len", "256", "--served-model-name", "tiny",
                       log=tmp_path / "server.log", env=child_env(REPO)) as live:
        theirs = simple_evaluate(
            model="local-completions", tasks=tasks, task_manager=manager, bootstrap_iters=0, log_samples=True,
            model_args={"model": "tiny", "base_url": f"{live.base_url}/completions", "tokenizer_backend": "huggingface",
                        "tokenizer": str(ckpt), "batch_size": 4, "max_retries": 1, "max_length": 200,
                        "max_gen_toks": 24})
    for ours_s, theirs_s in zip(ours["samples"]["zdiff_python_mc"], theirs["samples"]["zdiff_python_mc"]):
        for (a, _), (b, _) in zip((r[0] for r in ours_s["resps"]), (r[0] for r in theirs_s["resps"])):
            assert math.isclose(float(a), float(b), rel_tol=1e-4, abs_tol=1e-3)
    assert ours["results"]["zdiff_python_mc"]["acc,none"] == theirs["results"]["zdiff_python_mc"]["acc,none"]
    # greedy AR on both sides: the same completions, cut at the same newline
    ours_gen = [s["filtered_resps"][0] for s in ours["samples"]["zdiff_python_gen"]]
    theirs_gen = [s["filtered_resps"][0] for s in theirs["samples"]["zdiff_python_gen"]]
    assert ours_gen == theirs_gen and any(ours_gen)
