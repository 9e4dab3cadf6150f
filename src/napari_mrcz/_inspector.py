"""The header inspector: every header field, the labels, the decoded extended header, JSON, DM tags.

A searchable tree (Qt) that shows what ``layer.metadata['mrcz']`` holds for
the file a layer came from. The per-section record of the section on
napari's slider is shown above the tree and follows it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from qtpy.QtWidgets import QLabel, QLineEdit, QTreeWidget, QTreeWidgetItem, QVBoxLayout, QWidget

from .codec.dm_tags import ArrayRef
from .codec.extended import ExtendedHeader

#: Tree rows beyond which a list is shown in part (a 10 000-frame movie has 10 000 records).
MAX_ROWS = 2000


def _text(value: Any) -> str:
    if isinstance(value, ArrayRef):
        return f"<{value.count} × {value.dtype.name} in the file>"
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, np.ndarray):
        return f"<{' × '.join(map(str, value.shape))} {value.dtype.name}>" if value.size > 16 else \
            str(value.tolist())
    return str(value)


def extended_of(mrcz: dict) -> ExtendedHeader | None:
    """The :class:`ExtendedHeader` described by ``mrcz['extended']``, or ``None``."""
    info = mrcz.get("extended")
    if not info:
        return None
    return ExtendedHeader(kind=info["type"], nbytes=info["nbytes"], sections=info.get("sections") or {},
                          problem=info.get("problem"))


class HeaderInspector(QWidget):
    """A filter box, the current section's record, and a tree of everything the file's header says."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.filter = QLineEdit(self)
        self.filter.setPlaceholderText("Search fields and values…")
        self.filter.setClearButtonEnabled(True)
        self.section = QLabel(self)
        self.section.setWordWrap(True)
        self.tree = QTreeWidget(self)
        self.tree.setColumnCount(2)
        self.tree.setHeaderLabels(["Field", "Value"])
        self.tree.setMinimumHeight(260)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        for widget in (self.filter, self.section, self.tree):
            layout.addWidget(widget)
        self.filter.textChanged.connect(self.apply_filter)
        self._extended: ExtendedHeader | None = None
        self._current: QTreeWidgetItem | None = None

    # -- content ------------------------------------------------------------
    def show_metadata(self, mrcz: dict | None) -> None:
        """Fill the tree from a layer's ``metadata['mrcz']`` (``None`` empties it)."""
        self.tree.clear()
        self._current = None
        mrcz = mrcz or {}
        self._extended = extended_of(mrcz)
        header = mrcz.get("header")
        if header:
            node = self._add(self.tree.invisibleRootItem(), "MRC header", "")
            for name, value in header.items():
                if name != "labels":
                    self._add(node, name, _text(value))
            labels = self._add(self.tree.invisibleRootItem(), "Labels", str(len(header.get("labels", []))))
            for k, text in enumerate(header.get("labels", [])):
                self._add(labels, str(k), text)
        ext = self._extended
        if ext is not None:
            title = f"Extended header ({ext.kind}, {ext.nbytes} bytes)"
            node = self._add(self.tree.invisibleRootItem(), title, ext.problem or f"{ext.n_sections} records")
            self._current = self._add(node, "Current section", "")
            every = self._add(node, "Every section", "")
            for k in range(min(ext.n_sections, MAX_ROWS)):
                self._add(every, str(k), ext.summary(k))
            if ext.n_sections > MAX_ROWS:
                self._add(every, "…", f"{ext.n_sections - MAX_ROWS} more")
        if mrcz.get("meta"):
            self._add_tree(self.tree.invisibleRootItem(), "JSON metadata", mrcz["meta"])
        if mrcz.get("tags"):
            self._add_tree(self.tree.invisibleRootItem(), "DM tags", mrcz["tags"])
        for k in range(self.tree.topLevelItemCount()):
            item = self.tree.topLevelItem(k)
            item.setExpanded(item.text(0) in ("MRC header", "Labels") or item.text(0).startswith("Extended"))
        if self._current is not None:
            self._current.setExpanded(True)
        self.tree.resizeColumnToContents(0)
        self.show_section(0)
        self.apply_filter(self.filter.text())

    def _add(self, parent: QTreeWidgetItem, name: str, value: str) -> QTreeWidgetItem:
        item = QTreeWidgetItem(parent, [name, value])
        item.setToolTip(1, value)
        return item

    def _add_tree(self, parent: QTreeWidgetItem, name: str, value: Any, depth: int = 0) -> None:
        if isinstance(value, dict) and depth < 32:
            node = self._add(parent, name, "")
            for key, child in value.items():
                self._add_tree(node, str(key), child, depth + 1)
        elif isinstance(value, list) and depth < 32 and any(isinstance(v, (dict, list)) for v in value):
            node = self._add(parent, name, f"{len(value)} items")
            for k, child in enumerate(value[:MAX_ROWS]):
                self._add_tree(node, f"[{k}]", child, depth + 1)
        else:
            self._add(parent, name, _text(value))

    # -- the section on the slider ----------------------------------------------
    def show_section(self, k: int) -> None:
        """Show the record of section ``k``: a summary line, and every field under "Current section"."""
        ext = self._extended
        if ext is None or not ext.sections:
            self.section.setText("")
            self.section.setVisible(False)
            return
        line = ext.summary(k) or ("no record" if k >= ext.n_sections else "")
        self.section.setText(f"Section {k}: {line}")
        self.section.setVisible(True)
        if self._current is not None:
            self._current.takeChildren()
            self._current.setText(1, str(k))
            for name, value in ext.section(k).items():
                self._add(self._current, name, _text(value))
            self.apply_filter(self.filter.text())

    # -- search -----------------------------------------------------------------
    def apply_filter(self, text: str) -> None:
        """Show only rows whose field or value contains ``text`` (and their parents and children)."""
        needle = text.strip().lower()

        def visit(item: QTreeWidgetItem, parent_matches: bool) -> bool:
            matches = not needle or needle in item.text(0).lower() or needle in item.text(1).lower()
            shown_child = False
            for k in range(item.childCount()):
                shown_child |= visit(item.child(k), parent_matches or matches)
            shown = matches or shown_child or parent_matches
            item.setHidden(not shown)
            if needle and shown_child:
                item.setExpanded(True)
            return matches or shown_child

        root = self.tree.invisibleRootItem()
        for k in range(root.childCount()):
            visit(root.child(k), False)

    def visible_rows(self) -> list[tuple[str, str]]:
        """(field, value) of every row not hidden by the filter, depth first."""
        rows: list[tuple[str, str]] = []

        def visit(item: QTreeWidgetItem) -> None:
            for k in range(item.childCount()):
                child = item.child(k)
                if not child.isHidden():
                    rows.append((child.text(0), child.text(1)))
                    visit(child)

        visit(self.tree.invisibleRootItem())
        return rows
