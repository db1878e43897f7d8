"""The direct decoder of names gives what asyncua's generic decoder gives, whatever the bytes."""

from __future__ import annotations

import pytest
from asyncua import ua
from asyncua.ua.ua_binary import variant_to_binary
from hypothesis import given
from hypothesis import strategies as st

from agent.opcua.build import decode_name, decode_variant

texts = st.one_of(st.none(), st.text(max_size=40))


@given(st.one_of(
    st.builds(lambda n, ns: ua.Variant(ua.QualifiedName(n, ns), ua.VariantType.QualifiedName),
              texts, st.integers(0, 32767)),
    st.builds(lambda t, loc: ua.Variant(ua.LocalizedText(t, loc), ua.VariantType.LocalizedText),
              texts, texts),
    st.builds(lambda t: ua.Variant(t, ua.VariantType.String), texts),
))
def test_names_decode_as_asyncua_decodes_them(variant: ua.Variant) -> None:
    data = variant_to_binary(variant)
    assert decode_name(data) == decode_variant(data) == variant


# Bytes of the two shapes the direct decoder reads (any other first byte goes to asyncua's
# decoder itself). Not any bytes: an array head announcing 2**31 elements of some types
# makes asyncua's decoder allocate them, gigabytes, before it finds the bytes missing.
@given(st.tuples(st.sampled_from([b"\x14", b"\x15"]), st.binary(max_size=29)).map(b"".join))
def test_any_bytes_decode_alike_or_fail_alike(data: bytes) -> None:
    try:
        expected = decode_variant(data)
    except Exception:  # noqa: BLE001 (asyncua raises several types)
        with pytest.raises(Exception):  # noqa: B017
            decode_name(data)
        return
    assert decode_name(data) == expected
