// The study page's extra sections: what the archive's checks found in the study
// (/api/studies/{study}/findings: IOD validation findings, pixel data that did not
// decode) and who accessed it (/audit?study=, for those who may read the audit log:
// for anyone else the archive answers 403 and the section stays hidden).
import { el, json, request } from "./api.js";

const AUDIT_ROWS = 50;

function table(caption, headings, rows) {
  return el(
    "table",
    { class: "results" },
    el("caption", { text: caption }),
    el("thead", {}, el("tr", {}, ...headings.map((h) => el("th", { scope: "col", text: h })))),
    el("tbody", {}, ...rows.map((cells) => el("tr", {}, ...cells.map((c) => el("td", { text: c ?? "" }))))),
  );
}

function when(iso) {
  return iso ? iso.replace("T", " ").replace(/(\.\d+)?(\+00:00|Z)$/, " UTC") : "";
}

export async function showChecks(study) {
  const box = document.getElementById("checks");
  const found = await json(`/api/studies/${encodeURIComponent(study)}/findings`);
  const parts = [];
  if (found.validation.length) {
    parts.push(
      table(
        "Validation findings",
        ["Severity", "Attribute", "Module", "Finding", "SOP Instance UID", "Checked"],
        found.validation.map((f) => [f.severity, f.attribute, f.module, f.message, f.sop_instance_uid, when(f.checked_at)]),
      ),
    );
  }
  if (found.decode_failures.length) {
    parts.push(
      table(
        "Pixel data that did not decode",
        ["SOP Instance UID", "Transfer syntax", "Reason", "Checked"],
        found.decode_failures.map((f) => [f.sop_instance_uid, f.transfer_syntax_uid, f.reason, when(f.checked_at)]),
      ),
    );
  }
  if (!parts.length) parts.push(el("p", { class: "none", text: "No validation findings and no decode failures." }));
  box.replaceChildren(...parts);
}

export async function showAccess(study) {
  const section = document.getElementById("access-section");
  const response = await request(`/audit?study=${encodeURIComponent(study)}&limit=${AUDIT_ROWS}`);
  // 403: the caller may not read the audit log; the section is not for it.
  if (!response.ok) {
    section.hidden = true;
    return;
  }
  const events = await response.json();
  section.hidden = false;
  document
    .getElementById("access")
    .replaceChildren(
      events.length
        ? table(
            `Latest ${Math.min(events.length, AUDIT_ROWS)} audit events of this study`,
            ["When", "Action", "Outcome", "Who", "Channel", "From"],
            events.map((e) => [when(e.at), e.action, e.outcome, e.principal || e.ae_title || "", e.channel, e.address]),
          )
        : el("p", { class: "none", text: "No audit events." }),
    );
}
