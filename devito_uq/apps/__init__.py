"""Applications: one package per experiment, all the same shape.

Each application ``devito_uq.apps.<name>`` holds

* ``config.py``  — a dataclass of every knob, with ``validate()`` (through
  :mod:`devito_uq.validation`) and the help text of each field in its metadata;
* ``problem.py`` — data, likelihood, prior, parameterization and flow assembly;
* ``run.py``     — orchestration: caches, metrics, ``summary.json``;
* ``figures.py`` — the PNG figures;
* optionally more commands with their own config (``avp`` has ``calibration.py``);

knob groups that several applications share (a survey, a solver, a prior, a flow) are
declared once in :mod:`devito_uq.apps.pieces` and inherited by their configs;

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

from devito_uq.errors import CheckpointError, InvalidArgumentError

__all__ = ["Command", "commands", "knob", "prepare_output"]


def knob(default: Any, help: str, cli: bool = True) -> Any:
    """A config dataclass field with its help text.

    Parameters
    ----------
    default : Any
        The field's default (immutable: a tuple, not a list).
    help : str
        One line for ``--help``, with units.
    cli : bool
        Whether the field is a command-line option and a TOML key.

    Returns
    -------
    dataclasses.Field
        ``field(default=default, metadata={"help": help, "cli": cli})``.
    """
    return field(default=default, metadata={"help": help, "cli": cli})


def prepare_output(out: str, checkpoints: Sequence[str], resume: bool, writer: bool = True) -> None:
    """Make the output folder ``out``; without ``resume`` remove the ``checkpoints`` in it.

    Parameters
    ----------
    out : str
        The output folder (created with its parents).
    checkpoints : sequence of str
        File names inside ``out`` that a fresh run must not find (a symbolic link is
        removed itself, never its target).
    resume : bool
        Keep the checkpoints.
    writer : bool
        Whether this process removes them (rank 0 under MPI).

    Raises
    ------
    InvalidArgumentError
        ``out`` exists and is not a folder.
    CheckpointError
        A checkpoint path is a folder.
    """
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

    Attributes
    ----------
    name : str
        The sub-command (``devito-uq <name>``); two words (``"amortize train"``) make a
        command group (``devito-uq amortize train``).
    help : str
        One line for ``devito-uq --help``.
    config : type
        The application's config dataclass (options come from its fields).
    preset : str
        Name of the classmethod of ``config`` giving the default schedule.
    run : str
        ``"module:function"`` called as ``function(config, out, resume=, progress=,
        figures=)``, imported only when the command runs.
    default_out : str
        Output folder when ``--out`` is not given.
    full_preset : str or None
        Classmethod selected by ``--full`` (``None``: no such flag).
    report_keys : tuple of str
        Summary entries printed on success.
    mpi : bool
        The run function also takes ``comm=`` (the MPI communicator when the CLI was
        started under ``mpiexec`` with several ranks, else ``None``).
    positional : str or None
        A config field that the command's positional argument fills (e.g.
        ``devito-uq info FILE.sgy``) instead of a TOML config file.
    writes : bool
        The command writes results to ``--out`` (``False``: it only reports).
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
    """Every sub-command declared by the application packages, in name order.

    Returns
    -------
    list of Command
        The ``COMMANDS`` of every package under :mod:`devito_uq.apps`.
    """
    found: list[Command] = []
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        if info.ispkg:
            module = importlib.import_module(f"{__name__}.{info.name}")
            found.extend(getattr(module, "COMMANDS", ()))
    return sorted(found, key=lambda c: c.name)
