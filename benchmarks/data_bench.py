"""The data path on the CPU: tokenizer throughput per worker, loader throughput against what a ZAYA1-8B training
step consumes, and peak resident memory against corpus size.

    PYTHONPATH=. python benchmarks/data_bench.py --out DIR            # the BENCHMARKS.md numbers (a few minutes)
    PYTHONPATH=. python benchmarks/data_bench.py --smoke --out DIR    # tiny sizes, logic only

(a) `zdiff tokenize` of a synthetic JSONL corpus (random words, 8 files) with 1 and 2 workers, with the
    byte-level tokenizer and with a byte-level BPE of 8192 ids trained on the corpus (`tokenizers`): tokens/s in
    all and per worker (wall time of the whole command: reading, hashing, tokenizing, writing).
(b) Loader: Mixture.batch of one rank's rows (ZAYA1-8B: one 4096-token sequence per GPU per micro-step) from
    the memory-mapped shards, windows per second -> tokens/s. The need is the most tokens a GPU can consume:
    a TiDAR step at 100 % of an H200's dense bf16 peak (zdiff.targets), FLOPs from zdiff.train.run_log.
    The loader must give at least 10x that.
(c) Peak RSS of a process that opens a (sparse) shard set of each size and reads 200 batches of 8 windows:
    flat in the corpus size when the shards are memory-mapped.
Writes results.json and results.md into --out.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import random
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from zdiff.spec import load_spec  # noqa: E402
from zdiff.targets import TARGETS  # noqa: E402
from zdiff.train.data import Tokenizer, split_corpus  # noqa: E402
from zdiff.train.run_log import step_flops  # noqa: E402
from zdiff.train.tokenize_corpus import tokenize_corpus  # noqa: E402

WORDS = "the of and model token shard window layer expert router mask block data train loss step".split()
RSS_PROBE = """
import json, resource, sys
from zdiff.train.data import Tokenizer, split_corpus
train, _ = split_corpus(sys.argv[1], Tokenizer(None, 264))
for step in range(200):
    train.batch(0, step, 8, 4097)
