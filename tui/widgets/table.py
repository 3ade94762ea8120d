"""A DataTable for many one-line rows: column widths from string lengths, not Rich measurement."""

from __future__ import annotations

from itertools import zip_longest
from typing import Any, Iterable, Sequence

from rich.cells import cell_len
from rich.text import Text
from textual.render import measure
from textual.widgets import DataTable
from textual.widgets._data_table import Row, default_cell_formatter
from textual.widgets.data_table import CellKey, ColumnKey, DuplicateKey, RowKey


def plain_width(cell: Any) -> int | None:
    """Cell width of a one-line cell without markup; None when only Rich can tell."""
    if isinstance(cell, str):
        return None if ("[" in cell or "\n" in cell) else cell_len(cell)
    if isinstance(cell, Text):
        return None if "\n" in cell.plain else cell.cell_len
    return None


class FastTable(DataTable[Any]):
    """A :class:`DataTable` that sizes columns cheaply when thousands of rows arrive at once.

    Textual measures every new cell through the Rich console (formatting, markup parsing, a
    terminal-size query per cell): about 0.1 ms per cell, so 8,000 cells of a 1,000-run table
    took longer than everything else at start-up. Cells that are plain strings (no markup) or
    one-line :class:`~rich.text.Text` are measured here by their cell length, which is what Rich
    would report for them; any other cell or row (labels, auto height) goes through Textual.

    After :meth:`update_cell`, Textual re-measures a whole column for every updated cell that
    got narrower (quadratic when a poll changes hundreds of cells); here such a column is
    re-measured once per batch, plain cells by their length.

    :meth:`add_keyed_rows` appends many rows with the bookkeeping ``add_row`` does per row
    (column ordering, cursor validation, idle check) done once per batch.
    """

    def add_keyed_rows(self, rows: Iterable[tuple[str, Sequence[Any]]]) -> None:
        """Append rows of height 1, each given as ``(key, cells)``; same result as ``add_row`` per row.

        Raises:
            DuplicateKey: a key is already in the table.
            ValueError: a row has more cells than the table has columns.
        """
        columns = self.ordered_columns
        keys = [c.key for c in columns]
        before = self.row_count
        locations, data, meta, new = self._row_locations, self._data, self.rows, self._new_rows
        index = before
        for key, cells in rows:
            row_key = RowKey(key)
            if row_key in locations:
                raise DuplicateKey(f"The row key {row_key!r} already exists.")
            if len(cells) > len(keys):
                raise ValueError("More values provided than there are columns.")
            locations[row_key] = index
            data[row_key] = dict(zip_longest(keys, cells))
            meta[row_key] = Row(row_key, 1, None, False)
            new.add(row_key)
            index += 1
        if index == before:
            return
        self._require_update_dimensions = True
        self.cursor_coordinate = self.cursor_coordinate
        if before == 0 and self.columns and self.show_cursor and self.cursor_type != "none":
            self._highlight_cursor()  # a cell is now under the cursor, as add_row announces it
        self._update_count += 1
        self.check_idle()

    def _update_dimensions(self, new_rows: Iterable[RowKey]) -> None:
        columns = self.ordered_columns
        widths = [c.content_width for c in columns]
        slow: list[RowKey] = []
        for key in new_rows:
            row = self.rows.get(key)
            if row is None or self._row_locations.get(key) is None:
                continue
            if row.label is not None or row.auto_height:
                slow.append(key)
                continue
            cells = self._data[key]
            found = [plain_width(cells.get(c.key)) for c in columns]
            if None in found:
                slow.append(key)
                continue
            widths = [max(w, f) for w, f in zip(widths, found)]  # type: ignore[type-var]
        for column, width in zip(columns, widths):
            column.content_width = max(width, cell_len(column.label.plain))
        super()._update_dimensions(slow)  # the rest, and the virtual size

    def _cell_width(self, cell: Any) -> int:
        width = plain_width(cell)
        if width is None:
            width = measure(self.app.console, default_cell_formatter(cell, wrap=False, height=1), 1)
        return width

    def _update_column_widths(self, updated_cells: set[CellKey]) -> None:
        slow: set[CellKey] = set()
        narrower: set[ColumnKey] = set()
        for cell_key in updated_cells:
            row_key, column_key = cell_key
            column, row = self.columns.get(column_key), self.rows.get(row_key)
            if column is None or row is None:
                continue
            if row.height != 1:
                slow.add(cell_key)
                continue
            width = plain_width(self._data[row_key].get(column_key))
            if width is None:
                slow.add(cell_key)
            elif width < column.content_width:
                narrower.add(column_key)
            else:
                column.content_width = max(width, cell_len(column.label.plain))
        for column_key in narrower:
            column = self.columns[column_key]
            widths = [0 if (cell := cells.get(column_key)) is None else self._cell_width(cell) for cells in self._data.values()]
            column.content_width = max([*widths, cell_len(column.label.plain)])
        if slow:
            super()._update_column_widths(slow)
