// Sortable tables: a click (or Enter) on a header of a table.sortable sorts its body by that column, again to reverse. A cell's
// data-sort value (a number, or empty when missing) is its key, else its text; missing values stay last either way.
document.querySelectorAll("table.sortable").forEach((table) => {
  const headers = [...table.tHead.rows[0].cells];
  const key = (row, column) => {
    const cell = row.cells[column], value = cell.dataset.sort ?? cell.textContent.trim();
    return value === "" ? null : Number.isNaN(Number(value)) ? value : Number(value);
  };
  const sort = (header, column) => {
    const ascending = header.getAttribute("aria-sort") !== "ascending";
    headers.forEach((h) => h.removeAttribute("aria-sort"));
    header.setAttribute("aria-sort", ascending ? "ascending" : "descending");
    const body = table.tBodies[0];
    const rows = [...body.rows].sort((r, s) => {
      const a = key(r, column), b = key(s, column);
      if (a === null || b === null) return (a === null) - (b === null);
      const order = typeof a === "number" && typeof b === "number" ? a - b : String(a).localeCompare(String(b));
      return ascending ? order : -order;
    });
    rows.forEach((row) => body.appendChild(row));
  };
  headers.forEach((header, column) => {
    header.tabIndex = 0;
    header.title = "sort by this column";
    header.addEventListener("click", () => sort(header, column));
    header.addEventListener("keydown", (event) => event.key === "Enter" && sort(header, column));
  });
});
