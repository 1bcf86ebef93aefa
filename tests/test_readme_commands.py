"""The README's Commands block against the real command line: every command shown answers `--help`, every flag
shown is one it accepts, and every subcommand the parser has is shown (so the docs cannot drift)."""

import re

import pytest

from conftest import REPO, run_cli
from zdiff.cli import build_parser


def _commands_block() -> dict[str, str]:
    """{subcommand: its text in the block (continuation lines joined)}."""
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Commands"):]
    start = section.index("```bash\n") + len("```bash\n")
    block = section[start:section.index("\n```", start)]
    commands: dict[str, str] = {}
    current = None
    for line in block.splitlines():
        if line.startswith("zdiff "):
            words = line.split()
            current = words[1] if not words[1].startswith("-") else "--top-level"
            commands[current] = commands.get(current, "") + " " + line.split("#")[0]
        elif line.startswith(" ") and current is not None:
            commands[current] += " " + line.split("#")[0]
    return commands


def _subcommands() -> set[str]:
    action = next(a for a in build_parser()._actions if a.dest == "command")
    return set(action.choices)


DOCUMENTED = _commands_block()


def test_every_subcommand_is_documented():
    assert _subcommands() <= set(DOCUMENTED), sorted(_subcommands() - set(DOCUMENTED))


@pytest.mark.parametrize("command", sorted(c for c in DOCUMENTED if c != "--top-level"))
def test_documented_flags_exist(command):
    result = run_cli(command, "--help")
    assert result.returncode == 0, result.stderr
    accepted = set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", result.stdout))
    shown = set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", DOCUMENTED[command]))
    assert shown, f"zdiff {command}: the block shows no flag to check"
    assert shown <= accepted, f"zdiff {command}: documented but not accepted: {sorted(shown - accepted)}"
