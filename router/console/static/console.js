// router console: the only script. A panel with data-poll="URL" re-reads its server-rendered
// fragment every second while a job runs, and reloads the page once the fragment says it is
// done. Without JavaScript the page refreshes itself (<noscript> meta refresh) instead.
"use strict";
for (const panel of document.querySelectorAll("[data-poll]")) {
  const tick = async () => {
    try {
      const response = await fetch(panel.dataset.poll, { credentials: "same-origin" });
      if (response.ok) {
        panel.innerHTML = await response.text();
        if (panel.querySelector("[data-done]")) {
          window.location.reload();
          return;
        }
      }
    } catch (e) {
      // a failed poll is retried on the next tick
    }
    window.setTimeout(tick, 1000);
  };
  window.setTimeout(tick, 1000);
}