print(json.dumps({"tokens": train.num_tokens, "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
"""


def synthetic_corpus(root: Path, files: int, docs_per_file: int) -> int:
    rng = random.Random(0)
    root.mkdir(parents=True)
    size = 0
    for i in range(files):
        lines = [json.dumps({"text": " ".join(rng.choices(WORDS, k=rng.randint(50, 400)))})
                 for _ in range(docs_per_file)]
        text = "\n".join(lines) + "\n"
        (root / f"part-{i:03d}.jsonl").write_text(text)
        size += len(text)
    return size


def bpe_tokenizer(corpus: Path, out: Path) -> Path:
    """A byte-level BPE (vocabulary 8192) trained on the corpus: the speed class of a real checkpoint tokenizer."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers, trainers

    tokenizer = HFTokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    texts = (json.loads(line)["text"] for f in sorted(corpus.glob("*.jsonl")) for line in f.open())
    tokenizer.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=8192, show_progress=False))
    tokenizer.save(str(out))
    return out


def bench_tokenizer(root: Path, out: Path) -> list[dict]:
    rows = []
    bpe = bpe_tokenizer(root, out / "bpe.json")
    for name, tokenizer in (("bytes", Tokenizer(None, 264)), ("BPE 8192", Tokenizer(bpe, 0))):
        for workers in (1, 2):
            started = time.perf_counter()
            manifest = tokenize_corpus(str(root), out / f"shards-{name[:3]}-{workers}", tokenizer, workers=workers,
                                       log=lambda _: None)
            seconds = time.perf_counter() - started
            tokens = manifest["train"]["tokens"] + manifest["heldout"]["tokens"]
            rows.append({"tokenizer": name, "workers": workers, "tokens": tokens, "seconds": seconds,
                         "tokens_per_s": tokens / seconds, "tokens_per_s_per_worker": tokens / seconds / workers})
    return rows


def bench_loader(shards: Path, seq_len: int, rows: int, steps: int) -> dict:
    train, _ = split_corpus(str(shards), Tokenizer(None, 264))
    train.batch(0, 0, rows, seq_len + 1)  # first touch
    started = time.perf_counter()
    for step in range(steps):
        train.batch(0, step, rows, seq_len + 1)
    seconds = time.perf_counter() - started
    loader = steps * rows * seq_len / seconds
    spec = load_spec("zaya1-8b")
    peak = TARGETS["h200"].nominal_tflops * 1e12
    need = peak / (step_flops(spec, "tidar", 1, seq_len) / seq_len)  # tokens/s per GPU at 100 % of peak
    return {"seq_len": seq_len, "rows_per_batch": rows, "loader_tokens_per_s": loader,
            "gpu_need_tokens_per_s": need, "ratio": loader / need}


def sparse_shards(template: Path, dest: Path, tokens: int) -> Path:
    """A copy of `template` whose training shard is `tokens` long (sparse: takes no disk)."""
    import shutil

    shutil.copytree(template, dest)
    manifest = json.loads((dest / "manifest.json").read_text())
    shard = manifest["train"]["shards"][0]
    manifest["train"]["shards"] = [shard]
    with open(dest / shard["path"], "r+b") as f:
        f.truncate(tokens * 2)
    shard.update(tokens=tokens, file_bytes=tokens * 2, stop=tokens)
    manifest["train"]["tokens"] = tokens
    (dest / "manifest.json").write_text(json.dumps(manifest))
    return dest


def bench_rss(template: Path, out: Path, sizes_gb: list[float]) -> list[dict]:
    rows = []
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]), OMP_NUM_THREADS="1")
    for gb in sizes_gb:
        corpus = sparse_shards(template, out / f"rss-{gb}", int(gb * 2**30 / 2))
        probe = subprocess.run([sys.executable, "-c", RSS_PROBE, str(corpus)], capture_output=True, text=True,
                               env=env, check=True)
        result = json.loads(probe.stdout.strip().splitlines()[-1])
        rows.append({"corpus_gb": gb, "tokens": result["tokens"], "peak_rss_mb": result["peak_rss"] / 2**20})
    return rows


def markdown(results: dict) -> str:
    lines = [f"{results['machine']}, {results['date']}", "",
             "| tokenizer | tokenize workers | tokens | seconds | tokens/s | tokens/s per worker |",
             "|---|---|---|---|---|---|"]
    for r in results["tokenizer"]:
        lines.append(f"| {r['tokenizer']} | {r['workers']} | {r['tokens']:,} | {r['seconds']:.2f} | "
                     f"{r['tokens_per_s']:,.0f} | {r['tokens_per_s_per_worker']:,.0f} |")
    loader = results["loader"]
    lines += ["", "| loader (one rank) | tokens/s | ZAYA1-8B TiDAR need per H200 at 100 % MFU | ratio |",
              "|---|---|---|---|",
              f"| {loader['rows_per_batch']} x {loader['seq_len']} windows | {loader['loader_tokens_per_s']:,.0f} | "
              f"{loader['gpu_need_tokens_per_s']:,.0f} | {loader['ratio']:.0f}x |",
              "", "| corpus (GB, sparse shards) | peak RSS (MB) |", "|---|---|"]
    lines += [f"| {r['corpus_gb']:g} | {r['peak_rss_mb']:.0f} |" for r in results["rss"]]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: the logic, not the numbers")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = out / "work"
    docs = 20 if args.smoke else 4000
    corpus_bytes = synthetic_corpus(work / "corpus", files=8, docs_per_file=docs)
    results = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, CPU only",
               "date": datetime.date.today().isoformat(), "corpus_bytes": corpus_bytes,
               "tokenizer": bench_tokenizer(work / "corpus", work)}
    results["loader"] = bench_loader(work / "shards-byt-1", seq_len=256 if args.smoke else 4096, rows=1,
                                     steps=50 if args.smoke else 5000)
    results["rss"] = bench_rss(work / "shards-byt-1", work, [0.01, 0.1] if args.smoke else [0.25, 1, 4, 16, 64])
    (out / "results.json").write_text(json.dumps(results, indent=1))
    (out / "results.md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
