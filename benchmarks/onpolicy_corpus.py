"""A model's own samples as a training corpus: on-policy data for TiDAR conversion (issue 20's recipe study).

DistillSpec (Zhou et al., ICLR 2024) found that training a drafter on the target model's own generations pays
most. For a TiDAR conversion the target is the AR checkpoint itself, so this samples continuations of training
prompts from it (AR decoding at temperature 1, the engine) and writes prompt + continuation as token-id
documents in zdiff's shard format, usable as --data or inside a mixture (`stdlib:0.5,DIR:0.5`). On these
documents the AR rows' expected gradient is zero (the data already follow p), and the mask rows learn the
distribution the verifier will actually judge them against.

    PYTHONPATH=. python benchmarks/onpolicy_corpus.py runs/study/ar/final --out runs/study/onpolicy
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from zdiff.checkpoint.tokenizer import checkpoint_tokenizer  # noqa: E402
from zdiff.generation.api import generate_on_engine  # noqa: E402
from zdiff.loading import load_model  # noqa: E402
from zdiff.runtime.threads import fixed_threads  # noqa: E402
from zdiff.sampler import SamplingParams  # noqa: E402
from zdiff.train.data import split_corpus  # noqa: E402
from zdiff.train.tokenize_corpus import write_token_documents  # noqa: E402


def onpolicy_corpus(checkpoint, out, data: str = "stdlib", sequences: int = 1024, prompt_tokens: int = 64,
                    new_tokens: int = 128, seed: int = 0, threads: int | None = 1, log=print) -> dict:
    """Sample `sequences` continuations of `new_tokens` from `checkpoint` after training-split prompts of `data`;
    write them to the shard set `out`. Returns its manifest."""
    directory = Path(checkpoint)
    with fixed_threads(threads):
        model = load_model(directory).eval()
        tokenizer = checkpoint_tokenizer(directory, model.spec.vocab_size)
        train = split_corpus(data, tokenizer)[0]
        windows = train.batch(seed, 0, sequences, prompt_tokens).tolist()
        prompts = [[t for t in w if t != tokenizer.separator] or w[:1] for w in windows]
        with tqdm(total=sequences * new_tokens, desc="on-policy samples", unit="tok") as bar:
            result = generate_on_engine(model, prompts, SamplingParams(sampler="lossless"), mode="ar",
                                        max_new_tokens=new_tokens, seed=seed, progress=lambda n: bar.update(n - bar.n))
    documents = [prompt + tokens for prompt, tokens in zip(prompts, result.tokens)]
    return write_token_documents(out, documents, tokenizer, f"samples of {directory} after {data} prompts", log=log)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("checkpoint", help="the model whose samples to write (the AR checkpoint of a conversion)")
    p.add_argument("--out", required=True, help="the shard set to write (must not exist)")
    p.add_argument("--data", default="stdlib", help="corpus whose training split gives the prompts")
    p.add_argument("--sequences", type=int, default=1024)
    p.add_argument("--prompt-tokens", type=int, default=64)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    onpolicy_corpus(args.checkpoint, args.out, args.data, args.sequences, args.prompt_tokens, args.new_tokens,
                    args.seed, args.threads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
