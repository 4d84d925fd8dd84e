// tend dashboard: the little JavaScript it needs, no build step.
// - elements with data-refresh="URL" data-every="MS" reload their content
//   from URL (an HTML fragment rendered by the server) while the tab is visible;
// - the service page follows its logs over server-sent events.
"use strict";

function refreshLoop(el) {
  const every = Number(el.dataset.every || 5000);
  let busy = false;
  setInterval(async () => {
    if (busy || document.hidden) return;
    busy = true;
    try {
      const resp = await fetch(el.dataset.refresh, { credentials: "same-origin", headers: { "Accept": "text/html" } });
      if (resp.redirected || resp.status === 401) { location.href = "/ui/login"; return; }
      if (resp.ok) {
        const html = await resp.text();
        if (html !== el.innerHTML) el.innerHTML = html;
      }
    } catch (e) {
      // The server restarting or the network dropping: try again next tick.
    } finally {
      busy = false;
    }
  }, every);
}

function followLogs(section) {
  const service = section.dataset.service;
  const list = section.querySelector("#log-lines");
  const state = section.querySelector("#log-state");
  const form = section.querySelector("#log-filters");
  const pause = section.querySelector("#log-pause");
  const MAX = 1000;
  let source = null;
  let paused = false;
  let held = [];

  function render(line) {
    const li = document.createElement("li");
    li.className = "st-" + line.stream + (line.level ? " lv-" + line.level : "");
    const t = document.createElement("span");
    t.className = "t";
    t.textContent = (line.time || "").replace("T", " ").replace(/\.\d+Z$/, "Z");
    const i = document.createElement("span");
    i.className = "i";
    i.textContent = line.instance || line.stream;
    const m = document.createElement("span");
    // The app's own line as it wrote it (its JSON fields are what one greps
    // for); tend's platform lines by their message.
    m.textContent = line.stream === "platform"
      ? (line.level ? line.level.toUpperCase() + " " : "") + line.message
      : line.raw;
    li.append(t, i, m);
    return li;
  }

  function append(lines) {
    const atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 40;
    const frag = document.createDocumentFragment();
    for (const l of lines) frag.append(render(l));
    list.append(frag);
    while (list.children.length > MAX) list.firstChild.remove();
    if (atBottom) list.scrollTop = list.scrollHeight;
  }

  function connect() {
    if (source) source.close();
    list.replaceChildren();
    held = [];
    const params = new URLSearchParams(new FormData(form));
    for (const [k, v] of [...params]) if (!v) params.delete(k);
    source = new EventSource("/ui/services/" + encodeURIComponent(service) + "/logs?" + params);
    state.textContent = "Connecting…";
    source.onmessage = (ev) => {
      const line = JSON.parse(ev.data);
      if (paused) { held.push(line); return; }
      append([line]);
    };
    source.addEventListener("live", () => { state.textContent = "Following live."; });
    source.addEventListener("lagged", (ev) => { state.textContent = "Following live (" + ev.data + " lines skipped: too fast)."; });
    source.addEventListener("problem", (ev) => { state.textContent = ev.data; source.close(); });
    source.onerror = () => { if (source.readyState !== EventSource.CLOSED) state.textContent = "Reconnecting…"; };
  }

  form.addEventListener("submit", (ev) => { ev.preventDefault(); connect(); });
  pause.addEventListener("click", () => {
    paused = !paused;
    pause.setAttribute("aria-pressed", String(paused));
    pause.textContent = paused ? "Resume" : "Pause";
    if (!paused && held.length) { append(held); held = []; }
  });
  connect();
}

document.addEventListener("DOMContentLoaded", () => {
  document.querySelectorAll("[data-refresh]").forEach(refreshLoop);
  const logs = document.querySelector("section.logs[data-service]");
  if (logs) followLogs(logs);
});
