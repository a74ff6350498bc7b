"""mqbench's exceptions. ``UsageError`` and its subclasses are the user's to fix (CLI exit 2)."""

from __future__ import annotations


class MqbenchError(Exception):
    """Base of mqbench's own errors."""


class NonFiniteOutputError(MqbenchError):
    """A model produced NaN or inf where a number was needed (its cell fails; no figure is reported)."""


class UnsupportedArtifact(MqbenchError, ValueError):
    """A runtime cannot express this artifact in its own form (e.g. ONNX Runtime cannot fuse a QDQ group into a
    QLinear operator): raised from ``Runtime.load`` or the loaded model's first call, the cell is stored as
    skipped with the message as its reason."""


class IntegerSimulationUnavailable(MqbenchError, RuntimeError):
    """A runtime's integer simulation does not model something in this graph: the cell is still deployed and
    measured, and its record says why there is no integer simulation (``integer_sim_unavailable``)."""


class UsageError(MqbenchError):
    """Bad input from the user: a name, an option, a scheme string. The CLI exits 2."""


class UnknownNameError(UsageError):
    """A name that no plugin registered; ``listing`` is the command that lists the known names (default
    ``mqbench list <kind>s``)."""

    def __init__(self, kind: str, name: str, suggestions: list[str], known: list[str],
                 listing: str | None = None) -> None:
        self.kind, self.name, self.suggestions, self.known = kind, name, suggestions, known
        if suggestions:
            hint = "did you mean " + " or ".join(repr(s) for s in suggestions) + "?"
        elif known:
            hint = "known: " + ", ".join(known[:12]) + (", ..." if len(known) > 12 else "")
        else:
            hint = f"no {kind}s are registered (are plugins disabled?)"
        super().__init__(f"unknown {kind} {name!r}; {hint} (see {listing or f'`mqbench list {kind}s`'})")


class RegistrationError(MqbenchError):
    """A plugin registered something invalid or a name already taken."""


class ResultsDirError(UsageError):
    """The results directory cannot be used."""
