// comfyfleet operator dashboard: one WebSocket (/api/v2/live), a few REST actions.
"use strict";

(() => {
  const KEY_STORAGE = "comfyfleet.apiKey";
  const LIVE_PATH = "/api/v2/live";
  const MAX_FINISHED = 50;
  const BACKOFF_MIN_MS = 1000;
  const BACKOFF_MAX_MS = 30000;
  const PROGRESS_MIN_INTERVAL_MS = 100; // progress-only frames: at most ~10 per second
  const ACTIVE_STATUSES = new Set(["queued", "running", "canceling"]);
  const COUNT_ORDER = ["queued", "running", "canceling", "succeeded", "failed", "canceled", "expired"];
  const ACTIVE_ORDER = { running: 0, canceling: 1, queued: 2 };
  const MAX_THUMBS = 12; // image previews in the job drawer

  // Colour family of every status-like value the server sends.
  const TONES = {
    healthy: "ok", succeeded: "ok", closed: "ok", active: "ok", admin: "accent",
    running: "info", queued: "neutral", user: "neutral",
    degraded: "warn", half_open: "warn", canceling: "warn", expired: "warn",
    down: "bad", failed: "bad", open: "bad",
    draining: "accent", disabled: "muted", unknown: "muted", canceled: "muted",
    // attempt outcomes, failure classes and phases (job drawer)
    retried: "warn", transient: "warn", recoverable: "warn", permanent: "bad", fatal: "bad",
    dispatching: "neutral", submitted: "neutral", executing: "info", collecting: "info",
  };

  // The single source of truth for the page.
  const state = {
    conn: { status: "connecting", retryAt: 0, attempt: 0, ws: null, timer: 0 },
    role: null,
    owner: null,
    skewMs: 0,            // server clock minus local clock
    lastMessageAt: 0,
    counts: {},           // status -> jobs; null: not sent to this key (a user's), tiles hidden
    fleet: null,          // {backends, workflow_breakers} or null
    active: new Map(),    // id -> Job (queued/running/canceling)
    finished: new Map(),  // id -> Job (newest first after sortFinished)
    pending: new Set(),   // action keys with a request in flight
    dirty: { header: true, tiles: true, fleet: true, active: true, finished: true, detail: true, detailClock: false },
    progressDirty: new Set(),
    frame: 0,             // pending requestAnimationFrame id
    progressTimer: 0,     // pending throttle for progress-only renders
    progressRenderedAt: 0,
    // The job drawer: which job, its last known record, per-section signatures, thumbnail blob: URLs.
    detail: { id: null, job: null, gone: false, opener: null, sig: {}, blobs: [], gen: 0, copyTimer: 0, bar: null, pct: null },
  };

  // DOM references and keyed row caches (reused between renders).
  const dom = {};
  const rows = { fleet: new Map(), wf: new Map(), active: new Map(), finished: new Map() };

  // ---------------------------------------------------------------- helpers

  function $(id) {
    return document.getElementById(id);
  }

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function setText(node, text) {
    const value = text === undefined || text === null ? "" : String(text);
    if (node.textContent !== value) node.textContent = value;
  }

  function setTitle(node, text) {
    const value = text || "";
    if (node.title !== value) node.title = value;
  }

  function setClass(node, className) {
    if (node.className !== className) node.className = className;
  }

  function setBadge(node, value, extra) {
    const raw = value === undefined || value === null || value === "" ? "unknown" : String(value);
    setClass(node, "badge tone-" + (TONES[raw] || "neutral"));
    setText(node, raw.replace(/_/g, " ") + (extra || ""));
  }

  function nowServerMs() {
    return Date.now() + state.skewMs;
  }

  function isoMs(iso) {
    if (!iso) return null;
    const ms = Date.parse(iso);
    return Number.isNaN(ms) ? null : ms;
  }

  function epochMs(seconds) {
    return typeof seconds === "number" && Number.isFinite(seconds) ? seconds * 1000 : null;
  }

  function pad2(n) {
    return String(n).padStart(2, "0");
  }

  function fmtDuration(ms) {
    if (ms === null || ms === undefined || !Number.isFinite(ms)) return "—";
    if (ms < 0) ms = 0;
    if (ms < 1000) return Math.round(ms) + "ms";
    const s = ms / 1000;
    if (s < 60) return s.toFixed(s < 10 ? 1 : 0) + "s";
    const total = Math.floor(s);
    const d = Math.floor(total / 86400);
    const h = Math.floor((total % 86400) / 3600);
    const m = Math.floor((total % 3600) / 60);
    if (d > 0) return d + "d " + pad2(h) + "h";
    if (h > 0) return h + "h " + pad2(m) + "m";
    return m + "m " + pad2(total % 60) + "s";
  }

  function fmtAgo(ms) {
    if (ms === null) return "—";
    const delta = nowServerMs() - ms;
    if (delta < 5000) return "just now";
    return fmtWhole(delta) + " ago";
  }

  // Like fmtDuration, without sub-second precision (for ages).
  function fmtWhole(ms) {
    return fmtDuration(Math.max(1000, ms)).replace(/\.\d/, "");
  }

  function fmtClock(ms) {
    if (ms === null) return "";
    const d = new Date(ms);
    return d.toLocaleString(undefined, { hour12: false });
  }

  function fmtGiB(bytes) {
    if (typeof bytes !== "number" || !Number.isFinite(bytes)) return null;
    return (bytes / 1073741824).toFixed(1);
  }

  function shortId(id) {
    const text = String(id || "");
    return text.length > 8 ? text.slice(0, 8) : text;
  }

  function transitionsText(transitions) {
    if (!Array.isArray(transitions) || transitions.length === 0) return "no transitions recorded";
    return transitions
      .slice(-8)
      .map((t) => fmtClock(epochMs(t.at)) + "  " + (t.from || "?") + " → " + (t.to || "?"))
      .join("\n");
  }

  function safeHref(url) {
    if (!url) return null;
    try {
      const parsed = new URL(String(url), location.href);
      return parsed.protocol === "http:" || parsed.protocol === "https:" ? parsed.href : null;
    } catch (err) {
      return null;
    }
  }

  // ---------------------------------------------------------------- API key

  function getKey() {
    try {
      return localStorage.getItem(KEY_STORAGE) || "";
    } catch (err) {
      return "";
    }
  }

  function storeKey(key) {
    try {
      if (key) localStorage.setItem(KEY_STORAGE, key);
      else localStorage.removeItem(KEY_STORAGE);
    } catch (err) {
      notify("error", "Cannot store the key: " + err.message);
    }
  }

  function onKeySave(event) {
    event.preventDefault();
    const key = dom.keyInput.value.trim();
    if (!key) {
      notify("error", "Enter an API key first.");
      dom.keyInput.focus();
      return;
    }
    storeKey(key);
    dom.keyInput.value = "";
    resetData();
    reconnectNow();
  }

  function onKeyForget() {
    storeKey("");
    dom.keyInput.value = "";
    resetData();
    reconnectNow();
  }

  // ---------------------------------------------------------------- notices

  function notify(kind, text) {
    for (const existing of dom.notices.querySelectorAll(".notice-text")) {
      if (existing.textContent === text) existing.parentNode.remove();
    }
    const box = el("div", "notice notice-" + kind);
    box.setAttribute("role", kind === "error" ? "alert" : "status");
    box.appendChild(el("span", "notice-text", text));
    const close = el("button", "notice-close", "×");
    close.type = "button";
    close.title = "Dismiss";
    close.addEventListener("click", () => box.remove());
    box.appendChild(close);
    dom.notices.appendChild(box);
    while (dom.notices.children.length > 4) dom.notices.firstChild.remove();
    setTimeout(() => box.remove(), kind === "error" ? 15000 : 5000);
  }

  // ---------------------------------------------------------------- connection

  function liveUrl() {
    return (location.protocol === "https:" ? "wss:" : "ws:") + "//" + location.host + LIVE_PATH;
  }

  function setConn(status) {
    state.conn.status = status;
    state.dirty.header = true;
    scheduleRender();
  }

  function connect() {
    clearTimeout(state.conn.timer);
    state.conn.timer = 0;
    setConn("connecting");
    let ws;
    try {
      ws = new WebSocket(liveUrl());
    } catch (err) {
      scheduleReconnect();
      return;
    }
    state.conn.ws = ws;
    ws.addEventListener("open", () => {
      if (state.conn.ws !== ws) return;
      const key = getKey();
      if (key) ws.send(JSON.stringify({ type: "auth", token: key }));
    });
    ws.addEventListener("message", (event) => {
      if (state.conn.ws !== ws) return;
      handleMessage(event.data);
    });
    ws.addEventListener("close", (event) => {
      if (state.conn.ws !== ws) return;
      state.conn.ws = null;
      if (event.code === 4401) {
        setConn("unauthorized");
        dom.keyInput.focus();
      } else {
        scheduleReconnect();
      }
    });
  }

  function scheduleReconnect() {
    const base = Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * 2 ** state.conn.attempt);
    const delay = Math.min(BACKOFF_MAX_MS, base * (0.8 + Math.random() * 0.4));
    state.conn.attempt += 1;
    state.conn.retryAt = Date.now() + delay;
    clearTimeout(state.conn.timer);
    state.conn.timer = setTimeout(connect, delay);
    setConn("reconnecting");
  }

  function reconnectNow() {
    const old = state.conn.ws;
    state.conn.ws = null;
    state.conn.attempt = 0;
    if (old) old.close(1000, "reconnect");
    connect();
  }

  // ---------------------------------------------------------------- messages

  function handleMessage(raw) {
    let msg;
    try {
      msg = JSON.parse(raw);
    } catch (err) {
      console.warn("comfyfleet: unparsable message", err);
      return;
    }
    state.lastMessageAt = Date.now();
    switch (msg && msg.type) {
      case "snapshot": applySnapshot(msg); break;
      case "job": if (msg.job) upsertJob(msg.job, true); break;
      case "progress": applyProgress(msg.job_id, msg.progress); break;
      case "fleet": applyFleet(msg); break;
      case "error":
        notify("error", "Server: " + (msg.code || "error") + (msg.message ? " — " + msg.message : ""));
        break;
      default: break;
    }
  }

  function syncClock(at) {
    const ms = epochMs(at);
    if (ms !== null) state.skewMs = ms - Date.now();
  }

  function applySnapshot(msg) {
    syncClock(msg.at);
    state.role = msg.role || null;
    state.owner = msg.owner || null;
    // Counts come to an admin only: they are the whole deployment's, and the store has no
    // cheap count of one owner's jobs. A user's page hides the tiles rather than count from
    // the jobs it happens to see change.
    state.counts = msg.counts && typeof msg.counts === "object" ? msg.counts : null;
    state.fleet = msg.fleet || null;
    state.active.clear();
    state.finished.clear();
    for (const job of msg.jobs || []) upsertJob(job, false);
    sortFinished();
    state.conn.attempt = 0;
    state.conn.status = "live";
    markAllDirty();
  }

  // Inserts or moves a job; `live` adjusts the count tiles for status changes.
  function upsertJob(job, live) {
    if (!job || !job.id) return;
    const previous = state.active.get(job.id) || state.finished.get(job.id);
    if (live && (!previous || previous.status !== job.status)) {
      if (previous) bumpCount(previous.status, -1);
      bumpCount(job.status, 1);
    }
    if (ACTIVE_STATUSES.has(job.status)) {
      state.finished.delete(job.id);
      state.active.set(job.id, job);
    } else {
      state.active.delete(job.id);
      state.progressDirty.delete(job.id);
      state.finished.set(job.id, job);
      if (live) sortFinished();
      state.dirty.finished = true;
    }
    if (job.id === state.detail.id) state.dirty.detail = true;
    state.dirty.active = true;
    scheduleRender();
  }

  function bumpCount(status, delta) {
    if (!status || !state.counts) return;
    state.counts[status] = Math.max(0, (state.counts[status] || 0) + delta);
    state.dirty.tiles = true;
  }

  function sortFinished() {
    const jobs = Array.from(state.finished.values());
    const at = (j) => isoMs(j.completed_at) || isoMs(j.created_at) || 0;
    jobs.sort((a, b) => at(b) - at(a));
    state.finished = new Map(jobs.slice(0, MAX_FINISHED).map((j) => [j.id, j]));
    state.dirty.finished = true;
  }

  function applyProgress(jobId, progress) {
    const job = state.active.get(jobId);
    if (!job || !progress) return;
    job.progress = progress;
    state.progressDirty.add(jobId);
    if (jobId === state.detail.id) state.dirty.detail = true;
    scheduleProgressRender();
  }

  function applyFleet(msg) {
    syncClock(msg.at);
    if (msg.counts) state.counts = msg.counts;
    state.fleet = { backends: msg.backends || [], workflow_breakers: msg.workflow_breakers || [] };
    state.dirty.fleet = true;
    state.dirty.tiles = true;
    scheduleRender();
  }

  function resetData() {
    closeDetail(); // another key may not see this job
    state.role = null;
    state.owner = null;
    state.counts = {};
    state.fleet = null;
    state.active.clear();
    state.finished.clear();
    markAllDirty();
  }

  function markAllDirty() {
    for (const part of Object.keys(state.dirty)) state.dirty[part] = true;
    scheduleRender();
  }

  // ---------------------------------------------------------------- REST actions

  async function apiCall(method, path, body) {
    const headers = { Accept: "application/json" };
    const key = getKey();
    if (key) headers.Authorization = "Bearer " + key;
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const response = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      credentials: "same-origin",
    });
    let data = null;
    try {
      data = await response.json();
    } catch (err) {
      data = null;
    }
    if (!response.ok) {
      const error = data && data.error;
      const code = (error && error.code) || "http_" + response.status;
      const message = (error && error.message) || response.statusText || "request failed";
      throw new Error(code + ": " + message);
    }
    return data;
  }

  // A plain link carries no Authorization header: with a key set, fetch the output with it and
  // hand the browser the bytes as a download.
  async function downloadWithKey(event, href, name) {
    const key = getKey();
    if (!key) return;
    event.preventDefault();
    try {
      const response = await fetch(href, { headers: { Authorization: "Bearer " + key } });
      if (!response.ok) throw new Error("HTTP " + response.status);
      const url = URL.createObjectURL(await response.blob());
      const link = document.createElement("a");
      link.href = url;
      link.download = name;
      document.body.appendChild(link);
      link.click();
      link.remove();
      setTimeout(() => URL.revokeObjectURL(url), 60000);
    } catch (err) {
      notify("error", "download of " + name + " failed — " + err.message);
    }
  }

  async function runAction(actionKey, label, call, onSuccess) {
    if (state.pending.has(actionKey)) return;
    state.pending.add(actionKey);
    markActionDirty();
    try {
      const data = await call();
      if (data) onSuccess(data);
    } catch (err) {
      notify("error", label + " failed — " + err.message);
    } finally {
      state.pending.delete(actionKey);
      markActionDirty();
    }
  }

  function markActionDirty() {
    state.dirty.fleet = true;
    state.dirty.active = true;
    scheduleRender();
  }

  const TARGET_VERBS = { active: "Enable", draining: "Drain", disabled: "Disable" };

  function setBackendState(name, target) {
    const path = "/api/v2/backends/" + encodeURIComponent(name);
    runAction("backend:" + name, TARGET_VERBS[target] + " " + name,
      () => apiCall("PATCH", path, { state: target }),
      (backend) => {
        if (!state.fleet || !backend.name) return;
        state.fleet.backends = state.fleet.backends.map((b) => (b.name === backend.name ? backend : b));
        state.dirty.fleet = true;
        scheduleRender();
      });
  }

  function cancelJob(job) {
    if (!window.confirm("Cancel job " + job.id + "?")) return;
    const path = "/api/v2/jobs/" + encodeURIComponent(job.id) + "/cancel";
    runAction("job:" + job.id, "Cancel " + shortId(job.id),
      () => apiCall("POST", path),
      (updated) => upsertJob(updated, true));
  }

  // ---------------------------------------------------------------- rendering

  function scheduleRender() {
    if (!state.frame) state.frame = requestAnimationFrame(render);
  }

  // Progress can arrive hundreds of times a second; paint it at a calmer pace.
  function scheduleProgressRender() {
    if (state.frame || state.progressTimer) return;
    const wait = state.progressRenderedAt + PROGRESS_MIN_INTERVAL_MS - performance.now();
    if (wait <= 0) {
      scheduleRender();
      return;
    }
    state.progressTimer = setTimeout(() => {
      state.progressTimer = 0;
      scheduleRender();
    }, wait);
  }

  function render() {
    state.frame = 0;
    clearTimeout(state.progressTimer);
    state.progressTimer = 0;
    const d = state.dirty;
    if (d.header) renderHeader();
    if (d.tiles) renderTiles();
    if (d.fleet) renderFleet();
    if (d.active || state.progressDirty.size) {
      renderActive();
      state.progressRenderedAt = performance.now();
    }
    if (d.finished) renderFinished();
    if (d.detail) renderDetail();
    else if (d.detailClock && detailJob()) renderDetailTimes(state.detail.job);
    for (const part of Object.keys(d)) d[part] = false;
  }

  function renderHeader() {
    const c = state.conn;
    let text = c.status;
    if (c.status === "reconnecting") {
      const secs = Math.max(0, Math.ceil((c.retryAt - Date.now()) / 1000));
      text = "reconnecting in " + secs + "s";
    } else if (c.status === "unauthorized") {
      text = "unauthorized — enter an API key";
    }
    setText(dom.connText, text);
    setClass(dom.conn, "conn conn-" + c.status);
    setClass(dom.main, c.status === "live" ? "" : "stale");

    dom.identity.hidden = !state.role;
    if (state.role) {
      setBadge(dom.identityRole, state.role);
      setText(dom.identityOwner, state.owner || "");
      setTitle(dom.identity, "Signed in as " + (state.owner || "?") + " (" + state.role + ")");
    }
    const hasKey = Boolean(getKey());
    dom.keyInput.placeholder = hasKey ? "key saved — type to replace" : "API key";
    dom.keyForget.disabled = !hasKey;

    const last = state.lastMessageAt ? "last message " + fmtClock(state.lastMessageAt) : "no messages yet";
    setText(dom.footer, last + (state.skewMs && Math.abs(state.skewMs) > 2000
      ? " · server clock offset " + fmtDuration(Math.abs(state.skewMs)) : ""));
  }

  function renderTiles() {
    dom.tiles.hidden = state.counts === null;
    if (state.counts === null) return;
    if (!dom.tiles.childElementCount) {
      for (const status of COUNT_ORDER) {
        const tile = el("div", "tile tone-" + (TONES[status] || "neutral"));
        tile.dataset.status = status;
        tile.appendChild(el("div", "tile-value", "—"));
        tile.appendChild(el("div", "tile-label", status));
        dom.tiles.appendChild(tile);
      }
    }
    for (const tile of dom.tiles.children) {
      const value = state.counts[tile.dataset.status];
      setText(tile.firstChild, typeof value === "number" ? value.toLocaleString() : "—");
    }
  }

  // Keeps one <tr> per key, in order; rows are updated in place, not rebuilt.
  function syncRows(tbody, cache, items, keyOf, create, update) {
    const seen = new Set();
    let prev = null;
    for (const item of items) {
      const key = keyOf(item);
      seen.add(key);
      let row = cache.get(key);
      if (!row) {
        row = create(item);
        cache.set(key, row);
      }
      update(row, item);
      const expected = prev ? prev.nextSibling : tbody.firstChild;
      if (row.tr !== expected) tbody.insertBefore(row.tr, expected);
      prev = row.tr;
    }
    for (const [key, row] of cache) {
      if (!seen.has(key)) {
        row.tr.remove();
        cache.delete(key);
      }
    }
  }

  function makeRow(names) {
    const tr = el("tr");
    const cells = {};
    for (const name of names) {
      const td = el("td", "col-" + name);
      tr.appendChild(td);
      cells[name] = td;
    }
    return { tr, cells, sig: {} };
  }

  function makeBar(className) {
    const base = "bar" + (className ? " " + className : "");
    const bar = el("div", base);
    const fill = el("div", "bar-fill");
    bar.appendChild(fill);
    return { bar, fill, base };
  }

  function setBar(ref, fraction, tone) {
    // A transform keeps frequent progress updates on the compositor (no repaint).
    const scale = "scaleX(" + Math.max(0, Math.min(1, Number(fraction) || 0)).toFixed(3) + ")";
    if (ref.fill.style.transform !== scale) ref.fill.style.transform = scale;
    setClass(ref.bar, ref.base + " tone-" + tone);
  }

  // Rebuilds a small node group only when its signature changes.
  function rebuildIf(row, slot, signature, build) {
    if (row.sig[slot] === signature) return;
    row.sig[slot] = signature;
    build();
  }

  function chips(td, values, className) {
    td.replaceChildren();
    for (const value of values) td.appendChild(el("span", className, value));
  }

  // ----- fleet

  function renderFleet() {
    const fleet = state.fleet;
    dom.fleetSection.hidden = !fleet;
    if (!fleet) {
      syncRows(dom.fleetBody, rows.fleet, [], null, null, null);
      return;
    }
    const backends = fleet.backends || [];
    syncRows(dom.fleetBody, rows.fleet, backends, (b) => b.name, createBackendRow, updateBackendRow);
    dom.fleetEmpty.hidden = backends.length > 0;

    const used = backends.reduce((sum, b) => sum + (b.load || 0), 0);
    const capacity = backends.reduce((sum, b) => sum + (b.admin_state !== "disabled" ? b.capacity || 0 : 0), 0);
    const up = backends.filter((b) => b.state === "healthy" || b.state === "degraded").length;
    setText(dom.fleetSummary, up + "/" + backends.length + " up · " + used + "/" + capacity + " slots busy");

    const breakers = fleet.workflow_breakers || [];
    dom.wfSection.hidden = breakers.length === 0;
    syncRows(dom.wfBody, rows.wf, breakers, (w) => w.job_type + "\u0000" + w.workflow + "\u0000" + (w.owner ?? ""),
      createBreakerRow, updateBreakerRow);
  }

  function createBackendRow() {
    const row = makeRow(["name", "state", "load", "breaker", "latency", "vram", "models", "tags", "actions"]);
    const c = row.cells;
    row.name = el("div", "name-main");
    row.url = el("div", "name-sub");
    c.name.append(row.name, row.url);
    row.state = el("span");
    c.state.appendChild(row.state);
    row.loadBar = makeBar();
    row.loadText = el("span", "bar-label");
    c.load.append(row.loadBar.bar, row.loadText);
    row.breaker = el("span");
    c.breaker.appendChild(row.breaker);
    c.latency.classList.add("num");
    row.vramBar = makeBar();
    row.vramText = el("span", "bar-label");
    c.vram.append(row.vramBar.bar, row.vramText);
    c.actions.classList.add("actions-col");
    return row;
  }

  function updateBackendRow(row, b) {
    const c = row.cells;
    const health = b.health || {};
    const breaker = b.breaker || {};

    setText(row.name, b.name);
    setText(row.url, b.url || "");
    setTitle(c.name, [b.url, "source: " + (b.source || "?"),
      b.added_at ? "added " + fmtClock(epochMs(b.added_at)) : "",
      b.changed_at ? "changed " + fmtClock(epochMs(b.changed_at)) : ""].filter(Boolean).join("\n"));

    const adminNote = b.admin_state && b.admin_state !== "active" && b.admin_state !== b.state
      ? " (" + b.admin_state + ")" : "";
    setBadge(row.state, b.state, adminNote);
    setTitle(row.state, health.error ? "error: " + health.error : "admin state: " + (b.admin_state || "?"));

    const capacity = b.capacity || 0;
    const load = b.load || 0;
    const loadFrac = capacity ? load / capacity : 0;
    setBar(row.loadBar, loadFrac, loadFrac >= 1 ? "warn" : "info");
    setText(row.loadText, load + "/" + capacity);

    const failures = breaker.failures ? " · " + breaker.failures : "";
    setBadge(row.breaker, breaker.status || "closed", failures);
    setTitle(row.breaker, "breaker " + (breaker.status || "closed") + ", " + (breaker.failures || 0) + " failures"
      + (breaker.opened_at ? "\nopened " + fmtClock(epochMs(breaker.opened_at)) : "")
      + "\n\n" + transitionsText(breaker.transitions));

    const latency = typeof health.latency_ms === "number" ? Math.round(health.latency_ms) + " ms" : "—";
    setText(c.latency, latency);
    setTitle(c.latency, [
      health.checked_at ? "checked " + fmtAgo(epochMs(health.checked_at)) : "never checked",
      "queue: " + (health.queue_running ?? "?") + " running, " + (health.queue_pending ?? "?") + " pending",
      health.consecutive_failures ? health.consecutive_failures + " consecutive failures" : "",
      health.error ? "error: " + health.error : "",
    ].filter(Boolean).join("\n"));

    const free = fmtGiB(health.vram_free);
    const total = fmtGiB(health.vram_total);
    row.vramBar.bar.hidden = !total;
    if (total) {
      const usedFrac = health.vram_total ? 1 - health.vram_free / health.vram_total : 0;
      setBar(row.vramBar, usedFrac, usedFrac > 0.9 ? "warn" : "neutral");
      setText(row.vramText, (free ?? "?") + " / " + total + " GiB");
    } else {
      setText(row.vramText, "—");
    }

    const models = Array.isArray(b.warm_models) ? b.warm_models : [];
    rebuildIf(row, "models", models.join("\n"), () => {
      chips(c.models, models.slice(0, 2), "chip chip-model");
      if (models.length > 2) c.models.appendChild(el("span", "more", "+" + (models.length - 2)));
      setTitle(c.models, models.join("\n"));
    });

    const tags = Array.isArray(b.tags) ? b.tags : [];
    rebuildIf(row, "tags", tags.join("\n"), () => chips(c.tags, tags, "chip"));

    const busy = state.pending.has("backend:" + b.name);
    rebuildIf(row, "actions", (b.admin_state || "") + (busy ? ":busy" : ""), () => {
      c.actions.replaceChildren();
      for (const target of backendTargets(b.admin_state)) {
        const btn = el("button", "btn btn-small" + (target === "disabled" ? " btn-danger" : ""), TARGET_VERBS[target]);
        btn.type = "button";
        btn.disabled = busy;
        btn.title = "Set " + b.name + " to " + target;
        btn.addEventListener("click", () => setBackendState(b.name, target));
        c.actions.appendChild(btn);
      }
    });
  }

  function backendTargets(adminState) {
    if (adminState === "draining") return ["active", "disabled"];
    if (adminState === "disabled") return ["active"];
    return ["draining", "disabled"];
  }

  function createBreakerRow() {
    const row = makeRow(["jobtype", "workflow", "owner", "status", "failures", "changed"]);
    row.status = el("span");
    row.cells.status.appendChild(row.status);
    row.cells.workflow.classList.add("mono");
    row.cells.failures.classList.add("num");
    return row;
  }

  function updateBreakerRow(row, w) {
    const c = row.cells;
    setText(c.jobtype, w.job_type || "—");
    setText(c.workflow, shortId(w.workflow) + (String(w.workflow || "").length > 8 ? "…" : ""));
    setTitle(c.workflow, w.workflow || "");
    setText(c.owner, w.owner || "—");
    setBadge(row.status, w.status);
    setTitle(row.status, transitionsText(w.transitions));
    setText(c.failures, w.failures ?? 0);
    const changed = epochMs(w.changed_at) ?? epochMs(w.opened_at);
    setText(c.changed, fmtAgo(changed));
    setTitle(c.changed, fmtClock(changed));
  }

  // ----- active jobs

  function activeSorted() {
    const jobs = Array.from(state.active.values());
    jobs.sort((a, b) => {
      const byStatus = (ACTIVE_ORDER[a.status] ?? 9) - (ACTIVE_ORDER[b.status] ?? 9);
      if (byStatus) return byStatus;
      if (a.status === "queued" && a.queue_position != null && b.queue_position != null) {
        return a.queue_position - b.queue_position;
      }
      return (isoMs(a.created_at) || 0) - (isoMs(b.created_at) || 0);
    });
    return jobs;
  }

  function renderActive() {
    if (state.dirty.active) {
      const jobs = activeSorted();
      syncRows(dom.activeBody, rows.active, jobs, (j) => j.id, createActiveRow, updateActiveRow);
      dom.activeEmpty.hidden = jobs.length > 0;
      const running = jobs.filter((j) => j.status === "running").length;
      setText(dom.activeSummary, jobs.length ? running + " running · " + (jobs.length - running) + " waiting" : "");
    } else {
      for (const id of state.progressDirty) {
        const row = rows.active.get(id);
        const job = state.active.get(id);
        if (row && job) updateProgress(row, job);
      }
    }
    state.progressDirty.clear();
  }

  function createActiveRow() {
    const row = makeRow(["id", "type", "status", "backend", "attempt", "progress", "age", "actions"]);
    makeJobRow(row);
    const c = row.cells;
    c.id.classList.add("mono");
    c.attempt.classList.add("num");
    row.status = el("span");
    c.status.appendChild(row.status);
    row.progBar = makeBar("bar-wide");
    row.progPct = el("span", "bar-label num");
    row.progDetail = el("div", "progress-detail");
    const line = el("div", "progress-line");
    line.append(row.progBar.bar, row.progPct);
    c.progress.append(line, row.progDetail);
    c.actions.classList.add("actions-col");
    return row;
  }

  function updateActiveRow(row, job) {
    const c = row.cells;
    markRow(row, job);
    setText(c.id, shortId(job.id));
    setTitle(c.id, job.id + (job.phase ? "\nphase: " + job.phase : "") + (job.priority ? "\npriority: " + job.priority : ""));
    setText(c.type, job.type || "—");
    setBadge(row.status, job.status);
    setTitle(row.status, job.phase ? "phase: " + job.phase : "");
    setText(c.backend, job.backend || "—");
    setText(c.attempt, (job.attempt || 0) + "/" + (job.max_attempts || "?"));
    setTitle(c.attempt, attemptsText(job));
    updateProgress(row, job);

    const created = isoMs(job.created_at);
    const started = isoMs(job.started_at);
    if (job.status === "queued") {
      const pos = job.queue_position != null ? " · #" + (job.queue_position + 1) : "";
      setText(c.age, "waiting " + fmtWhole(nowServerMs() - created) + pos);
    } else {
      setText(c.age, "started " + fmtAgo(started ?? created));
    }
    setTitle(c.age, "created " + fmtClock(created) + (started ? "\nstarted " + fmtClock(started) : ""));

    const busy = state.pending.has("job:" + job.id) || job.status === "canceling";
    rebuildIf(row, "actions", job.status + (busy ? ":busy" : ""), () => {
      c.actions.replaceChildren();
      const btn = el("button", "btn btn-small btn-danger", job.status === "canceling" ? "Canceling…" : "Cancel");
      btn.type = "button";
      btn.disabled = busy;
      btn.addEventListener("click", () => cancelJob(state.active.get(job.id) || job));
      c.actions.appendChild(btn);
    });
  }

  function updateProgress(row, job) {
    const p = job.progress;
    row.progBar.bar.hidden = job.status === "queued" && !p;
    if (!p || typeof p.value !== "number") {
      setBar(row.progBar, 0, "neutral");
      setText(row.progPct, job.status === "queued" ? "" : "—");
      setText(row.progDetail, "");
      return;
    }
    setBar(row.progBar, p.value, job.status === "canceling" ? "warn" : "info");
    setText(row.progPct, Math.floor(Math.max(0, Math.min(1, p.value)) * 100) + "%");
    const parts = [];
    const steps = p.steps ?? p.total_steps;
    if (p.step != null && steps != null) parts.push("step " + p.step + "/" + steps);
    if (p.nodes_done != null && p.nodes_total != null) parts.push("node " + p.nodes_done + "/" + p.nodes_total);
    if (p.message) parts.push(String(p.message));
    setText(row.progDetail, parts.join(" · "));
    setTitle(row.cells.progress, Object.entries(p)
      .map(([k, v]) => k + ": " + (typeof v === "object" ? JSON.stringify(v) : v)).join("\n"));
  }

  function attemptsText(job) {
    const attempts = Array.isArray(job.attempts) ? job.attempts : [];
    if (!attempts.length) return "no attempts yet";
    return attempts.map((a, i) => "#" + (i + 1) + " " + (a.backend || "?")
      + (a.failure_class ? " — " + a.failure_class : "")
      + (a.message ? ": " + a.message : "")).join("\n");
  }

  // ----- finished jobs

  function renderFinished() {
    const jobs = Array.from(state.finished.values());
    syncRows(dom.finishedBody, rows.finished, jobs, (j) => j.id, createFinishedRow, updateFinishedRow);
    dom.finishedEmpty.hidden = jobs.length > 0;
    const failed = jobs.filter((j) => j.status === "failed").length;
    setText(dom.finishedSummary, jobs.length ? "last " + jobs.length + (failed ? " · " + failed + " failed" : "") : "");
  }

  function createFinishedRow() {
    const row = makeRow(["id", "type", "status", "backend", "attempts", "duration", "finished", "error", "outputs"]);
    makeJobRow(row);
    const c = row.cells;
    c.id.classList.add("mono");
    c.attempts.classList.add("num");
    c.duration.classList.add("num");
    row.status = el("span");
    c.status.appendChild(row.status);
    return row;
  }

  function updateFinishedRow(row, job) {
    const c = row.cells;
    markRow(row, job);
    setText(c.id, shortId(job.id));
    setTitle(c.id, job.id);
    setText(c.type, job.type || "—");
    setBadge(row.status, job.status);
    setText(c.backend, job.backend || "—");
    setText(c.attempts, (job.attempt || 0) + "/" + (job.max_attempts || "?"));
    setTitle(c.attempts, attemptsText(job));

    const started = isoMs(job.started_at);
    const completed = isoMs(job.completed_at);
    setText(c.duration, started !== null && completed !== null ? fmtDuration(completed - started) : "—");
    setText(c.finished, fmtAgo(completed));
    setTitle(c.finished, fmtClock(completed));

    const err = job.error;
    rebuildIf(row, "error", err ? JSON.stringify([err.code, err.message, err.details && err.details.failure_class]) : "",
      () => renderError(c.error, err));
    const outputs = Array.isArray(job.outputs) ? job.outputs : [];
    rebuildIf(row, "outputs", outputs.map((o) => o.url || o.id).join("\n"), () => renderOutputs(c.outputs, outputs));
  }

  function renderError(td, err) {
    td.replaceChildren();
    if (!err) return;
    const failureClass = err.details && err.details.failure_class;
    td.appendChild(el("span", "error-code mono", err.code || "error"));
    if (failureClass) td.appendChild(el("span", "chip chip-bad", failureClass));
    if (err.message) td.appendChild(el("span", "error-message", err.message));
    td.title = [err.code, err.message, err.class_type ? "node " + (err.node_id || "?") + " (" + err.class_type + ")" : "",
      err.details && err.details.exception_type ? "exception: " + err.details.exception_type : ""]
      .filter(Boolean).join("\n");
  }

  function renderOutputs(td, outputs) {
    td.replaceChildren();
    if (!outputs.length) {
      td.appendChild(el("span", "muted", "—"));
      return;
    }
    td.appendChild(el("span", "count-pill", outputs.length));
    outputs.slice(0, 3).forEach((o, i) => {
      const label = o.name || "output " + (i + 1);
      const href = safeHref(o.url);
      const node = href ? el("a", "output-link", label) : el("span", "output-link muted", label);
      if (href) {
        node.href = href;
        node.target = "_blank";
        node.rel = "noopener noreferrer";
        node.addEventListener("click", (event) => downloadWithKey(event, href, label));
      }
      node.title = [o.name, o.content_type, typeof o.size_bytes === "number"
        ? (o.size_bytes / 1048576).toFixed(2) + " MiB" : "", o.node_id ? "node " + o.node_id : ""]
        .filter(Boolean).join(" · ");
      td.appendChild(node);
    });
    if (outputs.length > 3) td.appendChild(el("span", "more", "+" + (outputs.length - 3)));
  }

  // ---------------------------------------------------------------- job detail drawer

  function detailJob() {
    const id = state.detail.id;
    if (!id) return null;
    const live = state.active.get(id) || state.finished.get(id);
    if (live) state.detail.job = live;
    state.detail.gone = !live;
    return state.detail.job;
  }

  function openDetail(id, opener) {
    if (state.detail.id === id) return;
    const wasOpen = Boolean(state.detail.id);
    revokeThumbs();
    state.detail.id = id;
    state.detail.job = state.active.get(id) || state.finished.get(id) || null;
    state.detail.opener = opener || null;
    state.detail.sig = {};
    markSelectionDirty();
    if (!wasOpen) {
      dom.drawer.hidden = false;
      dom.drawer.focus({ preventScroll: true });
    }
  }

  function closeDetail() {
    if (!state.detail.id) return;
    const opener = state.detail.opener;
    const hadFocus = dom.drawer.contains(document.activeElement);
    revokeThumbs();
    state.detail.id = null;
    state.detail.job = null;
    state.detail.opener = null;
    dom.drawer.hidden = true;
    markSelectionDirty();
    if (hadFocus && opener && opener.isConnected) opener.focus({ preventScroll: true });
  }

  function markSelectionDirty() {
    state.dirty.detail = true;
    state.dirty.active = true;
    state.dirty.finished = true;
    scheduleRender();
  }

  // Row clicks open the drawer; buttons, links and text selections keep their own meaning.
  function onRowClick(event) {
    if (event.target.closest("button, a, input")) return;
    if (String(window.getSelection() || "") !== "") return;
    const tr = event.target.closest("tr[data-job-id]");
    if (!tr) return;
    if (state.detail.id === tr.dataset.jobId) closeDetail();
    else openDetail(tr.dataset.jobId, tr);
  }

  function onRowKey(event) {
    if (event.key !== "Enter" && event.key !== " ") return;
    const tr = event.target;
    if (!tr.matches || !tr.matches("tr[data-job-id]")) return;
    event.preventDefault();
    openDetail(tr.dataset.jobId, tr);
  }

  function onDocumentKey(event) {
    if (event.key === "Escape" && state.detail.id && !event.defaultPrevented) closeDetail();
  }

  // Job rows open the drawer: clickable and reachable with the keyboard.
  function makeJobRow(row) {
    row.tr.className = "job-row";
    row.tr.tabIndex = 0;
  }

  function markRow(row, job) {
    if (row.tr.dataset.jobId !== job.id) row.tr.dataset.jobId = job.id;
    const selected = job.id === state.detail.id;
    if (row.tr.classList.contains("row-selected") !== selected) row.tr.classList.toggle("row-selected", selected);
  }

  async function copyDetailId() {
    const id = state.detail.id;
    if (!id) return;
    let copied = false;
    try {
      if (navigator.clipboard && window.isSecureContext) {
        await navigator.clipboard.writeText(id);
        copied = true;
      }
    } catch (err) {
      copied = false;
    }
    if (!copied) copied = copyBySelection(dom.drawerId);
    setText(dom.drawerCopy, copied ? "Copied" : "Copy");
    if (!copied) notify("error", "Copy is not available here — the id is selected, press Ctrl+C.");
    clearTimeout(state.detail.copyTimer);
    state.detail.copyTimer = setTimeout(() => setText(dom.drawerCopy, "Copy"), 1500);
  }

  // Fallback for plain-http pages, where navigator.clipboard does not exist.
  function copyBySelection(node) {
    const range = document.createRange();
    range.selectNodeContents(node);
    const selection = window.getSelection();
    selection.removeAllRanges();
    selection.addRange(range);
    try {
      return document.execCommand("copy");
    } catch (err) {
      return false;
    }
  }

  function renderDetail() {
    const job = detailJob();
    if (!job) {
      closeDetail();
      return;
    }
    dom.drawer.hidden = false;
    renderDetailHead(job);
    renderDetailOverview(job);
    renderDetailTimes(job);
    renderDetailProgress(job);
    renderDetailAttempts(job);
    renderDetailError(job);
    renderDetailOutputs(job);
  }

  // Rebuilds one drawer section only when its signature changes.
  function detailIf(slot, signature, build) {
    if (state.detail.sig[slot] === signature) return;
    state.detail.sig[slot] = signature;
    build();
  }

  function renderDetailHead(job) {
    setText(dom.drawerId, job.id);
    setBadge(dom.drawerStatus, job.status);
    setText(dom.drawerType, job.type || "");
    dom.drawerType.hidden = !job.type;
    dom.drawerGone.hidden = !state.detail.gone;
  }

  // A <dl> from [label, value, className?] pairs; empty values are left out.
  function fillKv(dl, pairs) {
    dl.replaceChildren();
    for (const [label, value, className] of pairs) {
      if (value === undefined || value === null || value === "") continue;
      dl.appendChild(el("dt", null, label));
      const dd = el("dd", className || null);
      if (value instanceof Node) dd.appendChild(value);
      else dd.textContent = String(value);
      dl.appendChild(dd);
    }
  }

  function badgeNode(value) {
    const node = el("span");
    setBadge(node, value);
    return node;
  }

  function renderDetailOverview(job) {
    detailIf("overview", JSON.stringify([job.status, job.phase, job.priority, job.backend, job.attempt,
      job.max_attempts, job.queue_position]), () => {
      fillKv(dom.drawerOverview, [
        ["Phase", job.phase ? badgeNode(job.phase) : null],
        ["Backend", job.backend || "—"],
        ["Priority", job.priority ?? "—"],
        ["Attempt", (job.attempt || 0) + " of " + (job.max_attempts || "?")],
        ["Queue position", job.status === "queued" && job.queue_position != null ? "#" + (job.queue_position + 1) : null],
      ]);
    });
    const meta = job.metadata && typeof job.metadata === "object" ? Object.entries(job.metadata) : [];
    detailIf("meta", JSON.stringify(meta), () => {
      dom.drawerMetaSection.hidden = meta.length === 0;
      fillKv(dom.drawerMeta, meta.map(([k, v]) => [k, typeof v === "object" && v !== null ? JSON.stringify(v) : String(v)]));
    });
  }

  function whenText(ms) {
    return ms === null ? null : fmtClock(ms) + "  ·  " + fmtRelative(ms);
  }

  // "5m ago" for the past, "in 6d 23h" for the future (deadlines, retries).
  function fmtRelative(ms) {
    const ahead = ms - nowServerMs();
    return ahead > 5000 ? "in " + fmtWhole(ahead) : fmtAgo(ms);
  }

  function renderDetailTimes(job) {
    const created = isoMs(job.created_at);
    const started = isoMs(job.started_at);
    const completed = isoMs(job.completed_at);
    const m = job.metrics || {};
    let running = null;
    if (started !== null && completed === null && ACTIVE_STATUSES.has(job.status)) {
      running = fmtWhole(nowServerMs() - started) + " so far";
    }
    const pairs = [
      ["Created", whenText(created)],
      ["Started", whenText(started) || (ACTIVE_STATUSES.has(job.status) ? "not yet" : "never")],
      ["Completed", whenText(completed)],
      ["Queue time", typeof m.queue_ms === "number" ? fmtDuration(m.queue_ms) : null],
      ["Execution", typeof m.execution_ms === "number" ? fmtDuration(m.execution_ms) : running],
      ["Expires", whenText(isoMs(job.expires_at))],
    ];
    detailIf("times", JSON.stringify(pairs), () => fillKv(dom.drawerTimes, pairs));
  }

  function renderDetailProgress(job) {
    const p = job.progress;
    dom.drawerProgressSection.hidden = !p;
    if (!p) return;
    if (!state.detail.bar) {
      state.detail.bar = makeBar("bar-wide");
      state.detail.pct = el("span", "bar-label num");
      dom.drawerProgressLine.append(state.detail.bar.bar, state.detail.pct);
    }
    const value = typeof p.value === "number" ? Math.max(0, Math.min(1, p.value)) : 0;
    const tone = job.status === "failed" ? "bad" : job.status === "succeeded" ? "ok"
      : job.status === "canceling" ? "warn" : "info";
    setBar(state.detail.bar, value, tone);
    setText(state.detail.pct, (value * 100).toFixed(value < 1 ? 1 : 0) + "%");
    detailIf("progress", JSON.stringify(p), () => fillKv(dom.drawerProgress, progressPairs(p)));
  }

  function progressPairs(p) {
    const known = new Set(["value", "step", "steps", "total_steps", "nodes_done", "nodes_total",
      "current_node", "current_node_class", "message"]);
    const steps = p.steps ?? p.total_steps;
    const node = [p.current_node, p.current_node_class ? "(" + p.current_node_class + ")" : null]
      .filter((x) => x !== null && x !== undefined && x !== "").join(" ");
    const pairs = [
      ["Value", typeof p.value === "number" ? (p.value * 100).toFixed(1) + "%" : null],
      ["Step", p.step != null ? p.step + (steps != null ? " / " + steps : "") : null],
      ["Nodes", p.nodes_done != null || p.nodes_total ? (p.nodes_done ?? 0) + " / " + (p.nodes_total ?? "?") : null],
      ["Current node", node || null, "mono"],
      ["Message", p.message],
    ];
    for (const [k, v] of Object.entries(p)) {
      if (!known.has(k) && v !== null && v !== undefined) pairs.push([k, typeof v === "object" ? JSON.stringify(v) : v]);
    }
    return pairs;
  }

  function renderDetailAttempts(job) {
    const attempts = Array.isArray(job.attempts) ? job.attempts : [];
    detailIf("attempts", JSON.stringify(attempts), () => {
      dom.drawerAttempts.replaceChildren();
      dom.drawerAttemptsEmpty.hidden = attempts.length > 0;
      setText(dom.drawerAttemptsCount, attempts.length || "");
      dom.drawerAttemptsCount.hidden = !attempts.length;
      attempts.forEach((a, i) => appendAttemptRows(dom.drawerAttempts, a, i));
    });
  }

  // One row per attempt, plus a full-width row for its message when it has one.
  function appendAttemptRows(tbody, a, index) {
    const tr = el("tr", a.message ? "attempt-has-message" : null);
    const started = isoMs(a.started_at);
    const ended = isoMs(a.ended_at);
    const retry = isoMs(a.retry_at);
    tr.appendChild(el("td", "num", a.number ?? index + 1));
    tr.appendChild(el("td", "nowrap", a.backend || "—"));
    tr.appendChild(timeCell(started, a.submitted_at ? "submitted " + fmtClock(isoMs(a.submitted_at)) : ""));
    tr.appendChild(timeCell(ended, started !== null && ended !== null ? "took " + fmtDuration(ended - started) : ""));
    const outcome = el("td");
    outcome.appendChild(a.outcome ? badgeNode(a.outcome) : badgeNode(ended === null ? "running" : "unknown"));
    tr.appendChild(outcome);
    const failure = el("td");
    if (a.failure_class) failure.appendChild(badgeNode(a.failure_class));
    else failure.appendChild(el("span", "muted", "—"));
    tr.appendChild(failure);
    tr.appendChild(timeCell(retry, retry !== null && started !== null && retry > (ended ?? started)
      ? "backoff " + fmtDuration(retry - (ended ?? started)) : ""));
    if (a.prompt_id) tr.title = "prompt " + a.prompt_id;
    tbody.appendChild(tr);
    if (a.message) {
      const msgRow = el("tr", "attempt-message");
      const td = el("td");
      td.colSpan = 7;
      td.appendChild(attemptMessage(String(a.message)));
      msgRow.appendChild(td);
      tbody.appendChild(msgRow);
    }
  }

  // Long ComfyUI messages repeat on every retry: two lines, the rest on click.
  function attemptMessage(text) {
    const box = el("div", "attempt-msg", text);
    box.title = "Click to show all";
    box.addEventListener("click", () => {
      box.classList.toggle("expanded");
      box.title = box.classList.contains("expanded") ? "" : "Click to show all";
    });
    return box;
  }

  function timeCell(ms, title) {
    const td = el("td", "nowrap", ms === null ? "—" : new Date(ms).toLocaleTimeString(undefined, { hour12: false }));
    td.title = [ms === null ? "" : fmtClock(ms), title].filter(Boolean).join("\n");
    return td;
  }

  function renderDetailError(job) {
    const err = job.error;
    dom.drawerErrorSection.hidden = !err;
    detailIf("error", JSON.stringify(err || null), () => {
      dom.drawerError.replaceChildren();
      if (err) buildError(dom.drawerError, err);
    });
  }

  function buildError(box, err) {
    const details = err.details || {};
    const head = el("div", "error-head");
    head.appendChild(el("span", "error-code mono", err.code || "error"));
    if (details.failure_class) head.appendChild(badgeNode(details.failure_class));
    box.appendChild(head);
    if (err.message) box.appendChild(el("p", "error-text", err.message));
    const dl = el("dl", "kv");
    fillKv(dl, [
      ["Node", err.node_id != null || err.class_type
        ? (err.node_id ?? "?") + (err.class_type ? " (" + err.class_type + ")" : "") : null, "mono"],
      ["Exception", details.exception_type, "mono"],
    ]);
    if (dl.childElementCount) box.appendChild(dl);
    const nodeErrors = details.node_errors;
    if (nodeErrors && typeof nodeErrors === "object" && Object.keys(nodeErrors).length) {
      box.appendChild(el("h4", null, "Node errors"));
      box.appendChild(nodeErrorList(nodeErrors));
    }
    if (err.traceback) {
      box.appendChild(el("h4", null, "Traceback"));
      box.appendChild(el("pre", "traceback", err.traceback));
    }
  }

  // ComfyUI: {node: {errors: [{type, message, details}], class_type, dependent_outputs}};
  // our own validation: {node: [{...}]}.
  function nodeErrorList(nodeErrors) {
    const list = el("ul", "node-errors");
    for (const [nodeId, entry] of Object.entries(nodeErrors)) {
      const errors = Array.isArray(entry) ? entry : entry && Array.isArray(entry.errors) ? entry.errors : [entry];
      const item = el("li");
      const title = el("div", "node-errors-node");
      title.appendChild(el("span", "mono", "node " + nodeId));
      if (entry && entry.class_type) title.appendChild(el("span", "muted", " " + entry.class_type));
      if (entry && Array.isArray(entry.dependent_outputs) && entry.dependent_outputs.length) {
        title.appendChild(el("span", "muted", " → blocks " + entry.dependent_outputs.join(", ")));
      }
      item.appendChild(title);
      const inner = el("ul");
      for (const e of errors) inner.appendChild(nodeErrorItem(e));
      item.appendChild(inner);
      list.appendChild(item);
    }
    return list;
  }

  function nodeErrorItem(e) {
    const li = el("li");
    if (!e || typeof e !== "object") {
      li.textContent = JSON.stringify(e);
      return li;
    }
    if (e.type) li.appendChild(el("span", "chip", e.type));
    li.appendChild(el("span", null, e.message || ""));
    const details = typeof e.details === "string" ? e.details : e.details ? JSON.stringify(e.details) : "";
    const received = e.extra_info && e.extra_info.received_value !== undefined
      ? "received " + JSON.stringify(e.extra_info.received_value) : "";
    const more = [details, received].filter(Boolean).join(" · ");
    if (more) li.appendChild(el("span", "node-errors-details mono", more));
    return li;
  }

  // ----- outputs: thumbnails for images (fetched with the key when one is stored), links otherwise

  function renderDetailOutputs(job) {
    const outputs = Array.isArray(job.outputs) ? job.outputs : [];
    const hasKey = Boolean(getKey());
    dom.drawerOutputsSection.hidden = outputs.length === 0;
    detailIf("outputs", job.id + "\n" + hasKey + "\n" + outputs.map((o) => o.url || o.id).join("\n"), () => {
      revokeThumbs();
      dom.drawerThumbs.replaceChildren();
      dom.drawerFiles.replaceChildren();
      setText(dom.drawerOutputsCount, outputs.length || "");
      let thumbs = 0;
      outputs.forEach((o, i) => {
        const href = safeHref(o.url);
        const isImage = String(o.content_type || "").startsWith("image/");
        if (isImage && href && thumbs < MAX_THUMBS) {
          thumbs += 1;
          dom.drawerThumbs.appendChild(thumbNode(o, href, i));
        } else {
          dom.drawerFiles.appendChild(fileNode(o, href, i));
        }
      });
      dom.drawerThumbs.hidden = thumbs === 0;
      dom.drawerFiles.hidden = dom.drawerFiles.childElementCount === 0;
    });
  }

  function outputLabel(o, i) {
    return o.name || "output " + (i + 1);
  }

  function fmtBytes(bytes) {
    if (typeof bytes !== "number" || !Number.isFinite(bytes)) return "";
    if (bytes < 1024) return bytes + " B";
    if (bytes < 1048576) return (bytes / 1024).toFixed(1) + " KiB";
    if (bytes < 1073741824) return (bytes / 1048576).toFixed(1) + " MiB";
    return (bytes / 1073741824).toFixed(2) + " GiB";
  }

  function outputLink(className, href, label) {
    const link = el("a", className);
    link.href = href;
    link.target = "_blank";
    link.rel = "noopener noreferrer";
    link.addEventListener("click", (event) => downloadWithKey(event, href, label));
    return link;
  }

  function thumbNode(o, href, i) {
    const label = outputLabel(o, i);
    const link = outputLink("thumb", href, label);
    link.title = [label, o.content_type, fmtBytes(o.size_bytes), o.node_id ? "node " + o.node_id : ""]
      .filter(Boolean).join(" · ");
    const img = el("img");
    img.alt = label;
    img.decoding = "async";
    img.loading = "lazy";
    img.addEventListener("error", () => link.classList.add("thumb-broken"));
    const frame = el("span", "thumb-frame");
    frame.appendChild(img);
    link.append(frame, el("span", "thumb-name", label), el("span", "thumb-size", fmtBytes(o.size_bytes)));
    loadThumb(img, href);
    return link;
  }

  // An <img> cannot send the bearer key: fetch the bytes with it and show them as a blob: URL.
  async function loadThumb(img, href) {
    const key = getKey();
    if (!key) {
      img.src = href;
      return;
    }
    const gen = state.detail.gen;
    try {
      const response = await fetch(href, { headers: { Authorization: "Bearer " + key } });
      if (!response.ok) throw new Error("HTTP " + response.status);
      const blob = await response.blob();
      if (gen !== state.detail.gen) return; // the drawer closed or moved to another job
      const url = URL.createObjectURL(blob);
      state.detail.blobs.push(url);
      img.src = url;
    } catch (err) {
      if (gen === state.detail.gen) img.closest(".thumb").classList.add("thumb-broken");
    }
  }

  function revokeThumbs() {
    state.detail.gen += 1;
    for (const url of state.detail.blobs) URL.revokeObjectURL(url);
    state.detail.blobs = [];
  }

  function fileNode(o, href, i) {
    const label = outputLabel(o, i);
    const li = el("li");
    const name = href ? outputLink("file-name", href, label) : el("span", "file-name muted", label);
    name.textContent = label;
    li.appendChild(name);
    li.appendChild(el("span", "file-meta", [o.content_type || o.type, fmtBytes(o.size_bytes)].filter(Boolean).join(" · ")));
    return li;
  }

  // ---------------------------------------------------------------- start

  function tick() {
    // Countdown, ages and "x ago" labels move with the clock.
    state.dirty.header = true;
    state.dirty.active = true;
    state.dirty.finished = true;
    if (state.fleet) state.dirty.fleet = true;
    if (state.detail.id) state.dirty.detailClock = true;
    scheduleRender();
  }

  function init() {
    Object.assign(dom, {
      conn: $("conn"), connText: $("conn-text"), main: $("main"),
      identity: $("identity"), identityRole: $("identity-role"), identityOwner: $("identity-owner"),
      keyForm: $("key-form"), keyInput: $("key-input"), keyForget: $("key-forget"),
      notices: $("notices"), tiles: $("tiles"), footer: $("footer-text"),
      fleetSection: $("fleet-section"), fleetBody: $("fleet-body"), fleetEmpty: $("fleet-empty"),
      fleetSummary: $("fleet-summary"), wfSection: $("wf-section"), wfBody: $("wf-body"),
      activeBody: $("active-body"), activeEmpty: $("active-empty"), activeSummary: $("active-summary"),
      finishedBody: $("finished-body"), finishedEmpty: $("finished-empty"), finishedSummary: $("finished-summary"),
      drawer: $("drawer"), drawerClose: $("drawer-close"), drawerCopy: $("drawer-copy"), drawerId: $("drawer-id"),
      drawerStatus: $("drawer-status"), drawerType: $("drawer-type"), drawerGone: $("drawer-gone"),
      drawerOverview: $("drawer-overview"), drawerMetaSection: $("drawer-meta-section"), drawerMeta: $("drawer-meta"),
      drawerTimes: $("drawer-times"), drawerProgressSection: $("drawer-progress-section"),
      drawerProgressLine: $("drawer-progress-line"), drawerProgress: $("drawer-progress"),
      drawerAttempts: $("drawer-attempts"), drawerAttemptsEmpty: $("drawer-attempts-empty"),
      drawerAttemptsCount: $("drawer-attempts-count"), drawerErrorSection: $("drawer-error-section"),
      drawerError: $("drawer-error"), drawerOutputsSection: $("drawer-outputs-section"),
      drawerOutputsCount: $("drawer-outputs-count"), drawerThumbs: $("drawer-thumbs"), drawerFiles: $("drawer-files"),
    });
    dom.keyForm.addEventListener("submit", onKeySave);
    dom.keyForget.addEventListener("click", onKeyForget);
    for (const body of [dom.activeBody, dom.finishedBody]) {
      body.addEventListener("click", onRowClick);
      body.addEventListener("keydown", onRowKey);
    }
    dom.drawerClose.addEventListener("click", closeDetail);
    dom.drawerCopy.addEventListener("click", copyDetailId);
    document.addEventListener("keydown", onDocumentKey);
    window.addEventListener("online", () => {
      if (state.conn.status === "reconnecting") reconnectNow();
    });
    setInterval(tick, 1000);
    render();
    connect();
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
})();
