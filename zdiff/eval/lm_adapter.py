"""lm-eval-harness (0.4.x) model backed by a zdiff checkpoint: `pip install "zdiff[eval]"`.

    import lm_eval, zdiff.eval.lm_adapter  # registers model="zdiff"
    lm_eval.simple_evaluate(model="zdiff", model_args="checkpoint=ckpt,mode=tidar,sampler=lossless", tasks=[...])

`loglikelihood` / `loglikelihood_rolling` are exact AR scores (batched causal forwards, fp32 log-softmax),
whatever the mode: they measure the model, not a sampler. `generate_until` decodes on the engine with the
chosen mode (ar / tidar), sampler (lossless / logit_mix / greedy), mix weight and seed; the text is cut at
the first stop sequence. The tasks' own sampling settings (do_sample, temperature) are not used: the
model_args choose the sampler, which is what a comparison of samplers needs.
"""

from __future__ import annotations

from pathlib import Path

import lm_eval.models  # noqa: F401  (lm-eval fills its registry lazily only while it is empty: fill it first,
from lm_eval.api.model import TemplateLM  # or registering "zdiff" would hide "hf", "local-completions", ...)
from lm_eval.api.registry import register_model
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
from tqdm import tqdm

from ..errors import ZdiffError
from .scoring import continuation_scores

MODES = ("ar", "tidar")
_TRUE = ("1", "true", "yes")


