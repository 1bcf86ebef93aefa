"""Hostile spec files end in one clear line (exit 2), fast: alias bombs, self-references, deep
nesting, undecodable bytes, non-finite floats, values past the documented bounds, unsafe names."""

import time

import pytest
import yaml
from cli_helpers import assert_error, run_main

from zdiff.errors import SpecError, ZdiffError
from zdiff.limits import SPEC_MAXIMUM, SPEC_MINIMUM, YAML_MAX_DEPTH, YAML_MAX_NODES
from zdiff.spec import dump_spec, load_spec, parse_spec

TINY_TEXT = dump_spec(load_spec("zaya1-tiny"))
# a dense spec with every optional section filled, for the bounds of fields the MoE preset leaves out
DENSE_DATA = yaml.safe_load(dump_spec(load_spec("dense-tiny")))
DENSE_DATA["model"]["attention"]["rope_scaling"] = {
    "kind": "yarn", "factor": 4.0, "original_max_position": 64, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
    "attention_factor": 1.1}


def _with(path: str, value) -> str:
    dense = path.startswith(("model.mlp.", "model.attention.rope_scaling."))
    data = DENSE_DATA if dense else yaml.safe_load(TINY_TEXT)
    data = yaml.safe_load(yaml.safe_dump(data))  # a copy
    *parents, leaf = path.split(".")
    node = data
    for key in parents:
        node = node.setdefault(key, {})  # a nested section the preset leaves at its defaults (diffusion.loss)
    node[leaf] = value
    return yaml.safe_dump(data, sort_keys=False)


def _billion_laughs(levels: int = 9) -> str:
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("text,fragment", [
    (_billion_laughs(), f"more than {YAML_MAX_NODES} values once its aliases are expanded"),
    # the bomb hidden under a real field: the structural conversion would walk it too
    (TINY_TEXT + "extra: &x [[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]]\n" + "".join(
        f"e{i}: &e{i} [*{'x' if i == 0 else f'e{i - 1}'}, *{'x' if i == 0 else f'e{i - 1}'}, "
        f"*{'x' if i == 0 else f'e{i - 1}'}, *{'x' if i == 0 else f'e{i - 1}'}]\n" for i in range(12)),
     "once its aliases are expanded"),
    ("a: &a [*a]\n", "alias *a refers to itself"),
    ("a: &a {b: *a}\n", "alias *a refers to itself"),
    ("[" * 10_000 + "]" * 10_000 + "\n", f"nests deeper than {YAML_MAX_DEPTH} levels"),
    ("{a: " * 5_000 + "1" + "}" * 5_000 + "\n", f"nests deeper than {YAML_MAX_DEPTH} levels"),
    ("a: *nowhere\n", "spec is not valid YAML"),
    ("model: {vocab_size: 1" + "0" * 5000 + "}\n", "spec is not valid YAML"),
])
def test_yaml_bombs_and_depth_are_refused_fast(text, fragment):
    start = time.monotonic()
    with pytest.raises(ZdiffError, match=fragment.replace("*", r"\*")):
        parse_spec(text, source="bad.yaml")
    assert time.monotonic() - start < 5


def test_aliases_within_bounds_still_work():
    text = TINY_TEXT.replace("num_kv_heads: 2", "num_kv_heads: &two 2")
    text = text.replace("depthwise_kernel: 2", "depthwise_kernel: *two")
    assert "*two" in text and parse_spec(text).model.attention.cca.depthwise_kernel == 2


@pytest.mark.parametrize("raw,fragment", [
    (b"\xff\xfen\x00a\x00m\x00e\x00", "is not UTF-8 text (byte 0xff at offset 0)"),
    (TINY_TEXT.encode("utf-16"), "is not UTF-8 text"),
    (bytes(range(256)) * 4, "is not UTF-8 text"),
    (b"name: x\x00\x01\x02\n", "spec is not valid YAML"),
])
def test_undecodable_files_are_one_line(tmp_path, raw, fragment):
    path = tmp_path / "bad.yaml"
    path.write_bytes(raw)
    code, _, err = run_main(["check", path], seconds=20)
    assert_error(code, err, fragment)


