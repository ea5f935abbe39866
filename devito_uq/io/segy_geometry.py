r"""Where shot-record SEG-Y files keep their geometry: header conventions, datum, 2D lines.

:func:`devito_uq.io.read_shots` reads positions and depths from the trace-header fields
of a *convention*: a preset name or a mapping of the eight quantities below to
``segyio.TraceField`` names (a leading ``-`` negates the field, e.g. an elevation
positive up read as a depth positive down). Scalars follow SEG-Y (positive
multiplies, negative divides, 0 means 1).

=================  ===========================  ===========================
 quantity           ``"devito_uq"`` (default)    ``"judi"`` (SegyIO.jl/JUDI)
=================  ===========================  ===========================
 ``src_x/src_y``    SourceX / SourceY            SourceX / SourceY
 ``rec_x/rec_y``    GroupX / GroupY              GroupX / GroupY
 ``xy_scalar``      SourceGroupScalar            SourceGroupScalar
 ``src_z`` (down)   SourceDepth                  SourceSurfaceElevation
 ``rec_z`` (down)   −ReceiverGroupElevation      ReceiverGroupElevation
 ``z_scalar``       ElevationScalar              SourceGroupScalar
=================  ===========================  ===========================

JUDI writes source and receiver *depths* (positive down) into the elevation fields,
leaves SourceDepth = 0 and applies the coordinate scalar to them; its binary-header
interval may be 0 (the interval is then read from the trace headers). A custom
mapping may name any subset; the rest comes from the default convention.

``convention="auto"`` reads the headers of every preset and takes the one that fits
(:func:`choose_convention`, the detection ``devito-uq info`` reports): every depth at or
below the datum, preferring a preset that finds non-zero depths. Two presets that both fit
and read different non-zero depths are ambiguous, and none fitting is refused; each refusal
names the candidates. Whatever the convention, a preset that fits and finds depths where the
chosen one reads only zeros (e.g. the default preset on a JUDI file whose receiver depth
field is 0 reads every source at 0 m) is reported in one warning line
(:class:`~devito_uq.errors.SegyHeaderWarning`). On the command line a mapping is written
``"src_z=SourceDepth,rec_z=-ReceiverGroupElevation"``.

Datum: every depth is shifted by ``datum`` m (z = value + datum), e.g. the elevation of
the model's top when the elevation fields hold land elevations (positive up) read as
negative depths. A source or receiver that lands above z = 0 after the shift is refused
with an error naming it and its depth — never silently placed above the model.

2D lines at any azimuth: the sources' and receivers' (x, y) are projected onto the
straight line that fits them best (principal direction); the distance along it becomes
x (0 at the first point of the line, increasing in the direction the shots advance).
The read reports the azimuth (degrees clockwise from +y, i.e. north) and the largest
off-line distance; beyond ``line_tolerance`` m the read is refused. A line with constant
y keeps its x coordinates unchanged (no projection).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
from segyio import TraceField

from devito_uq.errors import SegyError, SegyHeaderWarning

__all__ = [
    "AUTO",
    "CONVENTIONS",
    "SCALARS",
    "choose_convention",
    "convention_depths",
    "parse_convention",
    "resolve_convention",
    "suggest_convention",
    "header_fields",
    "coordinates",
    "check_scalars",
    "check_extent",
    "project_line",
]

#: Scalar values the SEG-Y standard allows (0 reads as 1).
SCALARS = frozenset({0, 1, -1, 10, -10, 100, -100, 1000, -1000, 10000, -10000})
#: A coordinate farther than this many survey extents (at least 1 km) from the survey's
#: median is refused: a header sentinel (±2³¹) or a corrupt trace, never a real position.
OUTLIER_EXTENTS = 100.0

_KEYS = ("src_x", "src_y", "rec_x", "rec_y", "xy_scalar", "src_z", "rec_z", "z_scalar")

CONVENTIONS: dict[str, dict[str, str]] = {
    "devito_uq": {
        "src_x": "SourceX",
        "src_y": "SourceY",
        "rec_x": "GroupX",
        "rec_y": "GroupY",
        "xy_scalar": "SourceGroupScalar",
        "src_z": "SourceDepth",
        "rec_z": "-ReceiverGroupElevation",
        "z_scalar": "ElevationScalar",
    },
    "judi": {
        "src_x": "SourceX",
        "src_y": "SourceY",
        "rec_x": "GroupX",
        "rec_y": "GroupY",
        "xy_scalar": "SourceGroupScalar",
        "src_z": "SourceSurfaceElevation",
        "rec_z": "ReceiverGroupElevation",
        "z_scalar": "SourceGroupScalar",
    },
}


#: The convention name that detects the preset from the file (:func:`choose_convention`).
AUTO = "auto"


def parse_convention(convention: Any) -> Any:
    """A preset name, ``"auto"`` or a mapping; the text form ``"key=Field,key=-Field"`` of a
    mapping (the command line's) becomes a dict. Anything else is returned unchanged."""
    if not isinstance(convention, str) or "=" not in convention:
        return convention
    out = {}
    for item in convention.split(","):
        key, sep, field = (part.strip() for part in item.partition("="))
        if not sep or not key or not field:
            raise SegyError(
                f"convention={convention!r}: {item.strip()!r} is not key=Field "
                "(e.g. 'src_z=SourceDepth,rec_z=-ReceiverGroupElevation')"
            )
        out[key] = field
    return out


def resolve_convention(convention: Any) -> dict[str, tuple[int, float, str]]:
    """``{quantity: (TraceField value, sign, field name)}`` for a preset name or a mapping
    (or its text form, :func:`parse_convention`); ``"auto"`` is resolved by
    :func:`choose_convention`, which needs the headers."""
    convention = parse_convention(convention)
    if isinstance(convention, str):
        if convention not in CONVENTIONS:
            raise SegyError(
                f"convention={convention!r} is not one of {sorted(CONVENTIONS) + [AUTO]}; "
                "or give a mapping such as {'rec_z': 'ReceiverGroupElevation'}"
            )
        names = CONVENTIONS[convention]
    elif isinstance(convention, Mapping):
        unknown = sorted(set(convention) - set(_KEYS))
        if unknown:
            raise SegyError(f"convention key {unknown[0]!r} is not one of {list(_KEYS)}")
        names = {**CONVENTIONS["devito_uq"], **dict(convention)}
    else:
        raise SegyError(f"convention={convention!r} must be a preset name or a mapping")
    out = {}
    for key in _KEYS:
        name = names[key]
        if not isinstance(name, str):
            raise SegyError(f"convention[{key!r}]={name!r} must be a TraceField name")
        sign = -1.0 if name.startswith("-") else 1.0
        field = name.lstrip("-")
        if not hasattr(TraceField, field):
            raise SegyError(f"convention[{key!r}]={name!r}: {field!r} is not a SEG-Y trace field")
        out[key] = (int(getattr(TraceField, field)), sign, field)
    return out


def header_fields(conv: Mapping[str, tuple[int, float, str]]) -> set[int]:
    """The trace-header fields a convention reads."""
    return {f for f, _, _ in conv.values()}


def fields_to_read(convention: Any) -> set[int]:
    """The header fields :func:`choose_convention` needs: every preset's and the given
    convention's (validated here, before any file is opened)."""
    fields = set().union(*(header_fields(resolve_convention(n)) for n in CONVENTIONS))
    if parse_convention(convention) != AUTO:
        fields |= header_fields(resolve_convention(convention))
    return fields


def convention_depths(h: Mapping[int, np.ndarray], conv: Any, datum: float) -> dict[str, Any]:
    """Source and receiver depth ranges (m) a convention reads, and whether
    :func:`~devito_uq.io.read_shots` takes them (no depth above z = 0 after the datum)."""
    xyz = coordinates(h, conv, datum)
    zmin = min(float(xyz["src_z"].min()), float(xyz["rec_z"].min()))
    return {
        "src_z_m": [float(xyz["src_z"].min()), float(xyz["src_z"].max())],
        "rec_z_m": [float(xyz["rec_z"].min()), float(xyz["rec_z"].max())],
        "fits": zmin >= 0,
        # The datum that would put the shallowest point at z = 0 (None: fits already).
        "datum_needed_m": None if zmin >= 0 else datum - zmin,
    }


def _finds(depths: Mapping[str, Any]) -> bool:
    return any(depths[k] != [0.0, 0.0] for k in ("src_z_m", "rec_z_m"))


def suggest_convention(table: Mapping[str, Mapping[str, Any]]) -> str | None:
    """The preset to read with, from :func:`convention_depths` of every preset: the first
    that fits and finds non-zero depths, else the first that fits, else ``None``."""
    fits = [name for name in CONVENTIONS if table[name]["fits"]]
    finds = [name for name in fits if _finds(table[name])]
    return (finds or fits or [None])[0]


def choose_convention(
    convention: Any, h: Mapping[int, np.ndarray], datum: float, path: Any
) -> tuple[dict[str, tuple[int, float, str]], Any, str]:
    """The convention to read ``h`` with, its label and the hint of a depth refusal.

    ``"auto"`` takes :func:`suggest_convention` and refuses when no preset fits or two
    fitting presets read different non-zero depths (:class:`SegyError` naming them). Any
    convention: one :class:`~devito_uq.errors.SegyHeaderWarning` when a fitting preset finds
    depths where the chosen one reads only zeros. The hint never names the convention given.
    """
    convention = parse_convention(convention)
    table = {name: convention_depths(h, resolve_convention(name), datum) for name in CONVENTIONS}
    if convention == AUTO:
        label = suggest_convention(table)
        finds = [n for n in CONVENTIONS if table[n]["fits"] and _finds(table[n])]
        depths = {n: (table[n]["src_z_m"], table[n]["rec_z_m"]) for n in finds}
        if label is None or len(set(map(str, depths.values()))) > 1:
            shown = "; ".join(
                f"{n!r}: sources z {t['src_z_m']} m, receivers z {t['rec_z_m']} m"
                + ("" if t["fits"] else f" (needs datum={t['datum_needed_m']:.6g})")
                for n, t in table.items()
            )
            why = "no preset fits" if label is None else "several presets fit with other depths"
            raise SegyError(
                f"convention='auto' cannot choose for {str(path)!r}: {why} ({shown}); give "
                "convention= (a preset or e.g. 'src_z=SourceDepth,rec_z=-ReceiverGroupElevation')"
                " and datum= (m, added to every depth); devito-uq info FILE shows the fields"
            )
        conv = resolve_convention(label)
        if not table["devito_uq"]["fits"] and label != "devito_uq":
            warnings.warn(
                f"{str(path)!r}: convention='auto' reads the elevation fields as depths (down, "
                f"preset {label!r}); if they are land elevations (up), give "
                f"convention='devito_uq' and datum >= {table['devito_uq']['datum_needed_m']:.6g}",
                SegyHeaderWarning,
                stacklevel=3,
            )
    else:
        conv = resolve_convention(convention)
        label = convention if isinstance(convention, str) else dict(convention)
    used = convention_depths(h, conv, datum)
    for key, what in (("src_z_m", "source"), ("rec_z_m", "receiver")):
        other = [n for n, t in table.items() if t["fits"] and t[key] != [0.0, 0.0]]
        if used[key] == [0.0, 0.0] and other:
            t = table[other[0]]
            warnings.warn(
                f"{str(path)!r}: convention={label!r} reads every {what} at depth 0 m, but "
                f"convention={other[0]!r} finds {what}s at {t[key][0]:g} … {t[key][1]:g} m "
                f"({conv['src_z' if what == 'source' else 'rec_z'][2]} is 0 where "
                f"{resolve_convention(other[0])['src_z' if what == 'source' else 'rec_z'][2]} "
                "is not); check the convention the file was written in",
                SegyHeaderWarning,
                stacklevel=3,
            )
    fits = [f"convention={n!r}" for n, t in table.items() if t["fits"] and n != label]
    hint = (
        f"give datum={used['datum_needed_m']:.6g} (m, added to every depth)"
        if (used["datum_needed_m"] is not None)
        else "give datum= (m, added to every depth)"
    )
    return conv, label, hint + (f" or {' or '.join(fits)} (the depths fit it)" if fits else "")


def _scaled(raw: np.ndarray, scalar: np.ndarray) -> np.ndarray:
    s = np.asarray(scalar, dtype=np.float64)
    s = np.where(s == 0, 1.0, s)
    return np.where(s > 0, raw * s, raw / np.abs(s))


def coordinates(h: Mapping[int, np.ndarray], conv, datum: float = 0.0) -> dict[str, np.ndarray]:
    """Per-trace source/receiver x, y and depth z (m, down, shifted by ``datum``)."""

    def get(key: str, scalar: str) -> np.ndarray:
        field, sign, _ = conv[key]
        return sign * _scaled(h[field].astype(np.float64), h[conv[scalar][0]])

    out = {k: get(k, "xy_scalar") for k in ("src_x", "src_y", "rec_x", "rec_y")}
    out["src_z"] = get("src_z", "z_scalar") + datum
    out["rec_z"] = get("rec_z", "z_scalar") + datum
    return out


def bad_scalars(h: Mapping[int, np.ndarray], conv) -> list[tuple[str, int, int]]:
    """``(field, trace, value)`` of the first scalar outside :data:`SCALARS` in each field."""
    out = []
    for key in ("xy_scalar", "z_scalar"):
        field, _, name = conv[key]
        values = h[field]
        bad = np.flatnonzero(~np.isin(values, list(SCALARS)))
        if bad.size and name not in (n for n, _, _ in out):
            out.append((name, int(bad[0]), int(values[bad[0]])))
    return out


def check_scalars(h: Mapping[int, np.ndarray], conv, path: Any) -> None:
    """Refuse a coordinate or elevation scalar outside the standard's ±1 … ±10000."""
    for name, k, value in bad_scalars(h, conv):
        raise SegyError(
            f"{str(path)!r}: trace {k} has {name}={value}; SEG-Y allows 0, ±1, ±10, ±100, "
            "±1000 and ±10000 (a corrupt header: its coordinates would be scaled by it)"
        )


def outliers(xyz: Mapping[str, np.ndarray]) -> list[tuple[str, int, float, float, float]]:
    """``(quantity, trace, value, median, extent)`` of coordinates far outside the survey.

    Per axis (x, y), over sources and receivers together: the survey's extent is the
    spread of the central 90 % of the positions (at least 1 km); a position more than
    :data:`OUTLIER_EXTENTS` extents from the median is an outlier.
    """
    out = []
    for axis in ("x", "y"):
        keys = (f"src_{axis}", f"rec_{axis}")
        allv = np.concatenate([xyz[k] for k in keys])
        if allv.size == 0:
            continue
        med = float(np.median(allv))
        lo, hi = np.percentile(allv, [5, 95])
        extent = max(float(hi - lo), 1000.0)
        for key in keys:
            dist = np.abs(xyz[key] - med)
            k = int(np.argmax(dist))
            if dist[k] > OUTLIER_EXTENTS * extent:
                out.append((key, k, float(xyz[key][k]), med, extent))
    return out


def check_extent(xyz: Mapping[str, np.ndarray], path: Any) -> None:
    """Refuse a source or receiver far outside the survey (see :func:`outliers`)."""
    for key, k, value, med, extent in outliers(xyz):
        raise SegyError(
            f"{str(path)!r}: the {'source' if key.startswith('src') else 'receiver'} of trace "
            f"{k} has {key[-1]} = {value:.6g} m, {abs(value - med) / 1000:.6g} km from the "
            f"survey's median {med:.6g} m (extent {extent:.6g} m): a corrupt or sentinel "
            "header, not a position"
        )


def check_depths(
    z: np.ndarray, what: str, conv, shot_of_trace: np.ndarray, datum: float, hint: str
) -> None:
    """Refuse a depth above z = 0 (after the datum shift), naming the trace and its depth;
    ``hint`` (from :func:`choose_convention`) says what to give instead."""
    bad = np.flatnonzero(z < 0)
    if bad.size:
        k = int(bad[np.argmin(z[bad])])
        _, sign, name = conv["rec_z" if what == "receiver" else "src_z"]
        raise SegyError(
            f"{what} of trace {k} (shot {int(shot_of_trace[k])}) is at depth {z[k]:.6g} m, above "
            f"the datum z = 0 ({'-' if sign < 0 else ''}{name} read as depth, datum={datum:g} m); "
            f"{bad.size} traces are above it: {hint}"
        )


def project_line(
    sx: np.ndarray, sy: np.ndarray, rx: np.ndarray, ry: np.ndarray, tolerance: float
) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
    """Distances along the best-fit line of all (x, y) points → ``(src_x, rec_x, report)``."""
    pts = np.concatenate([np.stack([sx, sy], 1), np.stack([rx, ry], 1)])
    if np.ptp(pts[:, 1]) == 0:
        return sx, rx, {"azimuth_deg": 90.0, "max_offline_m": 0.0, "projected": False}
    centre = pts.mean(axis=0)
    _, _, vt = np.linalg.svd(pts - centre, full_matrices=False)
    u = vt[0]
    if np.dot(np.array([sx[-1] - sx[0], sy[-1] - sy[0]]), u) < 0:
        u = -u  # x increases in the direction the shots advance
    along = (pts - centre) @ u
    off = np.abs((pts - centre) @ np.array([-u[1], u[0]]))
    report = {
        "azimuth_deg": float(np.degrees(np.arctan2(u[0], u[1])) % 360.0),
        "max_offline_m": float(off.max()),
        "projected": True,
    }
    if off.max() > tolerance:
        k = int(np.argmax(off))
        who = f"source of trace {k}" if k < len(sx) else f"receiver of trace {k - len(sx)}"
        raise SegyError(
            f"the line is not straight: the {who} lies {off.max():.6g} m off the best-fit line "
            f"(azimuth {report['azimuth_deg']:.2f}°), more than line_tolerance={tolerance:g} m; "
            "raise line_tolerance or read it with dim=3"
        )
    along = along - along.min()
    return along[: len(sx)], along[len(sx) :], report
