"""`extract_identifiers` (field tree + memo + joined block patterns) equals the plain definition.

The fast path looks each field name up once, memoises normalised values per rules object and
searches the groupless block patterns as one alternation; none of that may change a result.
No database: these run in milliseconds.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from omnijourney.identity.normalise import extract_identifiers, extract_identifiers_uncached
from omnijourney.identity.rules import IdentityRules, load_rules

RULES = load_rules()

#: raw values that exercise every normaliser and the junk filter (blocked values and patterns,
#: including the back-reference pattern that cannot be joined), plus non-strings
RAW = st.sampled_from(
    [
        "Jana.Novak@Example.org",
        "jana.novak@example.org",
        "test7@shop.cz",
        "a@test.com",
        "not-an-email",
        "+420 601 123 456",
        "601123456",
        "+420601123456",
        "00000",
        "+000",
        "xxxxxx",
        "1234567890",
        "LC-0001 000000",
        "lc0001000000",
        "ABCDE123",
        "undefined",
        "NULL",
        " ",
        "",
        "anon-1",
        "dev-7",
        "u" * 300,
        12345678,
        0,
        True,
        None,
        {"nested": "x"},
        ["a"],
    ]
)
FIELDS = [
    ("userId",),
    ("anonymousId",),
    ("previousId",),
    ("traits", "email"),
    ("traits", "phone"),
    ("traits", "loyalty_card"),
    ("traits", "pos_customer_id"),
    ("context", "traits", "email"),
    ("context", "traits", "loyalty_card"),
    ("context", "device", "id"),
    ("context", "chat", "contact_id"),
    ("properties", "email"),
    ("properties", "phone"),
    ("properties", "chat_contact_id"),
]


@st.composite
def messages(draw: st.DrawFn) -> dict[str, Any]:
    msg: dict[str, Any] = {}
    for path in draw(st.lists(st.sampled_from(FIELDS), max_size=8)):
        node = msg
        for part in path[:-1]:
            nxt = node.get(part)
            if not isinstance(nxt, dict):
                # sometimes a scalar where a dict is expected: the path then finds nothing
                nxt = node[part] = {} if draw(st.booleans()) or part not in node else node[part]
                if not isinstance(nxt, dict):
                    break
            node = nxt
        else:
            node[path[-1]] = draw(RAW)
    return msg


@settings(max_examples=100, deadline=None)
@given(batch=st.lists(messages(), min_size=1, max_size=6))
def test_fast_extraction_equals_the_definition(batch: list[dict[str, Any]]) -> None:
    # twice over the batch: the second pass is served from the memo
    for _ in range(2):
        for msg in batch:
            assert extract_identifiers(msg, RULES) == extract_identifiers_uncached(msg, RULES)


def test_table_of_known_results() -> None:
    rules = IdentityRules.model_validate(RULES.model_dump())  # a fresh memo
    msg = {
        "userId": "u-1",
        "anonymousId": "anon-1",
        "traits": {"email": "Jana@Example.org", "phone": "601 123 456", "loyalty_card": "lc-0001 000000"},
        "context": {"traits": {"email": "jana@example.org"}, "device": {"id": "xxxxxx"}},
        "properties": {"phone": "+420601123456"},
    }
    expected = [
        ("user_id", "u-1"),
        ("loyalty_card", "LC0001000000"),
        ("email", "jana@example.org"),
        ("phone", "+420601123456"),
        ("anonymous_id", "anon-1"),
    ]  # the device id is junk (one repeated character); duplicates collapse
    assert extract_identifiers(msg, rules) == expected
    assert extract_identifiers(msg, rules) == expected  # from the memo
    assert extract_identifiers_uncached(msg, rules) == expected


def test_joined_block_patterns_match_like_the_separate_ones() -> None:
    samples = ["000", "+0000", "aaaaaa", "aaaaa", "test1@x.cz", "x@test.pl", "+1234567890", "ok-value", "TEST@x.cz"]
    for value in samples:
        separate = any(p.search(value) for p in RULES.blocked_res)
        joined = any(p.search(value) for p in RULES.blocked_match)
        assert joined == separate, value
