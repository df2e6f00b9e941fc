// The pages' scripts: they call the /v1 API with the session's CSRF token (the key stays in the
// HTTP-only session cookie). No build step.
"use strict";

const CSRF = document.body.dataset.csrf;

async function api(method, path, body) {
  const options = { method, headers: { "X-CSRF-Token": CSRF }, credentials: "same-origin" };
  if (body instanceof FormData) {
    options.body = body;
  } else if (body !== undefined) {
    options.headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(body);
  }
  const response = await fetch(path, options);
  let data = null;
  try { data = await response.json(); } catch (e) { data = null; }
  if (response.status === 401) { window.location = "/login?next=" + encodeURIComponent(location.pathname); }
  if (!response.ok) { throw new Error((data && data.error) || response.statusText); }
  return { status: response.status, data };
}

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (name === "class") node.className = value; else node.setAttribute(name, value);
  }
  for (const child of children) node.append(child);
  return node;
}

function fillBars(root) {
  (root || document).querySelectorAll("[data-pct]").forEach((bar) => { bar.style.width = bar.dataset.pct + "%"; });
}

function took(started, finished) {
  if (!started) return "";
  const end = finished ? Date.parse(finished) : Date.now();
  const seconds = Math.max(0, (end - Date.parse(started)) / 1000);
  return seconds < 90 ? seconds.toFixed(1) + " s" : (seconds / 60).toFixed(1) + " min";
}

// -- Recognise -----------------------------------------------------------------------------------
function recognizePage() {
  const model = document.getElementById("model");
  const version = document.getElementById("version");
  const input = document.getElementById("photo");
  const drop = document.getElementById("drop");
  const status = document.getElementById("status");
  const slider = document.getElementById("threshold");
  const sliderValue = document.getElementById("threshold-value");
  const preview = document.getElementById("preview");
  const boxes = document.getElementById("boxes");
  const list = document.getElementById("faces");
  let answer = null;
  let sent = 0;  // the photos sent: only the latest one's answer is shown

  async function loadVersions() {
    version.replaceChildren(el("option", { value: "" }, "current"));
    if (!model.value) return;
    try {
      const { data } = await api("GET", "/v1/models/" + encodeURIComponent(model.value));
      data.versions.map((v) => v.version).sort().reverse().forEach((v) => {
        version.append(el("option", { value: v }, v + (v === data.current_version ? " (current)" : "")));
      });
    } catch (e) { status.textContent = e.message; }
  }

  // Label each face at the slider's threshold: the page does it, without asking the server again.
  function draw() {
    if (!answer) return;
    const threshold = parseFloat(slider.value);
    sliderValue.textContent = threshold.toFixed(2);
    const scaleX = preview.clientWidth / answer.width, scaleY = preview.clientHeight / answer.height;
    boxes.replaceChildren();
    list.replaceChildren();
    answer.faces.forEach((face, i) => {
      // A face that lost its best person to another face of the photo keeps its answer: the slider never
      // names one person twice.
      const name = face.assigned ? face.identity : (face.score >= threshold ? face.best_guess : "unknown");
      const [x, y, w, h] = face.box;
      const box = el("div", { class: "box" + (name === "unknown" ? " unknown" : ""), "data-face": i });
      box.style.left = x * scaleX + "px"; box.style.top = y * scaleY + "px";
      box.style.width = w * scaleX + "px"; box.style.height = h * scaleY + "px";
      const label = el("span", { class: "label" }, `${name} ${(face.confidence * 100).toFixed(0)}%`);
      box.append(label);
      boxes.append(box);
      list.append(el("li", { class: name === "unknown" ? "unknown" : "" },
        el("strong", { class: "face-name" }, name),
        ` — confidence ${(face.confidence * 100).toFixed(1)}%, score ${face.score.toFixed(3)}` +
        (name === "unknown" ? ` (best guess ${face.best_guess})` : "")));
    });
    if (!answer.faces.length) list.append(el("li", {}, "No face found in this photo."));
  }

  async function send(file) {
    if (!file) return;
    if (!model.value) { status.textContent = "Train a model first."; return; }
    const ticket = ++sent;
    // Nothing of the previous photo's answer may stay: a resize or the slider would draw it again.
    answer = null;
    slider.disabled = true;
    status.textContent = "Recognising…";
    preview.src = URL.createObjectURL(file);
    document.getElementById("result").hidden = false;
    boxes.replaceChildren(); list.replaceChildren();
    const form = new FormData();
    form.append("photo", file);
    form.append("model", model.value);
    if (version.value) form.append("model_version", version.value);
    const started = performance.now();
    try {
      let { status: code, data } = await api("POST", "/v1/recognize", form);
      while (code === 202 && ticket === sent) {  // the workers are busy: poll until the answer is there
        status.textContent = "Queued behind other work…";
        await new Promise((r) => setTimeout(r, 1000));
        ({ status: code, data } = await api("GET", data.location));
      }
      if (ticket !== sent) return;  // another photo was sent meanwhile
      answer = data;
      slider.disabled = false;
      slider.value = data.threshold;
      status.textContent = `${data.faces.length} face(s) · ${data.model} ${data.model_version} · ` +
        `${Math.round(performance.now() - started)} ms`;
      if (preview.complete) draw(); else preview.onload = draw;
    } catch (e) {
      if (ticket === sent) status.textContent = "Could not recognise the photo: " + e.message;
    }
  }

  model.addEventListener("change", loadVersions);
  input.addEventListener("change", () => send(input.files[0]));
  slider.addEventListener("input", draw);
  window.addEventListener("resize", draw);
  ["dragenter", "dragover"].forEach((type) => drop.addEventListener(type, (e) => {
    e.preventDefault(); drop.classList.add("over");
  }));
  ["dragleave", "drop"].forEach((type) => drop.addEventListener(type, (e) => {
    e.preventDefault(); drop.classList.remove("over");
  }));
  drop.addEventListener("drop", (e) => send(e.dataTransfer.files[0]));
  loadVersions();
}

