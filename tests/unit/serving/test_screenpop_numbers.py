"""What phone systems send as the caller number, read as they mean it."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from router.core.identity import normalise_phone
from router.serving.screenpop import caller_number


@pytest.mark.parametrize(
    ("raw", "from_url", "e164"),
    [
        # ?phone=+14155550100 templated into a URL: the + arrives as a space
        (" 14155550100", True, "+14155550100"),
        ("  4930901820", True, "+4930901820"),
        ("+14155550100", True, "+14155550100"),
        ("%2B14155550100", False, None),  # never decoded twice: garbage stays garbage
        # RFC 3966 tel: URIs
        ("tel:+1-415-555-0100", False, "+14155550100"),
        ("tel:+1-415-555-0100;ext=12", False, "+14155550100"),
        ("TEL:+49.30.901820", False, "+4930901820"),
        ("tel: 1-415-555-0100", True, "+14155550100"),
        ("tel:555-0100;phone-context=+1-415", False, "+14155550100"),
        ("tel:7042;phone-context=example.com", False, None),
        ("tel:", False, None),
        ("tel:+1-415-CALL-NOW", False, None),
        # national notation keeps the default region (DE here)
        ("030 901820", True, "+4930901820"),
    ],
)
def test_caller_number(raw: str, from_url: bool, e164: str | None) -> None:
    number = caller_number(raw, from_url=from_url)
    if e164 is None:
        assert number is None or not _parses(number)
    else:
        assert number is not None and normalise_phone(number, "DE") == e164


def test_a_leading_space_is_a_plus_never_the_default_region() -> None:
    # " 030 ..." would be a Berlin number with the default region; as "+030 ..." it is no number at all
    number = caller_number(" 030 901820", from_url=True)
    assert number == "+030 901820" and not _parses(number)
    # the same value in a JSON body (no URL decoding) keeps its national reading
    assert caller_number(" 030 901820") == "030 901820"


def _parses(number: str) -> bool:
    try:
        normalise_phone(number, "DE")
    except ValueError:
        return False
    return True


@given(
    number=st.sampled_from(["+14155550100", "+4930901820", "+442079460000", "+81312345678"]),
    separators=st.lists(st.sampled_from(["-", ".", "(", ")", ""]), min_size=12, max_size=12),
    extension=st.one_of(st.none(), st.from_regex(r"[0-9]{1,5}", fullmatch=True)),
    raw_plus=st.booleans(),
)
def test_any_tel_uri_of_a_number_finds_that_number(
    number: str, separators: list[str], extension: str | None, raw_plus: bool
) -> None:
    """RFC 3966 visual separators, an extension and a URL-decoded + never change which number is looked up."""
    digits = number[1:]
    body = "".join(d + s for d, s in zip(digits, separators, strict=False))
    uri = f"tel:{' ' if raw_plus else '+'}{body}" + (f";ext={extension}" if extension else "")
    found = caller_number(uri, from_url=raw_plus)
    assert found is not None and normalise_phone(found, "DE") == number
