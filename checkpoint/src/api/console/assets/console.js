// checkpoint web console: the token, the buttons that change a failure, and the overview's
// refresh. No inline script runs: the Content-Security-Policy allows this file alone.
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
        ? "Retry and delete need the API token: enter it once for this tab."
        : "Token set for this tab: retry and delete are enabled.";
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

  // Retry or delete through the JSON API; the answer is shown next to the buttons.
  for (const button of document.querySelectorAll("button.action")) {
    button.addEventListener("click", async function () {
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
      let response;
      try {
        response = await fetch(button.dataset.url, { method: button.dataset.method, headers: headers });
      } catch (error) {
        answer.textContent = "Request failed: " + error;
        answer.className = "bad";
        return;
      }
      let body = null;
      try {
        body = await response.json();
      } catch (ignored) {
        body = null;
      }
      if (response.ok) {
        const acknowledged = body && body.acknowledged === true;
        answer.textContent = response.status + ": acknowledged " + acknowledged;
        answer.className = "ok";
        if (button.dataset.after) {
          window.location.assign(button.dataset.after);
        }
      } else {
        const message = body && typeof body.message === "string" ? body.message : response.statusText;
        answer.textContent = response.status + ": " + message;
        answer.className = "bad";
      }
    });
  }

  // The overview's live part: replaced every 2 s with what the server renders (escaped).
  const live = document.querySelector("[data-refresh]");
  if (live) {
    setInterval(async function () {
      try {
        const response = await fetch(live.dataset.refresh);
        if (response.ok) {
          live.innerHTML = await response.text();
        }
      } catch (ignored) {
        // The next tick tries again.
      }
    }, 2000);
  }

  refreshButtons();
})();