// -- Jobs ----------------------------------------------------------------------------------------
function progressCell(job) {
  const total = job.progress.total || 0, done = job.progress.done || 0;
  const pct = total ? Math.round((100 * done) / total) : (job.state === "succeeded" ? 100 : 0);
  const bar = el("div", { class: "bar", title: `${done} of ${total || "?"}` }, el("span", { "data-pct": pct }));
  return [bar, el("small", {}, `${done}/${total || "?"}` + (job.progress.stage ? ` · ${job.progress.stage}` : ""))];
}

function jobsPage(section) {
  const body = document.querySelector("#jobs tbody");
  const live = document.getElementById("live");
  function showTimes() {
    body.querySelectorAll(".took").forEach((cell) => { cell.textContent = took(cell.dataset.started, cell.dataset.finished); });
  }
  async function refresh() {
    const query = new URLSearchParams({ limit: "50" });
    if (section.dataset.type) query.set("type", section.dataset.type);
    if (section.dataset.state) query.set("state", section.dataset.state);
    try {
      const { data } = await api("GET", "/v1/jobs?" + query);
      document.getElementById("jobs-total").textContent = data.total;
      body.replaceChildren(...data.jobs.map((job) => {
        const row = el("tr", { "data-id": job.id, class: "state-" + job.state },
          el("td", {}, el("a", { href: "/jobs/" + job.id }, job.id.slice(0, 8))),
          el("td", {}, job.type), el("td", {}, job.params.model || ""),
          el("td", {}, el("span", { class: "pill " + job.state }, job.state)),
          el("td", {}, ...progressCell(job)),
          el("td", {}, job.created_at.slice(0, 19).replace("T", " ")),
          el("td", { class: "took", "data-started": job.started_at || "", "data-finished": job.finished_at || "" }));
        return row;
      }));
      if (!data.jobs.length) body.append(el("tr", {}, el("td", { colspan: "7" }, "No jobs yet.")));
      fillBars(body); showTimes();
      live.textContent = "live · " + new Date().toLocaleTimeString();
      live.classList.remove("stale");
    } catch (e) { live.textContent = "not refreshed: " + e.message; live.classList.add("stale"); }
  }
  showTimes();
  setInterval(refresh, 2000);
}

function jobPage(section) {
  const id = section.dataset.id;
  const cancel = document.getElementById("cancel");
  if (cancel) {
    cancel.addEventListener("click", async () => {
      if (!confirm("Cancel this job?")) return;
      try { await api("POST", `/v1/jobs/${id}/cancel`); location.reload(); } catch (e) { alert(e.message); }
    });
  }
  if (["queued", "running"].includes(section.dataset.state)) {
    const timer = setInterval(async () => {
      try {
        const { data: job } = await api("GET", "/v1/jobs/" + id);
        const total = job.progress.total || 0, done = job.progress.done || 0;
        document.getElementById("job-bar").style.width = (total ? (100 * done) / total : 0) + "%";
        document.getElementById("job-progress").textContent = `${done} of ${total || "?"}` +
          (job.progress.stage ? ` · ${job.progress.stage}` : "");
        document.getElementById("job-state").textContent = job.state;
        if (!["queued", "running"].includes(job.state)) { clearInterval(timer); location.reload(); }
      } catch (e) { /* keep the page as it is; the next tick tries again */ }
    }, 2000);
  }
}

