"""Every hook is documented and every hook is one the plugin manager calls."""

from __future__ import annotations

import inspect

import pytest

from mqbench import hookspecs
from mqbench.plugins import REGISTRATION_HOOKS

HOOKS = [name for name, fn in inspect.getmembers(hookspecs, inspect.isfunction) if name.startswith("mqbench_")]


def test_there_are_hooks() -> None:
    assert set(HOOKS) == set(REGISTRATION_HOOKS)


@pytest.mark.parametrize("name", HOOKS)
def test_hook_has_a_docstring_naming_its_argument(name: str) -> None:
    fn = getattr(hookspecs, name)
    doc = inspect.getdoc(fn) or ""
    assert len(doc) > 80, f"hook {name} lacks documentation"
    for arg in inspect.signature(fn).parameters:
        assert arg in doc, f"hook {name}'s docstring does not mention its argument {arg!r}"
    assert "Called" in doc, f"hook {name}'s docstring does not say when it is called"


def test_readme_documents_the_hookspecs_file() -> None:
    from tests.helpers import REPO

    assert "mqbench/hookspecs.py" in (REPO / "README.md").read_text()
