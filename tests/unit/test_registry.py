from __future__ import annotations

from dataclasses import dataclass

import pytest

from mqbench.errors import RegistrationError, UnknownNameError
from mqbench.registry import Registry


@dataclass(frozen=True)
class Thing:
    name: str


def test_collision_names_both_plugins() -> None:
    reg: Registry[Thing] = Registry("model", Thing)
    reg.current_plugin = "first"
    reg(Thing("mobilenet"))
    reg.current_plugin = "second"
    with pytest.raises(RegistrationError, match="registered twice: by plugin 'first' and by plugin 'second'"):
        reg.add(Thing("mobilenet"))


def test_miss_suggests_close_names() -> None:
    reg: Registry[Thing] = Registry("model", Thing)
    for n in ("quick_cnn", "quick_mobilenet_v1", "quick_mobilenet_v2"):
        reg(Thing(n))
    with pytest.raises(UnknownNameError, match="did you mean") as info:
        reg.get("quick_mobilenet_v")
    assert "'quick_mobilenet_v1'" in str(info.value) and "'quick_mobilenet_v2'" in str(info.value)
    assert "mqbench list models" in str(info.value)
    assert info.value.suggestions[:2] == ["quick_mobilenet_v2", "quick_mobilenet_v1"]
    with pytest.raises(UnknownNameError, match="known: quick_cnn"):
        reg.get("zzz")


@pytest.mark.parametrize("bad", ["", "a b", "cle+minmax"])
def test_invalid_names_rejected(bad: str) -> None:
    with pytest.raises(RegistrationError, match="invalid name"):
        Registry("method", Thing).add(Thing(bad))


def test_wrong_type_rejected() -> None:
    with pytest.raises(RegistrationError, match="must be Thing"):
        Registry("model", Thing).add("not a thing")  # type: ignore[arg-type]


def test_iteration_is_sorted() -> None:
    reg: Registry[Thing] = Registry("x", Thing)
    for n in ("b", "a", "c"):
        reg(Thing(n))
    assert [t.name for t in reg] == ["a", "b", "c"] and len(reg) == 3 and "a" in reg
