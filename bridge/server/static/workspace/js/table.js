// A virtualised table: only the rows in view (plus a few) exist in the DOM, so 100,000 cells
// scroll as lightly as 100.  Rows are positions into an index array (the filtered, sorted
// view); the caller supplies the cell text.

const ROW_HEIGHT = 24;
const OVERSCAN = 8;

export class VirtualTable {
  // columns: [{key, title, width, numeric}]; text(row, key) -> string
  constructor(container, columns, text, { onRowClick, onSort } = {}) {
    this.container = container;
    this.columns = columns;
    this.text = text;
    this.onRowClick = onRowClick || (() => {});
    this.onSort = onSort || (() => {});
    this.index = new Int32Array(0);
    this.active = -1;
    container.replaceChildren();
    container.classList.add("vtable");
    this.header = document.createElement("div");
    this.header.className = "vhead";
    this.header.setAttribute("role", "row");
    for (const column of columns) {
      const cell = document.createElement("button");
      cell.type = "button";
      cell.className = "vcell" + (column.numeric ? " num" : "");
      cell.style.width = `${column.width}px`;
      cell.textContent = column.title;
      cell.dataset.key = column.key;
      cell.addEventListener("click", () => this.onSort(column.key));
      this.header.appendChild(cell);
    }
    this.viewport = document.createElement("div");
    this.viewport.className = "vviewport";
    this.spacer = document.createElement("div");
    this.spacer.className = "vspacer";
    this.rows = document.createElement("div");
    this.rows.className = "vrows";
    this.spacer.appendChild(this.rows);
    this.viewport.appendChild(this.spacer);
    container.append(this.header, this.viewport);
    this.viewport.addEventListener("scroll", () => this.render());
    this.rows.addEventListener("click", (e) => {
      const row = e.target.closest(".vrow");
      if (row) this.onRowClick(Number(row.dataset.row));
    });
    new ResizeObserver(() => this.render()).observe(this.viewport);
  }

  setIndex(index) {
    this.index = index;
    this.spacer.style.height = `${index.length * ROW_HEIGHT}px`;
    this.render();
  }

  setActive(row) {
    this.active = row;
    this.render();
  }

  scrollToRow(row) {
    const at = this.index.indexOf(row);
    if (at >= 0) this.viewport.scrollTop = Math.max(0, at * ROW_HEIGHT - this.viewport.clientHeight / 2);
  }

  render() {
    const height = this.viewport.clientHeight || 400;
    const first = Math.max(0, Math.floor(this.viewport.scrollTop / ROW_HEIGHT) - OVERSCAN);
    const last = Math.min(this.index.length, Math.ceil((this.viewport.scrollTop + height) / ROW_HEIGHT) + OVERSCAN);
    this.rows.style.transform = `translateY(${first * ROW_HEIGHT}px)`;
    const needed = last - first;
    while (this.rows.children.length < needed) {
      const row = document.createElement("div");
      row.className = "vrow";
      row.setAttribute("role", "row");
      for (const column of this.columns) {
        const cell = document.createElement("span");
        cell.className = "vcell" + (column.numeric ? " num" : "");
        cell.style.width = `${column.width}px`;
        row.appendChild(cell);
      }
      this.rows.appendChild(row);
    }
    while (this.rows.children.length > needed) this.rows.lastChild.remove();
    for (let k = 0; k < needed; k++) {
      const rowIndex = this.index[first + k];
      const row = this.rows.children[k];
      row.dataset.row = String(rowIndex);
      row.classList.toggle("active", rowIndex === this.active);
      this.columns.forEach((column, j) => {
        row.children[j].textContent = this.text(rowIndex, column.key);
      });
    }
  }
}
