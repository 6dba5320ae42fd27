// Signing in from another device: when Tandem serves the network, a page opened on another
// computer needs the API key once; the server trades it for a cookie the browser keeps.

let dialog = null;

export function askForKey() {
  if (dialog) return;
  dialog = document.createElement("dialog");
  dialog.id = "sign-in";
  const form = document.createElement("form");
  form.method = "dialog";
  const title = document.createElement("h2");
  title.textContent = "Enter this Tandem's API key";
  const text = document.createElement("p");
  text.textContent = "Tandem runs on another computer. Its key is on that computer's Settings page, " +
    "under Network access (New key makes one).";
  const key = document.createElement("input");
  Object.assign(key, { type: "password", id: "sign-in-key", autocomplete: "current-password", required: true,
    placeholder: "tdm-…", spellcheck: false });
  key.setAttribute("aria-label", "API key");
  const error = document.createElement("p");
  error.className = "field-error";
  error.setAttribute("role", "alert");
  const go = document.createElement("button");
  go.type = "submit";
  go.className = "primary";
  go.textContent = "Sign in";
  form.append(title, text, key, error, go);
  dialog.append(form);
  dialog.addEventListener("cancel", (e) => e.preventDefault());  // nothing works without the key
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    go.disabled = true;
    error.textContent = "";
    try {
      const resp = await fetch("/api/auth", {
        method: "POST", headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ key: key.value.trim() }),
      });
      if (resp.ok) {
        location.reload();
        return;
      }
      const body = await resp.json().catch(() => ({}));
      error.textContent = body.error?.message ?? `Sign-in failed (${resp.status}).`;
    } catch {
      error.textContent = "Tandem's server is not answering.";
    }
    go.disabled = false;
    key.select();
  });
  document.body.append(dialog);
  const banner = document.getElementById("error-banner");
  if (banner) banner.hidden = true;
  dialog.showModal();
  key.focus();
}
