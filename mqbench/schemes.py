"""Quantization schemes: what the integer arithmetic looks like, parsed from short names.

Grammar (case-insensitive)::

    fp32                                  no quantization (the float reference)
    w<B>[a<B>][-pt|-pc][-pow2][-sym|-asym][-rr][-fl<B>]

    w<B>      weight bits, 2..16                 a<B>   activation bits, 2..16 (omitted: float activations)
    -pt       per-tensor weights (the default)   -pc    per-channel weights (one scale per output channel)
    -pow2     power-of-two scales
    -sym      activations symmetric too (signed); the default is the int8-runtime convention:
              symmetric signed weights, asymmetric unsigned activations
    -asym     weights asymmetric too
    -rr       reduce_range: activations use one bit less (fbgemm's overflow guard)
    -fl<B>    the first and last weighted layers keep B-bit weights and B-bit input activations (the common
              practice of low-bit QAT papers such as LSQ, Esser et al. 2020, which keep the layer reading the
              image and the layer producing the logits at 8 bits): ``w4a4-pc-fl8``

Examples: ``w8a8`` (= ``w8a8-pt``), ``w8a8-pc``, ``w4a8-pt``, ``w4-pow2``, ``w8a8-pc-sym``, ``w4a4-pc-fl8``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from mqbench.errors import UsageError

GRAMMAR = ("w<bits>[a<bits>][-pt|-pc][-pow2][-sym|-asym][-rr][-fl<bits>] with bits in 2..16, or fp32 "
           "(e.g. w8a8, w8a8-pc, w4a8-pt, w4-pow2, w4a4-pc-fl8)")
_RE = re.compile(r"^w(\d+)(?:a(\d+))?((?:-[a-z0-9]+)*)$")
_SUFFIXES = {"pt", "pc", "pow2", "sym", "asym", "rr"}
_FIRST_LAST = re.compile(r"^fl(\d+)$")


@dataclass(frozen=True)
class QuantScheme:
    """One quantization scheme. ``weight_bits is None`` means the float reference (``fp32``)."""

    weight_bits: int | None = 8
    act_bits: int | None = 8
    weight_granularity: Literal["tensor", "channel"] = "tensor"
    weight_symmetric: bool = True
    act_symmetric: bool = False
    power_of_two: bool = False
    reduce_range: bool = False
    # Bits of the first and last weighted layers' weights and input activations (None: the scheme's bits).
    first_last_bits: int | None = None

    def __post_init__(self) -> None:
        for what, bits in (("weight", self.weight_bits), ("activation", self.act_bits),
                           ("first/last layer", self.first_last_bits)):
            if bits is not None and not 2 <= bits <= 16:
                raise UsageError(f"{what} bits must be in 2..16, got {bits}; scheme grammar: {GRAMMAR}")
        if self.weight_bits is None and self.act_bits is not None:
            raise UsageError("a scheme with float weights cannot quantize activations; scheme grammar: " + GRAMMAR)
        if self.reduce_range and self.act_bits is None:
            raise UsageError("-rr (reduce_range) needs quantized activations; scheme grammar: " + GRAMMAR)
        if self.first_last_bits is not None:
            if self.weight_bits is None:
                raise UsageError("-fl<bits> needs a quantizing scheme; scheme grammar: " + GRAMMAR)
            if self.first_last_bits == self.weight_bits and self.act_bits in (None, self.first_last_bits):
                raise UsageError(f"-fl{self.first_last_bits} changes nothing in a scheme whose bits are already "
                                 f"{self.first_last_bits}; drop it")

    def layer_weight_bits(self, first_or_last: bool) -> int | None:
        """Weight bits of a layer (``first_or_last``: the first or last weighted layer)."""
        return self.first_last_bits if first_or_last and self.first_last_bits is not None else self.weight_bits

    def layer_act_bits(self, first_or_last: bool) -> int | None:
        """Bits of a layer's input activations, before reduce_range (see :attr:`effective_act_bits`)."""
        if self.act_bits is None:
            return None
        return self.first_last_bits if first_or_last and self.first_last_bits is not None else self.act_bits

    @property
    def is_float(self) -> bool:
        return self.weight_bits is None

    @property
    def act_signed(self) -> bool:
        """Symmetric activations are signed; asymmetric ones unsigned (uint8 in an int8 runtime)."""
        return self.act_symmetric

    @property
    def effective_act_bits(self) -> int | None:
        """Activation bits after reduce_range."""
        if self.act_bits is None:
            return None
        return self.act_bits - 1 if self.reduce_range else self.act_bits

    @property
    def name(self) -> str:
        """The canonical short name: ``parse(s.name) == s``."""
        if self.weight_bits is None:
            return "fp32"
        out = f"w{self.weight_bits}" + (f"a{self.act_bits}" if self.act_bits is not None else "")
        out += "-pc" if self.weight_granularity == "channel" else "-pt"
        if self.power_of_two:
            out += "-pow2"
        if self.act_symmetric and self.act_bits is not None:
            out += "-sym"
        elif not self.weight_symmetric:
            out += "-asym"
        if self.reduce_range:
            out += "-rr"
        if self.first_last_bits is not None:
            out += f"-fl{self.first_last_bits}"
        return out

    def __str__(self) -> str:
        return self.name


FP32 = QuantScheme(weight_bits=None, act_bits=None)


def parse_scheme(text: str) -> QuantScheme:
    """Parse a scheme name (see the module docstring); a malformed one raises UsageError with the grammar."""
    s = text.strip().lower()
    if s in ("fp32", "float", "float32"):
        return FP32
    m = _RE.match(s)
    if m is None:
        raise UsageError(f"malformed scheme {text!r}; expected {GRAMMAR}")
    wbits, abits, rest = int(m.group(1)), m.group(2), m.group(3)
    suffixes = [x for x in rest.split("-") if x]
    first_last = [int(m.group(1)) for x in suffixes if (m := _FIRST_LAST.match(x))]
    if len(first_last) > 1:
        raise UsageError(f"malformed scheme {text!r}: -fl<bits> is repeated; expected {GRAMMAR}")
    suffixes = [x for x in suffixes if not _FIRST_LAST.match(x)]
    unknown = [x for x in suffixes if x not in _SUFFIXES]
    if unknown:
        raise UsageError(f"malformed scheme {text!r}: unknown suffix -{unknown[0]}; expected {GRAMMAR}")
    if len(set(suffixes)) != len(suffixes):
        raise UsageError(f"malformed scheme {text!r}: a suffix is repeated; expected {GRAMMAR}")
    if "pt" in suffixes and "pc" in suffixes:
        raise UsageError(f"malformed scheme {text!r}: -pt and -pc exclude each other; expected {GRAMMAR}")
    if "sym" in suffixes and "asym" in suffixes:
        raise UsageError(f"malformed scheme {text!r}: -sym and -asym exclude each other; expected {GRAMMAR}")
    if "sym" in suffixes and abits is None:
        raise UsageError(f"malformed scheme {text!r}: -sym concerns activations, but it has none; expected {GRAMMAR}")
    return QuantScheme(
        weight_bits=wbits,
        act_bits=int(abits) if abits is not None else None,
        weight_granularity="channel" if "pc" in suffixes else "tensor",
        weight_symmetric="asym" not in suffixes,
        act_symmetric="sym" in suffixes,
        power_of_two="pow2" in suffixes,
        reduce_range="rr" in suffixes,
        first_last_bits=first_last[0] if first_last else None,
    )
