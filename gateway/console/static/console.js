// agentaudit console: small helpers only; every page works without them (the server checks everything).
"use strict";
document.addEventListener("DOMContentLoaded", () => {
  // The kill-switch form names the scope that will be engaged, and the confirmation must repeat it.
  const scope = document.getElementById("scope");
  const target = document.getElementById("target");
  const expected = document.getElementById("expected");
  const update = () => {
    if (scope && target && expected) {
      expected.textContent = `${scope.value}:${target.value.trim() || "*"}`;
    }
  };
  if (scope && target) {
    scope.addEventListener("change", update);
    target.addEventListener("input", update);
    update();
  }
  // A denial needs a justification: say so before the round trip.
  const vote = document.getElementById("vote-form");
  if (vote) {
    vote.addEventListener("submit", (event) => {
      const button = event.submitter;
      const comment = document.getElementById("comment");
      if (button && button.value === "deny" && comment && !comment.value.trim()) {
        comment.setCustomValidity("A denial needs a justification.");
        comment.reportValidity();
        event.preventDefault();
      } else if (comment) {
        comment.setCustomValidity("");
      }
    });
    const comment = document.getElementById("comment");
    if (comment) comment.addEventListener("input", () => comment.setCustomValidity(""));
  }
});
