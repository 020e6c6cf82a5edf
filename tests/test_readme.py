"""The README's two quick-start commands are exactly what CI runs."""

from __future__ import annotations

import re

from tests.conftest import REPO


def quick_start_commands() -> list[str]:
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    return [block.strip() for block in re.findall(r"```(?:bash|sh)\n(.*?)```", section, re.S)]


def test_ci_runs_the_readme_commands_verbatim():
    commands = quick_start_commands()
    assert len(commands) == 2, "the quick start has one install-and-run command and one test command"
    ci_lines = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines()]
    for command in commands:
        assert "\n" not in command, "each quick-start command is one line"
        assert command in ci_lines, f".ci/run does not run the README command: {command}"
