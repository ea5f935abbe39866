"""Models from HDF5 files (JUDI's layout), read without an HDF5 library.

JUDI and SegyIO.jl users keep velocity models as HDF5 written by HDF5.jl: squared slowness
``m`` (and the background ``m0``) in s²/km², Julia ``[nx, nz]`` — so ``[nz, nx]`` in the
row-major order this reader returns — with the spacing ``d`` and origin ``o`` in m. The
product's dependencies do not include ``h5py``, so this module reads the subset of the
format those files use (the library's default, "earliest" file format): superblock
version 0 or 1, the root group's symbol table (v1 B-tree, local heap), version-1 object
headers with continuation blocks, and contiguous or compact datasets of integers or
IEEE floats of either byte order. Anything else — chunked or compressed datasets, newer
superblocks (``libver="latest"``), nested groups — is refused with a message that says
what to convert to, never read wrongly.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from devito_uq.errors import SegyError

__all__ = [
    "BACKGROUND_DATASETS",
    "HDF5_SIGNATURE",
    "MODEL_DATASETS",
    "is_hdf5",
    "read_hdf5",
    "read_hdf5_model",
]

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
UNDEFINED = 0xFFFFFFFFFFFFFFFF
#: Dataset names of a model, in order of preference: JUDI's squared slowness ``m``, its
#: background ``m0``, then a velocity ``v`` / ``vp``.
MODEL_DATASETS = ("m", "m0", "v", "vp")
#: The same for a background model: JUDI's ``m0`` first.
BACKGROUND_DATASETS = ("m0", "m", "v", "vp")


class HDF5Error(SegyError):
    """An HDF5 file this reader cannot read (a :class:`~devito_uq.errors.SegyError`: a bad
    model file)."""


def is_hdf5(path: str | os.PathLike) -> bool:
    """Whether ``path`` starts with the HDF5 signature."""
    try:
        with open(path, "rb") as f:
            return f.read(8) == HDF5_SIGNATURE
    except OSError:
        return False


class _Reader:
    def __init__(self, path: Path) -> None:
        self.path, self.raw = path, path.read_bytes()
        if self.raw[:8] != HDF5_SIGNATURE:
            self.fail("not an HDF5 file (no signature at byte 0)")
        version = self.raw[8]
        if version not in (0, 1):
            self.fail(
                f"superblock version {version} (HDF5 1.10+ 'latest' format); rewrite it with "
                "the default format (h5py: libver='earliest'; HDF5.jl: the default) or as SEG-Y"
            )
        self.o, self.l = self.raw[13], self.raw[14]  # sizes of offsets and lengths
        pos = 24 + (4 if version == 1 else 0) + 4 * self.o  # base, free-space, EOF, driver
        self.root = self.symbol_entry(pos)

    def fail(self, what: str):
        raise HDF5Error(f"{str(self.path)!r}: {what}")

    def uint(self, pos: int, size: int) -> int:
        if pos < 0 or pos + size > len(self.raw):
            self.fail(f"truncated: a field at byte {pos} lies past the end ({len(self.raw)} bytes)")
        return int.from_bytes(self.raw[pos : pos + size], "little")

    def symbol_entry(self, pos: int) -> dict:
        o = self.o
        entry = {
            "name": self.uint(pos, o),
            "header": self.uint(pos + o, o),
            "cache": self.uint(pos + 2 * o, 4),
        }
        if entry["cache"] == 1:
            entry["btree"] = self.uint(pos + 2 * o + 8, o)
            entry["heap"] = self.uint(pos + 3 * o + 8, o)
        return entry

    def messages(self, address: int) -> list[tuple[int, int, int]]:
        """``(type, data position, size)`` of a version-1 object header's messages."""
        if self.uint(address, 1) != 1:
            self.fail(f"object header at {address}: version {self.raw[address]} (expected 1)")
        count = self.uint(address + 2, 2)
        blocks = [(address + 16, self.uint(address + 8, 4))]
        out: list[tuple[int, int, int]] = []
        while blocks and len(out) < count:
            start, size = blocks.pop(0)
            pos = start
            while pos + 8 <= start + size and len(out) < count:
                kind, length = self.uint(pos, 2), self.uint(pos + 2, 2)
                out.append((kind, pos + 8, length))
                if kind == 0x10:  # continuation: more messages elsewhere
                    blocks.append((self.uint(pos + 8, self.o), self.uint(pos + 8 + self.o, self.l)))
                pos += 8 + length
        return out

    def group(self, entry: dict) -> dict[str, dict]:
        btree, heap = entry.get("btree"), entry.get("heap")
        if btree is None:
            for kind, pos, _ in self.messages(entry["header"]):
                if kind == 0x11:  # symbol table message
                    btree, heap = self.uint(pos, self.o), self.uint(pos + self.o, self.o)
        if btree is None:
            self.fail("the root group has no symbol table (new-style links): not supported")
        if self.raw[heap : heap + 4] != b"HEAP":
            self.fail(f"no local heap at {heap}")
        names_at = self.uint(heap + 8 + 2 * self.l, self.o)
        members: dict[str, dict] = {}
        self._walk(btree, names_at, members)
        return members

    def _walk(self, node: int, names_at: int, members: dict, seen: set | None = None) -> None:
        seen = set() if seen is None else seen
        if node in seen:  # a corrupt tree pointing back at itself
            self.fail(f"B-tree node {node} is reached twice")
        seen.add(node)
        if self.raw[node : node + 4] != b"TREE":
            self.fail(f"no B-tree node at {node}")
        level, used = self.uint(node + 5, 1), self.uint(node + 6, 2)
        pos = node + 8 + 2 * self.o + self.l  # past the siblings and key 0
        for _ in range(used):
            child = self.uint(pos, self.o)
            pos += self.o + self.l
            if level > 0:
                self._walk(child, names_at, members, seen)
                continue
            if self.raw[child : child + 4] != b"SNOD":
                self.fail(f"no symbol table node at {child}")
            for i in range(self.uint(child + 6, 2)):
                entry = self.symbol_entry(child + 8 + i * (2 * self.o + 24))
                start = names_at + entry["name"]
                end = self.raw.find(b"\0", start)
                if end < 0:
                    self.fail(f"truncated: a member name at byte {start} runs past the end")
                name = self.raw[start:end].decode("utf-8", "replace")
                members[name] = entry

    def dataset(self, name: str, messages: list[tuple[int, int, int]]) -> np.ndarray:
        shape = dtype = layout = None
        for kind, pos, _ in messages:
            if kind == 0x01:
                shape = self._dataspace(pos)
            elif kind == 0x03:
                dtype = self._datatype(name, pos)
            elif kind == 0x08:
                layout = self._layout(name, pos)
            elif kind == 0x0B:
                self.fail(f"dataset {name!r} is compressed or filtered: write it uncompressed")
        if shape is None or dtype is None or layout is None:
            self.fail(f"{name!r} is not a dataset (a group or a link): only root datasets")
        start, size = layout
        count = int(np.prod(shape)) if shape else 1
        if start == UNDEFINED or size < count * dtype.itemsize:
            self.fail(f"dataset {name!r} has no data written ({size} bytes for {shape})")
        if start + count * dtype.itemsize > len(self.raw):
            self.fail(f"truncated: dataset {name!r} runs past the end of the file")
        return np.frombuffer(self.raw, dtype, count, start).reshape(shape).copy()

    def _dataspace(self, pos: int) -> tuple[int, ...]:
        version, ndims = self.uint(pos, 1), self.uint(pos + 1, 1)
        first = pos + (8 if version == 1 else 4)
        return tuple(self.uint(first + i * self.l, self.l) for i in range(ndims))

    def _datatype(self, name: str, pos: int) -> np.dtype:
        kind, bits, size = self.raw[pos] & 0x0F, self.raw[pos + 1], self.uint(pos + 4, 4)
        order = ">" if bits & 1 else "<"
        if kind == 1 and size in (4, 8):
            return np.dtype(f"{order}f{size}")
        if kind == 0 and size in (1, 2, 4, 8):
            return np.dtype(f"{order}{'i' if bits & 8 else 'u'}{size}")
        self.fail(f"dataset {name!r}: datatype class {kind}, {size} bytes: numbers only")

    def _layout(self, name: str, pos: int) -> tuple[int, int]:
        version = self.uint(pos, 1)
        if version == 3:
            kind = self.uint(pos + 1, 1)
            if kind == 0:  # compact: the data follow the size
                return pos + 4, self.uint(pos + 2, 2)
            if kind == 1:
                return self.uint(pos + 2, self.o), self.uint(pos + 2 + self.o, self.l)
        elif version in (1, 2):
            if self.uint(pos + 2, 1) == 1:  # contiguous
                # no byte count in these versions: the end of the file bounds the read
                return self.uint(pos + 8, self.o), 1 << 62
        self.fail(f"dataset {name!r} is chunked (layout v{version}): write it contiguous")


