"""Applications: one package per experiment, all the same shape.

Each application ``devito_uq.apps.<name>`` holds

* ``config.py``  — a dataclass of every knob, with ``validate()`` (through
  :mod:`devito_uq.validation`) and the help text of each field in its metadata;
* ``problem.py`` — data, likelihood, prior, parameterization and flow assembly;
* ``run.py``     — orchestration: caches, metrics, ``summary.json``;
* ``figures.py`` — the PNG figures;
* optionally more commands with their own config (``avp`` has ``calibration.py``);

and declares its ``devito-uq`` sub-commands as a module-level ``COMMANDS`` tuple of
:class:`Command`. The CLI discovers every package here and builds each command's
options from its config dataclass, so a new application needs no edit elsewhere.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Command", "commands", "knob", "prepare_output"]


def knob(default: Any, help: str, cli: bool = True) -> Any:
    """A config dataclass field with its help text (``cli=False``: not a command-line option)."""
    return field(default=default, metadata={"help": help, "cli": cli})


def prepare_output(out: str, checkpoints: Sequence[str], resume: bool, writer: bool = True) -> None:
    """Make the output folder ``out``; without ``resume`` remove the ``checkpoints`` in it
    (``writer`` only: rank 0 under MPI), a symbolic link itself, never its target.

    Raises :class:`~devito_uq.errors.InvalidArgumentError` when ``out`` is a file and
    :class:`~devito_uq.errors.CheckpointError` when a checkpoint path is a folder.
    """
    from devito_uq.errors import CheckpointError, InvalidArgumentError

    if os.path.exists(out) and not os.path.isdir(out):
        raise InvalidArgumentError(f"out={out!r} exists and is not a folder")
    os.makedirs(out, exist_ok=True)
    if resume or not writer:
        return
    for name in checkpoints:
        path = os.path.join(out, name)
        if os.path.isdir(path) and not os.path.islink(path):
            raise CheckpointError(f"checkpoint {path!r} is a folder, not a file")
        if os.path.lexists(path):
            os.remove(path)


@dataclass(frozen=True)
class Command:
    """One ``devito-uq`` sub-command.

    Attributes:
        name: the sub-command (``devito-uq <name>``); two words (``"amortize train"``)
            make a command group (``devito-uq amortize train``).
        help: one line for ``devito-uq --help``.
        config: the application's config dataclass (options come from its fields).
        preset: name of the classmethod of ``config`` giving the default schedule.
        run: ``"module:function"`` called as ``function(config, out, resume=,
            progress=, figures=)``, imported only when the command runs.
        default_out: output folder when ``--out`` is not given.
        full_preset: classmethod selected by ``--full`` (``None``: no such flag).
        report_keys: summary entries printed on success.
        mpi: the run function also takes ``comm=`` (the MPI communicator when the CLI
            was started under ``mpiexec`` with several ranks, else ``None``).
        positional: a config field that the command's positional argument fills (e.g.
            ``devito-uq info FILE.sgy``) instead of a TOML config file.
        writes: the command writes results to ``--out`` (``False``: it only reports).
    """

    name: str
    help: str
    config: type
    preset: str
    run: str
    default_out: str
    full_preset: str | None = None
    report_keys: tuple[str, ...] = ()
    mpi: bool = False
    positional: str | None = None
    writes: bool = True


def commands() -> list[Command]:
    """Every sub-command declared by the application packages, in name order."""
    found: list[Command] = []
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        if info.ispkg:
            module = importlib.import_module(f"{__name__}.{info.name}")
            found.extend(getattr(module, "COMMANDS", ()))
    return sorted(found, key=lambda c: c.name)
