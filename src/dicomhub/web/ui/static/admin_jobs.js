// Jobs: de-identification runs (/deid/jobs), migrations (/migrations, with stop and
// resume), print jobs (/print/jobs) and the routing queue (/admin/routes/queue); the
// page reloads them every 2 s while any run or migration is still going. A study's
// UID in the URL (?study=, from the study page) fills in the de-identification form.
import { el, json, setStatus, start } from "./api.js";
import { button, fill, gate, post, row, when, words } from "./admin.js";

// De-identification runs and migrations that are not finished yet.
const RUNNING = new Set(["pending", "running", "stopping"]);
const deidForm = document.getElementById("deid-form");
const migrationForm = document.getElementById("migration-form");
let timer = null;

function progress(done, total) {
  const bar = el("progress", { max: String(Math.max(total, 1)), value: String(done) });
  return el("span", { class: "inline" }, bar, `${done} / ${total}`);
}

function state(value) {
  return el("span", { class: `state ${value}`, text: value });
}

function deidRows(runs) {
  return runs.map((run) => {
    const done = run.stored + run.already_present + run.refused + run.failed;
    const tr = row(
      String(run.id),
      run.project,
      run.source_study_uid || run.source_series_uid || "",
      state(run.status),
      progress(done, run.total),
      run.target_study_uid || "",
      run.actor,
    );
    tr.dataset.run = String(run.id);
    if (run.error) tr.title = run.error;
    return tr;
  });
}

function migrationRows(jobs) {
  return jobs.map((job) => {
    const p = job.progress || {};
    const actions = el("span", { class: "inline" });
    if (RUNNING.has(job.state)) {
      actions.append(button("Stop", () => act(job, "stop"), { "aria-label": `Stop migration ${job.id}` }));
    } else if (job.state !== "done") {
      actions.append(button("Resume", () => act(job, "resume"), { "aria-label": `Resume migration ${job.id}` }));
    }
    const tr = row(
      String(job.id),
      job.direction,
      job.remote,
      state(job.state),
      progress(p.instances_done || 0, p.instances || 0),
      actions,
    );
    tr.dataset.job = String(job.id);
    if (job.error) tr.title = job.error;
    return tr;
  });
}

async function act(job, what) {
  await post(`/migrations/${job.id}/${what}`);
  setStatus(`Migration ${job.id}: ${what} requested.`);
  await load();
}

async function load() {
  const [runs, jobs, prints, queue, peers] = await Promise.all([
    json("/deid/jobs?limit=50"),
    json("/migrations"),
    json("/print/jobs?limit=50"),
    json("/admin/routes/queue"),
    json("/admin/peers"),
  ]);
  fill(document.querySelector("#deid-jobs tbody"), deidRows(runs), "No de-identification runs yet.");
  fill(document.querySelector("#migration-jobs tbody"), migrationRows(jobs), "No migrations yet.");
  fill(
    document.querySelector("#print-jobs tbody"),
    prints.map((p) => row(p.id, p.source_ae, state(p.state), String(p.films.length), when(p.created_at))),
    "No print jobs yet.",
  );
  const routes = new Map();
  for (const d of queue) {
    const key = `${d.route}\u0000${d.destination}`;
    if (!routes.has(key)) routes.set(key, { route: d.route, destination: d.destination, states: [] });
    routes.get(key).states.push(`${d.state}: ${d.count}`);
  }
  fill(
    document.querySelector("#routing-queue tbody"),
    [...routes.values()].map((r) => row(r.route, r.destination, r.states.join(", "))),
    "The routing queue is empty.",
  );
  const select = migrationForm.elements.peer;
  const chosen = select.value;
  select.replaceChildren(...peers.filter((p) => p.roles.some((r) => r.startsWith("migration-"))).map((p) => new Option(p.name)));
  if (chosen) select.value = chosen;
  const busy = runs.some((r) => RUNNING.has(r.status)) || jobs.some((j) => RUNNING.has(j.state));
  clearTimeout(timer);
  if (busy) timer = setTimeout(() => load().catch((e) => setStatus(String(e.message || e), true)), 2000);
}

function value(form, name) {
  return form.elements[name].value.trim();
}

deidForm.addEventListener("submit", async (event) => {
  event.preventDefault();
  try {
    const run = await post("/deid/jobs", {
      project: value(deidForm, "project"),
      study: value(deidForm, "study"),
      reason: value(deidForm, "reason"),
      options: words(value(deidForm, "options")),
    });
    setStatus(`De-identification run ${run.id} started.`);
    await load();
  } catch (error) {
    setStatus(String(error.message || error), true);
  }
});

migrationForm.addEventListener("submit", async (event) => {
  event.preventDefault();
  const body = { [value(migrationForm, "direction")]: value(migrationForm, "peer") };
  for (const name of ["since", "until"]) {
    const date = value(migrationForm, name).replaceAll("-", "");
    if (date) body[name] = date;
  }
  const modality = value(migrationForm, "modality");
  if (modality) body.modality = modality;
  try {
    const job = await post("/migrations", body);
    setStatus(`Migration ${job.id} queued.`);
    await load();
  } catch (error) {
    setStatus(String(error.message || error), true);
  }
});

start(async () => {
  const study = new URLSearchParams(window.location.search).get("study");
  if (study) deidForm.elements.study.value = study;
  if (await gate()) await load();
});
