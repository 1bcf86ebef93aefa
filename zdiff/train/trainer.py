"""`zdiff train`: AR pre-training and TiDAR conversion, single-process or under torchrun.

Layout of --out:
  run.json                 the configuration (a valid --config; --resume continues with it)
  metrics.jsonl            one JSON line per step (and per evaluation)
  tensorboard/             the same as TensorBoard events (--tensorboard)
  loss.png                 the loss curves
  checkpoints/step_N/      spec.yaml + model.safetensors + trainer.pt (optimizer, step)
  latest                   name of the newest complete checkpoint
  final/                   a zdiff checkpoint of the end state (zdiff.load_model reads it)
Checkpoints are written to a temp directory and renamed, and `latest` is replaced
atomically, so a run killed at any instant resumes from a complete checkpoint.

Before anything is built, the expected peak memory (zdiff.train.memory) is checked against
the device, so an impossible --seq-len or --batch-size is refused with the numbers. A step
whose loss or gradient norm is not finite stops the run before the optimizer applies it;
the last checkpoint stays the last good one.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import pickle
import re
import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm import tqdm

from ..checkpoint.atomic import atomic_directory, atomic_write_text
from ..checkpoint.store import SPEC_FILE, resolve_checkpoint, write_checkpoint_files
from ..checkpoint.tensors import TensorSource
from ..checkpoint.tokenizer import Tokenizer, checkpoint_tokenizer
from ..errors import ZdiffError, ZdiffWarning
from ..loading import BACKENDS
from ..plots import MISSING as MISSING_PLOTS
from ..plots import loss_curve
from ..runtime.moe import expert_load, update_balancing_bias
from ..runtime.threads import check_threads, fixed_threads
from ..spec import Spec, load_spec
from ..targets import interpreter_needed, triton_interpreter
from .convert import plan_mask_token
from .data import split_corpus
from .evaluate import evaluate
from .memory import check_fits, device_capacity, estimate_training_memory
from .model_init import load_full, load_sharded, model_class, random_model
from .objective import Objective
from .run_log import TensorBoardLog, peak_flops, require_tensorboard, step_flops
from .schedule import learning_rate

KEEP_CHECKPOINTS = 2


@dataclass(frozen=True)
class TrainConfig:
    mode: str
    steps: int
    out: str
    spec: str | None = None  # None: the --init checkpoint's spec
    data: str = "stdlib"  # shards, a mixture `A:0.7,B:0.3`, or raw inputs (zdiff.train.mixture)
    init: str | None = None  # a checkpoint, or a run directory (its final/, else its latest checkpoint)
    decay_steps: int | None = None  # length of the cosine decay (None: steps); later steps keep its final rate
    batch_size: int = 16  # global, across data-parallel ranks
    seq_len: int = 256
    lr: float = 1e-3
    warmup: int = 50
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.1
    clip: float = 1.0
    dtype: str = "fp32"  # compute: fp32, or bf16 autocast (weights and optimizer stay fp32)
    checkpoint_every: int = 100
    eval_every: int = 0  # 0: evaluate at the end only
    eval_windows: int = 64
    seed: int = 0
    threads: int | None = None  # torch intra-op threads; the CPU's bits depend on it (None: OMP_NUM_THREADS or cores)
    fsdp: bool = False
    backend: str | None = None  # torch (reference model) or triton (generated kernels); None: triton on a GPU
    device: str | None = None  # None: the GPU of this rank (LOCAL_RANK) when there is one, else the CPU
    activation_checkpointing: bool = False  # recompute each layer's activations in backward
    tensorboard: bool = False  # also write TensorBoard event files (zdiff[tensorboard])
    # TiDAR: mask block i routes among the experts its verify window's clean rows chose, plus this many by router
    # mass (the decode-time draft expert budget, zdiff.runtime.moe.draft_restriction); None: routed freely
    draft_expert_budget: int | None = None

    def check(self, world: int) -> None:
        for name in ("steps", "batch_size", "seq_len", "checkpoint_every", "eval_windows", "decay_steps"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ZdiffError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ZdiffError(f"--lr must be positive, got {self.lr}")
        if self.dtype not in ("fp32", "bf16"):
            raise ZdiffError(f"--dtype must be fp32 or bf16, got {self.dtype!r}")
        if self.batch_size % world:
            raise ZdiffError(f"--batch-size {self.batch_size} must be divisible by the {world} data-parallel ranks")
        if self.draft_expert_budget is not None and (self.draft_expert_budget < 0 or self.mode != "tidar"):
            raise ZdiffError(f"--draft-expert-budget must be at least 0 with --mode tidar, got "
                             f"{self.draft_expert_budget} with --mode {self.mode}")
        if self.backend is not None and self.backend not in BACKENDS:
            raise ZdiffError(f"--backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        if self.fsdp and "WORLD_SIZE" not in os.environ:  # silently one unsharded process otherwise
            raise ZdiffError("--fsdp shards the model over the ranks of a torchrun launch, and this is one process: "
                             "run `torchrun --nproc_per_node N -m zdiff train ... --fsdp`, or leave --fsdp out")


# --- distributed -------------------------------------------------------------------------


def _resolve_device(asked: str | None, world: int) -> torch.device:
    try:
        device = torch.device(asked) if asked else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    except RuntimeError:
        raise ZdiffError(f"--device must be cpu, cuda or cuda:N, got {asked!r}") from None
    if device.type not in ("cpu", "cuda"):
        raise ZdiffError(f"--device must be cpu, cuda or cuda:N, got {asked!r}")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ZdiffError(f"--device {asked}: no GPU is visible to torch")
        index = int(os.environ.get("LOCAL_RANK", "0")) if world > 1 else (device.index or 0)
        if index >= torch.cuda.device_count():
            raise ZdiffError(f"--device {asked}: GPU {index} asked, {torch.cuda.device_count()} visible")
        device = torch.device("cuda", index)
    return device


def _init_distributed(asked_device: str | None) -> tuple[int, int, torch.device]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    device = _resolve_device(asked_device, world)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    rank = dist.get_rank() if dist.is_initialized() else 0
    return rank, world, device


def _resolve_backend(asked: str | None, device: torch.device) -> str:
    backend = asked or ("triton" if device.type == "cuda" else "torch")
    if backend == "triton" and device.type == "cpu" and not triton_interpreter():
        raise ZdiffError(interpreter_needed("--backend triton") + " (or use --backend torch)")
    return backend


def _all_sum(t: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def _shard(model, backend: str):
    """FSDP2, one unit per layer, for both backends. A block fuses its last residual with the *next*
    block's attn_norm (and the generated kernels read parameters without calling module forwards), so
    each unit is a block's modules but attn_norm (those stay with the root, gathered for the whole
    step), and the block's forward is registered as that unit's forward (`sharded_forward`, which the
    model's layer loop calls when present)."""
    from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

    for layer in model.layers:
        unit = [module for name, module in layer.named_children() if name != "attn_norm"]
        fully_shard(unit)
        unit[0].fsdp_block = functools.partial(type(layer).forward, layer)
        register_fsdp_forward_method(unit[0], "fsdp_block")
        layer.sharded_forward = unit[0].fsdp_block
    return fully_shard(model)


def _wrap(model, cfg: TrainConfig, world: int, device, backend: str):
    if world == 1:
        return model
    if cfg.fsdp:
        return model if _is_sharded(model) else _shard(model, backend)
    from torch.nn.parallel import DistributedDataParallel

    # experts that no token of a batch chose get no gradient: DDP must not wait for them
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                   find_unused_parameters=True)


