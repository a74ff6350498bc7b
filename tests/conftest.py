"""The test session's process is set up as an ``mqbench`` command's is: glibc's malloc tuned for tensor work
(:mod:`mqbench.allocator`), so in-process tests and benchmarks measure what the CLI runs."""

from __future__ import annotations

from mqbench import allocator

allocator.tune()
