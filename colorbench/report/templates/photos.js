// The photo comparison: its rows sorted by A's advantage over B on the chosen metric (largest first), the chosen number of rows
// from each end shown (where A wins most, where it loses most), each row's scores rewritten for that metric.
(() => {
  const table = document.getElementById("photo-rows");
  if (!table) return;
  const body = table.tBodies[0], metric = document.getElementById("photo-metric"), count = document.getElementById("photo-count");
  const rows = [...body.rows].map((row) => ({ row, scores: JSON.parse(row.dataset.scores) }));
  const gap = document.createElement("tr");
  gap.className = "gap";
  gap.innerHTML = '<td colspan="6"></td>';
  const number = (value, signed) => (value === null ? "-" : (signed && value > 0 ? "+" : "") + value.toFixed(3));
  const advantage = (entry) => entry.scores[metric.value]?.[2] ?? -Infinity;
  function update() {
    const m = metric.value, n = Math.max(1, Math.floor(Number(count.value)) || 1);
    const sorted = rows.slice().sort((r, s) => advantage(s) - advantage(r));
    const hidden = Math.max(0, sorted.length - 2 * n);
    gap.remove();
    sorted.forEach((entry, k) => {
      const [a, b, adv] = entry.scores[m] ?? [null, null, null];
      entry.row.querySelector(".score-a").textContent = `${m} ${number(a)}`;
      entry.row.querySelector(".score-b").textContent = `${m} ${number(b)}`;
      const delta = entry.row.querySelector(".delta");
      delta.textContent = a === null || b === null ? "-" : number(a - b, true);
      delta.dataset.advantage = adv ?? "";
      delta.className = "delta " + (adv > 0 ? "win" : adv < 0 ? "loss" : "");
      entry.row.hidden = hidden > 0 && k >= n && k < sorted.length - n;
      body.appendChild(entry.row);
    });
    if (hidden) {
      gap.cells[0].textContent = `… ${hidden} photo${hidden > 1 ? "s" : ""} in between …`;
      body.insertBefore(gap, sorted[sorted.length - n].row);
    }
  }
  metric.addEventListener("change", update);
  count.addEventListener("input", update);
  update();
})();
