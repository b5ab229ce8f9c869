// The web chat page. Talks only to its own origin; the token comes from the URL fragment (never
// sent to the server as part of a URL) and goes out only as an Authorization header. Messages
// are shown with textContent, never as HTML.
"use strict";

(function () {
  let token = "";
  try { token = decodeURIComponent(location.hash.slice(1)).trim(); } catch (e) { token = ""; }
  const log = document.getElementById("log");
  const status = document.getElementById("status");
  const form = document.getElementById("compose");
  const input = document.getElementById("text");
  const messages = new Map(); // id -> element
  let version = 0;

  function setStatus(text, isError) {
    status.textContent = text;
    status.className = isError ? "error" : "";
  }

  function api(method, path, body) {
    const init = { method: method, headers: { "Authorization": "Bearer " + token }, cache: "no-store" };
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    return fetch(path, init);
  }

  function errorCode(response) {
    return response.json().then(function (b) { return (b && b.error && b.error.code) || "error"; },
      function () { return "error"; });
  }

  function sleep(ms) { return new Promise(function (r) { setTimeout(r, ms); }); }

  function render(m) {
    let el = messages.get(m.id);
    if (!el) {
      el = document.createElement("div");
      messages.set(m.id, el);
      log.appendChild(el);
    }
    el.className = "msg " + (m.author === "user" ? "user" : "assistant");
    el.replaceChildren();
    const p = document.createElement("p");
    p.textContent = m.text;
    el.appendChild(p);
    if (m.buttons && m.buttons.length) {
      const row = document.createElement("div");
      row.className = "buttons";
      m.buttons.forEach(function (b) {
        const button = document.createElement("button");
        button.type = "button";
        button.textContent = b.label;
        button.addEventListener("click", function () { press(m.id, b.payload, el, row); });
        row.appendChild(button);
      });
      el.appendChild(row);
    }
    log.scrollTop = log.scrollHeight;
  }

  async function press(messageId, payload, el, row) {
    row.querySelectorAll("button").forEach(function (b) { b.disabled = true; });
    const old = el.querySelector(".note");
    if (old) old.remove();
    let note = "";
    try {
      const r = await api("POST", "/api/press", { message_id: messageId, payload: payload });
      if (r.status === 409) note = "This button is no longer valid.";
      else if (!r.ok) note = "Not sent (" + await errorCode(r) + "). Try again.";
    } catch (e) {
      note = "Not sent (offline). Try again.";
    }
    if (note) {
      const n = document.createElement("div");
      n.className = "note";
      n.textContent = note;
      el.appendChild(n);
      row.querySelectorAll("button").forEach(function (b) { b.disabled = false; });
    }
  }

  async function send(text) {
    const clientId = crypto.randomUUID();
    for (let attempt = 0; attempt < 6; attempt++) {
      try {
        const r = await api("POST", "/api/messages", { client_id: clientId, text: text });
        if (r.ok) { setStatus("Connected", false); return true; }
        const code = await errorCode(r);
        if (r.status !== 503) { setStatus("Not sent: " + code, true); return false; }
        setStatus("Sending… (" + code + ")", true);
      } catch (e) {
        setStatus("Sending… (offline)", true);
      }
      await sleep(1000 * (attempt + 1)); // the same client id: the gateway publishes it once
    }
    setStatus("Not sent. Try again.", true);
    return false;
  }

  async function poll() {
    for (;;) {
      try {
        const r = await api("GET", "/api/messages?after=" + version);
        if (r.status === 401) { setStatus("The link's token is missing or wrong.", true); return; }
        if (!r.ok) throw new Error(await errorCode(r));
        const body = await r.json();
        body.messages.forEach(render);
        version = body.version;
        setStatus("Connected", false);
      } catch (e) {
        setStatus("Reconnecting…", true);
        await sleep(2000);
      }
    }
  }

  form.addEventListener("submit", async function (ev) {
    ev.preventDefault();
    const text = input.value.trim();
    if (!text) return;
    input.disabled = true;
    if (await send(text)) input.value = "";
    input.disabled = false;
    input.focus();
  });
  input.addEventListener("keydown", function (ev) {
    if (ev.key === "Enter" && !ev.shiftKey) { ev.preventDefault(); form.requestSubmit(); }
  });

  if (!token) { setStatus("Open the link with the token (see the gateway's log).", true); return; }
  poll();
})();
