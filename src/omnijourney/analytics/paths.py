"""Channel paths: transitions between channels (or channel x action), the Sankey of the first steps,
and the top paths to purchase. Defined once with Ibis (DuckDB and Spark run the same expression).

Rules (docs/ANALYTICS.md, "Channel paths"):

- A customer's events (after the filters) in (timestamp, log position) order become a sequence of
  **nodes**: the channel (`level=channel`) or `channel · action` (`level=channel_action`; the action is the
  event name, or the message type for pages and screens). **Consecutive duplicates collapse** into one node,
  so `web, web, store, web` is the path `web → store → web`.
- **Anchors**: with a start node, a customer's path begins at their first node with that label; with an end
  node, it ends at the first node with that label at or after the start. Customers without the anchor(s)
  are left out. Without an end anchor the Sankey shows the first `steps` nodes; with one, the last `steps`
  nodes up to the end anchor (so the anchor is always the last column).
- **Transitions** count every pair of consecutive nodes of the (anchored) paths.
- **Paths to purchase**: for every customer with a purchase event, the collapsed nodes from their first
  event up to and including the node of their first purchase; the last `steps` nodes are kept (`… → ` marks
  a longer path). Top paths by customers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import ibis

from omnijourney.analytics import filters as flt
from omnijourney.analytics.engine import LakeTables
from omnijourney.analytics.funnels import Step, match

Level = Literal["channel", "channel_action"]
SEP = " · "
ARROW = " → "
MORE = "…"
PURCHASE = Step("Order Completed", ("Order Completed",))


@dataclass(frozen=True)
class PathSpec:
    level: Level = "channel"
    start: str | None = None
    end: str | None = None
    steps: int = 5
    purchase: Step = PURCHASE
    top: int = 10

    def __post_init__(self) -> None:
        if self.level not in ("channel", "channel_action"):
            raise ValueError(f"unknown path level {self.level!r}; use channel or channel_action")
        if not 2 <= self.steps <= 10:
            raise ValueError("steps must be between 2 and 10")
        if not 1 <= self.top <= 100:
            raise ValueError("top must be between 1 and 100")


def nodes_expr(lt: LakeTables, spec: PathSpec, f: flt.Filters) -> ibis.Table:
    """One row per collapsed node: unit, run (1-based position), label, and whether it holds a purchase."""
    ev = flt.apply(lt, lt.events, f)
    ev = ev.filter(ev.unit.notnull())
    channel = ev.channel.coalesce("(none)")
    label = channel if spec.level == "channel" else channel.concat(SEP, ev.event.coalesce(ev.type))
    ev = ev.select("unit", "ts_ms", "event_id", label=label, purchase=match(ev, spec.purchase).cast("int64"))
    w = ibis.window(group_by=ev.unit, order_by=[ev.ts_ms, ev.event_id])
    prev = ev.label.lag().over(w)
    ev = ev.mutate(new_run=ibis.ifelse(prev.isnull() | (prev != ev.label), 1, 0))
    w2 = ibis.window(group_by=ev.unit, order_by=[ev.ts_ms, ev.event_id], preceding=None, following=0)
    ev = ev.mutate(run=ev.new_run.sum().over(w2).cast("int64"))
    nodes = ev.group_by(["unit", "run"]).aggregate(label=ev.label.max(), purchase=ev.purchase.max())
    return nodes.cache() if lt.engine == "duckdb" else nodes


def _anchored(nodes: ibis.Table, spec: PathSpec) -> ibis.Table:
    """The nodes of each customer's anchored path, with `pos` = the Sankey column (0-based)."""
    n = nodes
    if spec.start is not None:
        s = n.filter(n.label == spec.start)
        s = s.group_by(s_unit=s.unit).aggregate(s_run=s.run.min())
        n = n.join(s, [n.unit == s.s_unit, n.run >= s.s_run]).drop("s_unit")
    else:
        n = n.mutate(s_run=ibis.literal(1, "int64"))
    if spec.end is not None:
        e = n.filter(n.label == spec.end)
        e = e.group_by(e_unit=e.unit).aggregate(e_run=e.run.min())
        n = n.join(e, [n.unit == e.e_unit, n.run <= e.e_run]).drop("e_unit")
        n = n.mutate(pos=spec.steps - 1 - (n.e_run - n.run))
        n = n.mutate(seg=n.run - n.s_run).drop("e_run")
    else:
        n = n.mutate(pos=n.run - n.s_run)
        n = n.mutate(seg=n.pos)
    return n.drop("s_run")


