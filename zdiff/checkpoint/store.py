"""zdiff checkpoints: a directory with spec.yaml, safetensors weights and tokenizer files."""

from __future__ import annotations

import json
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


def check_tokenizer_files(directory: Path, vocab_size: int, generation_config: bool = True) -> None:
    """The tokenizer files a checkpoint (or HF) directory holds are files, readable, and name only ids the
    model has; a tokenizer.json that cannot be read is an error, never a silent fall-back to bytes.
    generation_config=False leaves generation_config.json to `repaired_generation_config` (imports)."""
    for name in TOKENIZER_FILES:
        path = directory / name
        if path.exists() and not path.is_file():
            raise CheckpointError(f"{path}: is not a regular file")
    tokenizer_json = directory / "tokenizer.json"
    if tokenizer_json.is_file():
        try:
            from tokenizers import Tokenizer
        except ImportError:
            Tokenizer = None  # reading it needs the package; zdiff.train.data says so when it is used
        if Tokenizer is not None:
            try:
                ids = Tokenizer.from_file(str(tokenizer_json)).get_vocab(with_added_tokens=True).values()
            except Exception as exc:  # tokenizers raises plain Exception for every malformed file
                reason = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
                raise CheckpointError(f"{tokenizer_json}: not a readable tokenizer ({reason[:200]})") from None
            top = max(ids, default=-1)
            if top >= vocab_size:
                raise CheckpointError(f"{tokenizer_json}: has token id {top}, past the model's vocabulary "
                                      f"(model.vocab_size {vocab_size})")
    config = directory / "generation_config.json"
    if generation_config and config.is_file():
        data = _generation_config(config)
        bad = _impossible_special_ids(data, vocab_size)
        if "eos_token_id" in bad:
            raise CheckpointError(f"{config}: eos_token_id must be an id in 0..{vocab_size - 1} or a list of them, "
                                  f"got {data['eos_token_id']!r}"[:300])


SPECIAL_ID_KEYS = ("bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id")


def _generation_config(config: Path) -> dict:
    try:
        data = json.loads(config.read_bytes())
    except ValueError as exc:
        raise CheckpointError(f"{config}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{config}: must hold a JSON object, got a {type(data).__name__}")
    return data


def _impossible_special_ids(data: dict, vocab_size: int) -> dict[str, object]:
    """{key: value} of the special-id fields that name no id of the model (null means unset, so it is fine)."""
    def possible(i) -> bool:
        return isinstance(i, int) and not isinstance(i, bool) and 0 <= i < vocab_size

    bad = {}
    for key in SPECIAL_ID_KEYS:
        value = data.get(key)
        ids = value if isinstance(value, list) else [] if value is None else [value]
        if not all(possible(i) for i in ids):
            bad[key] = value
    return bad


def repaired_generation_config(hf_dir: Path, vocab_size: int) -> tuple[dict | None, list[str]]:
    """An HF directory's generation_config.json without the special ids the model cannot have (transformers saves
    its defaults, e.g. eos 106, into tiny random models), None when it has none or needs no repair (then it is
    copied as it is), and one note per dropped id for the caller to warn with once the import has succeeded."""
    config = hf_dir / "generation_config.json"
    if not config.is_file():
        return None, []
    data, notes = _generation_config(config), []
    for key, value in _impossible_special_ids(data, vocab_size).items():
        ids = value if isinstance(value, list) else [value]
        kept = [i for i in ids if isinstance(i, int) and not isinstance(i, bool) and 0 <= i < vocab_size]
        data[key] = kept if isinstance(value, list) and kept else (kept[0] if len(kept) == 1 else None)
        notes.append(f"{config}: {key} {value!r} names no id of the model's vocabulary (0..{vocab_size - 1}); "
                     f"imported with {key} {data[key]!r}")
    return (data if notes else None), notes  # None: nothing to repair, the file is copied as it is


def check_weight(name: str, tensor: torch.Tensor, expected_dtype: torch.dtype, allow_nonfinite: bool = False) -> None:
    """A stored tensor can stand for a parameter: floating point where the model is, and finite unless allowed."""
    if expected_dtype.is_floating_point and not tensor.is_floating_point():
        raise CheckpointError(f"tensor {name} has dtype {str(tensor.dtype).removeprefix('torch.')}; the model needs "
                              "floating-point weights there")
    if tensor.is_floating_point() and not allow_nonfinite:
        bad = int((~torch.isfinite(tensor)).sum())
        if bad:
            raise CheckpointError(f"tensor {name} has {bad} non-finite value(s) (NaN or inf); refusing to load it "
                                  "(allow_nonfinite=True / --allow-nonfinite loads it anyway)")


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
    """The spec of a checkpoint directory (clear errors when it is not one; its tokenizer files checked)."""
    directory = Path(checkpoint_dir)
    if not directory.is_dir():
        raise CheckpointError(f"checkpoint directory not found: {directory}")
    if not (directory / SPEC_FILE).is_file():
        raise CheckpointError(f"{directory}: no {SPEC_FILE} (is this a zdiff checkpoint? `zdiff import` converts "
                              "HF directories)")
    spec = load_spec(directory / SPEC_FILE)
    check_tokenizer_files(directory, spec.model.vocab_size)
    return spec


def load_model(checkpoint_dir: str | Path, device=None, dtype=None, model_class=None, allow_nonfinite: bool = False):
    """Build the model a checkpoint's spec describes and load its weights (strictly).

    model_class: the module class to build (default: the reference `Transformer`; `zdiff.load_model`
    passes the generated model's class for backend="triton"), constructed from the spec's model section.
    Integer / bool tensors where the model has floats, NaN or inf weights (unless `allow_nonfinite`) and
    unreadable tokenizer files are CheckpointErrors."""
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
    for name, tensor in state.items():
        check_weight(name, tensor, expected[name].dtype, allow_nonfinite)
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


def resolve_checkpoint(path: str | Path) -> tuple[Path, str | None]:
    """(checkpoint directory, note) for a checkpoint or a `zdiff train` run directory: a run gives its final/,
    else its latest checkpoint; the note names which (None when `path` is itself a checkpoint)."""
    path = Path(path)
    if (path / SPEC_FILE).is_file():
        return path, None
    if (path / "final" / SPEC_FILE).is_file():
        return path / "final", f"{path} is a run directory: using its final/"
    pointer = path / "latest"
    if pointer.is_file():
        name = pointer.read_text().strip()
        latest = path / "checkpoints" / name
        if name and (latest / SPEC_FILE).is_file():
            return latest, f"{path} is a run directory without final/: using its latest checkpoint {name}"
        raise CheckpointError(f"{pointer}: names {name!r}, which has no {SPEC_FILE} in {path / 'checkpoints'}")
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint or run directory")
    raise CheckpointError(f"{path}: neither a checkpoint (no {SPEC_FILE}) nor a run directory (no final/ or latest)")
