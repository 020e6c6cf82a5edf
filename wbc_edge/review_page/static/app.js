// wbc-edge review page: plain JavaScript, no libraries. Every URL is relative
// to the page (/TOKEN/), so the token travels with each request. Text from
// the report is only ever set with textContent, never parsed as HTML.
"use strict";

(() => {
  const S = {
    session: null, state: null, selected: null, busy: false,
    filterFlag: "all", filterClass: "", zoomOpen: false,
    camOn: false, camUnavailable: null, cams: new Map(), camQueue: [], camActive: 0,
  };
  const tiles = new Map();      // cell index -> {fig, frame, img, canvas, verdict}
  const sections = new Map();   // class -> {section, count, cells}
  const cellOf = new Map();     // cell index -> session cell
  let keyToClass = {};

  const $ = (id) => document.getElementById(id);
  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }
  const pct = (p) => (p === null || p === undefined ? "-" : (100 * p).toFixed(1) + "%");

  async function api(method, path, body) {
    const options = { method, cache: "no-store", headers: {} };
    if (body !== undefined) {
      options.headers["Content-Type"] = "application/json";
      options.body = JSON.stringify(body);
    }
    const response = await fetch(path, options);
    let data = null;
    try { data = await response.json(); } catch (e) { data = null; }
    if (!response.ok) {
      const error = new Error((data && data.error) || `${response.status} ${response.statusText}`);
      error.status = response.status;
      throw error;
    }
    return data;
  }

  function say(text, ok) {
    const box = $("message");
    box.textContent = text;
    box.className = ok ? "ok" : "";
    box.hidden = !text;
  }

  // ------------------------------------------------------------ the model of the page

  const decisionOf = (c) => S.state.decisions[String(c.cell)];
  const labelOf = (c) => { const d = decisionOf(c); return d ? d.corrected : c.predicted; };

  function visible(c) {
    if (S.filterClass && labelOf(c) !== S.filterClass) return false;
    const d = decisionOf(c);
    switch (S.filterFlag) {
      case "flagged": return c.flagged;
      case "todo": return c.flagged && !d;
      case "reviewed": return !!d;
      case "changed": return !!d && d.corrected !== c.predicted;
      default: return true;
    }
  }

  // Flagged cells first, the least confident first; then the others.
  function rank(a, b) {
    if (a.flagged !== b.flagged) return a.flagged ? -1 : 1;
    if ((a.confidence ?? 0) !== (b.confidence ?? 0)) return (a.confidence ?? 0) - (b.confidence ?? 0);
    return a.cell - b.cell;
  }

  function groups() {
    const byClass = new Map(S.session.classes.map((k) => [k, []]));
    for (const c of S.session.cells) if (visible(c)) byClass.get(labelOf(c)).push(c);
    for (const list of byClass.values()) list.sort(rank);
    return byClass;
  }

  const visibleOrder = () => [...groups().values()].flat().map((c) => c.cell);

  // ------------------------------------------------------------------ building

  function build() {
    const session = S.session;
    $("report-name").textContent = "· " + session.report.name;
    keyToClass = {};
    for (const [k, key] of Object.entries(session.keys)) keyToClass[key] = k;
    for (const c of session.cells) cellOf.set(c.cell, c);

    const classFilter = $("class-filter");
    for (const k of session.classes) {
      const option = el("option", null, `${session.keys[k]} · ${k}`);
      option.value = k;
      classFilter.appendChild(option);
    }

    const gallery = $("gallery");
    for (const k of session.classes) {
      const section = el("section", "group");
      section.id = "group-" + k;
      section.dataset.class = k;
      const h = el("h2");
      h.appendChild(el("kbd", null, session.keys[k]));
      h.appendChild(document.createTextNode(" " + k + " "));
      const count = el("span", "count");
      h.appendChild(count);
      const cells = el("div", "cells");
      section.append(h, cells);
      gallery.appendChild(section);
      sections.set(k, { section, count, cells });
    }
    for (const c of session.cells) tiles.set(c.cell, makeTile(c));

    if (session.unreadable.length) {
      const section = el("section", "group unreadable");
      section.id = "unreadable";
      section.appendChild(el("h2", null, `Could not be classified (${session.unreadable.length})`));
      const list = el("ul");
      for (const u of session.unreadable) list.appendChild(el("li", null, `${u.path}: ${u.error}`));
      section.appendChild(list);
      gallery.appendChild(section);
    }

    const info = $("model-info");
    const m = session.report.model;
    info.appendChild(el("div", null, `model ${m.name || "?"} (${m.variant || m.precision || "?"}, ${m.backend || "?"})`));
    info.appendChild(el("div", null, "model sha256 " + (session.report.model_sha256 || "unknown").slice(0, 16)));
    const dc = session.report.domain_check;
    if (dc && dc.status === "shift") {
      info.appendChild(el("div", "warn", "domain check: these cells look unlike the training images; " +
        "trust the predictions less"));
    }
    if (session.missing.length) {
      info.appendChild(el("div", "warn", `${session.missing.length} image(s) listed in the report are not on this machine`));
    }
    if (session.resumed) info.appendChild(el("div", null, "continuing the saved review"));
  }

  function makeTile(c) {
    const fig = el("figure", "cell");
    fig.id = "cell-" + c.cell;
    fig.dataset.cell = c.cell;
    fig.tabIndex = -1;
    const frame = el("div", "frame");
    let img = null;
    if (c.image) {
      img = el("img");
      img.loading = "lazy";
      img.alt = c.name;
      img.src = "img/" + c.cell;
      frame.appendChild(img);
    } else {
      frame.appendChild(el("span", "noimg", "image not on this machine"));
    }
    const canvas = el("canvas");
    canvas.hidden = true;
    frame.appendChild(canvas);
    const caption = el("figcaption");
    const head = el("div");
    head.appendChild(el("span", "label", c.predicted));
    head.appendChild(document.createTextNode(" " + pct(c.confidence)));
    caption.appendChild(head);
    if (c.flagged) caption.appendChild(el("div", "reason", c.reason || "flagged"));
    const verdict = el("div", "verdict");
    caption.appendChild(verdict);
    fig.title = c.path;
    fig.append(frame, caption);
    fig.addEventListener("click", () => select(c.cell));
    fig.addEventListener("dblclick", () => { select(c.cell); openZoom(); });
    return { fig, frame, img, canvas, verdict };
  }

  // ----------------------------------------------------------------- rendering

  function render() {
    const byClass = groups();
    for (const [k, list] of byClass) {
      const s = sections.get(k);
      s.cells.replaceChildren(...list.map((c) => tiles.get(c.cell).fig));
      s.count.textContent = `(${list.length})`;
      s.section.hidden = list.length === 0;
    }
    const unreadable = $("unreadable");
    if (unreadable) unreadable.hidden = S.filterFlag !== "all" || !!S.filterClass;
    for (const c of S.session.cells) {
      const t = tiles.get(c.cell);
      const d = decisionOf(c);
      t.fig.classList.toggle("flagged", c.flagged && !d);
      t.fig.classList.toggle("reviewed", !!d && d.corrected === c.predicted);
      t.fig.classList.toggle("changed", !!d && d.corrected !== c.predicted);
      t.verdict.className = "verdict" + (d ? (d.corrected === c.predicted ? " ok" : " changed") : "");
      t.verdict.textContent = d ? (d.corrected === c.predicted ? "✓ approved" : "→ " + d.corrected) : "";
    }
    renderSide();
    renderSelection();
    if (S.camOn) queueCams();
    if (S.zoomOpen) renderZoom();
  }

  function renderSide() {
    const st = S.state, session = S.session, diff = st.differential;
    const body = $("differential").tBodies[0];
    body.replaceChildren();
    for (const k of session.classes) {
      const row = el("tr");
      row.dataset.class = k;
      if (S.filterClass === k) row.className = "active";
      const key = el("td");
      key.appendChild(el("kbd", null, session.keys[k]));
      const left = diff.flagged_left[k];
      row.append(key, el("td", null, k), el("td", null, diff.counts[k]),
        el("td", null, diff.percent[k].toFixed(1)), el("td", left ? "left-n" : "", left || ""));
      row.addEventListener("click", () => setClassFilter(S.filterClass === k ? "" : k));
      body.appendChild(row);
    }
    $("total").textContent = diff.total;
    const totalLeft = Object.values(diff.flagged_left).reduce((a, b) => a + b, 0);
    $("total-left").textContent = totalLeft || "";

    const p = st.progress;
    let text = `${p.flagged_reviewed} of ${p.flagged} flagged reviewed`;
    text += ` · ${p.reviewed} of ${p.cells} cells reviewed, ${p.changed} reclassified`;
    if (st.signed_off) text += ` · signed off by ${st.signed_off.by} at ${st.signed_off.at}`;
    $("progress").textContent = text;
    $("progress-fill").style.width = (p.flagged ? (100 * p.flagged_reviewed / p.flagged) : 100) + "%";
    $("reviewer").textContent = "reviewer: " + st.reviewer;
    const closed = !!st.signed_off;
    $("undo").disabled = !st.can_undo;
    $("signoff").disabled = closed;
    $("signoff").textContent = closed ? "Signed off" : "Sign off";

    const outputs = $("outputs");
    outputs.replaceChildren();
    const names = Object.keys(st.outputs);
    if (names.length) {
      outputs.appendChild(el("div", null, "written:"));
      for (const name of names) outputs.appendChild(el("div", null, st.outputs[name]));
    }
    for (const [href, label] of [["download/corrections.csv", "download corrections.csv"],
                                  ["download/reviewed.json", "download the reviewed report"]]) {
      const a = el("a", null, label);
      a.href = href;
      a.setAttribute("download", "");
      const div = el("div");
      div.appendChild(a);
      outputs.appendChild(div);
    }
  }

  function renderSelection() {
    for (const t of tiles.values()) t.fig.classList.remove("selected");
    const order = visibleOrder();
    if (S.selected === null || !order.includes(S.selected)) S.selected = order.length ? order[0] : null;
    if (S.selected !== null) {
      const t = tiles.get(S.selected);
      t.fig.classList.add("selected");
      t.fig.scrollIntoView({ block: "nearest", inline: "nearest" });
    }
    document.body.dataset.selected = S.selected === null ? "" : String(S.selected);
  }

  function select(cell) {
    S.selected = cell;
    renderSelection();
    if (S.zoomOpen) renderZoom();
  }

  function move(step) {
    const order = visibleOrder();
    if (!order.length) return;
    const i = order.indexOf(S.selected);
    select(order[Math.max(0, Math.min(order.length - 1, (i < 0 ? 0 : i + step)))]);
  }

  function setClassFilter(k) {
    S.filterClass = k;
    $("class-filter").value = k;
    render();
  }

  // ----------------------------------------------------------------- actions

  async function act(run) {
    if (S.busy) return;
    S.busy = true;
    try {
      await run();
    } catch (error) {
      say(error.message);
    } finally {
      S.busy = false;
    }
  }

  function decide(corrected) {
    return act(async () => {
      if (S.selected === null) { say("no cell selected"); return; }
      const before = visibleOrder(), cell = S.selected;
      const result = await api("POST", "api/decision", { cell, corrected });
      S.state = result.state;
      say("");
      render();
      const now = new Set(visibleOrder());
      const at = before.indexOf(cell);
      const next = before.slice(at + 1).find((c) => now.has(c))
        ?? (now.has(cell) ? cell : before.slice(0, at).reverse().find((c) => now.has(c)));
      select(next ?? null);
    });
  }

  function approve() {
    if (S.selected === null) return act(async () => say("no cell selected"));
    return decide(cellOf.get(S.selected).predicted);
  }

  function undo() {
    return act(async () => {
      const result = await api("POST", "api/undo", {});
      S.state = result.state;
      say("");
      render();
      if (visibleOrder().includes(result.undone)) select(result.undone);
    });
  }

  function exportFiles() {
    return act(async () => {
      const result = await api("POST", "api/export", {});
      S.state = result.state;
      render();
      say(`Wrote ${result.written.corrections} and ${result.written.reviewed_report}`, true);
    });
  }

  function signOff() {
    return act(async () => {
      try {
        const result = await api("POST", "api/signoff", {});
        S.state = result.state;
        render();
        say(`Signed off by ${result.signed_off.by} at ${result.signed_off.at}. Wrote ` +
            `${result.written.corrections} and ${result.written.reviewed_report}`, true);
      } catch (error) {
        if (error.status === 409 && !S.state.signed_off) {
          S.filterFlag = "todo";
          $("flag-filter").value = "todo";
          S.filterClass = "";
          $("class-filter").value = "";
          render();
        }
        throw error;
      }
    });
  }

  // --------------------------------------------------------------------- zoom

  function openZoom() {
    if (S.selected === null) return;
    S.zoomOpen = true;
    $("zoom").hidden = false;
    renderZoom();
  }

  function closeZoom() {
    S.zoomOpen = false;
    $("zoom").hidden = true;
  }

  function renderZoom() {
    if (S.selected === null) { closeZoom(); return; }
    const c = cellOf.get(S.selected), d = decisionOf(c);
    $("zoom-title").textContent = c.name;
    const img = $("zoom-img");
    if (img.dataset.cell !== String(c.cell)) {
      img.dataset.cell = String(c.cell);
      img.src = c.image ? "img/" + c.cell : "";
      clearCanvas($("zoom-cam"));
    }
    let status = `predicted ${c.predicted} (${pct(c.confidence)})`;
    if (d) status += d.corrected === c.predicted ? ` · approved by ${d.reviewer}` : ` · reclassified as ${d.corrected} by ${d.reviewer}`;
    $("zoom-status").textContent = status;
    $("zoom-reason").textContent = c.flagged ? "flagged: " + (c.reason || "") : "not flagged";
    const probs = $("zoom-probs").tBodies[0];
    probs.replaceChildren();
    for (const [k, p] of c.top) {
      const row = el("tr");
      const barCell = el("td");
      const bar = el("div", "bar");
      bar.style.width = Math.max(1, Math.round(100 * p)) + "px";
      barCell.appendChild(bar);
      row.append(el("td", null, k), el("td", null, pct(p)), barCell);
      probs.appendChild(row);
    }
    const buttons = $("zoom-buttons");
    buttons.replaceChildren();
    const ok = el("button", null, "Enter · approve " + c.predicted);
    ok.type = "button";
    ok.addEventListener("click", (e) => { e.currentTarget.blur(); approve(); });
    buttons.appendChild(ok);
    for (const k of S.session.classes) {
      const b = el("button", null, `${S.session.keys[k]} · ${k}`);
      b.type = "button";
      b.dataset.class = k;
      b.addEventListener("click", (e) => { e.currentTarget.blur(); decide(k); });
      buttons.appendChild(b);
    }
    $("zoom-cam-note").textContent = S.camOn ? (S.camUnavailable || "") : "";
    if (S.camOn) showCam(c.cell, $("zoom-img"), $("zoom-cam")); else clearCanvas($("zoom-cam"));
  }

  // ---------------------------------------------------------------------- CAM

  function toggleCam() {
    S.camOn = !S.camOn;
    const button = $("cam-toggle");
    button.setAttribute("aria-pressed", String(S.camOn));
    button.textContent = S.camOn ? "CAM: on" : "CAM: off";
    if (!S.camOn) {
      S.camQueue = [];
      for (const t of tiles.values()) clearCanvas(t.canvas);
      clearCanvas($("zoom-cam"));
      $("zoom-cam-note").textContent = "";
    } else {
      if (S.camUnavailable) say(S.camUnavailable);
      queueCams();
      if (S.zoomOpen) renderZoom();
    }
  }

  function clearCanvas(canvas) {
    canvas.hidden = true;
    delete canvas.dataset.drawn;
    const ctx = canvas.getContext("2d");
    ctx.clearRect(0, 0, canvas.width, canvas.height);
  }

  async function fetchCam(cell, k) {
    const key = cell + ":" + k;
    if (!S.cams.has(key)) {
      S.cams.set(key, api("GET", `api/cam/${cell}?class=${encodeURIComponent(k)}`).catch((error) => {
        S.cams.delete(key);
        return { available: false, reason: error.message, transient: true };
      }));
    }
    return S.cams.get(key);
  }

  async function showCam(cell, img, canvas) {
    if (S.camUnavailable || !cellOf.get(cell).image) return;
    const k = labelOf(cellOf.get(cell));
    if (canvas.dataset.drawn === cell + ":" + k) return;
    const data = await fetchCam(cell, k);
    if (!S.camOn) return;
    if (!data.available) {
      if (!data.transient) {
        S.camUnavailable = data.reason;
        S.camQueue = [];
        say(data.reason);
        $("cam-toggle").textContent = "CAM: not available";
        if (S.zoomOpen) $("zoom-cam-note").textContent = data.reason;
      }
      return;
    }
    if (data.notes && data.notes.length) $("zoom-cam-note").textContent = data.notes.join("; ");
    if (!img.complete || !img.naturalWidth) await new Promise((ok) => img.addEventListener("load", ok, { once: true }));
    if (labelOf(cellOf.get(cell)) !== k || !S.camOn) return;
    drawCam(canvas, img, data);
    canvas.dataset.drawn = cell + ":" + k;
  }

  // Jet-like colours: blue (low) - cyan - yellow - red (high).
  function colour(v) {
    const r = Math.min(1, Math.max(0, 1.5 - Math.abs(4 * v - 3)));
    const g = Math.min(1, Math.max(0, 1.5 - Math.abs(4 * v - 2)));
    const b = Math.min(1, Math.max(0, 1.5 - Math.abs(4 * v - 1)));
    return [255 * r, 255 * g, 255 * b];
  }

  function drawCam(canvas, img, data) {
    const map = data.map, h = map.length, w = map[0].length;
    canvas.width = img.naturalWidth;
    canvas.height = img.naturalHeight;
    const small = document.createElement("canvas");
    small.width = w;
    small.height = h;
    const pixels = small.getContext("2d").createImageData(w, h);
    for (let y = 0; y < h; y++) {
      for (let x = 0; x < w; x++) {
        const v = map[y][x], [r, g, b] = colour(v), i = 4 * (y * w + x);
        pixels.data[i] = r; pixels.data[i + 1] = g; pixels.data[i + 2] = b;
        pixels.data[i + 3] = Math.round(25 + 135 * v);
      }
    }
    small.getContext("2d").putImageData(pixels, 0, 0);
    const ctx = canvas.getContext("2d");
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    ctx.imageSmoothingEnabled = true;
    ctx.imageSmoothingQuality = "high";
    const [x0, y0, x1, y1] = data.box;
    ctx.drawImage(small, x0 * canvas.width, y0 * canvas.height, (x1 - x0) * canvas.width, (y1 - y0) * canvas.height);
    canvas.hidden = false;
  }

  // Maps for the visible tiles, two requests at a time.
  function queueCams() {
    if (S.camUnavailable) return;
    S.camQueue = visibleOrder().filter((cell) => cellOf.get(cell).image);
    pumpCams();
  }

  function pumpCams() {
    while (S.camOn && S.camActive < 2 && S.camQueue.length && !S.camUnavailable) {
      const cell = S.camQueue.shift();
      const t = tiles.get(cell);
      S.camActive++;
      showCam(cell, t.img, t.canvas).finally(() => { S.camActive--; pumpCams(); });
    }
  }

  // --------------------------------------------------------------------- keys

  function onKey(e) {
    if (e.ctrlKey || e.metaKey || e.altKey) return;
    if (e.target instanceof HTMLElement && e.target.closest("input, textarea, select")) return;
    if (!S.state) return;
    const k = e.key;
    if (k === "Escape") closeZoom();
    else if (k === "Enter") approve();
    else if (k === "u" || k === "Backspace") undo();
    else if (k === "ArrowRight" || k === "ArrowDown") move(1);
    else if (k === "ArrowLeft" || k === "ArrowUp") move(-1);
    else if (k === " ") { if (S.zoomOpen) closeZoom(); else openZoom(); }
    else if (k === "c") toggleCam();
    else if (Object.prototype.hasOwnProperty.call(keyToClass, k)) decide(keyToClass[k]);
    else return;
    e.preventDefault();
  }

  // ---------------------------------------------------------------------- start

  async function start() {
    try {
      S.session = await api("GET", "api/session");
    } catch (error) {
      say("cannot load the review: " + error.message);
      return;
    }
    S.state = S.session.state;
    build();
    render();
    const first = visibleOrder().find((cell) => { const c = cellOf.get(cell); return c.flagged && !decisionOf(c); });
    if (first !== undefined) select(first);
    for (const [id, run] of [["cam-toggle", toggleCam], ["undo", undo], ["export", exportFiles], ["signoff", signOff],
                             ["zoom-close", closeZoom]]) {
      $(id).addEventListener("click", (e) => { e.currentTarget.blur(); run(); });
    }
    $("flag-filter").addEventListener("change", (e) => { S.filterFlag = e.target.value; e.target.blur(); render(); });
    $("class-filter").addEventListener("change", (e) => { S.filterClass = e.target.value; e.target.blur(); render(); });
    $("zoom").addEventListener("click", (e) => { if (e.target === $("zoom")) closeZoom(); });
    document.addEventListener("keydown", onKey);
    document.body.dataset.ready = "1";
  }

  start();
})();
