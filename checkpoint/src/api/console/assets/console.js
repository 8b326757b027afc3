// checkpoint web console: the token, the buttons that change failures and partitions, and the
// live parts' refresh. No inline script runs: the Content-Security-Policy allows this file alone.
"use strict";

(function () {
  const KEY = "checkpoint-api-token";
  const required = document.body.dataset.tokenRequired === "true";
  const status = document.getElementById("token-status");

  function token() {
    return sessionStorage.getItem(KEY) || "";
  }

  // Buttons are usable when no token is needed or one has been given; otherwise say why.
  function refreshButtons() {
    const ready = !required || token() !== "";
    for (const button of document.querySelectorAll("button.action")) {
      button.disabled = !ready;
      button.title = ready ? "" : "Enter the API token above first";
    }
    if (required && status) {
      status.textContent = token() === ""
        ? "Retry, delete, pause and resume need the API token: enter it once for this tab."
        : "Token set for this tab: retry, delete, pause and resume are enabled.";
    }
  }

  const form = document.getElementById("token-form");
  if (form) {
    form.addEventListener("submit", function (event) {
      event.preventDefault();
      const input = document.getElementById("token-input");
      sessionStorage.setItem(KEY, input.value.trim());
      input.value = "";
      refreshButtons();
    });
    document.getElementById("token-forget").addEventListener("click", function () {
      sessionStorage.removeItem(KEY);
      refreshButtons();
    });
  }

  // What an answer says: a retry's acknowledgement, a pause or resume, a bulk summary.
  function describe(body) {
    if (body && typeof body.acknowledged === "boolean") {
      return "acknowledged " + body.acknowledged;
    }
    if (body && typeof body.paused_by_operator === "boolean") {
      return "partition " + body.partition + (body.paused_by_operator ? " paused" : " resumed") +
        (body.changed ? "" : " (it already was)");
    }
    if (body && typeof body.processed === "number") {
      const parts = [
        ["acknowledged", "acknowledged"], ["settled_otherwise", "skipped or already stored"],
        ["failed", "failed again"], ["conflicts", "without a handler"], ["deleted", "deleted"],
        ["vanished", "already gone"],
      ].filter(function (part) { return body[part[0]] > 0; })
        .map(function (part) { return body[part[0]] + " " + part[1]; });
      return body.processed + " of " + body.matched + " taken" +
        (parts.length > 0 ? ": " + parts.join(", ") : "");
    }
    return "done";
  }

  // Every change goes through the JSON API; the answer is shown in the page's status line.
  // Buttons inside a refreshed region are replaced every few seconds, so clicks are caught
  // on the document.
  document.addEventListener("click", async function (event) {
    const button = event.target.closest("button.action");
    if (!button || button.disabled) {
      return;
    }
    const answer = document.getElementById("answer");
    if (button.dataset.confirm && !window.confirm(button.dataset.confirm)) {
      return;
    }
    const headers = {};
    if (token() !== "") {
      headers.Authorization = "Bearer " + token();
    }
    answer.textContent = "…";
    answer.className = "";
    // No second press while the first is on its way (a bulk retry would run twice).
    button.disabled = true;
    let response;
    try {
      response = await fetch(button.dataset.url, { method: button.dataset.method, headers: headers });
    } catch (error) {
      answer.textContent = "Request failed: " + error;
      answer.className = "bad";
      refreshButtons();
      return;
    }
    let body = null;
    try {
      body = await response.json();
    } catch (ignored) {
      body = null;
    }
    if (response.ok) {
      answer.textContent = response.status + ": " + describe(body);
      answer.className = "ok";
      if (button.dataset.after) {
        window.location.assign(button.dataset.after);
        return;
      }
      // The listener publishes its partitions' state about once a second.
      setTimeout(refreshLive, 1200);
    } else {
      const message = body && typeof body.message === "string" ? body.message : response.statusText;
      answer.textContent = response.status + ": " + message;
      answer.className = "bad";
    }
    refreshButtons();
  });

  // A page's live part: replaced every 2 s with what the server renders (escaped).
  const live = document.querySelector("[data-refresh]");
  async function refreshLive() {
    if (!live) {
      return;
    }
    try {
      const response = await fetch(live.dataset.refresh);
      if (response.ok) {
        // Keyboard focus on a button in the region survives the refresh.
        const focused = document.activeElement;
        const key = focused && live.contains(focused) ? focused.dataset.key : undefined;
        live.innerHTML = await response.text();
        refreshButtons();
        if (key) {
          const again = live.querySelector('[data-key="' + CSS.escape(key) + '"]');
          if (again) {
            again.focus();
          }
        }
      }
    } catch (ignored) {
      // The next tick tries again.
    }
  }
  if (live) {
    setInterval(refreshLive, 2000);
  }

  refreshButtons();
})();
