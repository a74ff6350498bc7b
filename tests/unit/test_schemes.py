from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mqbench.errors import UsageError
from mqbench.schemes import FP32, GRAMMAR, QuantScheme, parse_scheme


@pytest.mark.parametrize(("text", "expected"), [
    ("w8a8", QuantScheme(8, 8, "tensor")),
    ("W8A8-PC", QuantScheme(8, 8, "channel")),
    ("w4a8-pt", QuantScheme(4, 8, "tensor")),
    ("w4-pow2", QuantScheme(4, None, "tensor", power_of_two=True)),
    ("w8a8-pc-sym", QuantScheme(8, 8, "channel", act_symmetric=True)),
    ("w8a8-asym-rr", QuantScheme(8, 8, "tensor", weight_symmetric=False, reduce_range=True)),
    ("w16a16", QuantScheme(16, 16)),
    ("w4a4-pc-fl8", QuantScheme(4, 4, "channel", first_last_bits=8)),
    ("w4-fl8-pow2", QuantScheme(4, None, "tensor", power_of_two=True, first_last_bits=8)),
    ("fp32", FP32),
])
def test_parse(text: str, expected: QuantScheme) -> None:
    assert parse_scheme(text) == expected


def test_canonical_names() -> None:
    assert parse_scheme("w8a8").name == "w8a8-pt"
    assert parse_scheme("w8a8-rr-pc").name == "w8a8-pc-rr"
    assert parse_scheme("w8a8-rr").effective_act_bits == 7
    assert FP32.name == "fp32" and FP32.is_float


@given(w=st.integers(2, 16), a=st.one_of(st.none(), st.integers(2, 16)), pc=st.booleans(), pow2=st.booleans(),
       sym=st.sampled_from(["default", "sym", "asym"]), rr=st.booleans(), fl=st.one_of(st.none(), st.integers(2, 16)))
def test_name_round_trips(w, a, pc, pow2, sym, rr, fl) -> None:
    if a is None and (sym == "sym" or rr):
        return
    if fl == w and a in (None, fl):
        return
    s = QuantScheme(w, a, "channel" if pc else "tensor", weight_symmetric=sym != "asym", act_symmetric=sym == "sym",
                    power_of_two=pow2, reduce_range=rr, first_last_bits=fl)
    assert parse_scheme(s.name) == s


@pytest.mark.parametrize("bad", ["", "w", "8a8", "w8a", "w1a8", "w8a17", "w8a8-xx", "w8a8-pc-pt", "w8a8-sym-asym",
                                 "w8-sym", "w8a8-pc-pc", "int8", "w8-rr", "w4a4-fl1", "w4a4-fl17",
                                 "w4a4-fl8-fl8"])
def test_malformed_names_are_usage_errors_with_the_grammar(bad: str) -> None:
    with pytest.raises(UsageError) as info:
        parse_scheme(bad)
    assert GRAMMAR in str(info.value)
    assert "\n" not in str(info.value)


def test_first_last_bits_that_change_nothing_are_refused() -> None:
    with pytest.raises(UsageError, match="changes nothing"):
        parse_scheme("w8a8-fl8")
    with pytest.raises(UsageError, match="changes nothing"):
        parse_scheme("w4-fl4")
    s = parse_scheme("w8a4-fl8")  # the activations of the first and last layers change
    assert (s.layer_weight_bits(True), s.layer_act_bits(True), s.layer_act_bits(False)) == (8, 8, 4)
