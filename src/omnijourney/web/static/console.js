// omnijourney staff console: live timeline (server-sent events) and "older events" paging. No framework.
"use strict";
document.addEventListener("DOMContentLoaded", () => {
  const timeline = document.getElementById("timeline");
  if (!timeline) return;
  const status = document.querySelector("[data-live-status]");
  const setStatus = (text) => { if (status) status.textContent = text; };

  // older events: fetch the next page as list items and put them where the link was
  timeline.addEventListener("click", async (ev) => {
    const link = ev.target.closest("a[data-more]");
    if (!link) return;
    ev.preventDefault();
    const li = link.closest("li");
    const response = await fetch(link.dataset.fragment, { credentials: "same-origin" });
    if (!response.ok) { window.location = link.href; return; }
    li.insertAdjacentHTML("afterend", await response.text());
    li.remove();
  });

  // new events, live: each SSE message carries one rendered list item
  if (!window.EventSource || !timeline.dataset.stream) return;
  const source = new EventSource(timeline.dataset.stream);
  source.addEventListener("open", () => setStatus("● live"));
  source.addEventListener("error", () => setStatus("reconnecting…"));
  source.addEventListener("logout", () => { source.close(); setStatus("session ended"); });
  source.addEventListener("timeline", (ev) => {
    const tpl = document.createElement("template");
    tpl.innerHTML = ev.data.trim();
    const item = tpl.content.firstElementChild;
    if (!item || timeline.querySelector(`[data-event-id="${item.dataset.eventId}"]`)) return;
    item.classList.add("new");
    timeline.prepend(item);
  });
});
