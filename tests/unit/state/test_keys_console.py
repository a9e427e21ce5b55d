"""Keys added for the console: scan patterns that match only customers of this prefix, and hash recovery."""

from __future__ import annotations

import fnmatch

from router.state.keys import Keys, customer_hash_of


def _redis_glob(pattern: str, key: str) -> bool:
    # Redis globs: * ? [..] with backslash escapes; fnmatch has no escapes, so compare piecewise
    unescaped = pattern.replace("\\*", "\x00").replace("\\?", "\x01").replace("\\[", "\x02").replace("\\]", "\x03")
    key_marked = key.replace("*", "\x00").replace("?", "\x01").replace("[", "\x02").replace("]", "\x03")
    return fnmatch.fnmatchcase(key_marked, unescaped)


def test_customer_pattern_matches_customer_hashes_of_this_prefix_only() -> None:
    keys = Keys("rt")
    h = "ab" + "0" * 30
    pattern = keys.customer_pattern()
    assert _redis_glob(pattern, keys.customer(h))
    for other in (keys.override(h), keys.customer_audit(h), keys.histogram(h), keys.kpi(h), Keys("rt2").customer(h)):
        assert not _redis_glob(pattern, other), other
    assert _redis_glob(keys.override_pattern(), keys.override(h)) and not _redis_glob(
        keys.override_pattern(), keys.customer(h)
    )


def test_glob_characters_in_a_prefix_are_escaped() -> None:
    keys = Keys("t[1]*")
    h = "cd" + "1" * 30
    assert _redis_glob(keys.customer_pattern(), keys.customer(h))
    assert not _redis_glob(keys.customer_pattern(), Keys("t1x").customer(h))


def test_the_hash_comes_back_from_a_customer_or_override_key() -> None:
    keys = Keys("p:q")
    h = "ef" + "2" * 30
    assert customer_hash_of(keys.customer(h)) == h == customer_hash_of(keys.override(h).encode())