// -- Models --------------------------------------------------------------------------------------
function modelsPage() {
  const status = document.getElementById("models-status");
  document.querySelectorAll("button.promote").forEach((button) => button.addEventListener("click", async () => {
    if (!confirm(`Make ${button.dataset.version} the current version of ${button.dataset.model}?`)) return;
    try {
      await api("POST", `/v1/models/${encodeURIComponent(button.dataset.model)}/promote`, { version: button.dataset.version });
      location.reload();
    } catch (e) { status.textContent = "Could not promote: " + e.message; }
  }));
  document.querySelectorAll("button.rollback").forEach((button) => button.addEventListener("click", async () => {
    if (!confirm(`Roll ${button.dataset.model} back to its previous version?`)) return;
    try {
      await api("POST", `/v1/models/${encodeURIComponent(button.dataset.model)}/rollback`);
      location.reload();
    } catch (e) { status.textContent = "Could not roll back: " + e.message; }
  }));
}

// -- Every page: say so when no worker serves a queue, rather than let jobs wait in silence ------
async function showWorkerWarnings(banner) {
  try {
    const response = await fetch("/v1/health", { credentials: "same-origin" });
    const health = await response.json();
    banner.replaceChildren(...(health.warnings || []).map((warning) => el("p", {}, warning)));
    banner.hidden = !(health.warnings || []).length;
  } catch (e) { /* the API itself is away: the page's own calls say so */ }
}

// -- Search --------------------------------------------------------------------------------------
function searchPage() {
  const index = document.getElementById("index");
  const k = document.getElementById("k");
  const prefix = document.getElementById("key-prefix");
  const rule = document.getElementById("rule");
  const input = document.getElementById("photo");
  const drop = document.getElementById("drop");
  const status = document.getElementById("status");
  const preview = document.getElementById("preview");
  const boxes = document.getElementById("boxes");
  const note = document.getElementById("query-note");
  const hits = document.getElementById("hits");
  let file = null;
  let sent = 0;  // only the latest search's answer is shown

  function fields() {
    const body = { index: index.value, k: parseInt(k.value, 10) || 12 };
    if (prefix.value.trim()) body.key_prefix = prefix.value.trim();
    if (rule.value) { const [name, value] = rule.value.split(":"); body[name] = parseFloat(value); }
    return body;
  }

  // A face of the photo searched with: the one searched boxed in blue, the others dashed (click to search them).
  function drawQuery(query) {
    boxes.replaceChildren();
    if (!query || query.kind !== "photo") return;
    const scaleX = preview.clientWidth / query.width, scaleY = preview.clientHeight / query.height;
    query.faces_in_photo.forEach((face, i) => {
      const [x, y, w, h] = face.box;
      const box = el("div", { class: "box " + (i === query.face ? "query" : "other"), "data-face": i,
                              title: i === query.face ? "the face searched for" : "search this face instead" });
      box.style.left = x * scaleX + "px"; box.style.top = y * scaleY + "px";
      box.style.width = w * scaleX + "px"; box.style.height = h * scaleY + "px";
      if (i !== query.face) box.addEventListener("click", () => searchPhoto(i));
      boxes.append(box);
    });
  }

  // A thumbnail: the face and some of its surroundings, cut from the photo, the face boxed.
  function thumbnail(face) {
    const canvas = el("canvas", { width: "320", height: "320", "aria-label": face.key });
    const image = new Image();
    image.onload = () => {
      const [x, y, w, h] = face.box;
      const side = Math.max(w, h) * 1.8, cx = x + w / 2, cy = y + h / 2;
      const sx = Math.max(0, Math.min(image.naturalWidth - side, cx - side / 2));
      const sy = Math.max(0, Math.min(image.naturalHeight - side, cy - side / 2));
      const context = canvas.getContext("2d"), scale = 320 / side;
      context.drawImage(image, sx, sy, side, side, 0, 0, 320, 320);
      context.lineWidth = 5;
      context.strokeStyle = face.match ? "#19c37d" : "#f5a524";
      context.strokeRect((x - sx) * scale, (y - sy) * scale, w * scale, h * scale);
    };
    image.src = face.photo_url;
    return canvas;
  }

  function show(answer, started) {
    hits.replaceChildren(...answer.faces.map((face) => {
      const again = el("button", { type: "button" }, "search this face");
      again.addEventListener("click", () => searchFace(face));
      return el("li", { class: "hit" + (face.match ? " match" : ""), "data-key": face.key },
        thumbnail(face),
        el("div", {}, el("span", { class: "similarity" }, face.similarity.toFixed(3)),
           el("span", { class: "badge" }, face.match ? "match" : face.match === false ? "no match" : "?")),
        el("div", { class: "key", title: face.key }, face.key), again);
    }));
    const threshold = answer.threshold === null ? "no threshold" : `threshold ${answer.threshold.toFixed(3)}`;
    status.textContent = `${answer.matches} of ${answer.faces.length} faces match (${threshold}: ${answer.threshold_rule}) · ` +
      `${Math.round(performance.now() - started)} ms`;
    if (!answer.faces.length) hits.append(el("li", {}, "No face in this index matches the filters."));
  }

  async function run(send, describe) {
    if (!index.value) { status.textContent = "Run a recognition job with an index first."; return; }
    const ticket = ++sent;
    status.textContent = "Searching…";
    hits.replaceChildren();
    const started = performance.now();
    try {
      let { status: code, data } = await send();
      while (code === 202 && ticket === sent) {  // the workers are busy: poll until the answer is there
        status.textContent = "Queued behind other work…";
        await new Promise((r) => setTimeout(r, 1000));
        ({ status: code, data } = await api("GET", data.location));
      }
      if (ticket !== sent) return;
      describe(data.query);
      show(data, started);
    } catch (e) {
      if (ticket === sent) status.textContent = "Could not search: " + e.message;
    }
  }

  function searchPhoto(face) {
    if (!file) return;
    run(() => {
      const form = new FormData();
      form.append("photo", file);
      for (const [name, value] of Object.entries(fields())) form.append(name, value);
      if (face !== undefined) form.append("face", face);
      return api("POST", "/v1/search", form);
    }, (query) => {
      note.textContent = `${query.faces_in_photo.length} face(s) in the photo; the blue one was searched for` +
        (query.faces_in_photo.length > 1 ? " (click another to search it)." : ".");
      if (preview.complete) drawQuery(query); else preview.onload = () => drawQuery(query);
      window.onresize = () => drawQuery(query);
    });
  }

  function searchFace(face) {
    document.getElementById("query").hidden = true;
    file = null;
    run(() => api("POST", "/v1/search", { ...fields(), job: face.job, key: face.key, face: face.face }),
        (query) => { status.textContent = `Searching with face ${query.face} of ${query.key}`; });
  }

  function choose(chosen) {
    if (!chosen) return;
    file = chosen;
    preview.src = URL.createObjectURL(chosen);
    document.getElementById("query").hidden = false;
    boxes.replaceChildren();
    note.textContent = "";
    searchPhoto();
  }

  input.addEventListener("change", () => choose(input.files[0]));
  ["dragenter", "dragover"].forEach((type) => drop.addEventListener(type, (e) => {
    e.preventDefault(); drop.classList.add("over");
  }));
  ["dragleave", "drop"].forEach((type) => drop.addEventListener(type, (e) => {
    e.preventDefault(); drop.classList.remove("over");
  }));
  drop.addEventListener("drop", (e) => choose(e.dataTransfer.files[0]));
}

