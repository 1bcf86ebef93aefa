"""`zdiff eval`: lm-eval on a zdiff checkpoint (a thin wrapper: lm-eval's table on stdout, its JSON in a file)."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import ZdiffError
from ..outputs import atomic_write_text


def _lm_eval():
    try:
        import lm_eval  # noqa: F401
    except ImportError:
        raise ZdiffError('zdiff eval needs lm-eval: pip install "zdiff[eval]"') from None
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager
    from lm_eval.utils import handle_non_serializable, make_table

    return simple_evaluate, TaskManager, handle_non_serializable, make_table


def run_eval(args) -> int:
    simple_evaluate, TaskManager, handle_non_serializable, make_table = _lm_eval()
    from .lm_adapter import ZdiffLM

    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    if not tasks:
        raise ZdiffError("--tasks: name at least one lm-eval task")
    for path in args.include_path or []:
        if not Path(path).is_dir():
            raise ZdiffError(f"--include-path {path}: not a directory")
    manager = None
    if args.include_path:  # indexing lm-eval's thousands of built-in tasks takes ~20 s: skip it when not needed
        manager = TaskManager(include_path=args.include_path, include_defaults=False)
        if not set(tasks) <= set(manager.all_tasks):
            manager = None
    manager = manager or TaskManager(include_path=args.include_path or None)
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        raise ZdiffError(f"--tasks: unknown lm-eval task(s) {', '.join(unknown)} (lm-eval ls tasks lists them; "
                         "--include-path DIR adds a directory of task YAML files)")
    lm = ZdiffLM(args.checkpoint, mode=args.mode, sampler=args.sampler, mix_weight=args.mix_weight,
                 temperature=args.temperature, seed=args.seed, batch_size=args.batch_size,
                 max_gen_toks=args.max_gen_toks, device=args.device or "cpu")
    results = simple_evaluate(model=lm, tasks=tasks, task_manager=manager, limit=args.limit,
                              num_fewshot=args.num_fewshot, log_samples=args.log_samples, bootstrap_iters=0)
    decoding = {"mode": args.mode, "sampler": lm.params.sampler, "mix_weight": lm.params.mix_weight,
                "temperature": lm.params.temperature, "seed": args.seed,
                "generated_tokens": lm.generated_tokens, "forward_passes": lm.forward_passes,
                "tokens_per_forward": round(lm.tokens_per_forward, 4)}
    results["zdiff"] = {"checkpoint": str(args.checkpoint), **decoding}
    print(make_table(results))
    if lm.forward_passes:
        print(f"generate_until: {lm.generated_tokens} tokens in {lm.forward_passes} forward passes, "
              f"T/NFE {lm.tokens_per_forward:.2f} ({args.mode} {lm.params.sampler})")
    print("loglikelihood scores are exact AR scores (the mode and sampler only change generate_until)")
    if args.output:
        atomic_write_text(args.output, json.dumps(results, indent=1, default=handle_non_serializable))
        print(f"wrote {args.output}")
    return 0
