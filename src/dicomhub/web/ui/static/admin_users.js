// Users and grants (/users, /users/NAME/tokens, /grants): add a user with a first grant,
// issue a token (shown once) or revoke them all, add and remove grants.
import { el, json, setStatus, start } from "./api.js";
import { button, fill, gate, post, row } from "./admin.js";

// The archive's roles (model/access.py ROLES), for the menus; the server refuses any other.
const ROLES = ["admin", "uploader", "reader", "exporter", "curator", "deidentifier", "reidentifier"];
const tbody = document.querySelector("#users tbody");
const userForm = document.getElementById("user-form");
const grantForm = document.getElementById("grant-form");

function showToken(created) {
  document.getElementById("new-token-user").textContent = created.name;
  document.getElementById("new-token-value").textContent = created.token;
  document.getElementById("new-token").hidden = false;
}

function grantItem(user, grant) {
  // "role@scope", as GET /users gives them.
  const at = grant.indexOf("@");
  const role = grant.slice(0, at);
  const scope = grant.slice(at + 1);
  const query = new URLSearchParams({ principal: user.name, role, scope });
  return el(
    "li",
    {},
    `${role} on ${scope}`,
    button("×", async () => {
      await json(`/grants?${query}`, { method: "DELETE" });
      setStatus(`Removed ${role} on ${scope} from ${user.name}.`);
      await load();
    }, { "aria-label": `Remove ${role} on ${scope} from ${user.name}` }),
  );
}

async function load() {
  const users = await json("/users");
  fill(
    tbody,
    users.map((user) => {
      const name = encodeURIComponent(user.name);
      const grants = el("ul", { class: "labels" }, ...user.grants.map((g) => grantItem(user, g)));
      const actions = el(
        "span",
        { class: "inline" },
        button("New token", async () => {
          showToken(await post(`/users/${name}/tokens`, { label: "web UI" }));
          await load();
        }, { "aria-label": `New token for ${user.name}` }),
        button("Revoke tokens", async () => {
          if (!window.confirm(`Revoke every token of ${user.name}?`)) return;
          const answer = await json(`/users/${name}/tokens`, { method: "DELETE" });
          setStatus(`Revoked ${answer.revoked} token(s) of ${user.name}.`);
          await load();
        }, { "aria-label": `Revoke the tokens of ${user.name}` }),
      );
      const tr = row(user.name, user.kind, grants, String(user.active_tokens), actions);
      tr.dataset.user = user.name;
      return tr;
    }),
    "No users yet.",
  );
}

function value(form, name) {
  return form.elements[name].value.trim();
}

userForm.addEventListener("submit", async (event) => {
  event.preventDefault();
  try {
    const created = await post("/users", {
      name: value(userForm, "name"),
      kind: value(userForm, "kind"),
      grants: [{ role: value(userForm, "role"), scope: value(userForm, "scope") }],
    });
    showToken(created);
    setStatus(`Added ${created.name}.`);
    userForm.reset();
    await load();
  } catch (error) {
    setStatus(String(error.message || error), true);
  }
});

grantForm.addEventListener("submit", async (event) => {
  event.preventDefault();
  try {
    const body = { principal: value(grantForm, "principal"), role: value(grantForm, "role"), scope: value(grantForm, "scope") };
    const answer = await post("/grants", body);
    setStatus(answer.added ? `Granted ${body.role} on ${body.scope} to ${body.principal}.` : "That grant was held already.");
    await load();
  } catch (error) {
    setStatus(String(error.message || error), true);
  }
});

for (const select of [userForm.elements.role, grantForm.elements.role]) {
  // "reader" selected by default, so that a form's reset returns to it and not to "admin".
  for (const role of ROLES) select.add(new Option(role, role, role === "reader", role === "reader"));
}

start(async () => {
  if (await gate()) await load();
});