def sankey_expressions(lt: LakeTables, spec: PathSpec, f: flt.Filters) -> dict[str, ibis.Table]:
    nodes = nodes_expr(lt, spec, f)
    path = _anchored(nodes, spec)
    nxt = path.select(n_unit=path.unit, n_seg=path.seg, n_label=path.label, n_pos=path.pos)
    pairs = path.join(nxt, [path.unit == nxt.n_unit, nxt.n_seg == path.seg + 1])
    transitions = pairs.group_by([pairs.label.name("source"), pairs.n_label.name("target")]).aggregate(
        transitions=pairs.count(), customers=pairs.unit.nunique()
    )
    shown = path.filter((path.pos >= 0) & (path.pos < spec.steps))
    column_nodes = shown.group_by(["pos", "label"]).aggregate(customers=shown.count())
    links = pairs.filter((pairs.pos >= 0) & (pairs.n_pos < spec.steps))
    links = links.group_by(["pos", "label", "n_label"]).aggregate(customers=links.count())
    # paths to purchase: nodes up to the first purchase node, the last `steps` of them as columns
    buy = nodes.filter(nodes.purchase == 1)
    buy = buy.group_by(b_unit=buy.unit).aggregate(b_run=buy.run.min())
    tp = nodes.join(buy, [nodes.unit == buy.b_unit, nodes.run <= buy.b_run])
    tp = tp.mutate(back=tp.b_run - tp.run)
    cols = {
        f"n{k}": tp.label.max(where=tp.back == k) for k in range(spec.steps)
    }  # n0 = the purchase node, n1 = the one before, ...
    per_unit = tp.group_by("unit").aggregate(length=tp.b_run.max(), **cols)
    keys = ["length_over", *cols]
    per_unit = per_unit.mutate(length_over=(per_unit.length > spec.steps).cast("int64"))
    to_purchase = per_unit.group_by(keys).aggregate(customers=per_unit.count())
    customers = path.select("unit").distinct()
    totals = customers.aggregate(customers=customers.count())
    return {
        "transitions": transitions,
        "nodes": column_nodes,
        "links": links,
        "to_purchase": to_purchase,
        "totals": totals,
    }


def run_paths(lt: LakeTables, spec: PathSpec, f: flt.Filters) -> dict[str, Any]:
    exprs = sankey_expressions(lt, spec, f)
    got = {name: lt.execute(e).to_pylist() for name, e in exprs.items()}
    customers = int(got["totals"][0]["customers"]) if got["totals"] else 0
    # Sankey: node i = (column, label), in column then label order
    keyed = sorted(((int(r["pos"]), r["label"]), int(r["customers"])) for r in got["nodes"])
    index = {key: i for i, (key, _) in enumerate(keyed)}
    nodes = [{"step": pos + 1, "label": label, "customers": n} for (pos, label), n in keyed]
    links = sorted(
        (
            {
                "step": int(r["pos"]) + 1,
                "source": index[(int(r["pos"]), r["label"])],
                "target": index[(int(r["pos"]) + 1, r["n_label"])],
                "source_label": r["label"],
                "target_label": r["n_label"],
                "customers": int(r["customers"]),
            }
            for r in got["links"]
        ),
        key=lambda x: (x["step"], -x["customers"], x["source_label"], x["target_label"]),
    )
    transitions = sorted(
        (
            {
                "source": r["source"],
                "target": r["target"],
                "transitions": int(r["transitions"]),
                "customers": int(r["customers"]),
            }
            for r in got["transitions"]
        ),
        key=lambda x: (-x["transitions"], x["source"], x["target"]),
    )
    paths = []
    for r in got["to_purchase"]:
        labels = [r[f"n{k}"] for k in range(spec.steps) if r[f"n{k}"] is not None][::-1]
        text = ARROW.join(labels)
        paths.append({"path": (MORE + ARROW + text) if r["length_over"] else text, "customers": int(r["customers"])})
    buyers = sum(p["customers"] for p in paths)
    paths.sort(key=lambda p: (-p["customers"], p["path"]))
    top = [{**p, "share": round(p["customers"] / buyers, 6)} for p in paths[: spec.top]]
    return {
        "level": spec.level,
        "start": spec.start,
        "end": spec.end,
        "steps": spec.steps,
        "customers": customers,
        "sankey": {
            "nodes": nodes,
            "links": links,
            # ready for Plotly: {type: "sankey", node: ..., link: ...}
            "node": {"label": [f"{n['step']}. {n['label']}" for n in nodes]},
            "link": {
                "source": [x["source"] for x in links],
                "target": [x["target"] for x in links],
                "value": [x["customers"] for x in links],
            },
        },
        "transitions": transitions,
        "purchasers": buyers,
        "top_paths_to_purchase": top,
        "rows": [
            {
                "step": x["step"],
                "source": x["source_label"],
                "target": x["target_label"],
                "customers": x["customers"],
            }
            for x in links
        ],
    }
