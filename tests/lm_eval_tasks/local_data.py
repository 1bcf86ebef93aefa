"""Datasets of the local lm-eval tasks, read from the JSONL files next to this file (no network)."""

from pathlib import Path

HERE = Path(__file__).resolve().parent


def _load(name: str):
    import datasets

    return datasets.load_dataset("json", data_files={"test": str(HERE / name)})


def python_mc(**kwargs):
    return _load("python_mc.jsonl")


def python_gen(**kwargs):
    return _load("python_gen.jsonl")
