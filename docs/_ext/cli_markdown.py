"""The ``devito-uq`` reference as MyST Markdown, generated from the config dataclasses.

Walks :func:`devito_uq.apps.commands` and, for each command, the ``dataclasses.fields``
of its config with the ``knob`` help in their metadata, the way
:func:`devito_uq.cli.add_config_options` builds the options: nothing is copied by hand,
so a new field or command appears on the next ``make docs``. Needs no Sphinx (the test
suite checks it without the ``docs`` extra); :mod:`cli_reference` is the directive.
"""

from __future__ import annotations

import dataclasses
import typing

from devito_uq.apps import commands


def _type_name(kind: typing.Any) -> str:
    if typing.get_origin(kind) is tuple:
        return "tuple of " + ", ".join(_type_name(k) for k in typing.get_args(kind))
    return getattr(kind, "__name__", str(kind))


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def command_rows(cmd: typing.Any) -> list[tuple[str, str, str, str, str]]:
    """``(key, option, type, default, help)`` for every command-line field of ``cmd``.

    The default shows each schedule's value when they differ (``short: 2000, full:
    32768``), as ``devito-uq <cmd> --help`` does.
    """
    presets = {cmd.preset: getattr(cmd.config, cmd.preset)()}
    if cmd.full_preset is not None:
        presets[cmd.full_preset] = getattr(cmd.config, cmd.full_preset)()
    hints = typing.get_type_hints(cmd.config)
    rows = []
    for f in dataclasses.fields(cmd.config):
        if not f.metadata.get("cli", True):
            continue
        values = {name: getattr(p, f.name) for name, p in presets.items()}
        shown = sorted(set(map(repr, values.values())))
        if len(shown) == 1:
            default = shown[0]
        else:
            default = ", ".join(f"{k}: {v!r}" for k, v in values.items())
        option = "--" + f.name.replace("_", "-")
        if hints[f.name] is bool:
            option += " / --no-" + f.name.replace("_", "-")
        rows.append((f.name, option, _type_name(hints[f.name]), default, f.metadata["help"]))
    return rows


def command_markdown(cmd: typing.Any) -> list[str]:
    """The MyST source of one command's section."""
    lines = [f"## `devito-uq {cmd.name}`", "", _cell(cmd.help) + ".", ""]
    facts = [f"config dataclass `{cmd.config.__module__}.{cmd.config.__name__}`"]
    full = f", `--full`: `{cmd.full_preset}`" if cmd.full_preset else ""
    facts.append(f"schedule `{cmd.preset}`{full}")
    facts.append(f"default `--out {cmd.default_out}`" if cmd.writes else "writes nothing")
    if cmd.mpi:
        facts.append("spreads its work over the ranks under `mpiexec`")
    if cmd.positional:
        facts.append(f"the positional argument is `{cmd.positional}`, not a TOML file")
    lines += ["; ".join(facts) + ".", ""]
    lines += ["| key / option | type | default | meaning |", "|---|---|---|---|"]
    for key, option, kind, default, help_text in command_rows(cmd):
        lines.append(
            f"| `{key}` <br> `{option}` | {_cell(kind)} | `{_cell(default)}` | {_cell(help_text)} |"
        )
    return lines + [""]


def reference_markdown() -> list[str]:
    """The MyST source of the whole reference: every command, in name order."""
    lines: list[str] = []
    for cmd in commands():
        lines += command_markdown(cmd)
    return lines
