"""Test helpers: fake installed plugin distributions, running the real CLI."""

from __future__ import annotations

import contextlib
import io
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def make_plugin_site(site: Path, dist: str, entry_name: str, module: str, source: str) -> Path:
    """Write ``module.py`` and a ``dist-info`` declaring entry point ``entry_name`` in group ``mqbench``
    into ``site`` (a directory to put on sys.path / PYTHONPATH), as pip would install it."""
    site.mkdir(parents=True, exist_ok=True)
    (site / f"{module}.py").write_text(textwrap.dedent(source))
    info = site / f"{dist.replace('-', '_')}-1.0.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[mqbench]\n{entry_name} = {module}\n")
    return site


def cli_env(cache: Path, extra_path: Path | None = None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("MQBENCH_DISABLE_PLUGINS", "MQBENCH_RESULTS")}
    env["MQBENCH_CACHE"] = str(cache)
    if extra_path is not None:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(extra_path), env.get("PYTHONPATH", "")) if p)
    env.update(extra)
    return env


def mqbench(*args: str, env: dict[str, str], cwd: Path | None = None, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    """Run the real CLI (``python -m mqbench``) in a subprocess."""
    return subprocess.run([sys.executable, "-m", "mqbench", *args], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)


def mqbench_in_process(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """The CLI's ``main`` in this process, under ``env`` (its PYTHONPATH put on ``sys.path``, the plugins reloaded):
    the exit code, stdout and stderr a subprocess would give, without its start-up (2 s here). For cases checked
    before any work (usage errors, bad options and names); an exception escaping ``main`` fails the test with its
    traceback, as the subprocess would print one."""
    from mqbench import cli
    from mqbench.plugins import reset_plugins

    saved_env, saved_path = dict(os.environ), list(sys.path)
    out, err = io.StringIO(), io.StringIO()
    os.environ.clear()
    os.environ.update({"MQBENCH_MALLOC": "system", **env})  # leave this process's malloc as it is
    sys.path[:0] = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    reset_plugins()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = cli.main(list(args))
            except SystemExit as exc:  # argparse's errors and --help
                code = exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 1
    finally:
        os.environ.clear()
        os.environ.update(saved_env)
        sys.path[:] = saved_path
        reset_plugins()
    return subprocess.CompletedProcess([sys.executable, "-m", "mqbench", *args], code, out.getvalue(), err.getvalue())


def _default_sigint() -> None:
    # A shell without job control starts background jobs with SIGINT ignored, and the child would inherit
    # that (Python then installs no KeyboardInterrupt handler): give it the default, as a terminal would.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def popen_mqbench(*args: str, env: dict[str, str], cwd: Path | None = None) -> subprocess.Popen[str]:
    """A running ``mqbench`` that reacts to SIGINT however the test run itself was started."""
    return subprocess.Popen([sys.executable, "-m", "mqbench", *args], env=env, cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=_default_sigint)
