"""CI installs and tests exactly as the README says."""

from __future__ import annotations

import re

from tests.helpers import REPO


def _readme_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    section = text.split("## Set up and test", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block, "README's set-up section has no bash block"
    return [line for line in block.group(1).splitlines() if line.strip()]


def test_readme_has_the_two_setup_commands_first() -> None:
    install, test = _readme_commands()
    assert install.startswith("pip install torch==2.13.0 && pip install -e")
    assert test == "python -m pytest"


def test_ci_runs_the_readme_commands_verbatim() -> None:
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    for command in _readme_commands():
        assert command in ci, f".ci/run does not run the README's command: {command}"
    assert "python3 -m venv" in "\n".join(ci)
