"""zdiff checkpoints: a directory with spec.yaml, safetensors weights and tokenizer files."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from ..errors import CheckpointError
from ..spec import Spec, dump_spec, load_spec
from .atomic import atomic_directory
from .tensors import TensorSource, write_tensors

SPEC_FILE = "spec.yaml"
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
    "vocab.json", "merges.txt", "generation_config.json", "chat_template.jinja",
)


def copy_tokenizer(src: Path, dst: Path) -> list[str]:
    copied = []
    for name in TOKENIZER_FILES:
        if (src / name).is_file():
            shutil.copy2(src / name, dst / name)
            copied.append(name)
    return copied


def write_checkpoint_files(directory: Path, spec: Spec, state: dict, tokenizer_dir: str | Path | None = None,
                           metadata: dict[str, str] | None = None) -> None:
    """spec.yaml + safetensors (+ tokenizer files) into an existing (temporary) directory."""
    (directory / SPEC_FILE).write_text(dump_spec(spec))
    write_tensors(directory, state.items(), metadata={"spec_hash": spec.hash(), **(metadata or {})})
    if tokenizer_dir is not None:
        copy_tokenizer(Path(tokenizer_dir), directory)


def save_checkpoint(model, spec: Spec, out_dir: str | Path, tokenizer_dir: str | Path | None = None,
                    force: bool = False) -> Path:
    """Write spec + weights (+ tokenizer files) atomically."""
    with atomic_directory(out_dir, force=force) as tmp:
        write_checkpoint_files(tmp, spec, model.state_dict(), tokenizer_dir)
    return Path(out_dir)


def checkpoint_spec(checkpoint_dir: str | Path) -> Spec:
    """The spec of a checkpoint directory (clear errors when it is not one)."""
    directory = Path(checkpoint_dir)
    if not directory.is_dir():
        raise CheckpointError(f"checkpoint directory not found: {directory}")
    if not (directory / SPEC_FILE).is_file():
        raise CheckpointError(f"{directory}: no {SPEC_FILE} (is this a zdiff checkpoint? `zdiff import` converts "
                              "HF directories)")
    return load_spec(directory / SPEC_FILE)


def load_model(checkpoint_dir: str | Path, device=None, dtype=None, model_class=None):
    """Build the model a checkpoint's spec describes and load its weights (strictly).

    model_class: the module class to build (default: the reference `Transformer`; `zdiff.load_model`
    passes the generated model's class for backend="triton"), constructed from the spec's model section."""
    from ..runtime import Transformer, cast_model

    directory = Path(checkpoint_dir)
    spec = checkpoint_spec(directory)
    source = TensorSource(directory)
    model_class = model_class or Transformer
    with torch.device("meta"):
        model = model_class(spec.model)
    expected = model.state_dict()
    check_tensor_names(directory, expected, source)
    state = {name: source.get(name) for name in expected}
    model.load_state_dict(state, assign=True)
    if dtype is None:
        dtype = state["embed.weight"].dtype
    return cast_model(model, dtype=dtype, device=device)


def check_tensor_names(directory, expected: dict[str, torch.Tensor], source: TensorSource) -> None:
    missing = [n for n in expected if n not in source]
    if missing:
        raise CheckpointError(f"{directory}: missing tensor(s) {short_list(missing)}")
    unexpected = [n for n in source.names() if n not in expected]
    if unexpected:
        raise CheckpointError(f"{directory}: tensor(s) the spec does not use: {short_list(unexpected)}")
    for name, tensor in expected.items():
        if source.shape(name) != tuple(tensor.shape):
            raise CheckpointError(f"{directory}: tensor {name} has shape {list(source.shape(name))}, "
                                  f"the spec needs {list(tensor.shape)}")


def short_list(names: list[str], n: int = 4) -> str:
    more = f" and {len(names) - n} more" if len(names) > n else ""
    return ", ".join(names[:n]) + more
