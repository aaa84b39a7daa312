"""Identifier normalisation with well-kept libraries, and the junk filter.

The same functions normalise values from events and from lookups, so a search for
"+420 601 123 456" finds a profile linked by "601123456".
"""

from __future__ import annotations

from typing import Any

import phonenumbers
from email_validator import EmailNotValidError, validate_email

from omnijourney.identity.rules import ExtractionNode, IdentifierType, IdentityRules

MAX_LEN = 255


def normalise_email(raw: str) -> str | None:
    try:
        info = validate_email(raw, check_deliverability=False, allow_smtputf8=True)
    except EmailNotValidError:
        return None
    return info.normalized.lower()


def normalise_phone(raw: str, region: str) -> str | None:
    try:
        number = phonenumbers.parse(raw, region)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_possible_number(number) or not phonenumbers.is_valid_number(number):
        return None
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def country_calling_code(region: str) -> int | None:
    """The calling code of a region ("CZ" -> 420), None for an unknown region."""
    return phonenumbers.country_code_for_region(region.upper()) or None


def normalise_value(raw: Any, id_type: IdentifierType, rules: IdentityRules) -> str | None:
    """Normalised value, or None when the value is junk, blocked or malformed."""
    if raw is None or isinstance(raw, bool | dict | list):
        return None
    value = str(raw).strip()
    if not value or len(value) > MAX_LEN:
        return None
    if _blocked(value, rules):
        return None
    kind = id_type.normalise
    if kind == "email":
        out = normalise_email(value)
    elif kind == "phone":
        out = normalise_phone(value, rules.default_phone_region)
    elif kind == "loyalty_card":
        out = "".join(value.split()).replace("-", "").upper()
    elif kind == "lower":
        out = value.lower()
    else:
        out = value
    if out is None:
        return None
    if id_type.pattern and not _fullmatch(id_type.pattern, out):
        return None
    if out != value and _blocked(out, rules):
        return None
    return out


def _blocked(value: str, rules: IdentityRules) -> bool:
    return value.lower() in rules.blocked or any(pattern.search(value) for pattern in rules.blocked_match)


_PATTERN_CACHE: dict[str, Any] = {}


def _fullmatch(pattern: str, value: str) -> bool:
    import re

    compiled = _PATTERN_CACHE.get(pattern)
    if compiled is None:
        compiled = _PATTERN_CACHE[pattern] = re.compile(pattern)
    return compiled.fullmatch(value) is not None


def _dig(message: dict[str, Any], path: tuple[str, ...]) -> Any:
    node: Any = message
    for part in path:
        if not isinstance(node, dict):
            return None
        node = node.get(part)
    return node


_CACHE_LIMIT = 200_000


def _found(node: ExtractionNode, message: dict[str, Any], out: list[tuple[int, str, IdentifierType, Any]]) -> None:
    for part, child in node.children.items():
        raw = message.get(part)
        if raw is None:
            continue
        for order, name, id_type in child.leaves:
            out.append((order, name, id_type, raw))
        if child.children and isinstance(raw, dict):
            _found(child, raw, out)


def extract_identifiers(message: dict[str, Any], rules: IdentityRules) -> list[tuple[str, str]]:
    """(type, value) pairs found in a message, normalised, junk dropped, highest priority first.

    Each field name of the rules is looked up once per message (`rules.extraction_tree`), and
    normalisation results are memoised per rules object: the same e-mail or anonymous id
    arrives many times, and e-mail/phone parsing is the expensive part of resolution. The
    result is exactly `extract_identifiers_uncached`'s (a test holds them equal).
    """
    found: list[tuple[int, str, IdentifierType, Any]] = []
    _found(rules.extraction_tree, message, found)
    if not found:
        return []
    if len(found) > 1:
        found.sort(key=_order)
    cache: dict[tuple[str, Any], str | None] = rules.normalise_cache
    out: list[tuple[str, str]] = []
    for _, name, id_type, raw in found:
        key = (name, raw) if type(raw) is str else None
        if key is not None and key in cache:
            value = cache[key]
        else:
            value = normalise_value(raw, id_type, rules)
            if key is not None:
                if len(cache) >= _CACHE_LIMIT:
                    cache.clear()
                cache[key] = value
        if value is not None and (name, value) not in out:
            out.append((name, value))
    return out


def _order(item: tuple[int, str, IdentifierType, Any]) -> int:
    return item[0]


def extract_identifiers_uncached(message: dict[str, Any], rules: IdentityRules) -> list[tuple[str, str]]:
    """The definition `extract_identifiers` implements: every field path of every type, highest
    priority first, each value normalised afresh. Kept as the reference for tests."""
    out: list[tuple[str, str]] = []
    for name, id_type, paths in rules.extraction_plan:
        for path in paths:
            raw = _dig(message, path)
            if raw is None:
                continue
            value = normalise_value(raw, id_type, rules)
            if value is not None and (name, value) not in out:
                out.append((name, value))
    return out