fillBars();
const banner = document.getElementById("worker-warnings");
if (banner) { showWorkerWarnings(banner); setInterval(() => showWorkerWarnings(banner), 10000); }
// -- Clusters ------------------------------------------------------------------------------------
function clustersPage(section) {
  const status = document.getElementById("status");
  const chooser = document.getElementById("cluster-job");
  clusterEdits(section, status);
  if (chooser) chooser.addEventListener("change", () => { window.location = "/clusters?job=" + chooser.value; });
  section.querySelectorAll("form.enrol").forEach((form) => {
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const name = form.elements.name.value.trim();
      const model = form.elements.model.value;
      const body = { model, name, cluster: { job: form.dataset.job, id: Number(form.dataset.cluster) } };
      status.classList.remove("error");
      status.textContent = "Enrolling cluster " + form.dataset.cluster + " as " + name + "…";
      try {
        const { data } = await api("POST", "/v1/jobs/enroll", body);
        status.replaceChildren("Cluster " + form.dataset.cluster + " is being enrolled as " + name + " in " + model + ": ",
                               el("a", { href: "/jobs/" + data.id }, "job " + data.id.slice(0, 8)));
        form.querySelector("button").disabled = true;
      } catch (error) {
        status.classList.add("error");
        status.textContent = "Not enrolled: " + error.message;
      }
    });
  });
}

function clusterEdits(section, status) {
  section.querySelectorAll(".edit").forEach((edit) => {
    const path = "/v1/jobs/" + edit.dataset.job + "/clusters/" + edit.dataset.cluster;
    async function send(body, done) {
      try {
        await api("POST", path, body);
        window.location.reload();
      } catch (error) {
        status.classList.add("error");
        status.textContent = done + " failed: " + error.message;
      }
    }
    const mixed = edit.querySelector("button.mixed");
    mixed.addEventListener("click", () => send({ not_one_person: mixed.dataset.mixed === "true" }, "Marking"));
    const into = edit.querySelector("select.into");
    into.addEventListener("change", () => { if (into.value) send({ merged_into: Number(into.value) }, "Merging"); });
  });
}

const page = document.querySelector("[data-page]");
if (page) {
  ({ recognize: recognizePage, search: searchPage, jobs: jobsPage, job: jobPage, models: modelsPage,
     clusters: clustersPage })[page.dataset.page](page);
}
