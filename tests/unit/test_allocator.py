"""mqbench commands tune glibc's malloc for tensor work (mqbench.allocator), say so in every record, and leave it
alone when MQBENCH_MALLOC=system."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

from mqbench import allocator, provenance
from mqbench.record_schema import PROVENANCE, check

glibc = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="not a glibc system")


def _in_subprocess(env: dict[str, str]) -> dict[str, object]:
    code = "import json; from mqbench import allocator; allocator.tune(); print(json.dumps(allocator.state()))"
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, **env}, capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout)


@glibc
def test_tune_turns_off_mmap_and_trimming_once_per_process() -> None:
    state = _in_subprocess({allocator.ENV: ""})
    assert state == {"tuned": True, "library": f"glibc {platform.libc_ver()[1]}", "mmap": "off", "trim": "off"}


def test_mqbench_malloc_system_leaves_the_allocator_alone() -> None:
    assert _in_subprocess({allocator.ENV: "system"}) == {"tuned": False, "why": "MQBENCH_MALLOC=system"}


def test_provenance_says_what_was_done_to_the_allocator() -> None:
    collected = provenance.collect()
    assert collected["allocator"] == allocator.state()
    assert check(collected, PROVENANCE) is None
    assert check({**collected, "allocator": {"mmap": "off"}}, PROVENANCE) is not None  # "tuned" is required
