"""The model `zdiff train` trains: built on the backend's class, from a random init or a checkpoint.

Under FSDP2 a checkpoint is never materialised whole on a rank: the model is built on the meta
device, sharded, given uninitialised local storage, and each rank reads only its own rows of
each tensor from the safetensors files (`load_sharded`).
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..checkpoint.store import check_tensor_names, check_weight
from ..checkpoint.tensors import TensorSource
from ..codegen.generated import generated_model_class
from ..runtime import Transformer, cast_model, init_weights
from ..spec import ModelSpec, Spec
from .convert import VOCAB_ROWS, grow_vocab_rows


def model_class(spec: Spec, backend: str, device) -> type[Transformer]:
    """The reference Transformer (backend torch) or the generated one wired to the kernels (triton)."""
    return Transformer if backend == "torch" else generated_model_class(spec, device)


def random_model(cls: type[Transformer], spec: ModelSpec, seed: int, device) -> Transformer:
    return cast_model(init_weights(cls(spec), seed=seed), dtype=torch.float32, device=device)


def _file_expected(file_spec: ModelSpec) -> dict[str, torch.Tensor]:
    with torch.device("meta"):
        return Transformer(file_spec).state_dict()


def load_full(cls: type[Transformer], spec: ModelSpec, init_dir: Path, file_spec: ModelSpec, device) -> Transformer:
    """The whole checkpoint on this process (file_spec: the checkpoint's own model; spec may have one more token)."""
    source = TensorSource(init_dir)
    expected = _file_expected(file_spec)
    check_tensor_names(init_dir, expected, source)
    state = {name: source.get(name) for name in expected}
    for name, tensor in state.items():  # NaN / inf / integer weights are refused, as zdiff.load_model does
        check_weight(name, tensor, expected[name].dtype)
    state = grow_vocab_rows(state, spec.vocab_size)
    with torch.device("meta"):
        model = cls(spec)
    model.load_state_dict(state, assign=True)
    return cast_model(model, dtype=torch.float32, device=device)


def _local_rows(param: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(local tensor, first global row) of an FSDP2 parameter (Shard(0), torch.chunk sizes), or of a plain one."""
    from torch.distributed.tensor import DTensor, Shard

    if not isinstance(param, DTensor):
        return param, 0
    (placement,) = param.placements
    assert placement == Shard(0), placement  # FSDP2's default sharding
    mesh = param.device_mesh
    rows = param.shape[0]
    per_rank = -(-rows // mesh.size())
    local = param.to_local()
    first = min(rows, mesh.get_local_rank() * per_rank)
    assert local.shape[0] == min(per_rank, rows - first), (local.shape, rows, first)
    return local, first


@torch.no_grad()
def load_sharded(model: Transformer, init_dir: Path, file_spec: ModelSpec) -> int:
    """Fill a sharded model (parameters and buffers on a real device, uninitialised) from a checkpoint,
    each rank reading only its own rows. Returns the bytes this rank read from the files."""
    source = TensorSource(init_dir)
    expected = _file_expected(file_spec)
    check_tensor_names(init_dir, expected, source)
    read = 0
    for name, tensor in model.state_dict().items():
        local, first = _local_rows(tensor)
        stop = first + local.shape[0] if local.dim() else None
        file_rows = expected[name].shape[0] if expected[name].dim() else None
        if stop is None:
            part = source.get(name)
        else:
            part = source.get_rows(name, first, min(stop, file_rows))
        check_weight(name, part, expected[name].dtype)  # this rank's rows: every row is checked by some rank
        read += part.numel() * part.element_size()
        if name in VOCAB_ROWS and stop is not None and stop > file_rows:  # conversion added token rows
            mean = sum(source.get_rows(name, r, r + 1024).double().sum(0)
                       for r in range(0, file_rows, 1024)) / file_rows
            read += expected[name].numel() * expected[name].element_size()
            part = torch.cat([part, mean.to(part.dtype).expand(stop - max(first, file_rows), -1)])
        local.copy_(part.view(local.shape))
    return read
