"""End to end through `python -m zdiff`: outputs, exit codes, one-line errors."""

import json

from conftest import run_cli


def test_version():
    result = run_cli("--version")
    assert result.returncode == 0 and result.stdout.startswith("zdiff 0.")


def test_check_zaya1_8b_reports_counts(repo):
    result = run_cli("check", repo / "examples/specs/zaya1-8b.yaml")
    assert result.returncode == 0, result.stderr
    assert "total, tied embedding counted once           8.840 B" in result.stdout
    assert "without embeddings / LM head                 8.303 B" in result.stdout
    assert "active per token, without embeddings         0.754 B" in result.stdout
    assert "KV cache: 40,960 bytes per token" in result.stdout


def test_check_json(repo):
    result = run_cli("check", "qwen3-moe-tiny", "--json", "--context", "128")
    data = json.loads(result.stdout)
    assert data["name"] == "qwen3-moe-tiny" and data["decode_flops_per_token"]["context"] == 128
    assert data["params"]["total"] == 1398848


def test_check_a_dense_preset():
    result = run_cli("check", "qwen3-8b", "--json")
    assert result.returncode == 0, result.stderr
    params = json.loads(result.stdout)["params"]
    assert params["total"] == 8_190_735_360 and params["experts"] == params["router"] == 0
    assert params["dense_mlp"] == 36 * 3 * 4096 * 12288
    assert params["active_per_token_without_embeddings"] == params["without_embeddings"]
    text = run_cli("check", "qwen3-8b").stdout
    assert "dense SwiGLU MLP of width 12288" in text and "(every weight)" in text


def test_bad_spec_is_one_line_and_exit_2(tmp_path, repo):
    text = (repo / "examples/specs/zaya1-tiny.yaml").read_text().replace("head_dim: 32", "head_dim: 72")
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    result = run_cli("check", bad)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr
    assert lines[0].startswith("zdiff: error: model.attention.head_dim: must be a multiple of 16")
    assert "got 72" in lines[0] and f"bad.yaml:{text.splitlines().index('    head_dim: 72') + 1}" in lines[0]


def test_missing_spec_file_exit_2():
    result = run_cli("check", "nowhere.yaml")
    assert result.returncode == 2 and "spec file not found" in result.stderr and "Traceback" not in result.stderr


def test_import_errors_exit_2(tmp_path):
    result = run_cli("import", tmp_path / "missing", tmp_path / "out")
    assert result.returncode == 2 and "HF model directory not found" in result.stderr
    assert not (tmp_path / "out").exists()


def test_import_then_load(tmp_path):
    from hf_models import tiny_qwen3_moe

    tiny_qwen3_moe(0).save_pretrained(tmp_path / "hf")
    result = run_cli("import", tmp_path / "hf", tmp_path / "ck", "--dtype", "bf16")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "ck" / "spec.yaml").is_file() and "imported hf (gqa, 3 layers)" in result.stdout


def test_demo_runs_end_to_end_on_a_small_plan(tmp_path):
    """The main job with a few steps: every stage runs and reports; the exit code follows the verdict."""
    result = run_cli("demo", "--out", tmp_path / "demo", "--ar-steps", "6", "--tidar-steps", "4", "--batch-size", "4",
                     "--seq-len", "32", "--eval-windows", "4", "--new-tokens", "6", "--prompts", "5", "--threads", "1")
    assert result.returncode in (0, 1), result.stderr
    out = result.stdout
    for expected in ("zaya1-8b", "AR training", "TiDAR conversion", "AR model", "after TiDAR conversion",
                     "AR loss change", "TiDAR lossless", "T/NFE", "TiDAR logit_mix w=0.5", "TiDAR lossless sample",
                     "95% CI", "over 5 prompts"):
        assert expected in out, expected
    summary = json.loads((tmp_path / "demo" / "summary.json").read_text())
    assert result.returncode == (0 if summary["verdict"] == "PASS" else 1)
    for name, decoded in summary["decoding"].items():
        lo, hi = decoded["tokens_per_forward_ci95"]
        assert lo <= decoded["tokens_per_forward"] <= hi, name
    assert json.loads((tmp_path / "demo" / "ar" / "run.json").read_text())["config"]["threads"] == 1
    assert (tmp_path / "demo" / "tidar" / "final" / "spec.yaml").is_file()
    assert (tmp_path / "demo" / "ar" / "loss.png").is_file()


def test_generate_cli_end_to_end(tmp_path):
    from zdiff.checkpoint.store import save_checkpoint
    from zdiff.runtime import build_model
    from zdiff.spec import load_spec

    spec = load_spec("zaya1-tiny")
    save_checkpoint(build_model(spec.model, seed=0), spec, tmp_path / "ck")
    png = tmp_path / "hist.png"
    result = run_cli("generate", tmp_path / "ck", "--prompt", "def f(x):", "--prompt", "import",
                     "--max-new-tokens", "5", "--compare-ar", "--json", "--histogram", png, "--seed", "3")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert len(data["texts"]) == 2 and all(len(t) <= 5 for t in data["tokens"])
    assert set(data["runs"]) == {"tidar lossless", "ar lossless"}
    for run in data["runs"].values():
        assert run["tokens_per_forward"] >= 1.0 and len(run["tokens_per_step_histogram"]) == spec.diffusion.block_size
    assert data["runs"]["ar lossless"]["tokens_per_forward"] == 1.0
    assert png.stat().st_size > 1000
    table = run_cli("generate", tmp_path / "ck", "--prompt", "x", "--max-new-tokens", "3", "--sampler", "greedy")
    assert table.returncode == 0 and "T/NFE" in table.stdout


def test_generate_cli_errors(tmp_path):
    missing = run_cli("generate", tmp_path / "nope", "--prompt", "x")
    assert missing.returncode == 2 and "no such checkpoint or run directory" in missing.stderr
    from zdiff.checkpoint.store import save_checkpoint
    from zdiff.runtime import build_model
    from zdiff.spec import load_spec

    spec = load_spec("zaya1-tiny")
    save_checkpoint(build_model(spec.model, seed=0), spec, tmp_path / "ck")
    bad = run_cli("generate", tmp_path / "ck", "--prompt", "x", "--sampler", "logit_mix", "--mix-weight", "1.5")
    assert bad.returncode == 2 and "--mix-weight must be at most 1, got 1.5" in bad.stderr
    empty = run_cli("generate", tmp_path / "ck", "--prompt", "")
    assert empty.returncode == 2 and "--prompt must not be empty" in empty.stderr
    compiled = {"TRITON_INTERPRET": "0"}  # a CPU without the interpreter cannot run the fused verifier
    fused_on_cpu = run_cli("generate", tmp_path / "ck", "--prompt", "x", "--verifier", "fused", env_extra=compiled)
    assert fused_on_cpu.returncode == 2 and "--verifier fused on the CPU runs Triton kernels in the interpreter" in (
        fused_on_cpu.stderr)
    import torch

    if not torch.cuda.is_available():
        no_gpu = run_cli("generate", tmp_path / "ck", "--prompt", "x", "--device", "cuda")
        assert no_gpu.returncode == 2 and "--device cuda: " in no_gpu.stderr and "no CUDA or ROCm GPU" in no_gpu.stderr