def test_utf8_bom_is_fine(tmp_path):
    path = tmp_path / "bom.yaml"
    path.write_bytes(b"\xef\xbb\xbf" + TINY_TEXT.encode())
    assert load_spec(path).name == "zaya1-tiny"


def test_oversized_file_is_refused_before_reading_it_whole(tmp_path):
    path = tmp_path / "big.yaml"
    path.write_bytes(b"#" * (2 << 20))
    with pytest.raises(ZdiffError, match="is larger than 1048576 bytes"):
        load_spec(path)


@pytest.mark.parametrize("path", ["model.norm_eps", "model.attention.rope_theta", "model.attention.rope_fraction",
                                  "model.moe.balancing_bias.update_rate", "model.moe.balancing_bias.skip_init",
                                  "diffusion.loss_alpha", "sampler.temperature", "sampler.top_p"])
@pytest.mark.parametrize("literal", [".nan", ".inf", "-.inf", "1e999"])
def test_non_finite_floats_are_refused(path, literal):
    text = _with(path, "PLACEHOLDER").replace("PLACEHOLDER", literal)
    with pytest.raises(SpecError) as info:
        parse_spec(text, source="bad.yaml")
    assert info.value.path == path and "must be a finite number" in str(info.value)


@pytest.mark.parametrize("path", sorted(SPEC_MAXIMUM))
def test_every_documented_upper_bound_is_enforced(path):
    top = SPEC_MAXIMUM[path]
    value = top + 1 if isinstance(top, int) else top * 2
    with pytest.raises(SpecError) as info:
        parse_spec(_with(path, value), source="bad.yaml")
    expected = f"must be at most {top:g}" if isinstance(top, float) else f"must be at most {top} "
    assert info.value.path == path and expected in str(info.value)
    assert "zdiff.limits.SPEC_MAXIMUM" in str(info.value)


@pytest.mark.parametrize("path", sorted(SPEC_MINIMUM))
def test_documented_lower_bounds_are_enforced(path):
    with pytest.raises(SpecError) as info:
        parse_spec(_with(path, SPEC_MINIMUM[path] * 2), source="bad.yaml")
    assert info.value.path == path and "zdiff.limits.SPEC_MINIMUM" in str(info.value)


def test_huge_cca_kernel_is_refused_before_compile_allocates(tmp_path):
    spec = tmp_path / "dw.yaml"
    spec.write_text(_with("model.attention.cca.depthwise_kernel", 1_000_000_000))
    code, _, err = run_main(["compile", spec, "--target", "cpu", "--out", tmp_path / "out"], seconds=20)
    assert_error(code, err, "model.attention.cca.depthwise_kernel: must be at most 64")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name,fragment", [
    ("../../evil", "must be usable as a directory name"),
    ("a/b", "must be usable as a directory name"),
    ("..", "must be usable as a directory name"),
    ("nul\x00byte", "must be usable as a directory name"),
    ("tab\there", "must be usable as a directory name"),
    ("x" * 300_000, "must be at most 128 characters"),
    ("   ", "must not be blank"),
])
def test_unsafe_names_are_refused(name, fragment):
    with pytest.raises(SpecError) as info:
        parse_spec(_with("name", name), source="bad.yaml")
    message = str(info.value)
    assert info.value.path == "name" and fragment in message
    assert len(message) < 400 and "\n" not in message  # a 1 MB name is shown cut


def test_unsafe_name_never_writes_outside_build(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = tmp_path / "evil.yaml"
    spec.write_text(_with("name", "../../escaped"))
    code, _, err = run_main(["compile", spec, "--target", "cpu"], seconds=20)
    assert_error(code, err, "name: must be usable as a directory name")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evil.yaml"]
    assert not (tmp_path.parent / "escaped").exists()
