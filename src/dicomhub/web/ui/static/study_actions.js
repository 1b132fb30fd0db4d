// The study page's actions, each shown only when GET /api/studies/{uid}/rights says the
// caller may: download the study as a ZIP (optionally with a DICOMDIR), send it to a
// peer (queued, then polled until nothing is left queued), delete it after a
// confirmation dialog (DELETE /dicomweb/studies/{uid}; into the trash when it is on).
import { DICOMWEB, dicomJson, json, ok, request, text, token } from "./api.js";

const study = document.getElementById("main").dataset.study;
const api = `/api/studies/${encodeURIComponent(study)}`;
const sendStatus = document.getElementById("send-status");
const actionStatus = document.getElementById("action-status");

function say(node, message, isError = false) {
  node.textContent = message;
  node.classList.toggle("error", isError);
}

// With a token the ZIP is fetched (the token goes in a header, never a URL) and saved
// from memory; without one the browser downloads the stream straight to disk.
async function download(dicomdir) {
  const url = `${api}/archive.zip${dicomdir ? "?dicomdir=true" : ""}`;
  const name = `${study}${dicomdir ? "-dicomdir" : ""}.zip`;
  const link = document.createElement("a");
  link.download = name;
  if (!token()) {
    link.href = url;
    link.click();
    return;
  }
  say(actionStatus, "Preparing the download…");
  const response = await ok(url);
  link.href = URL.createObjectURL(await response.blob());
  link.click();
  setTimeout(() => URL.revokeObjectURL(link.href), 60_000);
  say(actionStatus, `Downloaded ${name}`);
}

function describe(send) {
  const parts = [`${send.sent} sent`];
  if (send.queued) parts.push(`${send.queued} queued`);
  if (send.dead) parts.push(`${send.dead} failed`);
  if (send.skipped) parts.push(`${send.skipped} skipped`);
  const error = send.last_error && (send.queued || send.dead) ? ` (last error: ${send.last_error})` : "";
  return `${send.to}: ${parts.join(", ")}${error}`;
}

async function pollSends(to) {
  for (;;) {
    const state = await json(`${api}/send`);
    const send = state.sends.find((s) => s.to === to);
    if (send) {
      say(sendStatus, describe(send), send.dead > 0);
      if (!send.queued) {
        sendStatus.dataset.done = "true";
        return;
      }
    }
    await new Promise((resolve) => setTimeout(resolve, 1000));
  }
}

async function setUpSend() {
  const state = await json(`${api}/send`);
  const select = document.getElementById("send-to");
  for (const peer of state.peers) {
    const option = document.createElement("option");
    option.value = peer.name;
    option.textContent = peer.description ? `${peer.name} (${peer.description})` : peer.name;
    select.append(option);
  }
  if (!state.peers.length) return;
  const form = document.getElementById("send-form");
  form.hidden = false;
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    delete sendStatus.dataset.done;
    try {
      const queued = await json(`${api}/send`, {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ to: select.value }),
      });
      say(sendStatus, `${queued.queued} instances queued for ${queued.to}`);
      await pollSends(queued.to);
    } catch (error) {
      say(sendStatus, String(error.message || error), true);
    }
  });
}

async function setUpDelete(rights) {
  const { items } = await dicomJson(`${DICOMWEB}/studies?StudyInstanceUID=${encodeURIComponent(study)}`);
  const patientId = items.length ? text(items[0], "PatientID") : "";
  // A study without a patient ID is confirmed with the word DELETE.
  const expected = patientId || "DELETE";
  const dialog = document.getElementById("delete-dialog");
  const input = document.getElementById("delete-confirm");
  const error = document.getElementById("delete-error");
  const days = rights.trash_keep / 86400;
  document.getElementById("delete-where").textContent =
    rights.trash_keep > 0
      ? `It goes to the trash, where it can be restored for ${days >= 1 ? `${Math.round(days * 10) / 10} days` : `${Math.round(rights.trash_keep)} seconds`}; then it is purged.`
      : "There is no trash on this archive: it is deleted for good.";
  document.getElementById("delete-prompt").textContent = patientId
    ? `Type the patient ID (${patientId}) to confirm`
    : "Type DELETE to confirm";
  document.getElementById("delete-actions").hidden = false;
  document.getElementById("delete-study").addEventListener("click", () => {
    input.value = "";
    error.textContent = "";
    dialog.showModal();
  });
  document.getElementById("delete-no").addEventListener("click", () => dialog.close());
  document.getElementById("delete-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    if (input.value.trim() !== expected) {
      error.textContent = "That is not it: nothing was deleted.";
      return;
    }
    const response = await request(`${DICOMWEB}/studies/${encodeURIComponent(study)}`, { method: "DELETE" });
    if (!response.ok) {
      let reason = `${response.status} ${response.statusText}`;
      try {
        reason = `${response.status}: ${(await response.json()).error}`;
      } catch (_) {
        // the status line says it
      }
      error.textContent = reason;
      return;
    }
    dialog.close();
    say(actionStatus, rights.trash_keep > 0 ? "Deleted (moved to the trash)." : "Deleted.");
    document.getElementById("main").dataset.deleted = "true";
    setTimeout(() => window.location.assign("/"), 1500);
  });
}

async function setUp() {
  let rights;
  try {
    rights = await json(`${api}/rights`);
  } catch (_) {
    return; // not logged in, or a study one may not see: the page says so already
  }
  const tasks = [];
  if (rights.retrieve) {
    document.getElementById("download-actions").hidden = false;
    document.getElementById("download-zip").addEventListener("click", () =>
      download(false).catch((e) => say(actionStatus, String(e.message || e), true)),
    );
    document.getElementById("download-dicomdir").addEventListener("click", () =>
      download(true).catch((e) => say(actionStatus, String(e.message || e), true)),
    );
  }
  if (rights.export) tasks.push(setUpSend());
  if (rights.delete) tasks.push(setUpDelete(rights));
  document.getElementById("actions").hidden = !(rights.retrieve || rights.export || rights.delete);
  for (const result of await Promise.allSettled(tasks)) {
    if (result.status === "rejected") say(actionStatus, String(result.reason.message || result.reason), true);
  }
  // Every control the caller may use is shown now (the tests wait for this).
  document.getElementById("actions").dataset.ready = "true";
}

setUp();
