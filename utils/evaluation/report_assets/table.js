// Sorting of the comparison page's tables: click a column's header to sort by it (again to reverse).
"use strict";
(function () {
  function value(cell) {
    const text = cell.dataset.value !== undefined ? cell.dataset.value : cell.textContent;
    const number = Number(text);
    return text.trim() !== "" && !Number.isNaN(number) ? number : text.toLowerCase();
  }

  function compare(a, b) {
    const numeric = typeof a === "number";
    if (numeric !== (typeof b === "number")) return numeric ? -1 : 1; // numbers before text
    return numeric ? a - b : a < b ? -1 : a > b ? 1 : 0;
  }

  function sortBy(table, column) {
    const header = table.tHead.rows[0].cells[column];
    const ascending = header.getAttribute("aria-sort") !== "ascending";
    for (const cell of table.tHead.rows[0].cells) cell.removeAttribute("aria-sort");
    header.setAttribute("aria-sort", ascending ? "ascending" : "descending");
    const body = table.tBodies[0];
    const rows = Array.from(body.rows).map((row, index) => [value(row.cells[column]), index, row]);
    rows.sort((x, y) => (ascending ? compare(x[0], y[0]) : compare(y[0], x[0])) || x[1] - y[1]);
    for (const [, , row] of rows) body.appendChild(row);
  }

  for (const table of document.querySelectorAll("table.sortable")) {
    Array.from(table.tHead.rows[0].cells).forEach(function (cell, column) {
      cell.addEventListener("click", function () {
        sortBy(table, column);
      });
    });
  }
})();
