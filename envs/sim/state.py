"""World state packed into two tensors, so that clone, snapshot and restore are a couple of row copies.

Every per-world field is a column view (or a block of columns) of one float32 buffer ``[B, F]`` or one
int64 buffer ``[B, I]``. Cloning 1,024 worlds is then two indexed copies whatever the number of fields,
which is what makes branching a group cost microseconds.
"""

from __future__ import annotations

import hashlib

import torch


class PackedState:
    """Named fields over packed buffers. ``state.speed`` is a [B] view, ``state.last_control`` a [B, 3] view;
    write with ``state.speed.copy_(...)`` or ``state.speed[ids] = ...``.

    ``float_fields`` / ``int_fields`` map a field name to its width: 1 gives a [B] view, n > 1 a [B, n] view,
    and a tuple ``(n,)`` always a [B, n] view (per-actor fields whose count is configurable, even 0 or 1).
    """

    def __init__(self, float_fields: dict[str, int | tuple[int]], int_fields: dict[str, int | tuple[int]],
                 num_worlds: int, device: torch.device):
        overlap = set(float_fields) & set(int_fields)
        if overlap:
            raise ValueError(f"fields declared twice: {sorted(overlap)}")
        self.float_fields, self.int_fields = dict(float_fields), dict(int_fields)
        self._columns: dict[str, tuple[bool, int, int, bool]] = {}
        widths = {}
        for is_float, fields in ((True, float_fields), (False, int_fields)):
            start = 0
            for name, width in fields.items():
                keep_dim = isinstance(width, tuple)
                count = width[0] if keep_dim else width
                self._columns[name] = (is_float, start, count, keep_dim or count != 1)
                start += count
            widths[is_float] = start
        self.floats = torch.zeros(num_worlds, widths[True], device=device)
        self.ints = torch.zeros(num_worlds, widths[False], dtype=torch.long, device=device)

    def __getattr__(self, name: str) -> torch.Tensor:
        columns = self.__dict__.get("_columns", {})
        if name not in columns:
            raise AttributeError(name)
        # Views are made once per buffer and cached (the buffers are only ever written in place); making a
        # view costs microseconds, and a step reads fields hundreds of times.
        cache = self.__dict__.setdefault("_views", {})
        buffers = (self.__dict__["floats"], self.__dict__["ints"])
        cached = cache.get(name)
        if cached is not None and cached[0] is buffers[0] and cached[1] is buffers[1]:
            return cached[2]
        is_float, start, width, as_block = columns[name]
        buffer = buffers[0] if is_float else buffers[1]
        view = buffer[:, start:start + width] if as_block else buffer[:, start]
        cache[name] = (buffers[0], buffers[1], view)
        return view

    @property
    def signature(self) -> str:
        """Fingerprint of the schema: a snapshot only fits a state with the same one."""
        text = repr((sorted(self.float_fields.items()), sorted(self.int_fields.items())))
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    def subset(self, ids: torch.Tensor) -> PackedState:
        """A new state holding copies of rows ``ids`` (same schema): read-only work on a few worlds."""
        out = object.__new__(PackedState)
        out.float_fields, out.int_fields, out._columns = self.float_fields, self.int_fields, self._columns
        out.floats, out.ints = self.rows(ids)
        out._views = {}
        return out

    def rows(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Copies of the buffers' rows for ``ids``."""
        return self.floats.index_select(0, ids), self.ints.index_select(0, ids)

    def write_rows(self, ids: torch.Tensor, floats: torch.Tensor, ints: torch.Tensor) -> None:
        self.floats.index_copy_(0, ids, floats.to(self.floats.device))
        self.ints.index_copy_(0, ids, ints.to(self.ints.device))

    def copy_rows(self, src: torch.Tensor, dst: torch.Tensor) -> None:
        """Make rows ``dst`` exact copies of rows ``src`` (``src`` is read fully before any write)."""
        self.floats.index_copy_(0, dst, self.floats.index_select(0, src))
        self.ints.index_copy_(0, dst, self.ints.index_select(0, src))
