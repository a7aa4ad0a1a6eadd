// fundax annotate: the page. The server owns the geometry: for the disc and fovea shown it sends
// the region id of every cell of this canvas (fundax.regions.region_map), so what is drawn and
// what a click toggles are the regions training will use. A photograph whose line has no disc and
// fovea gets them suggested by fundax.landmarks (asked once it shows): drawn dashed until the grader
// confirms them (C) or moves them, and not sent with a save before; a suggestion the locator is
// unsure of is not placed at all.
"use strict";

(() => {
  const token = document.querySelector('meta[name="fundax-token"]').content;
  const $ = (id) => document.getElementById(id);
  const canvas = $("view");
  const ctx = canvas.getContext("2d");
  const overlay = document.createElement("canvas");
  const HIT_PX = 12;  // how near a marker a press grabs it
  const MOVE_PX = 3;  // a press that moves less than this is a click

  const st = {
    info: null,          // /api/session: grader, count, resume, findings, regions, colours
    index: 0,
    view: null,          // /api/photos/i: the photograph and what the file holds for it
    bitmap: null,
    disc: null,          // [x, y] in pixels of the photograph, 0.1 px (a suggestion's as the locator gave it)
    fovea: null,
    suggested: new Set(),// "disc", "fovea": shown as fundax.landmarks suggested them, not confirmed yet
    suggestion: null,    // /api/photos/i/suggestion, or {error}, for a line without centres
    seen: null,          // [disc, fovea] as the file had them when loaded, for the save's conflict check
    findings: new Map(), // finding name -> Set of region ids, or null: image-level (this grader's working copy)
    active: null,        // the finding being marked
    dirty: false,
    map: null,           // {width, height, disc, fovea, ids: Uint8Array, labels}
    placing: null,       // "disc" | "fovea": the next click places it
    press: null,         // {at, marker, moved} while the pointer is down
    mapBusy: false,
    mapAgain: false,
    busy: false,
    unsaved: new Map(),  // index -> centres placed on a photograph left without saving
    showRegions: true,   // O hides the overlay to look at the photograph alone
  };

  async function api(path, options = {}) {
    const headers = {"Content-Type": "application/json", "X-Fundax-Token": token};
    const response = await fetch(path, {...options, headers});
    const body = await response.json().catch(() => ({}));
    if (!response.ok) throw new Error(body.error || `${response.status} ${response.statusText}`);
    return body;
  }

  function say(text, ok = false) {
    $("message").textContent = text;
    $("message").className = ok ? "ok" : "";
  }

  const round1 = (v) => Math.round(v * 10) / 10;
  const same = (a, b) => a && b && a[0] === b[0] && a[1] === b[1];

  // Canvas pixels <-> photograph pixels. The canvas grid is the region map's grid.
  function toImage([cx, cy]) {
    const x = Math.min(Math.max(cx * st.view.width / canvas.width, 0), st.view.width);
    const y = Math.min(Math.max(cy * st.view.height / canvas.height, 0), st.view.height);
    return [round1(x), round1(y)];
  }
  const toCanvas = ([x, y]) => [x * canvas.width / st.view.width, y * canvas.height / st.view.height];

  function pointer(event) {
    const rect = canvas.getBoundingClientRect();
    return [(event.clientX - rect.left) * canvas.width / rect.width,
            (event.clientY - rect.top) * canvas.height / rect.height];
  }

  function mapIsCurrent() {
    const m = st.map;
    return m && m.width === canvas.width && m.height === canvas.height && same(m.disc, st.disc) && same(m.fovea, st.fovea);
  }

  // The region of the cell under canvas point p (cell (i, j) holds canvas [j, j+1) x [i, i+1)).
  function regionAt([cx, cy]) {
    const m = st.map;
    if (!m) return null;
    const col = Math.min(Math.max(Math.floor(cx), 0), m.width - 1);
    const row = Math.min(Math.max(Math.floor(cy), 0), m.height - 1);
    return m.ids[row * m.width + col];
  }

  function fit() {
    const stage = $("stage");
    const style = getComputedStyle(stage);
    const w = stage.clientWidth - parseFloat(style.paddingLeft) - parseFloat(style.paddingRight);
    const h = stage.clientHeight - parseFloat(style.paddingTop) - parseFloat(style.paddingBottom);
    const s = Math.min(w / st.view.width, h / st.view.height);
    canvas.width = Math.max(1, Math.round(st.view.width * s));
    canvas.height = Math.max(1, Math.round(st.view.height * s));
    canvas.style.width = `${canvas.width}px`;
    canvas.style.height = `${canvas.height}px`;
  }

  // One map request at a time; moves made meanwhile are folded into one more request.
  async function requestMap() {
    if (!(st.disc && st.fovea)) { st.map = null; draw(); return; }
    if (st.mapBusy) { st.mapAgain = true; return; }
    st.mapBusy = true;
    const index = st.index;
    const query = `disc=${st.disc}&fovea=${st.fovea}&width=${canvas.width}&height=${canvas.height}`;
    try {
      const m = await api(`/api/photos/${index}/regions?${query}`);
      if (index === st.index) {
        m.ids = Uint8Array.from(atob(m.ids), (c) => c.charCodeAt(0));
        st.map = m;
        paintOverlay();
        draw();
        renderPanel();
      }
    } catch (error) {
      say(error.message);
    } finally {
      st.mapBusy = false;
      if (st.mapAgain) { st.mapAgain = false; requestMap(); }
    }
  }

  // Every region tinted in its colour, the active finding's regions strongly, boundaries white.
  function paintOverlay() {
    const m = st.map;
    overlay.width = m.width;
    overlay.height = m.height;
    const octx = overlay.getContext("2d");
    const image = octx.createImageData(m.width, m.height);
    const px = image.data;
    const chosen = st.active ? st.findings.get(st.active) || new Set() : new Set();
    const colours = st.info.colours;
    const ids = m.ids, w = m.width, h = m.height;
    for (let row = 0, p = 0; row < h; row++) {
      for (let col = 0; col < w; col++, p++) {
        const k = ids[p];
        const edge = (col + 1 < w && ids[p + 1] !== k) || (row + 1 < h && ids[p + w] !== k);
        const [r, g, b] = edge ? [255, 255, 255] : colours[k];
        px.set([r, g, b, edge ? 230 : chosen.has(k) ? 100 : 30], p * 4);
      }
    }
    octx.putImageData(image, 0, 0);
  }

  // A placed centre: a ring with a cross. A suggested one: a larger dashed ring, hollow, "?" after its name.
  function marker(xy, colour, label, suggested) {
    const [x, y] = toCanvas(xy);
    const r = suggested ? 10 : 7;
    ctx.setLineDash(suggested ? [4, 3] : []);
    ctx.lineWidth = 2.5;
    ctx.strokeStyle = "#000";
    ctx.beginPath(); ctx.arc(x, y, r, 0, 2 * Math.PI); ctx.stroke();
    ctx.strokeStyle = colour;
    ctx.lineWidth = 2;
    ctx.beginPath(); ctx.arc(x, y, r, 0, 2 * Math.PI); ctx.stroke();
    ctx.setLineDash([]);
    if (!suggested) {
      ctx.beginPath(); ctx.moveTo(x - 3, y); ctx.lineTo(x + 3, y); ctx.moveTo(x, y - 3); ctx.lineTo(x, y + 3); ctx.stroke();
    }
    ctx.font = `${suggested ? "italic " : ""}bold 12px system-ui, sans-serif`;
    ctx.fillStyle = colour;
    ctx.fillText(suggested ? `${label}?` : label, x + r + 3, y - r - 1);
  }

  function draw() {
    if (!st.bitmap) return;
    canvas.dataset.ready = mapIsCurrent() ? "regions" : st.disc && st.fovea ? "drawing" : "place";
    canvas.dataset.centres = st.suggested.size ? "suggested" : st.disc && st.fovea ? "placed" : "none";
    ctx.drawImage(st.bitmap, 0, 0, canvas.width, canvas.height);
    if (st.showRegions && st.map && st.map.width === canvas.width && st.map.height === canvas.height) {
      ctx.drawImage(overlay, 0, 0);
      const chosen = st.active ? st.findings.get(st.active) || new Set() : new Set();
      ctx.textAlign = "center";
      ctx.textBaseline = "middle";
      const markers = [st.disc, st.fovea].filter(Boolean).map(toCanvas);
      for (const [name, [x, labelY]] of Object.entries(st.map.labels)) {
        // Keep the names off the disc and fovea markers.
        const y = markers.some(([mx, my]) => Math.hypot(x - mx, labelY - my) < 22) ? labelY + 24 : labelY;
        const picked = chosen.has(st.info.regions.indexOf(name));
        ctx.font = `${picked ? "bold " : ""}11px system-ui, sans-serif`;
        const width = ctx.measureText(name).width + 8;
        ctx.fillStyle = picked ? "rgba(0,0,0,.75)" : "rgba(255,255,255,.75)";
        ctx.fillRect(x - width / 2, y - 8, width, 16);
        ctx.fillStyle = picked ? "#fff" : "#000";
        ctx.fillText(name, x, y);
      }
      ctx.textAlign = "start";
      ctx.textBaseline = "alphabetic";
    }
    if (st.disc) marker(st.disc, "#ffe14d", "disc", st.suggested.has("disc"));
    if (st.fovea) marker(st.fovea, "#4de1ff", "fovea", st.suggested.has("fovea"));
  }

  function regionNames(set) {
    return [...set].sort((a, b) => a - b).map((k) => st.info.regions[k]);
  }

  // What the locator said of a photograph without centres, and what the grader is to do about it.
  function suggestionNote() {
    const s = st.suggestion;
    if (!s) return ["", ""];
    if (s.error) return [`No suggested disc and fovea (${s.error}): place them (D, F).`, "unsure"];
    const confidences = `disc ${s.disc_confidence.toFixed(2)}, fovea ${s.fovea_confidence.toFixed(2)}`;
    if (!s.confident) {
      return [`The locator is unsure here (${s.flags.join(", ")}; ${confidences}), so nothing is placed:` +
              " place the disc and fovea yourself (D, F).", "unsure"];
    }
    if (st.suggested.size) {
      return [`Suggested by the locator (${confidences}) — confirm (C) or drag them. Until then they are not` +
              " saved, and regions cannot be marked.", "suggested"];
    }
    return [`Centres confirmed (the locator suggested them: ${confidences}).`, "confirmed"];
  }

  function renderPanel() {
    const v = st.view;
    const read = v.findings === null ? "not read yet" : Object.keys(v.findings).length ? "saved with findings" : "saved as normal";
    $("progress").textContent = `Image ${v.index + 1} of ${v.count} · ${v.read} read`;
    const eye = st.disc && st.fovea ? (st.disc[0] > st.fovea[0] ? "right eye" : "left eye") + " · " : "";
    const others = v.other_graders ? ` · also read by ${v.other_graders} other grader${v.other_graders > 1 ? "s" : ""}` : "";
    $("photo-info").textContent = `${v.file} · ${eye}${read}${st.dirty ? " (changed)" : ""}${others}`;
    st.info.findings.forEach((f, i) => {
      const button = $("findings").children[i].firstChild;
      const set = st.findings.get(f.name);
      button.setAttribute("aria-pressed", String(st.active === f.name));
      button.classList.toggle("marked", st.findings.has(f.name));
      button.classList.toggle("image-level", set === null);
      const where = set === null ? "present, regions not marked" : set ? regionNames(set).join(", ") : "";
      button.querySelector(".where").textContent = where;
    });
    const [note, kind] = suggestionNote();
    $("suggestion").textContent = note;
    $("suggestion").className = kind;
    $("confirm").disabled = !st.suggested.size;
    const chosen = st.active ? st.findings.get(st.active) || new Set() : new Set();
    $("regions-of").textContent = st.active ? `of ${st.info.findings.find((f) => f.name === st.active).display_name}` : "";
    [...$("regions").children].forEach((button, k) => {
      button.disabled = !st.active || !st.map;
      button.setAttribute("aria-pressed", String(chosen.has(k)));
    });
    $("place-disc").setAttribute("aria-pressed", String(st.placing === "disc"));
    $("place-fovea").setAttribute("aria-pressed", String(st.placing === "fovea"));
  }

  function buildPanel() {
    st.info.findings.forEach((f, i) => {
      const item = document.createElement("li");
      const button = document.createElement("button");
      button.dataset.finding = f.name;
      button.innerHTML = `<kbd>${i + 1}</kbd><span class="name"></span><span class="where"></span>`;
      button.querySelector(".name").textContent = f.display_name;
      button.addEventListener("click", () => pickFinding(f.name));
      item.append(button);
      $("findings").append(item);
    });
    st.info.regions.forEach((name, k) => {
      const button = document.createElement("button");
      button.dataset.region = name;
      button.innerHTML = `<span class="swatch"></span><span></span>`;
      button.firstChild.style.background = `rgb(${st.info.colours[k].join(",")})`;
      button.lastChild.textContent = name;
      button.addEventListener("click", () => toggleRegion(k));
      $("regions").append(button);
    });
  }

  function refresh() { if (st.map) paintOverlay(); draw(); renderPanel(); }

  function pickFinding(name) {
    st.active = st.active === name ? null : name;
    if (st.active && !st.map) say("Place the disc and the fovea first: the regions come from them.");
    refresh();
  }

  // An image-level label (present, regions not marked) becomes marked regions with its first region,
  // and is one again when its last region is unmarked.
  function toggleRegion(k) {
    if (!st.active) { say("Pick a finding first (keys 1–8), then click its regions."); return; }
    if (st.suggested.size) {
      say("Confirm the suggested disc and fovea first (C), or drag them: the regions come from them.");
      return;
    }
    const set = new Set(st.findings.get(st.active) || []);
    if (set.has(k)) set.delete(k); else set.add(k);
    const imageLevel = st.view.findings !== null && st.view.findings[st.active] === null;
    if (set.size) st.findings.set(st.active, set);
    else if (imageLevel) st.findings.set(st.active, null);
    else st.findings.delete(st.active);
    st.dirty = true;
    say("");
    refresh();
  }

  // Delete: the finding picked is not in this reading at all (its regions, or its image-level label).
  function dropFinding() {
    if (!(st.active && st.findings.has(st.active))) { say("Pick a finding this reading has first (keys 1–8)."); return; }
    st.findings.delete(st.active);
    st.dirty = true;
    say("");
    refresh();
  }

  function confirmCentres() {
    if (!st.suggested.size) { say("There is no suggested disc or fovea to confirm."); return; }
    st.suggested.clear();
    st.dirty = true;
    say("Disc and fovea confirmed: they are saved with this photograph's reading.", true);
    refresh();
  }

  // The locator's disc and fovea for a line without centres; placed (as suggested) only when it is sure
  // and the grader has placed neither meanwhile.
  async function requestSuggestion(index) {
    let s;
    try {
      s = await api(`/api/photos/${index}/suggestion`);
    } catch (error) {
      s = {error: error.message};
    }
    if (index !== st.index) return;
    st.suggestion = s;
    if (s.confident && !st.disc && !st.fovea) {
      Object.assign(st, {disc: s.disc, fovea: s.fovea, suggested: new Set(["disc", "fovea"]), placing: null});
      say("");
      requestMap();
    }
    refresh();
  }

  function place(which, p) {
    const xy = toImage(p);
    const other = which === "disc" ? st.fovea : st.disc;
    if (same(xy, other)) { say("The disc and the fovea must be apart."); return; }
    st[which] = xy;
    st.suggested.delete(which);
    st.dirty = true;
    st.placing = !st.disc ? "disc" : !st.fovea ? "fovea" : null;
    promptPlacing();
    requestMap();
    refresh();
  }

  function promptPlacing() {
    if (st.placing) say(`Click the centre of the ${st.placing === "disc" ? "optic disc" : "fovea"}.`, true);
  }

  // Centres only suggested, or not both placed, are not sent: the line keeps its own (none).
  function payload(findings) {
    const out = {};
    for (const [name, set] of findings) out[name] = set === null ? null : regionNames(set);
    const placed = st.disc && st.fovea && !st.suggested.size;
    return {findings: out, disc: placed ? st.disc : null, fovea: placed ? st.fovea : null, centres_seen: st.seen};
  }

  // Unsaved work is saved on leaving; an untouched or never-marked photograph stays unread.
  const needsSave = () => st.dirty && (st.findings.size > 0 || st.view.findings !== null);

  // Why this reading cannot be saved without the centres the grader has (not) placed, or "": a line is
  // written without centres only where the locator is sure of them, so prepare --locate_missing places them.
  function unplacedProblem() {
    if (st.disc && st.fovea && !st.suggested.size) return "";
    if (st.suggested.size === 1) {
      const [left] = st.suggested;
      return `Confirm the suggested ${left} too (C), or drag it: the centre you placed is saved only with it.`;
    }
    if (st.suggestion && st.suggestion.confident) return "";
    if (!st.suggestion) return "The locator is still looking for the disc and fovea: wait a moment, or place them (D, F).";
    return "Place the disc and the fovea first (D, F): the locator cannot place them here, so preparing would reject the line.";
  }

  // What became of centres not placed, to be said, since preparing needs them ("" when they were written).
  async function save(findings) {
    const problem = st.view.disc ? "" : unplacedProblem();
    if (problem) throw new Error(problem);
    const view = await api(`/api/photos/${st.index}`, {method: "POST", body: JSON.stringify(payload(findings))});
    st.view = view;
    st.seen = view.disc ? [view.disc, view.fovea] : null;
    st.dirty = false;
    st.unsaved.delete(st.index);
    if (view.disc) return "";
    return ", without the suggested (not confirmed) disc and fovea: prepare --locate_missing places them";
  }

  async function load(index) {
    const view = await api(`/api/photos/${index}`);
    let bitmap = null;
    let problem = view.problem;
    if (!problem) {
      const response = await fetch(view.url, {headers: {"X-Fundax-Token": token}});
      if (response.ok) bitmap = await createImageBitmap(await response.blob());
      else problem = (await response.json().catch(() => ({}))).error || `cannot load ${view.file}`;
    }
    const kept = view.disc ? null : st.unsaved.get(index);
    Object.assign(st, {
      index, view, bitmap, map: null, active: null, dirty: false, press: null, suggested: new Set(), suggestion: null,
      disc: view.disc || (kept && kept[0]), fovea: view.fovea || (kept && kept[1]),
      seen: view.disc ? [view.disc, view.fovea] : null,
      findings: new Map(Object.entries(view.findings || {}).map(([f, names]) =>
        [f, names === null ? null : new Set(names.map((n) => st.info.regions.indexOf(n)))])),
    });
    if (problem) {
      // An unreadable file cannot be annotated, but must not block the ones after it.
      st.placing = null;
      canvas.width = canvas.height = 1;
      renderPanel();
      say(`${problem}. Skip it with → or ←.`);
      return;
    }
    st.placing = !st.disc ? "disc" : !st.fovea ? "fovea" : null;
    fit();
    say("");
    promptPlacing();
    refresh();
    requestMap();
    if (!view.disc && !kept) requestSuggestion(index);
  }

  // Leave the photograph (saving what needs it) for another; "normal" saves it with no finding.
  async function go(index, {normal = false} = {}) {
    if (st.busy || !st.view) return;
    st.busy = true;
    try {
      let note = "";
      if (normal) {
        note = `Saved ${st.view.file} as normal${await save(new Map())}.`;
      } else if (needsSave()) {
        note = `Saved ${st.view.file}${await save(st.findings)}.`;
      } else if (st.view.findings === null) {
        if (st.disc && st.fovea && !st.view.disc && !st.suggested.size) st.unsaved.set(st.index, [st.disc, st.fovea]);
        if (index !== st.index) note = `Left ${st.view.file} unread: mark a finding, or N for normal.`;
      }
      if (index < 0 || index >= st.view.count) {
        renderPanel();
        say(`${note} ${index < 0 ? "This is the first photograph." : `That was the last one: ${st.view.read} of ${st.view.count} read.`}`, true);
        return;
      }
      await load(index);
      if (note) say(`${note} ${$("message").textContent}`, true);
    } catch (error) {
      say(error.message);
    } finally {
      st.busy = false;
    }
  }

  function grab(p) {
    for (const which of ["disc", "fovea"]) {
      if (!st[which]) continue;
      const [x, y] = toCanvas(st[which]);
      if (Math.hypot(p[0] - x, p[1] - y) <= HIT_PX) return which;
    }
    return null;
  }

  function showHover(p) {
    const k = st.map ? regionAt(p) : null;
    $("hover").textContent = k === null ? "" : `pointer over: ${st.info.regions[k]}`;
    $("hover").dataset.region = k === null ? "" : st.info.regions[k];
  }

  canvas.addEventListener("pointerdown", (event) => {
    if (!st.bitmap || event.button !== 0) return;
    const p = pointer(event);
    if (st.placing) { place(st.placing, p); return; }
    st.press = {at: p, marker: grab(p), moved: false};
    canvas.setPointerCapture(event.pointerId);
  });

  canvas.addEventListener("pointermove", (event) => {
    if (!st.bitmap) return;
    const p = pointer(event);
    const press = st.press;
    if (press && press.marker) {
      if (!press.moved && Math.hypot(p[0] - press.at[0], p[1] - press.at[1]) < MOVE_PX) return;
      const xy = toImage(p);
      if (same(xy, press.marker === "disc" ? st.fovea : st.disc)) return;
      press.moved = true;
      st[press.marker] = xy;
      st.suggested.delete(press.marker);  // moved: the grader's now
      st.dirty = true;
      draw();
      requestMap();
      return;
    }
    showHover(p);
  });

  canvas.addEventListener("pointerup", (event) => {
    const press = st.press;
    st.press = null;
    if (!press) return;
    if (press.moved) {
      const n = st.view.other_graders;
      // Their regions were clicked against the old centres; the grader should know they move too.
      if (n) say(`Moving the ${press.marker} also moves the regions of the ${n} other grader${n > 1 ? "s" : ""} of this photograph.`);
      renderPanel();
      return;
    }
    if (!mapIsCurrent()) { say("The regions are still being drawn; click again."); return; }
    toggleRegion(regionAt(pointer(event)));
  });

  document.addEventListener("keydown", (event) => {
    if (event.ctrlKey || event.metaKey || event.altKey || !st.info) return;
    const key = event.key;
    if (key >= "1" && key <= String(st.info.findings.length)) pickFinding(st.info.findings[Number(key) - 1].name);
    else if (key === "n" || key === "N") go(st.index + 1, {normal: true});
    else if (key === "ArrowRight" || key === "Enter") go(st.index + 1);
    else if (key === "ArrowLeft") go(st.index - 1);
    else if (key === "d" || key === "D") startPlacing("disc");
    else if (key === "f" || key === "F") startPlacing("fovea");
    else if (key === "c" || key === "C") confirmCentres();
    else if (key === "Delete" || key === "Backspace") dropFinding();
    else if (key === "o" || key === "O") { st.showRegions = !st.showRegions; draw(); }
    else if (key === "Escape") { st.active = null; st.placing = st.disc && st.fovea ? null : st.placing; say(""); refresh(); }
    else return;
    event.preventDefault();
  });

  function startPlacing(which) {
    st.placing = which;
    promptPlacing();
    renderPanel();
  }

  $("prev").addEventListener("click", () => go(st.index - 1));
  $("next").addEventListener("click", () => go(st.index + 1));
  $("normal").addEventListener("click", () => go(st.index + 1, {normal: true}));
  $("place-disc").addEventListener("click", () => startPlacing("disc"));
  $("place-fovea").addEventListener("click", () => startPlacing("fovea"));
  $("confirm").addEventListener("click", confirmCentres);
  window.addEventListener("resize", () => { if (st.bitmap) { fit(); draw(); requestMap(); } });
  window.addEventListener("beforeunload", (event) => { if (st.view && needsSave()) event.preventDefault(); });

  // Tests and curious graders can look at the state; nothing reads it back.
  window.fundaxAnnotate = {state: st, regionAt};

  (async () => {
    try {
      st.info = await api("/api/session");
      buildPanel();
      const all = st.info.resume >= st.info.count;
      await load(all ? 0 : st.info.resume);
      if (all) say(`All ${st.info.count} photographs are read; change any with ← and →.`, true);
    } catch (error) {
      say(error.message);
    }
  })();
})();
