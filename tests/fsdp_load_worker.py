"""Run under torchrun (gloo): load a checkpoint into an FSDP2-sharded model shard by shard and report.

argv: CHECKPOINT OUT_DIR. Writes OUT_DIR/rank<r>.json: bytes read, checkpoint bytes, and whether the
gathered parameters equal a whole-model load (same vocabulary, and one more token row: conversion).
"""

import dataclasses
import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from zdiff.checkpoint.tensors import TensorSource
from zdiff.runtime import Transformer
from zdiff.spec import load_spec
from zdiff.train.model_init import load_full, load_sharded
from zdiff.train.trainer import _shard


def gathered(model) -> dict[str, torch.Tensor]:
    return {k: (v.full_tensor() if hasattr(v, "full_tensor") else v).clone() for k, v in model.state_dict().items()}


def main(checkpoint: Path, out: Path) -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    spec = load_spec(checkpoint / "spec.yaml").model
    grown = dataclasses.replace(spec, vocab_size=spec.vocab_size + 1)
    source = TensorSource(checkpoint)
    total = sum(source.get(n).numel() * source.get(n).element_size() for n in source.names())
    report = {"total": total}
    for name, model_spec in (("same", spec), ("grown", grown)):
        with torch.device("meta"):
            model = Transformer(model_spec)
        model = _shard(model, "torch")
        model.to_empty(device="cpu")
        report[f"{name}_read"] = load_sharded(model, checkpoint, spec)
        want = load_full(Transformer, model_spec, checkpoint, spec, "cpu").state_dict()
        got = gathered(model)
        report[f"{name}_equal"] = sorted(k for k in want if not torch.equal(got[k], want[k].to(got[k].dtype)))
    (out / f"rank{rank}.json").write_text(json.dumps(report))
    # leave together: a rank tearing gloo down while its peer still drains the last gather aborted once in CI
    # ("terminate called without an active exception", SIGABRT on rank 0)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
