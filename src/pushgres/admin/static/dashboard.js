/* pushgres dashboard: polls data.json beside this script and draws it.
 *
 * No dependencies and no request to any other host. Every string from the daemon reaches the
 * DOM through textContent (or an attribute value), never as markup.
 *
 * For tests, window.pushgresDashboard holds the number of successful polls (updates), the
 * last JSON (lastData), what the chart drew (charts.sendRate.points/series), and whether the
 * data shown is stale; <body data-ready="1"> marks the first render and data-stale="1" a
 * daemon that stopped answering.
 */
(function () {
  "use strict";

  const POLL_MS = 2000;
  const FETCH_TIMEOUT_MS = 5000;
  const WINDOW_S = 15 * 60;
  const PALETTE = [
    "#2f6fde", "#e0712b", "#23a06f", "#c2418f", "#7d5bd0", "#b8961c", "#1597ad", "#d23f3f",
  ];
  const PLATFORMS = { apns: "APNs", fcm: "FCM" };
  const STATES = { starting: "starting", running: "running", draining: "draining" };
  const OUTCOMES = [
    ["sent", "sent"],
    ["failed", "failed"],
    ["token_invalid", "token invalid"],
    ["expired", "expired"],
    ["suppressed", "suppressed"],
  ];
  const REASONS_SHOWN = 6;
  const CREDENTIAL_WARN_DAYS = 30;
  const CREDENTIAL_DANGER_DAYS = 7;

  const script = document.currentScript;
  const DATA_URL = new URL("data.json", script ? script.src : window.location.href).href;

  const dashboard = {
    updates: 0,
    lastData: null,
    stale: false,
    lastError: null,
    lastOkAt: null,
    charts: { sendRate: { points: 0, series: 0, colors: {} } },
  };
  window.pushgresDashboard = dashboard;

  const colors = new Map();

  function own(table, key) {
    return Object.prototype.hasOwnProperty.call(table, key) ? table[key] : undefined;
  }

  function colorOf(name) {
    if (!colors.has(name)) colors.set(name, PALETTE[colors.size % PALETTE.length]);
    return colors.get(name);
  }

  // --- formatting --------------------------------------------------------------------------

  function isNumber(value) {
    return typeof value === "number" && Number.isFinite(value);
  }

  function fmtInt(value) {
    if (!isNumber(value)) return "\u2013";
    const sign = value < 0 ? "-" : "";
    return sign + String(Math.round(Math.abs(value))).replace(/\B(?=(\d{3})+(?!\d))/g, ",");
  }

  function fmtRate(value) {
    if (!isNumber(value)) return "\u2013";
    if (Math.abs(value) >= 100) return fmtInt(value);
    if (Math.abs(value) >= 10) return value.toFixed(1);
    return value.toFixed(2);
  }

  function fmtCompact(value) {
    if (value >= 1e6) return trimZero((value / 1e6).toFixed(1)) + "M";
    if (value >= 1e3) return trimZero((value / 1e3).toFixed(1)) + "k";
    return trimZero(value.toFixed(value < 10 ? 1 : 0));
  }

  function trimZero(text) {
    return text.replace(/\.0$/, "");
  }

  function fmtPercent(rate) {
    if (!isNumber(rate)) return "\u2013";
    if (rate === 0) return "0%";
    const percent = rate * 100;
    return (percent < 1 ? percent.toFixed(2) : percent.toFixed(1)) + "%";
  }

  function fmtDuration(seconds) {
    if (!isNumber(seconds)) return "\u2013";
    const s = Math.max(0, seconds);
    if (s === 0) return "0 s";
    if (s < 10) return s.toFixed(1) + " s";
    if (s < 60) return Math.floor(s) + " s";
    const minutes = Math.floor(s / 60);
    if (minutes < 60) return minutes + "m " + pad2(Math.floor(s % 60)) + "s";
    const hours = Math.floor(minutes / 60);
    if (hours < 24) return hours + "h " + pad2(minutes % 60) + "m";
    return Math.floor(hours / 24) + "d " + (hours % 24) + "h";
  }

  function pad2(n) {
    return n < 10 ? "0" + n : String(n);
  }

  function fmtClock(ts, withSeconds) {
    const d = new Date(ts * 1000);
    const hm = pad2(d.getHours()) + ":" + pad2(d.getMinutes());
    return withSeconds === false ? hm : hm + ":" + pad2(d.getSeconds());
  }

  function fmtDate(ts) {
    return new Date(ts * 1000).toISOString().slice(0, 10);
  }

  function fmtAgo(seconds) {
    return fmtDuration(seconds) + " ago";
  }

  // --- DOM helpers -------------------------------------------------------------------------

  function $(id) {
    return document.getElementById(id);
  }

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function field(node, name) {
    node.dataset.field = name;
    return node;
  }

  // --- header, banner, side panel ----------------------------------------------------------

  function renderHeader(data) {
    $("version").textContent = "v" + String(data.version);
    const state = own(STATES, data.state) || "unknown";
    const badge = $("state");
    badge.textContent = own(STATES, data.state) ? state : String(data.state);
    badge.className = "badge state-" + state;
    const ready = $("ready");
    ready.textContent = data.ready ? "ready" : "not ready";
    ready.className = "badge " + (data.ready ? "good" : "bad");
    $("uptime").textContent = fmtDuration(data.now - data.started_at);
    $("updated").textContent = "updated " + fmtClock(data.now);
  }

  function renderReadiness(data) {
    const list = $("readiness");
    const items = [];
    const notReady = data.not_ready || {};
    if (notReady.database) items.push(["database", notReady.database]);
    const apps = notReady.apps || {};
    for (const name of Object.keys(apps)) {
      if (apps[name]) items.push([name, apps[name]]);
    }
    if (!items.length) {
      const text = data.ready ? "Database and every app ready." : "Not ready.";
      list.replaceChildren(el("li", data.ready ? "ok" : "problem", text));
      return;
    }
    list.replaceChildren(
      ...items.map(([what, why]) => {
        const item = el("li", "problem");
        const name = el("b", null, what);
        name.title = what;
        item.append(name, el("span", null, why));
        return item;
      })
    );
  }

  function renderConfigErrors(data) {
    const errors = Array.isArray(data.config_errors) ? data.config_errors : [];
    $("config-error-count").textContent = errors.length ? "(" + errors.length + ")" : "";
    const list = $("config-errors");
    if (!errors.length) {
      list.replaceChildren(el("li", "empty", "None recently."));
      return;
    }
    list.replaceChildren(
      ...errors.map((error) => {
        const item = el("li", "config-error");
        const line = el("div", "config-error-head");
        const when = el("time", "when", fmtClock(error.at));
        when.title = fmtAgo(data.now - error.at);
        line.append(
          when,
          el("span", "app", error.app),
          field(el("span", "count", "\u00d7" + fmtInt(error.count)), "count")
        );
        item.append(line, field(el("div", "reason", error.reason), "reason"));
        if (error.hint) item.append(el("div", "hint", error.hint));
        return item;
      })
    );
  }

  function setLink(stale, message) {
    dashboard.stale = stale;
    document.body.dataset.stale = stale ? "1" : "0";
    document.body.classList.toggle("is-stale", stale);
    const link = $("link");
    link.className = "link " + (stale ? "down" : "up");
    const banner = $("banner");
    if (!stale) {
      $("link-text").textContent = "live";
      banner.hidden = true;
      return;
    }
    $("link-text").textContent = "stale";
    let text = "The daemon is not answering (" + message + ").";
    if (dashboard.lastData !== null) {
      // The daemon's clock, as everywhere else on the page; the age is the browser's.
      const ago = (Date.now() - dashboard.lastOkAt) / 1000;
      text += " Showing its data of " + fmtClock(dashboard.lastData.now);
      text += ", received " + fmtAgo(ago) + ".";
    } else {
      text += " No data yet.";
    }
    banner.textContent = text;
    banner.hidden = false;
  }

  // --- app cards ---------------------------------------------------------------------------

  function tile(label, value, name, tone, sub, subName) {
    const node = el("div", "tile" + (tone ? " " + tone : ""));
    node.append(el("span", "label", label), field(el("span", "value", value), name));
    if (sub) {
      const line = el("span", "sub", sub);
      if (subName) field(line, subName);
      node.append(line);
    }
    return node;
  }

  function lastRate(app) {
    const series = Array.isArray(app.sent_per_s) ? app.sent_per_s : [];
    return series.length ? series[series.length - 1][1] : null;
  }

  function credentialTile(credential) {
    const kind = credential && credential.kind ? String(credential.kind).replace(/_/g, " ") : null;
    const days = credential ? credential.days_left : null;
    if (!isNumber(days)) {
      return tile("Credential", kind ? "no expiry" : "\u2013", "credential", null, kind);
    }
    let value;
    if (days <= 0) value = "expired";
    else if (days < 1) value = fmtDuration(days * 86400) + " left";
    else value = Math.floor(days) + (Math.floor(days) === 1 ? " day left" : " days left");
    let tone = null;
    if (days <= CREDENTIAL_DANGER_DAYS) tone = "danger";
    else if (days <= CREDENTIAL_WARN_DAYS) tone = "warn";
    const node = tile("Credential", value, "credential", tone, kind);
    if (isNumber(credential.expires_at)) {
      const when = (days <= 0 ? "since " : "until ") + fmtDate(credential.expires_at);
      node.append(field(el("span", "sub", when), "expires"));
    }
    return node;
  }

  function outcomesBlock(app) {
    const outcomes = app.outcomes || {};
    const keys = OUTCOMES.map(([key]) => key);
    const entries = OUTCOMES.map(([key, label]) => [key, label, outcomes[key] || 0]);
    for (const key of Object.keys(outcomes)) {
      if (!keys.includes(key)) entries.push([key, key.replace(/_/g, " "), outcomes[key] || 0]);
    }
    const total = entries.reduce((sum, entry) => sum + (isNumber(entry[2]) ? entry[2] : 0), 0);
    const block = el("div", "outcomes");
    const bar = el("div", "stack");
    const legend = el("ul", "stack-legend");
    for (const [key, label, count] of entries) {
      const known = keys.includes(key) ? key : "other";
      if (total > 0 && count > 0) {
        const part = el("span", "part o-" + known);
        part.style.width = ((count / total) * 100).toFixed(3) + "%";
        part.title = label + ": " + fmtInt(count);
        bar.append(part);
      }
      const item = el("li", "o-" + known);
      const number = field(el("b", null, fmtInt(count)), "outcome-" + key);
      item.append(el("span", "key"), el("span", "name", label), number);
      legend.append(item);
    }
    if (total === 0) bar.classList.add("empty");
    block.append(bar, legend);
    return block;
  }

  function reasonsBlock(app) {
    const reasons = app.reasons || {};
    const entries = Object.keys(reasons)
      .map((name) => [name, reasons[name]])
      .sort((a, b) => b[1] - a[1] || (a[0] < b[0] ? -1 : 1));
    const block = el("div", "reasons");
    if (!entries.length) {
      block.append(el("div", "empty", "No rejections since start."));
      return block;
    }
    const top = entries[0][1] || 1;
    for (const [name, count] of entries.slice(0, REASONS_SHOWN)) {
      const row = field(el("div", "reason-row"), "reason");
      const meter = el("span", "meter");
      const fill = el("span", "fill");
      fill.style.width = Math.max(2, (count / top) * 100).toFixed(1) + "%";
      meter.append(fill);
      row.append(el("span", "name", name), meter, el("b", "count", fmtInt(count)));
      row.title = name;
      block.append(row);
    }
    if (entries.length > REASONS_SHOWN) {
      block.append(el("div", "more", "+ " + (entries.length - REASONS_SHOWN) + " more"));
    }
    return block;
  }

  function appCard(app, now) {
    const card = el("article", "card app-card");
    card.dataset.app = String(app.name);
    if (app.problem) card.classList.add("has-problem");

    const head = el("div", "card-head");
    const swatch = el("span", "swatch");
    swatch.style.background = colorOf(app.name);
    const title = el("h3", "app-name", app.name);
    const platform = el("span", "platform", own(PLATFORMS, app.platform) || app.platform);
    const rate = el("div", "rate-now");
    const current = field(el("b", null, fmtRate(lastRate(app))), "send-rate");
    rate.append(current, el("span", null, " sends/s"));
    head.append(swatch, title, platform, rate);
    card.append(head);

    if (app.problem) card.append(field(el("div", "problem", app.problem), "problem"));
    const alerts = Array.isArray(app.alerts) ? app.alerts : [];
    if (alerts.length) {
      const list = el("ul", "alerts");
      for (const alert of alerts) list.append(field(el("li", null, alert), "alert"));
      card.append(list);
    }

    const queue = app.queue;
    const connections = app.connections || {};
    const age = queue ? queue.oldest_ready_age_s : null;
    let ageTone = null;
    if (isNumber(age) && age >= 600) ageTone = "danger";
    else if (isNumber(age) && age >= 60) ageTone = "warn";
    const deadRate = app.dead_token_rate;
    let deadTone = null;
    if (isNumber(deadRate) && deadRate >= 0.2) deadTone = "danger";
    else if (isNumber(deadRate) && deadRate >= 0.05) deadTone = "warn";
    let sampled = "no sample yet";
    if (queue && isNumber(queue.sampled_at)) sampled = "sampled " + fmtAgo(now - queue.sampled_at);

    const tiles = el("div", "tiles");
    tiles.append(
      tile("Queue depth", queue ? fmtInt(queue.depth) : "\u2013", "queue-depth", null, sampled),
      tile("Ready rows", queue ? fmtInt(queue.ready) : "\u2013", "queue-ready"),
      tile("Oldest ready", queue ? fmtDuration(age) : "\u2013", "oldest-age", ageTone),
      tile("In flight", fmtInt(app.in_flight), "in-flight"),
      tile(
        "Connections",
        fmtInt(connections.open),
        "connections",
        connections.open === 0 ? "warn" : null,
        "limit " + fmtInt(connections.stream_limit) + " streams"
      ),
      tile(
        "Reconnects",
        fmtInt(connections.reconnects),
        "reconnects",
        null,
        fmtInt(connections.goaways) + (connections.goaways === 1 ? " GOAWAY" : " GOAWAYs"),
        "goaways"
      ),
      tile("Dead tokens", fmtPercent(deadRate), "dead-token-rate", deadTone, "last 15 minutes"),
      tile("Retried", fmtInt(app.retried), "retried", null, "since start"),
      credentialTile(app.credential)
    );
    card.append(tiles);

    const results = el("div", "results");
    const outcomes = el("section", "results-part");
    outcomes.append(el("h4", null, "Outcomes since start"), outcomesBlock(app));
    const reasons = el("section", "results-part");
    reasons.append(el("h4", null, "Reasons"), reasonsBlock(app));
    results.append(outcomes, reasons);
    card.append(results);
    return card;
  }

  function renderApps(data) {
    const apps = Array.isArray(data.apps) ? data.apps : [];
    const container = $("apps");
    if (!apps.length) {
      container.replaceChildren(el("div", "card empty", "No apps configured."));
      return;
    }
    container.replaceChildren(...apps.map((app) => appCard(app, data.now)));
  }

  function renderLegend(data) {
    const legend = $("legend");
    const apps = Array.isArray(data.apps) ? data.apps : [];
    legend.replaceChildren(
      ...apps.map((app) => {
        const item = el("li");
        const swatch = el("span", "swatch");
        swatch.style.background = colorOf(app.name);
        item.append(swatch, el("span", "name", app.name), el("b", null, fmtRate(lastRate(app))));
        return item;
      })
    );
  }

  // --- chart -------------------------------------------------------------------------------

  function niceStep(range, count) {
    const raw = range / Math.max(1, count);
    const magnitude = Math.pow(10, Math.floor(Math.log10(raw)));
    const residual = raw / magnitude;
    const nice = residual > 5 ? 10 : residual > 2 ? 5 : residual > 1 ? 2 : 1;
    return nice * magnitude;
  }

  function cssColor(name, fallback) {
    const value = getComputedStyle(document.body).getPropertyValue(name).trim();
    return value || fallback;
  }

  function drawSendRate(data) {
    const canvas = $("send-rate");
    const width = Math.max(1, Math.round(canvas.clientWidth));
    const height = Math.max(1, Math.round(canvas.clientHeight));
    const ratio = window.devicePixelRatio || 1;
    const pixelWidth = Math.round(width * ratio);
    const pixelHeight = Math.round(height * ratio);
    if (canvas.width !== pixelWidth || canvas.height !== pixelHeight) {
      canvas.width = pixelWidth;
      canvas.height = pixelHeight;
    }
    const ctx = canvas.getContext("2d");
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.clearRect(0, 0, width, height);

    const box = { left: 52, right: width - 14, top: 10, bottom: height - 24 };
    const t1 = data.now;
    const t0 = t1 - WINDOW_S;
    const interval = isNumber(data.interval_s) && data.interval_s > 0 ? data.interval_s : 5;
    const apps = Array.isArray(data.apps) ? data.apps : [];
    const series = apps.map((app) => ({
      name: app.name,
      color: colorOf(app.name),
      points: (Array.isArray(app.sent_per_s) ? app.sent_per_s : []).filter(
        (p) => isNumber(p[0]) && isNumber(p[1]) && p[0] >= t0 && p[0] <= t1 + interval
      ),
    }));
    let top = 0;
    for (const s of series) for (const p of s.points) top = Math.max(top, p[1]);
    const step = niceStep(top > 0 ? top * 1.1 : 10, 4);
    const yMax = Math.max(step, Math.ceil((top * 1.05) / step) * step);
    const x = (t) => box.left + ((t - t0) / (t1 - t0)) * (box.right - box.left);
    const y = (v) => box.bottom - (v / yMax) * (box.bottom - box.top);

    const grid = cssColor("--chart-grid", "#e5e8ee");
    const axis = cssColor("--chart-text", "#6b7280");
    ctx.font = "11px system-ui, -apple-system, 'Segoe UI', Roboto, Arial, sans-serif";
    ctx.lineWidth = 1;

    // y scale
    ctx.textAlign = "right";
    ctx.textBaseline = "middle";
    for (let v = 0; v <= yMax + step / 2; v += step) {
      const py = Math.round(y(v)) + 0.5;
      ctx.strokeStyle = grid;
      ctx.beginPath();
      ctx.moveTo(box.left, py);
      ctx.lineTo(box.right, py);
      ctx.stroke();
      ctx.fillStyle = axis;
      ctx.fillText(fmtCompact(v), box.left - 8, py);
    }

    // time axis: clock-aligned ticks, as many as fit
    const pxPerSecond = (box.right - box.left) / WINDOW_S;
    const tickS = [60, 120, 180, 300, 600].find((s) => s * pxPerSecond >= 64) || 900;
    ctx.textAlign = "center";
    ctx.textBaseline = "top";
    for (let t = Math.ceil(t0 / tickS) * tickS; t <= t1; t += tickS) {
      const px = Math.round(x(t)) + 0.5;
      ctx.strokeStyle = grid;
      ctx.beginPath();
      ctx.moveTo(px, box.top);
      ctx.lineTo(px, box.bottom + 4);
      ctx.stroke();
      if (px > box.left + 20 && px < box.right - 20) {
        ctx.fillStyle = axis;
        ctx.fillText(fmtClock(t, false), px, box.bottom + 7);
      }
    }
    ctx.strokeStyle = axis;
    ctx.beginPath();
    ctx.moveTo(box.left, Math.round(box.bottom) + 0.5);
    ctx.lineTo(box.right, Math.round(box.bottom) + 0.5);
    ctx.stroke();

    // series: one line per app, broken where the daemon recorded nothing
    let points = 0;
    let drawn = 0;
    ctx.save();
    ctx.beginPath();
    ctx.rect(box.left, box.top - 2, box.right - box.left, box.bottom - box.top + 4);
    ctx.clip();
    for (const s of series) {
      if (!s.points.length) continue;
      drawn += 1;
      points += s.points.length;
      ctx.strokeStyle = s.color;
      ctx.fillStyle = s.color;
      ctx.lineWidth = 2;
      ctx.lineJoin = "round";
      ctx.lineCap = "round";
      ctx.beginPath();
      let previous = null;
      for (const p of s.points) {
        if (previous === null || p[0] - previous > interval * 2.5) ctx.moveTo(x(p[0]), y(p[1]));
        else ctx.lineTo(x(p[0]), y(p[1]));
        previous = p[0];
      }
      ctx.stroke();
      const last = s.points[s.points.length - 1];
      ctx.beginPath();
      ctx.arc(x(last[0]), y(last[1]), 3, 0, Math.PI * 2);
      ctx.fill();
    }
    ctx.restore();

    if (!drawn) {
      ctx.fillStyle = axis;
      ctx.textAlign = "center";
      ctx.textBaseline = "middle";
      ctx.fillText("No sends recorded yet", (box.left + box.right) / 2, (box.top + box.bottom) / 2);
    }
    const chart = dashboard.charts.sendRate;
    chart.points = points;
    chart.series = drawn;
    chart.colors = Object.fromEntries(series.map((s) => [s.name, s.color]));
  }

  // --- polling -----------------------------------------------------------------------------

  function render(data) {
    renderHeader(data);
    renderReadiness(data);
    renderConfigErrors(data);
    renderLegend(data);
    renderApps(data);
    drawSendRate(data);
  }

  function describe(error) {
    if (error && error.name === "AbortError") {
      return "no answer in " + FETCH_TIMEOUT_MS / 1000 + " s";
    }
    // fetch rejects with a TypeError when it cannot reach the server at all
    if (error instanceof TypeError) return "cannot connect";
    if (error && error.message) return error.message;
    return String(error);
  }

  async function fetchData() {
    const controller = new AbortController();
    const timer = setTimeout(() => controller.abort(), FETCH_TIMEOUT_MS);
    try {
      const response = await fetch(DATA_URL, {
        cache: "no-store",
        credentials: "same-origin",
        headers: { Accept: "application/json" },
        signal: controller.signal,
      });
      if (!response.ok) throw new Error("HTTP " + response.status);
      return await response.json();
    } finally {
      clearTimeout(timer);
    }
  }

  async function poll() {
    let data;
    try {
      data = await fetchData();
    } catch (error) {
      dashboard.lastError = describe(error);
      setLink(true, dashboard.lastError);
      window.setTimeout(poll, POLL_MS);
      return;
    }
    dashboard.updates += 1;
    dashboard.lastData = data;
    dashboard.lastOkAt = Date.now();
    dashboard.lastError = null;
    setLink(false);
    try {
      render(data);
      document.body.dataset.ready = "1";
    } catch (error) {
      console.error("pushgres dashboard: cannot render data.json:", error);
    }
    window.setTimeout(poll, POLL_MS);
  }

  let resizeQueued = false;
  window.addEventListener("resize", () => {
    if (resizeQueued || !dashboard.lastData) return;
    resizeQueued = true;
    window.requestAnimationFrame(() => {
      resizeQueued = false;
      drawSendRate(dashboard.lastData);
    });
  });

  poll();
})();
