"""The console's Jinja environment renders exactly what a plain Jinja environment renders."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import jinja2
import pytest

from omnijourney.web.rendering import ConsoleEnvironment
from omnijourney.web.views import templates

TEMPLATE = (
    "{{ d.name }}|{{ d.missing }}|{{ d.missing is defined }}|{{ d.get('name') }}|{{ d.items is callable }}"
    "|{{ d['items'] }}|{{ d.nested.deep }}|{{ d.nested.gone is defined }}|{{ d.none is none }}"
    "|{{ dd.x }}|{{ dd.items is callable }}|{{ obj.real }}|{{ obj.name }}|{{ (d.text or d.message or 'none') }}"
    "|{{ d.html }}|{% for k, v in d.nested.items() %}{{ k }}={{ v }}{% endfor %}"
)


class Thing:
    name = "attribute"

    def __getitem__(self, key: str) -> str:
        return f"item:{key}"


def render(env: jinja2.Environment, **ctx: Any) -> str:
    return env.from_string(TEMPLATE).render(**ctx)


def test_dict_fast_path_renders_the_same_as_jinja() -> None:
    ctx = {
        "d": {"name": "Jana", "items": "a key named like a method", "nested": {"deep": 1}, "none": None, "html": "<b>"},
        "dd": defaultdict(lambda: "made", x="kept"),
        "obj": Thing(),
    }
    for autoescape in (False, True):
        plain = render(jinja2.Environment(autoescape=autoescape), **ctx)
        assert render(ConsoleEnvironment(autoescape=autoescape), **ctx) == plain
    assert "Jana||False|Jana|True|a key named like a method|1|False|True|kept|True|item:real|attribute|none" in plain


def test_missing_keys_stay_undefined_for_strict_environments() -> None:
    env = ConsoleEnvironment(undefined=jinja2.StrictUndefined)
    with pytest.raises(jinja2.UndefinedError, match="missing"):
        env.from_string("{{ d.missing }}").render(d={})


def test_console_templates_use_it() -> None:
    assert isinstance(templates.env, ConsoleEnvironment)
    assert templates.env.auto_reload is False
