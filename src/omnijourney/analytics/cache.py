"""Analysis results cached per lake version: a dashboard reload over an unchanged lake is a lookup.

The lake only changes through an export, which rewrites `_export.json`, adds committed event
files and replaces every dimension snapshot. The version of a lake is therefore the committed
position plus the name, size and modification time of `_export.json`, of every committed event
file and of every dimension file (a few hundred `stat` calls, milliseconds). A result is cached
under (lake directory, lake version, analysis, engine, the repr of every parameter): frozen
dataclasses, so the repr spells the whole spec. A new export changes the version, so the next
call computes afresh; entries of old versions age out of the bounded LRU.

Process-wide (each API / console worker has its own), bounded, thread-safe. Results are deep
copies on the way in and out: callers may change what they get.
"""

from __future__ import annotations

import copy
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Any

from omnijourney.analytics import lake as lake_mod

#: results kept per process (a dashboard load is 14 analyses; a few filter combinations each)
MAX_ENTRIES = 256
#: set to "0" to turn the cache off (e.g. to time the engines themselves)
ENV = "OMNIJOURNEY_ANALYTICS_CACHE"

_lock = threading.Lock()
_entries: OrderedDict[Hashable, dict[str, Any]] = OrderedDict()
_stats = {"hits": 0, "misses": 0}


def enabled() -> bool:
    return os.environ.get(ENV, "1").strip() not in ("0", "false", "no", "off")


def _stat(path: Path) -> tuple[str, int, int] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return (path.name, st.st_size, st.st_mtime_ns)


def lake_version(data_dir: Path) -> tuple[Any, ...]:
    """What identifies the lake's committed content (changes with every export)."""
    lake = lake_mod.lake_dir(data_dir)
    position = lake_mod.committed_position(lake)
    files = tuple(_stat(f) for f in lake_mod.event_files(lake, position))
    dims_dir = lake / "dimensions"
    dims = tuple(_stat(f) for f in sorted(dims_dir.glob("*.parquet"))) if dims_dir.exists() else ()
    return (position, _stat(lake / "_export.json"), files, dims)


def cached(data_dir: Path, key: tuple[Any, ...], compute: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """`compute()`'s result for `key` over the lake as it is now, from the cache when the lake is unchanged."""
    if not enabled():
        return compute()
    full = (str(Path(data_dir).resolve()), lake_version(data_dir), repr(key))
    with _lock:
        hit = _entries.get(full)
        if hit is not None:
            _entries.move_to_end(full)
            _stats["hits"] += 1
            return copy.deepcopy(hit)
        _stats["misses"] += 1
    result = compute()
    with _lock:
        _entries[full] = copy.deepcopy(result)
        _entries.move_to_end(full)
        while len(_entries) > MAX_ENTRIES:
            _entries.popitem(last=False)
    return result


def stats() -> dict[str, int]:
    with _lock:
        return {**_stats, "entries": len(_entries)}


def clear() -> None:
    with _lock:
        _entries.clear()
        _stats.update(hits=0, misses=0)
