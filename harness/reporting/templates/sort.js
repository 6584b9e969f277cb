// Sort a table.sortable by the clicked column: numbers numerically (NaN last), text alphabetically.
(function () {
  function key(cell) {
    var raw = cell.getAttribute("data-value");
    if (raw === null) { raw = cell.textContent.trim(); }
    var number = parseFloat(raw);
    return isNaN(number) ? { n: false, v: raw.toLowerCase() } : { n: true, v: number };
  }
  function compare(a, b) {
    if (a.n !== b.n) { return a.n ? -1 : 1; }
    return a.v < b.v ? -1 : a.v > b.v ? 1 : 0;
  }
  function sortBy(table, column, head) {
    var ascending = head.getAttribute("aria-sort") !== "ascending";
    Array.prototype.forEach.call(head.parentNode.cells, function (cell) { cell.removeAttribute("aria-sort"); });
    head.setAttribute("aria-sort", ascending ? "ascending" : "descending");
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (r, s) {
      var order = compare(key(r.cells[column]), key(s.cells[column]));
      return ascending ? order : -order;
    });
    rows.forEach(function (row) { body.appendChild(row); });
  }
  Array.prototype.forEach.call(document.querySelectorAll("table.sortable"), function (table) {
    var heads = table.tHead.rows[0].cells;
    Array.prototype.forEach.call(heads, function (head, column) {
      head.tabIndex = 0;
      head.title = "Sort by " + head.textContent.trim();
      head.addEventListener("click", function () { sortBy(table, column, head); });
      head.addEventListener("keydown", function (event) {
        if (event.key === "Enter" || event.key === " ") { event.preventDefault(); sortBy(table, column, head); }
      });
    });
  });
})();
