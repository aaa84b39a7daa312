// omnijourney journey dashboard: fetches the analyses from /console/dashboard/data/* (same origin, the
// session cookie) and draws them with Plotly (served by the console from the plotly Python package).
// Every filter applies to every chart; the URL keeps the filters and the funnel, so a view can be shared.
"use strict";
(() => {
  const DATA = "/console/dashboard/data/";
  const FILTER_KEYS = ["start", "end", "channel", "device_type", "utm_source", "utm_campaign", "store", "city", "segment"];
  const CONFIG = { displaylogo: false, responsive: true };
  const BASE_LAYOUT = { margin: { l: 110, r: 20, t: 10, b: 40 }, font: { size: 12 }, paper_bgcolor: "#fff", plot_bgcolor: "#fff" };
  let generation = 0;

  const $ = (sel) => document.querySelector(sel);
  const pct = (x) => (x === null || x === undefined ? "–" : `${(100 * x).toFixed(1)} %`);
  const num = (x) => (x === null || x === undefined ? "–" : Number(x).toLocaleString("en"));
  const secs = (s) => {
    if (s === null || s === undefined) return "–";
    if (s < 90) return `${Math.round(s)} s`;
    if (s < 5400) return `${(s / 60).toFixed(1)} min`;
    if (s < 172800) return `${(s / 3600).toFixed(1)} h`;
    return `${(s / 86400).toFixed(1)} d`;
  };

  function filterParams() {
    const params = new URLSearchParams();
    const form = $("#filters");
    for (const [k, v] of new FormData(form).entries()) {
      if (!FILTER_KEYS.includes(k)) continue;
      for (const part of String(v).split(",")) if (part.trim()) params.append(k, part.trim());
    }
    return params;
  }

  function funnelParams() {
    const params = new URLSearchParams();
    for (const line of $("#fn-steps").value.split("\n")) if (line.trim()) params.append("step", line.trim());
    params.set("window", $("#fn-window").value.trim() || "14d");
    params.set("order", $("#fn-order").value);
    if ($("#fn-breakdown").value) {
      params.set("breakdown", $("#fn-breakdown").value);
      params.set("attribution", $("#fn-attribution").value);
    }
    return params;
  }

  // the journey panels' options (retention, lifecycle, paths), kept in the URL like the filters
  const JOURNEY_KEYS = { retention: ["granularity", "mode", "cohort_type"], lifecycle: ["granularity"], paths: ["level"] };

  function journeyParams(name) {
    const params = new URLSearchParams();
    const form = $("#journey-form");
    if (!form) return params;
    const all = new FormData(form);
    for (const k of name ? (JOURNEY_KEYS[name] || []) : ["granularity", "mode", "cohort_type", "level"]) {
      if (all.get(k)) params.set(k, all.get(k));
    }
    return params;
  }

  function join(a, b) {
    const out = new URLSearchParams(a);
    for (const [k, v] of b.entries()) out.append(k, v);
    return out;
  }

  function message(text, isError) {
    const el = $("#dash-message");
    el.textContent = text || "";
    el.classList.toggle("error", !!isError);
  }

  async function fetchJson(url, options) {
    const response = await fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" }, ...options });
    const type = response.headers.get("content-type") || "";
    if (response.redirected || response.status === 401 || !type.includes("application/json")) {
      throw new Error("your session ended: log in again");
    }
    const body = await response.json();
    if (!response.ok) throw new Error(body.message || `error ${response.status}`);
    return body;
  }

  function empty(el, text) {
    if (window.Plotly) window.Plotly.purge(el);
    el.replaceChildren();
    const p = document.createElement("p");
    p.className = "empty";
    p.textContent = text;
    el.appendChild(p);
  }

  function plot(el, data, layout) {
    el.querySelector(".empty")?.remove();
    return window.Plotly.react(el, data, { ...BASE_LAYOUT, ...layout }, CONFIG);
  }

  function mark(el, gen) {
    el.dataset.rendered = String(gen);
    el.classList.remove("loading");
  }

  function setKpi(name, text) {
    const el = document.querySelector(`[data-kpi="${name}"]`);
    if (el) el.textContent = text;
  }

  function table(el, head, rows) {
    el.replaceChildren();
    const thead = el.createTHead().insertRow();
    for (const h of head) {
      const th = document.createElement("th");
      th.textContent = h;
      thead.appendChild(th);
    }
    const body = el.createTBody();
    for (const r of rows) {
      const tr = body.insertRow();
      for (const cell of r) tr.insertCell().textContent = cell;
    }
  }

  // ------------------------------------------------------------------ charts

  function funnelTrace(result, name) {
    const steps = result.steps || [];
    return {
      type: "funnel",
      name,
      y: steps.map((s) => s.name),
      x: steps.map((s) => s.count),
      textinfo: "value+percent initial",
      customdata: steps.map((s) => [s.in_progress, s.dropped, pct(s.conversion_from_previous)]),
      hovertemplate: "%{y}: %{x}<br>from previous %{customdata[2]}<br>in progress %{customdata[0]}, dropped %{customdata[1]}<extra>%{fullData.name}</extra>",
    };
  }

  function drawStages(result, gen) {
    const el = $("#chart-stages");
    el.dataset.entered = String(result.entered);
    setKpi("entered", num(result.entered));
    const purchase = (result.steps || []).find((s) => s.name === "purchase");
    setKpi("purchase_rate", purchase ? pct(purchase.conversion_from_start) : "–");
    if (!result.entered) empty(el, "No customer in the journey for these filters.");
    else plot(el, [funnelTrace(result, "all")], { showlegend: false });
    mark(el, gen);
  }

  function drawFunnel(result, gen) {
    const el = $("#chart-funnel");
    el.dataset.entered = String(result.entered);
    const values = result.breakdown_values || [];
    if (!result.entered) empty(el, "Nobody did the first step for these filters.");
    else if (values.length) plot(el, values.map((b) => funnelTrace(b, b.value === null ? "(none)" : String(b.value))), { showlegend: true, funnelmode: "group" });
    else plot(el, [funnelTrace(result, "all")], { showlegend: false });
    $("#funnel-summary").textContent = `${num(result.entered)} entered, ${num(result.converted)} converted (${pct(result.conversion_rate)}), `
      + `${num(result.in_progress)} still in progress; median time to convert ${secs(result.median_seconds_to_convert)}.`;
    mark(el, gen);
  }

  function drawCross(result, gen) {
    const el = $("#chart-cross");
    setKpi("cross_channel_share", pct(result.cross_channel_share));
    if (!result.customers) empty(el, "No purchase for these filters.");
    else plot(el, [{
      type: "heatmap",
      z: result.matrix,
      x: result.purchase_channels,
      y: result.start_channels,
      colorscale: "Blues",
      reversescale: true,
      texttemplate: "%{z}",
      hovertemplate: "started in %{y}, bought in %{x}: %{z}<extra></extra>",
    }], { xaxis: { title: { text: "purchase channel" }, side: "bottom" }, yaxis: { title: { text: "journey start" }, autorange: "reversed" } });
    mark(el, gen);
  }

  function drawRevenue(result, gen) {
    const el = $("#chart-revenue");
    setKpi("return_rate", pct(result.return_rate));
    const rows = result.rows || [];
    if (!rows.length) { empty(el, "No orders for these filters."); mark(el, gen); return; }
    const currencies = [...new Set(rows.map((r) => r.currency || "?"))];
    const traces = currencies.map((cur) => {
      const mine = rows.filter((r) => (r.currency || "?") === cur);
      return { type: "bar", name: `revenue ${cur}`, x: mine.map((r) => r.channel), y: mine.map((r) => r.revenue) };
    });
    const rates = result.return_rates || [];
    traces.push({ type: "scatter", mode: "markers+text", name: "return rate", x: rates.map((r) => r.channel),
      y: rates.map((r) => 100 * r.return_rate), yaxis: "y2", text: rates.map((r) => pct(r.return_rate)), textposition: "top center" });
    plot(el, traces, {
      margin: { l: 60, r: 50, t: 10, b: 40 },
      yaxis: { title: { text: "revenue" } },
      yaxis2: { title: { text: "return rate %" }, overlaying: "y", side: "right", rangemode: "tozero" },
      legend: { orientation: "h", y: -0.15 },
    });
    mark(el, gen);
  }

  function drawClickCollect(result, gen) {
    const el = $("#chart-cc");
    setKpi("cc_share", pct(result.share));
    const rows = result.rows || [];
    if (!rows.length) { empty(el, "No online orders for these filters."); mark(el, gen); return; }
    plot(el, [
      { type: "bar", name: "click & collect", x: rows.map((r) => r.channel), y: rows.map((r) => r.click_and_collect) },
      { type: "bar", name: "other online orders", x: rows.map((r) => r.channel), y: rows.map((r) => r.orders - r.click_and_collect) },
    ], { barmode: "stack", margin: { l: 50, r: 10, t: 10, b: 40 }, legend: { orientation: "h", y: -0.2 } });
    mark(el, gen);
  }

  function drawMulti(result, gen) {
    const el = $("#chart-multi");
    const groups = result.groups || [];
    const total = groups.reduce((a, g) => a + g.customers, 0);
    const multi = groups.find((g) => g.group === "multi_channel");
    setKpi("multi_share", total ? pct(multi.customers / total) : "–");
    const label = (g) => g.group.replace("_", "-");
    if (!total) { empty(el, "No buyers for these filters."); $("#table-multi").replaceChildren(); mark(el, gen); return; }
    plot(el, [
      { type: "bar", name: "repeat rate %", x: groups.map(label), y: groups.map((g) => 100 * g.repeat_rate), offsetgroup: 1 },
      { type: "bar", name: "orders per customer", x: groups.map(label), y: groups.map((g) => g.orders_per_customer), yaxis: "y2", offsetgroup: 2 },
    ], { barmode: "group", margin: { l: 50, r: 50, t: 10, b: 40 }, yaxis: { title: { text: "repeat rate %" } },
      yaxis2: { overlaying: "y", side: "right", title: { text: "orders / customer" }, rangemode: "tozero" }, legend: { orientation: "h", y: -0.2 } });
    table($("#table-multi"), ["group", "customers", "repeat rate", "orders / customer", "average order value"],
      groups.map((g) => [label(g), num(g.customers), pct(g.repeat_rate), g.orders_per_customer,
        Object.entries(g.average_order_value || {}).map(([c, v]) => `${v} ${c}`).join(", ") || "–"]));
    mark(el, gen);
  }

  function drawService(result, gen) {
    const el = $("#chart-service");
    setKpi("fcr", result.contacts ? pct(result.first_contact_resolution) : "–");
    setKpi("lost_context", result.contacts ? pct(result.lost_context_rate) : "–");
    const rows = result.rows || [];
    if (!rows.length) { empty(el, "No service contacts for these filters."); $("#table-service").replaceChildren(); mark(el, gen); return; }
    plot(el, [
      { type: "bar", name: "first-contact resolution %", x: rows.map((r) => r.channel), y: rows.map((r) => 100 * r.first_contact_resolution) },
      { type: "bar", name: "lost-context rate %", x: rows.map((r) => r.channel), y: rows.map((r) => 100 * r.lost_context_rate) },
      { type: "bar", name: "CSAT satisfied %", x: rows.map((r) => r.channel), y: rows.map((r) => 100 * r.csat_satisfied_share) },
    ], { barmode: "group", margin: { l: 50, r: 10, t: 10, b: 40 }, yaxis: { range: [0, 100] }, legend: { orientation: "h", y: -0.2 } });
    table($("#table-service"), ["channel", "contacts", "first response", "resolution", "FCR", "CSAT", "NPS", "lost context"],
      rows.map((r) => [r.channel, num(r.contacts), secs(r.median_first_response_seconds), secs(r.median_resolution_seconds),
        pct(r.first_contact_resolution), r.csat_average === null ? "–" : `${r.csat_average} (${pct(r.csat_satisfied_share)})`,
        r.nps === null ? "–" : String(r.nps), pct(r.lost_context_rate)]));
    mark(el, gen);
  }

  // ------------------------------------------------------------------ journeys

  function drawPaths(result, gen) {
    const el = $("#chart-paths");
    const sk = result.sankey || { nodes: [], links: [] };
    el.dataset.links = String(sk.links.length);
    if (!sk.links.length) empty(el, "No customer moved between channels for these filters.");
    else plot(el, [{
      type: "sankey",
      arrangement: "snap",
      node: { label: sk.node.label, pad: 12, thickness: 14 },
      link: { source: sk.link.source, target: sk.link.target, value: sk.link.value },
    }], { margin: { l: 10, r: 10, t: 10, b: 10 } });
    table($("#table-paths"), ["top paths to purchase", "customers", "share"],
      (result.top_paths_to_purchase || []).map((p) => [p.path, num(p.customers), pct(p.share)]));
    mark(el, gen);
  }

  function drawRetention(result, gen) {
    const el = $("#chart-retention");
    const cohorts = result.cohorts || [];
    el.dataset.cohorts = String(cohorts.length);
    if (!cohorts.length) { empty(el, "No cohort for these filters."); mark(el, gen); return; }
    const unit = result.granularity;
    plot(el, [{
      type: "heatmap",
      x: result.periods.map((k) => `${unit} ${k}`),
      y: cohorts.map((c) => `${c.cohort} (${c.size})`),
      z: cohorts.map((c) => c.rates.map((r) => (r === null ? null : 100 * r))),
      customdata: cohorts.map((c) => c.retained),
      colorscale: "Blues",
      reversescale: true,
      zmin: 0,
      zmax: 100,
      texttemplate: "%{z:.0f}",
      hovertemplate: "cohort %{y}, %{x}: %{customdata} customers (%{z:.1f} %)<extra></extra>",
    }], { margin: { l: 130, r: 20, t: 10, b: 40 }, yaxis: { autorange: "reversed" } });
    mark(el, gen);
  }

  function drawLifecycle(result, gen) {
    const el = $("#chart-lifecycle");
    const periods = result.periods || [];
    if (!periods.length) { empty(el, "No activity for these filters."); mark(el, gen); return; }
    const x = periods.map((p) => p.period);
    plot(el, ["new", "returning", "resurrecting", "dormant"].map((s) => ({
      type: "bar", name: s, x, y: periods.map((p) => (s === "dormant" ? -p[s] : p[s])),
    })), { barmode: "relative", margin: { l: 50, r: 10, t: 10, b: 60 }, legend: { orientation: "h", y: -0.3 } });
    mark(el, gen);
  }

  function drawGolden(result, gen) {
    const el = $("#chart-golden");
    const paths = result.paths || [];
    const x = paths.map((p) => p.name);
    const conv = (p, g) => (p.conversion[g].conversion_rate === null ? null : 100 * p.conversion[g].conversion_rate);
    if (!paths.some((p) => p.customers)) empty(el, "No customer for these filters.");
    else plot(el, [
      { type: "bar", name: "follow the path %", x, y: paths.map((p) => 100 * (p.share_of_customers || 0)) },
      { type: "bar", name: "conversion of followers %", x, y: paths.map((p) => conv(p, "followers")) },
      { type: "bar", name: "conversion of the others %", x, y: paths.map((p) => conv(p, "others")) },
    ], { barmode: "group", margin: { l: 50, r: 10, t: 10, b: 40 }, yaxis: { range: [0, 100] }, legend: { orientation: "h", y: -0.2 } });
    table($("#table-golden"), ["path", "customers reaching each step", "followers", "most leave at", "what they did instead"],
      paths.map((p) => {
        const dev = p.biggest_deviation;
        const step = dev ? p.steps.find((s) => s.step === dev.step) : null;
        return [p.name, p.steps.map((s) => `${s.name}: ${num(s.reached)}`).join(" → "),
          `${num(p.followers)} (${pct(p.share_of_customers)})`, dev ? `${dev.name} (${num(dev.customers)})` : "–",
          step && step.instead.length ? step.instead.map((i) => `${i.event} (${i.customers})`).join(", ") : "–"];
      }));
    mark(el, gen);
  }

  const CHARTS = [
    { name: "stages", el: "#chart-stages", draw: drawStages },
    { name: "funnel", el: "#chart-funnel", draw: drawFunnel, funnel: true },
    { name: "cross-channel", el: "#chart-cross", draw: drawCross },
    { name: "revenue", el: "#chart-revenue", draw: drawRevenue },
    { name: "click-and-collect", el: "#chart-cc", draw: drawClickCollect },
    { name: "multi-channel", el: "#chart-multi", draw: drawMulti },
    { name: "service", el: "#chart-service", draw: drawService },
    { name: "paths", el: "#chart-paths", draw: drawPaths, journey: true },
    { name: "retention", el: "#chart-retention", draw: drawRetention, journey: true },
    { name: "lifecycle", el: "#chart-lifecycle", draw: drawLifecycle, journey: true },
    { name: "golden-paths", el: "#chart-golden", draw: drawGolden },
  ];

  // ------------------------------------------------------------------ attribution, gap report, stage KPIs

  const MODEL_LABELS = { first_touch: "first touch", last_touch: "last touch", linear: "linear", position_based: "position 40/20/40",
    time_decay: "time decay", markov: "Markov", shapley: "Shapley" };

  function drawAttribution(result, gen) {
    const el = $("#chart-attribution");
    const models = result.models || [];
    const tps = result.touchpoints || [];
    $("#attribution-summary").textContent = `${num(result.journeys)} journeys, ${num(result.converting_journeys)} converting `
      + `(${num(result.direct_conversions)} more conversions had no touch before them).`;
    if (!result.converting_journeys) {
      empty(el, "No converting journey for these filters.");
      $("#table-attribution").replaceChildren();
      mark(el, gen);
      return;
    }
    plot(el, models.map((m) => ({
      type: "bar", name: MODEL_LABELS[m] || m, x: tps,
      y: tps.map((tp) => (result.results[m].find((r) => r.touchpoint === tp) || {}).conversions || 0),
    })), { barmode: "group", margin: { l: 50, r: 10, t: 10, b: 40 }, yaxis: { title: { text: "conversions credited" } }, legend: { orientation: "h", y: -0.2 } });
    table($("#table-attribution"), ["channel", ...models.map((m) => MODEL_LABELS[m] || m)],
      tps.map((tp) => [tp, ...models.map((m) => {
        const r = result.results[m].find((x) => x.touchpoint === tp);
        return r ? `${r.conversions.toFixed(1)} (${pct(r.share)})` : "–";
      })]));
    mark(el, gen);
  }

  function drawGaps(result, gen) {
    const el = $("#list-gaps");
    el.replaceChildren();
    for (const f of result.findings || []) {
      const li = document.createElement("li");
      li.textContent = f.text;
      li.dataset.kind = f.kind;
      el.appendChild(li);
    }
    if (!(result.findings || []).length) {
      const li = document.createElement("li");
      li.className = "empty";
      li.textContent = "No gap found for these filters.";
      el.appendChild(li);
    }
    mark(el, gen);
  }

  function drawStageKpis(result, gen) {
    const el = $("#table-stagekpis");
    const s = result.stages || {};
    const aw = s.awareness || {}, co = s.consideration || {}, pu = s.purchase || {}, re = s.retention || {}, ad = s.advocacy || {};
    const cost = (aw.campaigns || []).map((c) => `${c.campaign}: ${c.cost_per_visit === null ? "–" : c.cost_per_visit} ${c.currency}`).join(", ");
    table(el, ["stage", "figures"], [
      ["awareness", `reach ${num(aw.reach)}, CTR ${pct(aw.ctr)} (${num(aw.clicks)} / ${num(aw.impressions)})` + (aw.costs_imported ? `, cost per visit ${cost}` : ", no ad costs imported")],
      ["consideration", `average time on site ${secs(co.average_time_on_site_seconds)}, abandoned carts ${num(co.abandoned_carts)} (${pct(co.cart_abandonment_rate)})`],
      ["purchase", `conversion ${pct(pu.conversion_rate)} (${num(pu.buyers)} of ${num(pu.customers)}), AOV ${Object.entries(pu.average_order_value || {}).map(([c, v]) => `${v} ${c}`).join(", ") || "–"}`],
      ["retention", `repeat rate ${pct(re.repeat_rate)}, ${re.purchase_frequency ?? "–"} orders per buyer`],
      ["advocacy", `${num(ad.reviews)} reviews, ${num(ad.referrals)} referrals, ${num(ad.shares)} shares, ${num(ad.nps_promoters)} NPS promoters`],
    ]);
    mark(el, gen);
  }

  CHARTS.push(
    { name: "gaps", el: "#list-gaps", draw: drawGaps },
    { name: "attribution", el: "#chart-attribution", draw: drawAttribution },
    { name: "stage-kpis", el: "#table-stagekpis", draw: drawStageKpis },
  );

  function paramsFor(name, filters, withFunnel) {
    if (name === "funnel") return withFunnel;
    if (JOURNEY_KEYS[name]) return join(filters, journeyParams(name));
    return filters;
  }

  // ------------------------------------------------------------------ loading

  async function lakeStatus() {
    try {
      const s = await fetchJson(`${DATA}lake`);
      $("#lake-status").textContent = `lake: ${num(s.exported_rows)} events, ${num(s.pending)} waiting`
        + (s.updated_at ? `, exported ${s.updated_at.slice(0, 16).replace("T", " ")} UTC` : "");
    } catch (err) {
      $("#lake-status").textContent = `lake: ${err.message}`;
    }
  }

  async function refresh() {
    const gen = ++generation;
    const filters = filterParams();
    const withFunnel = join(filters, funnelParams());
    const shared = join(withFunnel, journeyParams()).toString();
    window.history.replaceState(null, "", `${window.location.pathname}${shared ? `?${shared}` : ""}`);
    document.querySelectorAll("a[data-csv]").forEach((a) => {
      const q = join(paramsFor(a.dataset.csv, filters, withFunnel), new URLSearchParams({ format: "csv" }));
      a.href = `${DATA}${a.dataset.csv}?${q}`;
    });
    await Promise.all(CHARTS.map(async (c) => {
      const el = $(c.el);
      el.classList.add("loading");
      try {
        const result = await fetchJson(`${DATA}${c.name}?${paramsFor(c.name, filters, withFunnel)}`);
        if (gen !== generation) return;  // a newer filter change is on its way
        await c.draw(result, gen);
      } catch (err) {
        if (gen !== generation) return;
        empty(el, err.message);
        mark(el, gen);
        el.dataset.error = err.message;
      }
    }));
    if (gen === generation) document.body.dataset.dashboard = `ready-${gen}`;
  }

  async function refreshLake(ev) {
    ev.preventDefault();
    const form = ev.currentTarget;
    const button = form.querySelector("button");
    button.disabled = true;
    message("exporting new events to the lake…");
    try {
      const token = form.querySelector("[name=csrf_token]").value;
      const result = await fetchJson(form.action, { method: "POST", headers: { Accept: "application/json", "X-CSRF-Token": token } });
      await Promise.all([lakeStatus(), refresh()]);
      message(result.message);
    } catch (err) {
      message(err.message, true);
    } finally {
      button.disabled = false;
    }
  }

  document.addEventListener("DOMContentLoaded", () => {
    const filters = $("#filters");
    if (!filters || !window.Plotly) return;
    filters.addEventListener("submit", (ev) => { ev.preventDefault(); message(""); refresh(); });
    filters.addEventListener("change", () => refresh());
    $("#funnel-form").addEventListener("submit", (ev) => { ev.preventDefault(); refresh(); });
    $("#journey-form")?.addEventListener("change", () => refresh());
    $("#refresh-lake").addEventListener("submit", refreshLake);
    lakeStatus();
    refresh();
  });
})();
