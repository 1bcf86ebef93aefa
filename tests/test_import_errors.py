"""A failed import says why in one line and leaves nothing behind."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from hf_models import tiny_qwen3_moe, tiny_zaya
from zdiff.checkpoint.hf_import import import_hf
from zdiff.errors import CheckpointError, ZdiffError


@pytest.fixture(scope="module")
def zaya_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("zaya")
    tiny_zaya(0).save_pretrained(path)
    return path


def _copy(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


def _assert_nothing_written(tmp_path, out):
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.tmp")]


def test_unknown_model_type(tmp_path, zaya_dir):
    src = _copy(zaya_dir, tmp_path / "src")
    cfg = json.loads((src / "config.json").read_text())
    cfg["model_type"] = "llama4"
    (src / "config.json").write_text(json.dumps(cfg))
    supported = r"\(supported: zaya, qwen3_moe, llama, qwen2, qwen3\)"
    with pytest.raises(CheckpointError, match=r"model_type 'llama4' is not supported " + supported):
        import_hf(src, tmp_path / "out")
    _assert_nothing_written(tmp_path, tmp_path / "out")


def test_unsupported_feature_is_named(tmp_path, zaya_dir):
    src = _copy(zaya_dir, tmp_path / "src")
    cfg = json.loads((src / "config.json").read_text())
    cfg["layer_types"] = ["hybrid", "hybrid_sliding", "hybrid"]
    (src / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"layer_types = \['hybrid', 'hybrid_sliding'\] is not supported"):
        import_hf(src, tmp_path / "out")


def test_missing_shard(tmp_path):
    src = tmp_path / "src"
    tiny_qwen3_moe(0).save_pretrained(src, max_shard_size="50KB")
    shards = sorted(src.glob("model-*.safetensors"))
    shards[1].unlink()
    message = rf"missing shard file\(s\) named in model.safetensors.index.json: {shards[1].name}"
    with pytest.raises(CheckpointError, match=message):
        import_hf(src, tmp_path / "out")
    _assert_nothing_written(tmp_path, tmp_path / "out")


def test_missing_tensor_fails_late_and_leaves_no_partial_output(tmp_path, zaya_dir):
    src = _copy(zaya_dir, tmp_path / "src")
    tensors = load_file(src / "model.safetensors")
    del tensors["model.layers.2.mlp.gate.router_mlp.fc2.bias"]
    save_file(tensors, src / "model.safetensors")
    message = r"missing tensor model.layers.2.mlp.gate.router_mlp.fc2.bias \(for zdiff layers.2.moe.router.fc2.bias\)"
    with pytest.raises(CheckpointError, match=message):
        import_hf(src, tmp_path / "out")
    _assert_nothing_written(tmp_path, tmp_path / "out")


def test_shape_mismatch(tmp_path, zaya_dir):
    src = _copy(zaya_dir, tmp_path / "src")
    tensors = load_file(src / "model.safetensors")
    tensors["model.layers.0.self_attn.qkv_proj.k_proj.weight"] = torch.randn(48, 64)
    save_file(tensors, src / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"k_proj.weight: shape \[48, 64\], but config.json implies \[32, 64\]"):
        import_hf(src, tmp_path / "out")


def test_unused_tensor_is_an_error(tmp_path, zaya_dir):
    src = _copy(zaya_dir, tmp_path / "src")
    tensors = load_file(src / "model.safetensors")
    tensors["model.layers.0.mystery.weight"] = torch.randn(3)
    save_file(tensors, src / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"does not know how to use: model.layers.0.mystery.weight"):
        import_hf(src, tmp_path / "out")


def test_missing_directory_and_config(tmp_path):
    with pytest.raises(CheckpointError, match="HF model directory not found"):
        import_hf(tmp_path / "nope", tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no config.json"):
        import_hf(tmp_path / "empty", tmp_path / "out")


def test_existing_output_needs_force(tmp_path, zaya_dir):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(ZdiffError, match="output directory is not empty"):
        import_hf(zaya_dir, out)
    assert (out / "keep.txt").read_text() == "mine"
    import_hf(zaya_dir, out, force=True)
    assert (out / "spec.yaml").is_file() and not (out / "keep.txt").exists()


def test_load_model_errors(tmp_path, zaya_dir):
    import zdiff

    with pytest.raises(CheckpointError, match="checkpoint directory not found"):
        zdiff.load_model(tmp_path / "nope")
    with pytest.raises(CheckpointError, match="no spec.yaml"):
        zdiff.load_model(zaya_dir)
    import_hf(zaya_dir, tmp_path / "ck")
    with pytest.raises(ZdiffError, match="backend must be one of torch, triton, got 'jax'"):
        zdiff.load_model(tmp_path / "ck", backend="jax")
    tensors = load_file(tmp_path / "ck" / "model.safetensors")
    del tensors["final_norm.weight"]
    save_file(tensors, tmp_path / "ck" / "model.safetensors")
    with pytest.raises(CheckpointError, match="missing tensor.*final_norm.weight"):
        zdiff.load_model(tmp_path / "ck")
