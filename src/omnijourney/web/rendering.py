"""The console's Jinja environment: `x.key` on a plain dict without raising two exceptions.

The pages are built from plain dicts (the services' read models), and Jinja's `getattr` tries
the Python attribute first: for `item.channel` on a dict that is an AttributeError, then the
item — and for a missing key (most of `p.text or p.message or p.body` on a timeline entry) a
KeyError on top. A 360 page does hundreds of these. For a plain dict the attribute exists only
when the name is one of dict's own (`get`, `items`, ...), so the item can be looked up first
with exactly the same result.
"""

from __future__ import annotations

from typing import Any

import jinja2

_DICT_ATTRIBUTES = frozenset(dir(dict))
_MISSING = object()


class ConsoleEnvironment(jinja2.Environment):
    """`jinja2.Environment` with a fast path for attribute access on plain dicts (same results)."""

    def getattr(self, obj: Any, attribute: str) -> Any:
        if type(obj) is dict and attribute not in _DICT_ATTRIBUTES:
            value = obj.get(attribute, _MISSING)
            return self.undefined(obj=obj, name=attribute) if value is _MISSING else value
        return super().getattr(obj, attribute)