@register_model("zdiff")
class ZdiffLM(TemplateLM):
    """model_args: checkpoint (required), mode, sampler, mix_weight, temperature, top_k, top_p, seed,
    batch_size (or "auto": max_batch_size, default 16), max_length, max_gen_toks, device, dtype (fp32 | bf16)."""

    def __init__(self, checkpoint: str, mode: str = "ar", sampler: str | None = None, mix_weight=None,
                 temperature=None, top_k=None, top_p=None, seed=0, batch_size=16, max_length=2048,
                 max_gen_toks=256, device: str = "cpu", dtype: str | None = None, max_batch_size=None, **unused):
        super().__init__()
        import torch

        from ..checkpoint.store import checkpoint_spec, load_model
        from ..generation.cli_run import checkpoint_tokenizer, stop_tokens_of
        from ..sampler import SamplingParams

        if unused:
            raise ZdiffError(f"zdiff lm-eval model: unknown model_args {', '.join(sorted(unused))}")
        if mode not in MODES:
            raise ZdiffError(f"zdiff lm-eval model: mode must be one of {', '.join(MODES)}, got {mode!r}")
        self.checkpoint = Path(checkpoint)
        self.spec = checkpoint_spec(self.checkpoint)
        if mode == "tidar" and self.spec.diffusion.mask_token_id is None:
            raise ZdiffError(f"{checkpoint}: mode=tidar needs a converted checkpoint (diffusion.mask_token_id is null)")
        if str(device).startswith("cuda") and not torch.cuda.is_available():
            raise ZdiffError(f"zdiff lm-eval model: device {device}: no CUDA or ROCm device is visible to torch")
        dtypes = {None: None, "fp32": torch.float32, "bf16": torch.bfloat16}
        if dtype not in dtypes:
            raise ZdiffError(f"zdiff lm-eval model: dtype must be fp32 or bf16, got {dtype!r}")
        self.model = load_model(self.checkpoint, device=device, dtype=dtypes[dtype]).eval()
        self.tok = checkpoint_tokenizer(self.checkpoint, self.spec)
        self.stop_tokens = stop_tokens_of(self.checkpoint, self.tok)
        self.mode, self.seed = mode, int(seed)
        if str(batch_size).startswith("auto"):  # lm-eval's "auto": sequences per forward are capped by tokens anyway
            batch_size = max_batch_size or 16
        self.batch_size, self.max_length, self.max_gen_toks = int(batch_size), int(max_length), int(max_gen_toks)
        self.params = SamplingParams.from_spec(
            self.spec.sampler, sampler=sampler, mix_weight=None if mix_weight is None else float(mix_weight),
            temperature=None if temperature is None else float(temperature),
            top_k=None if top_k is None else int(top_k), top_p=None if top_p is None else float(top_p))
        self.generated_tokens = 0  # generate_until totals: T/NFE of the run
        self.forward_passes = 0

    @property
    def eot_token_id(self) -> int:
        if self.stop_tokens:
            return self.stop_tokens[0]
        raise ZdiffError(f"{self.checkpoint}: no end-of-text id (generation_config.json eos_token_id) to condition "
                         "an empty context on")

    @property
    def tokenizer_name(self) -> str:
        return self.tok.name

    @property
    def tokens_per_forward(self) -> float:
        return self.generated_tokens / max(1, self.forward_passes)

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        return self.tok.encode(string).tolist()

    def tok_decode(self, tokens) -> str:
        return self.tok.decode(tokens)

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        pairs = [(context, continuation) for _, context, continuation in requests]
        with tqdm(total=len(pairs), desc="zdiff loglikelihood", disable=disable_tqdm) as bar:
            results = continuation_scores(self.model, pairs, self.max_length, self.batch_size, progress=bar.update)
        for (key, _, _), result in zip(requests, results):
            self.cache_hook.add_partial("loglikelihood", key, result)
        return results

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Perplexity-style scores: the whole text in disjoint windows of max_length tokens, the first one
        conditioned on the end-of-text id (lm-eval's convention)."""
        windows, owner = [], []
        for i, (text,) in enumerate(req.args for req in requests):
            for window in get_rolling_token_windows(self.tok_encode(text), self.prefix_token_id,
                                                    self.max_length, context_len=1):
                windows.append(make_disjoint_window(window))
                owner.append(i)
        totals = [0.0] * len(requests)
        with tqdm(total=len(windows), desc="zdiff loglikelihood_rolling", disable=disable_tqdm) as bar:
            scores = continuation_scores(self.model, windows, self.max_length, self.batch_size, progress=bar.update)
        for i, (logprob, _) in zip(owner, scores):
            totals[i] += logprob
        for req, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, total)
        return totals

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        from ..generation.api import generate_on_engine

        groups: dict[int, list[int]] = {}
        for i, req in enumerate(requests):
            groups.setdefault(int(req.args[1].get("max_gen_toks", self.max_gen_toks)), []).append(i)
        texts: list[str] = [""] * len(requests)
        bar = tqdm(total=len(requests), desc=f"zdiff generate ({self.mode} {self.params.sampler})",
                   disable=disable_tqdm)
        for max_new, members in groups.items():
            keep = max(1, self.max_length - max_new)
            prompts = [(self.tok_encode(requests[i].args[0]) or [self.prefix_token_id])[-keep:] for i in members]
            result = generate_on_engine(self.model, prompts, self.params, diffusion=self.spec.diffusion,
                                        mode=self.mode, max_new_tokens=max_new, stop_tokens=self.stop_tokens,
                                        seed=self.seed, spec=self.spec)
            self.generated_tokens += result.total_tokens
            self.forward_passes += sum(result.forward_passes)
            for i, tokens in zip(members, result.tokens):
                texts[i] = cut_at_stop(self.tok_decode(tokens), _until(requests[i].args[1]))
                self.cache_hook.add_partial("generate_until", requests[i].args, texts[i])
            bar.update(len(members))
        bar.close()
        return texts


def _until(gen_kwargs: dict) -> list[str]:
    until = gen_kwargs.get("until") or []
    return [until] if isinstance(until, str) else list(until)


def cut_at_stop(text: str, stops: list[str]) -> str:
    """The text before the earliest stop sequence (all of it when none occurs)."""
    cut = min((text.find(s) for s in stops if s and s in text), default=len(text))
    return text[:cut]