def read_hdf5(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Every numeric dataset in the root group of an HDF5 file, row-major as stored.

    Parameters
    ----------
    path : str or os.PathLike
        The file.

    Returns
    -------
    dict
        ``name -> numpy.ndarray``.

    Raises
    ------
    SegyError
        (an ``HDF5Error``) Not HDF5, truncated, or a feature outside the supported subset
        (the message names it and what to write instead).
    """
    path = Path(path)
    try:
        reader = _Reader(path)
        members = reader.group(reader.root)
        out = {}
        for name, entry in members.items():
            messages = reader.messages(entry["header"])
            if any(kind == 0x08 for kind, _, _ in messages):  # a dataset, not a group
                out[name] = reader.dataset(name, messages)
    except HDF5Error:
        raise
    except OSError as exc:
        raise HDF5Error(f"{str(path)!r}: cannot be read ({exc.strerror or exc})") from None
    except (ValueError, IndexError, OverflowError, MemoryError) as exc:
        # every offset is bounds-checked above; anything left is a corrupt structure
        raise HDF5Error(f"{str(path)!r}: truncated or corrupt HDF5 ({exc})") from None
    return out


def read_hdf5_model(
    path: str | os.PathLike, dataset: str | Sequence[str] = MODEL_DATASETS
) -> tuple[np.ndarray, tuple[float, float], tuple[float, float], str]:
    """A 2D model in JUDI's layout: ``[nx, nz]`` values, spacing and origin (m).

    Parameters
    ----------
    path : str or os.PathLike
        HDF5 with the model stored ``[nz, nx]`` row-major (Julia's ``[nx, nz]``), its
        spacing ``d`` (m; required: the grid must be stated) and origin ``o`` (m; default
        0, 0).
    dataset : str or sequence of str
        The model's dataset name, or names in order of preference (the first present is
        read); default :data:`MODEL_DATASETS` (a background prefers ``("m0", "m", …)``).

    Returns
    -------
    values : numpy.ndarray
        ``[nx, nz]`` float64, in the file's units.
    spacing, origin : tuple of float
        ``(dx, dz)`` and ``(x0, z0)``, m.
    name : str
        The dataset read.

    Raises
    ------
    SegyError
        Unreadable file, no model dataset, not 2D, or no spacing ``d``.
    """
    data = read_hdf5(path)
    wanted = [dataset] if isinstance(dataset, str) else list(dataset)
    names = [n for n in wanted if n in data]
    if not names:
        raise HDF5Error(
            f"{str(path)!r} has no model dataset (looked for {', '.join(wanted)}); it holds "
            f"{', '.join(sorted(data)) or 'no datasets'}"
        )
    name = names[0]
    model = np.asarray(data[name], dtype=np.float64)
    if model.ndim != 2 or min(model.shape) < 2:
        raise HDF5Error(f"{str(path)!r}: dataset {name!r} is {model.shape}, not a 2D model")
    if "d" not in data:
        raise HDF5Error(f"{str(path)!r} has no spacing dataset 'd' (m): the grid is unknown")
    d = np.asarray(data["d"], dtype=np.float64).ravel()
    o = np.asarray(data.get("o", np.zeros(2)), dtype=np.float64).ravel()
    if d.size < 2 or o.size < 2 or not np.all(np.isfinite(d)) or d[:2].min() <= 0:
        raise HDF5Error(f"{str(path)!r}: spacing d={d.tolist()} / origin o={o.tolist()}")
    return model.T.copy(), (float(d[0]), float(d[1])), (float(o[0]), float(o[1])), name