def _is_sharded(model) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def _state_dicts(model, optimizer):
    """Full (unsharded) model and optimizer state, the same call for plain, DDP and FSDP2 models."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_optimizer_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_model_state_dict(model, options=options), get_optimizer_state_dict(model, optimizer, options=options)


def _load_state_dicts(model, optimizer, model_state, optim_state):
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict, set_optimizer_state_dict

    options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=False)
    set_model_state_dict(model, model_state, options=options)
    set_optimizer_state_dict(model, optimizer, optim_state, options=options)


# --- run directory -----------------------------------------------------------------------

TRAINER_STATE = "trainer.pt"


def save_trainer_state(path: Path, step: int, optim_state: dict) -> None:
    """The step and the optimizer state: tensors, numbers, strings and containers only, so that
    `load_trainer_state` can read it back without unpickling code."""
    torch.save({"step": step, "optimizer": optim_state}, path)


def load_trainer_state(path: Path) -> dict:
    """trainer.pt of a run directory, read with `weights_only=True`: a run directory is user-supplied, and a
    crafted pickle must be refused, never run. A damaged file is one clear line as well."""
    try:
        state = torch.load(path, weights_only=True, mmap=True)  # mmap: pages in what a rank reads
    except pickle.UnpicklingError as err:
        raise ZdiffError(f"{path}: refused to load: it holds more than tensors and plain data, which a trainer.pt "
                         f"written by zdiff never does ({_first_line(err)})") from None
    except (RuntimeError, OSError, EOFError, ValueError) as err:
        raise ZdiffError(f"{path}: not a readable trainer state ({type(err).__name__}: {_first_line(err)}); "
                         "resume from an earlier checkpoint or start a new run") from None
    if (not isinstance(state, dict) or not isinstance(state.get("step"), int) or isinstance(state["step"], bool)
            or state["step"] < 0 or not isinstance(state.get("optimizer"), dict)):
        raise ZdiffError(f"{path}: not a zdiff trainer state (expected a dict with an integer 'step' and an "
                         f"'optimizer' state dict)")
    return state


def _first_line(err: Exception, limit: int = 200) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:limit] if text else "no message"


class RunDir:
    def __init__(self, out: str):
        self.root = Path(out)
        self.checkpoints = self.root / "checkpoints"
        self.metrics = self.root / "metrics.jsonl"

    def latest(self) -> Path | None:
        pointer = self.root / "latest"
        if not pointer.is_file():
            return None
        name = pointer.read_text(errors="replace").strip()
        if not re.fullmatch(r"step_\d{7,}", name):
            raise ZdiffError(f"{pointer}: names no checkpoint (holds {name[:40]!r}); the run directory is damaged "
                             "(write the name of a checkpoint in checkpoints/ into it, or start a new run)")
        path = self.checkpoints / name
        return path if path.is_dir() else None

    def read_metrics(self) -> list[dict]:
        """The records of metrics.jsonl. A half-written last line (a kill mid-write) is dropped: the resumed
        run logs that step again; a damaged record elsewhere is one line naming it."""
        if not self.metrics.is_file():
            return []
        lines = [line for line in self.metrics.read_text(errors="replace").splitlines() if line.strip()]
        records = []
        for number, line in enumerate(lines, 1):
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                if number == len(lines):
                    break
                raise ZdiffError(f"{self.metrics}:{number}: not a JSON record; the run directory is damaged "
                                 "(delete the line, or start a new run)") from None
            if not isinstance(record, dict) or not isinstance(record.get("step"), int):
                raise ZdiffError(f"{self.metrics}:{number}: a record needs an integer 'step', got {line[:80]!r}")
            records.append(record)
        return records

    def truncate_metrics(self, step: int) -> None:
        """Drop records a killed run logged after its last checkpoint; the resumed run redoes them."""
        kept = [r for r in self.read_metrics() if r["step"] <= step]
        atomic_write_text(self.metrics, "".join(json.dumps(r) + "\n" for r in kept))

    def save(self, step: int, spec: Spec, model_state: dict, optim_state: dict, tokenizer_dir: Path | None):
        name = f"step_{step:07d}"
        with atomic_directory(self.checkpoints / name, force=True) as tmp:
            write_checkpoint_files(tmp, spec, model_state, tokenizer_dir)
            save_trainer_state(tmp / TRAINER_STATE, step, optim_state)
        atomic_write_text(self.root / "latest", name + "\n")
        for old in sorted(self.checkpoints.glob("step_*"))[:-KEEP_CHECKPOINTS]:
            shutil.rmtree(old, ignore_errors=True)


# --- model and spec ----------------------------------------------------------------------


def _prepare(cfg: TrainConfig):
    """(spec, file_spec, tokenizer, init_dir, note): the spec to train and, for --init, the checkpoint's own
    model spec (conversion may add a token row to it)."""
    if cfg.init is None:
        spec = load_spec(cfg.spec)
        return spec, None, Tokenizer(None, spec.model.vocab_size), None, "random initialisation"
    init_dir, init_note = resolve_checkpoint(cfg.init)
    init_spec = load_spec(init_dir / SPEC_FILE)
    spec = init_spec if cfg.spec is None else load_spec(cfg.spec)
    if init_spec.model != spec.model:
        field = _first_difference(dataclasses.asdict(spec.model), dataclasses.asdict(init_spec.model), "model")
        raise ZdiffError(f"{field}: the spec and the --init checkpoint disagree")
    spec = dataclasses.replace(init_spec, diffusion=spec.diffusion, sampler=spec.sampler, targets=spec.targets,
                               name=spec.name)
    tokenizer = checkpoint_tokenizer(init_dir, spec.model.vocab_size)
    note = f"initialised from {init_dir}" + (f" ({init_note})" if init_note else "")
    if cfg.mode == "tidar":
        spec, mask_note = plan_mask_token(spec, tokenizer)
        note += f"; {mask_note}"
    return spec, init_spec.model, tokenizer, init_dir, note


def _build_model(cfg: TrainConfig, spec: Spec, file_spec, init_dir, backend: str, device, world: int):
    """The model on `device`, already sharded when FSDP2 loads a checkpoint (never whole on a rank)."""
    cls = model_class(spec, backend, device)
    if init_dir is None:
        return random_model(cls, spec.model, cfg.seed, device), None
    if not (cfg.fsdp and world > 1):
        return load_full(cls, spec.model, init_dir, file_spec, device), None
    with torch.device("meta"):
        model = cls(spec.model)
    model = _shard(model, backend)
    model.to_empty(device=device)
    return model, load_sharded(model, init_dir, file_spec)


def check_memory(cfg: TrainConfig, spec: Spec, backend: str, device, world: int) -> None:
    """Refuse, with the numbers, a run whose expected peak memory exceeds the device (zdiff.train.memory)."""
    estimate = estimate_training_memory(
        spec.model, cfg.seq_len, cfg.batch_size // world, cfg.mode, cfg.dtype, backend, world, cfg.fsdp,
        cfg.activation_checkpointing, device_type=device.type, distill=spec.diffusion.loss.distill_weight > 0)
    capacity, where = device_capacity(device)
    check_fits(estimate, capacity, f"{where} ({device})",
               f"--seq-len {cfg.seq_len} --batch-size {cfg.batch_size} ({cfg.batch_size // world} per rank) "
               f"with {spec.name} ({cfg.mode}, {cfg.dtype}, backend {backend})")


def _first_difference(a: dict, b: dict, path: str) -> str:
    for key in a:
        if a[key] != b.get(key):
            if isinstance(a[key], dict) and isinstance(b.get(key), dict):
                return _first_difference(a[key], b[key], f"{path}.{key}")
            return f"{path}.{key} ({a[key]!r} in the spec, {b.get(key)!r} in the checkpoint)"
    return path


# --- the loop ----------------------------------------------------------------------------


def _source_tokens_before(run: "RunDir", start: int, data) -> dict[str, int]:
    """Tokens trained on per source up to step `start` (the resumed run's metrics carry the running count)."""
    for record in reversed(run.read_metrics()):
        if record["step"] <= start and "tokens_by_source" in record:
            return dict(record["tokens_by_source"])
    return {name: 0 for name in data.names}


def _full(norm: torch.Tensor) -> torch.Tensor:
    """The gradient norm as a plain tensor (FSDP2 returns a DTensor)."""
    return norm.full_tensor() if hasattr(norm, "full_tensor") else norm


def _non_finite_message(step: int, loss, ar_loss, diff_loss, norm, run: "RunDir") -> str:
    latest = run.latest()
    kept = f"the last good checkpoint is {latest}" if latest is not None else "no checkpoint was written yet"
    return (f"step {step}: non-finite training values (loss {loss}, AR {ar_loss}, diffusion {diff_loss}, "
            f"gradient norm {norm}); stopped before applying the step, {kept} (resume from it with a lower --lr)")



def train(cfg: TrainConfig, resume: bool = False, log=print) -> dict:
    """Runs under cfg.threads intra-op threads (zdiff.runtime.threads): same flags -> the same bits. The count in
    force is what run.json's config records (and what a resumed run must use)."""
    check_threads(cfg.threads)
    with fixed_threads(cfg.threads) as threads:
        return _train(dataclasses.replace(cfg, threads=threads), resume, log)


@dataclass
class _Session:
    """What setup builds and the step, evaluation and checkpoint share (torchtitan's split: setup / step /
    checkpoint around a plain loop)."""

    cfg: TrainConfig
    rank: int
    world: int
    device: torch.device
    spec: Spec
    init_dir: Path | None
    run: RunDir
    train_data: object
    heldout: object
    model: torch.nn.Module
    wrapped: torch.nn.Module
    optimizer: torch.optim.Optimizer
    objective: Objective
    ar_eval: Objective
    tidar_eval: Objective | None
    start: int


def _setup(cfg: TrainConfig, resume: bool, log) -> _Session:
    """Devices, spec, data, model, optimizer and, on --resume, their saved state; run.json for a new run."""
    rank, world, device = _init_distributed(cfg.device)
    cfg.check(world)
    if cfg.tensorboard:
        require_tensorboard()
    backend = _resolve_backend(cfg.backend, device)
    spec, file_spec, tokenizer, init_dir, note = _prepare(cfg)
    check_memory(cfg, spec, backend, device, world)
    run = RunDir(cfg.out)
    latest = run.latest()
    if latest is not None and not resume:
        raise ZdiffError(f"{run.root} already holds a run (checkpoint {latest.name}); pass --resume or another --out")
    if resume and latest is None:
        raise ZdiffError(f"--resume: no checkpoint in {run.root}")
    saved = None
    if resume:
        from .run_config import check_resume, saved_config

        saved = saved_config(cfg.out)
        check_resume(saved, dataclasses.asdict(cfg))

    train_data, heldout = split_corpus(cfg.data, tokenizer, log=log if rank == 0 else None)
    train_data.check_window(cfg.seq_len + 1)
    heldout.check_window(cfg.seq_len + 1, f"--data {cfg.data} (held-out split)")
    model, read_bytes = _build_model(cfg, spec, file_spec, init_dir, backend, device, world)
    model.activation_checkpointing = cfg.activation_checkpointing
    model.train()
    objective = Objective(spec, cfg.mode, cfg.seq_len, backend, cfg.draft_expert_budget)
    ar_eval = objective if cfg.mode == "ar" else Objective(spec, "ar", cfg.seq_len, backend)
    tidar_eval = Objective(spec, "tidar", cfg.seq_len, backend) if spec.diffusion.mask_token_id is not None else None
    wrapped = _wrap(model, cfg, world, device, backend)
    if read_bytes is not None:
        log(f"[train] rank {rank}: read {read_bytes:,} bytes of the --init checkpoint (sharded load)")
    optimizer = torch.optim.AdamW(wrapped.parameters(), lr=cfg.lr, betas=(0.9, 0.95), weight_decay=cfg.weight_decay)

    start = 0
    if resume:
        trainer_state = load_trainer_state(latest / TRAINER_STATE)
        source = TensorSource(latest)
        model_state = {name: source.get(name) for name in source.names()}
        _load_state_dicts(wrapped, optimizer, model_state, trainer_state["optimizer"])
        start = trainer_state["step"]
        if rank == 0:
            run.truncate_metrics(start)
    if rank == 0 and (saved is None or saved["steps"] != cfg.steps):  # a new run, or an extended one
        run.root.mkdir(parents=True, exist_ok=True)
        info = {"config": dataclasses.asdict(cfg), "spec_hash": spec.hash(), "world_size": world, "note": note,
                "tokenizer": tokenizer.name, "train_tokens": train_data.num_tokens,
                "heldout_tokens": heldout.num_tokens, "sources": train_data.summary()}
        atomic_write_text(run.root / "run.json", json.dumps(info, indent=1))
        if not resume:
            run.truncate_metrics(0)
    if rank == 0:
        log(f"[train] {cfg.mode} on {spec.name} ({backend} backend, {device}): {note}; {train_data.num_tokens:,} "
            f"training tokens ({train_data.describe()}), {heldout.num_tokens:,} held-out; world size {world}"
            + (f"; resuming at step {start}" if start else ""))
    return _Session(cfg, rank, world, device, spec, init_dir, run, train_data, heldout, model, wrapped, optimizer,
                    objective, ar_eval, tidar_eval, start)


def _train_step(s: _Session, step: int, rows: slice, autocast) -> dict:
    """One optimizer step; its losses, learning rate and gradient norm (the step's one host sync)."""
    cfg = s.cfg
    lr = learning_rate(step, cfg.decay_steps or cfg.steps, cfg.lr, cfg.warmup, cfg.min_lr_ratio)
    for group in s.optimizer.param_groups:
        group["lr"] = lr
    # every rank draws the step's offsets and reads only its own rows
    window = s.train_data.batch(cfg.seed, step, cfg.batch_size, cfg.seq_len + 1, rows)
    with autocast:
        parts = s.objective(s.wrapped, window.to(s.device))
    s.optimizer.zero_grad(set_to_none=True)
    parts.total.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(s.wrapped.parameters(), cfg.clip)
    diffusion, distillation = (torch.zeros_like(parts.ar) if term is None else term
                               for term in (parts.diffusion, parts.distillation))
    stats = _all_sum(torch.stack([parts.total.detach(), parts.ar, diffusion, distillation]).float()) / s.world
    # the step's one host sync: logging, and the finiteness check before the optimizer applies the step
    loss, ar_loss, diff_loss, distill_loss, norm = torch.cat([stats, _full(grad_norm).float().view(1)]).tolist()
    if not all(map(math.isfinite, (loss, ar_loss, diff_loss, norm))):
        raise ZdiffError(_non_finite_message(step + 1, loss, ar_loss, diff_loss, norm, s.run))
    s.optimizer.step()
    if s.spec.model.moe is not None:  # a dense model has no router to balance
        update_balancing_bias(s.model, _all_sum(expert_load(parts.routings, s.spec.model.moe.num_experts)))
    return {"step": step + 1, "loss": loss, "ar_loss": ar_loss,
            "diffusion_loss": diff_loss if parts.diffusion is not None else None,
            "distill_loss": distill_loss if parts.distillation is not None else None, "lr": lr, "grad_norm": norm}


def _evaluate_and_checkpoint(s: _Session, step: int, metrics_file, tensorboard) -> None:
    """After step `step` (0-based): the held-out evaluation every --eval-every steps (the last step's is the final
    one), a checkpoint every --checkpoint-every steps and at the end."""
    cfg, done = s.cfg, step + 1 == s.cfg.steps
    if cfg.eval_every and (step + 1) % cfg.eval_every == 0 and not done:
        result = {"step": step + 1, **evaluate(s.wrapped, s.heldout, s.ar_eval, s.tidar_eval, cfg.seq_len,
                                               cfg.eval_windows, device=s.device)}
        if metrics_file:
            metrics_file.write(json.dumps(result) + "\n")
        if tensorboard:
            tensorboard.write(result)
    if (step + 1) % cfg.checkpoint_every == 0 or done:
        model_state, optim_state = _state_dicts(s.wrapped, s.optimizer)
        if s.rank == 0:
            s.run.save(step + 1, s.spec, model_state, optim_state, s.init_dir)
            loss_curve(s.run.read_metrics(), s.run.root / "loss.png", f"{s.spec.name}: {cfg.mode}")


def _train(cfg: TrainConfig, resume: bool, log) -> dict:
    s = _setup(cfg, resume, log)
    rank, world, run, train_data = s.rank, s.world, s.run, s.train_data
    local = cfg.batch_size // world
    rows = slice(rank * local, (rank + 1) * local)
    source_tokens = _source_tokens_before(run, s.start, train_data) if rank == 0 else {}
    autocast = torch.autocast(s.device.type, dtype=torch.bfloat16, enabled=cfg.dtype == "bf16")
    bar = tqdm(total=cfg.steps, initial=s.start, desc=f"train {cfg.mode}", unit="step", disable=rank != 0, leave=False)
    metrics_file = run.metrics.open("a") if rank == 0 else None
    tensorboard = TensorBoardLog(run.root) if cfg.tensorboard and rank == 0 else None
    flops, peak = step_flops(s.spec, cfg.mode, cfg.batch_size, cfg.seq_len), peak_flops(s.device, world)
    tick, last = time.perf_counter(), {}
    try:
        for step in range(s.start, cfg.steps):
            last = _train_step(s, step, rows, autocast)
            now = time.perf_counter()
            last["tokens_per_s"] = cfg.batch_size * cfg.seq_len / (now - tick)
            if rank == 0:
                step_rows = train_data.rows_per_source(cfg.seed, step, cfg.batch_size, cfg.seq_len + 1)
                for name, count in step_rows.items():
                    source_tokens[name] = source_tokens.get(name, 0) + count * cfg.seq_len
                last["tokens_by_source"] = dict(source_tokens)
            if peak:
                last["mfu"] = flops / (now - tick) / peak
            tick = now
            if metrics_file:
                metrics_file.write(json.dumps(last) + "\n")
                metrics_file.flush()
            if tensorboard:
                tensorboard.write(last)
            bar.update(1)
            bar.set_postfix(loss=f"{last['loss']:.3f}", lr=f"{last['lr']:.2e}", tok_s=f"{last['tokens_per_s']:.0f}")
            _evaluate_and_checkpoint(s, step, metrics_file, tensorboard)
    finally:
        bar.close()
        if metrics_file:
            metrics_file.flush()
    return _finish(s, last, metrics_file, tensorboard, log)


def _finish(s: _Session, last: dict, metrics_file, tensorboard, log) -> dict:
    """The final held-out evaluation, final/ (the weights alone) and loss.png; the run's summary."""
    cfg, run, spec = s.cfg, s.run, s.spec
    final_eval = evaluate(s.wrapped, s.heldout, s.ar_eval, s.tidar_eval, cfg.seq_len, cfg.eval_windows,
                          device=s.device)
    summary = {"step": cfg.steps, **final_eval}
    if s.rank == 0:
        metrics_file.write(json.dumps(summary) + "\n")
        metrics_file.close()
        if tensorboard:
            tensorboard.write(summary)
            tensorboard.close()
        model_state, _ = _state_dicts(s.wrapped, s.optimizer) if s.world > 1 else (s.model.state_dict(), None)
        with atomic_directory(run.root / "final", force=True) as tmp:
            write_checkpoint_files(tmp, spec, model_state, s.init_dir)
        if not loss_curve(run.read_metrics(), run.root / "loss.png", f"{spec.name}: {cfg.mode}"):
            warnings.warn(f"{run.root / 'loss.png'} not written: {MISSING_PLOTS}", ZdiffWarning, stacklevel=3)
        log(f"[train] done: final loss {last.get('loss', float('nan')):.4f}; held-out AR "
            f"{final_eval['heldout_ar_bits_per_byte']:.4f} bits/byte"
            + (f", diffusion {final_eval['heldout_diffusion_nats']:.4f} nats"
               if "heldout_diffusion_nats" in final_eval else "")
            + f" -> {run.root / 'final'}")
    elif s.world > 1:
        _state_dicts(s.wrapped, s.optimizer)  # collective: every rank takes part in gathering the final state
    if dist.is_initialized():
        dist.destroy_process_group()
    return {"final_loss": last.get("loss"), **final_eval}
