"""The ``devito-uq`` command, built from the applications' config dataclasses.

``devito-uq demo --out outputs/demo`` runs the Sleipner AVP uncertainty experiment
with the short schedule (``make demo``, a few minutes on 2 cores);
``devito-uq avp --full`` runs the original 32,768-iteration schedule;
``devito-uq calibrate examples/avp_calibrate.toml`` runs the AVP calibration;
``devito-uq imaging`` runs 2D imaging UQ on Marmousi-II (``simulate``, ``invert``,
``summarize`` and ``info FILE.sgy`` are its steps).

Every application package under :mod:`devito_uq.apps` declares its sub-commands
(:class:`devito_uq.apps.Command`); each field of the command's config dataclass
becomes an option (``batch_size`` → ``--batch-size``) with the field's type and
help text. Every command also takes an optional positional ``CONFIG``: a TOML file
whose top-level keys are field names (``batch_size = 8``). Values come from, in
increasing precedence: the command's preset schedule, the file, the options given
on the command line. An unknown key or a value of the wrong type in the file is a
user error naming the key and the file. A user error
(:class:`~devito_uq.errors.DevitoUQError`) prints one line on stderr and exits
with status 2.

A command runs its :attr:`~devito_uq.apps.Command.run` function, unless a config field
hands it to another application (:data:`ALTERNATE_RUNS`): ``devito-uq invert --amortized
PATH`` runs :func:`devito_uq.apps.amortize.imaging_invert.invert_amortized`. The
applications' run modules are imported only when their command runs (``--help`` loads
configs only).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import os
import sys
import typing
import warnings
from collections.abc import Sequence
from typing import Any

from devito_uq._field_types import number_or_word, toml_value, type_name, union_arms
from devito_uq.apps import Command, commands
from devito_uq.errors import DevitoUQError, InvalidArgumentError, warning_printer
from devito_uq.io._files import check_nesting, read_input_text
from devito_uq.parallel import abort, rank_and_size, world
from devito_uq.threads import configure_threads
from devito_uq.validation import check_count

try:
    import tomllib  # Python >= 3.11
except ImportError:  # pragma: no cover - Python 3.10
    try:
        import tomli as tomllib
    except ImportError:
        tomllib = None

__all__ = [
    "ALTERNATE_RUNS",
    "main",
    "build_parser",
    "add_config_options",
    "config_overrides",
    "load_config_file",
    "resolve_config",
    "run_target",
]

#: Commands served by another application when a config field is set (non-empty):
#: ``(command, field) -> "module:function"``, called as :attr:`~devito_uq.apps.Command.run` is. The
#: amortized inversion belongs to :mod:`devito_uq.apps.amortize`, which builds on the
#: imaging application; dispatching here keeps imaging from importing amortize.
ALTERNATE_RUNS: dict[tuple[str, str], str] = {
    ("invert", "amortized"): "devito_uq.apps.amortize.imaging_invert:invert_amortized",
}


def _cli_fields(config: type) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(config) if f.metadata.get("cli", True)]


def _option(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_config_options(
    parser: argparse.ArgumentParser, config: type, presets: dict[str, Any]
) -> None:
    """Add one option per CLI field of the dataclass ``config`` to ``parser``.

    The help text shows each schedule's value. Options default to "not given" so that
    the chosen schedule supplies every value the user leaves out.

    Parameters
    ----------
    parser : argparse.ArgumentParser
        The sub-command's parser.
    config : type
        The config dataclass (fields with ``cli=False`` metadata are left out).
    presets : dict of str to config
        Schedule name → instance.

    Raises
    ------
    TypeError
        A CLI field whose type has no command-line form (mark it ``cli=False``).
    """
    hints = typing.get_type_hints(config)
    group = parser.add_argument_group(f"{config.__name__} fields")
    for f in _cli_fields(config):
        kind = hints[f.name]
        values = {name: getattr(p, f.name) for name, p in presets.items()}
        shown = sorted(set(map(repr, values.values())))
        if len(shown) == 1:
            default = f"default {shown[0]}"
        else:
            default = ", ".join(f"{k}: {v!r}" for k, v in values.items())
        help_text = f"{f.metadata.get('help', '')} ({default})".replace("%", "%%")
        kwargs: dict[str, Any] = {"default": argparse.SUPPRESS, "help": help_text}
        origin = typing.get_origin(kind)
        if union_arms(kind):
            kwargs.update(type=number_or_word, metavar=f.name.upper())
        elif origin is tuple:
            items = typing.get_args(kind)
            kwargs.update(type=items[0], nargs=len(items), metavar=f.name.upper())
        elif kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif kind in (int, float, str):
            kwargs["type"] = kind
        else:  # a field the command line cannot express must be marked cli=False
            raise TypeError(f"{config.__name__}.{f.name}: no CLI form for type {kind}")
        group.add_argument(_option(f.name), dest=f.name, **kwargs)


def config_overrides(args: argparse.Namespace, config: type) -> dict[str, Any]:
    """The config fields given on the command line.

    Parameters
    ----------
    args : argparse.Namespace
        The parsed arguments.
    config : type
        The config dataclass.

    Returns
    -------
    dict
        Field name → value (tuples for ``nargs`` fields).
    """
    out = {}
    for f in _cli_fields(config):
        if hasattr(args, f.name):
            value = getattr(args, f.name)
            out[f.name] = tuple(value) if isinstance(value, list) else value
    return out


def load_config_file(path: str | os.PathLike, config: type) -> dict[str, Any]:
    """Field values of the dataclass ``config`` read from the TOML file ``path``.

    Top-level keys are field names (those offered on the command line); floats
    accept TOML integers, tuples TOML arrays of the right length.

    Parameters
    ----------
    path : str or os.PathLike
        The TOML file.
    config : type
        The config dataclass.

    Returns
    -------
    dict
        Field name → value.

    Raises
    ------
    InvalidArgumentError
        The file is missing, not a regular file (a FIFO, a device), larger than
        ``MAX_TEXT_BYTES`` (16 MiB), not UTF-8, not TOML or nested
        deeper than ``MAX_NESTING`` (64), or a key is not a field of
        ``config`` or holds a value of another type (the message names the key and the
        file); or Python 3.10 without the tomli package.
    """
    path = os.fspath(path)
    if tomllib is None:  # pragma: no cover - Python 3.10
        raise InvalidArgumentError(
            f"reading the config file {path!r} needs Python >= 3.11 or the tomli package"
        )
    text = read_input_text(path, "config file", InvalidArgumentError)
    try:
        data = tomllib.loads(text)
    except RecursionError:
        raise InvalidArgumentError(
            f"config file {path!r} nests arrays or tables too deep"
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise InvalidArgumentError(f"config file {path!r} is not valid TOML: {exc}") from None
    check_nesting(data, f"config file {path!r}", InvalidArgumentError)
    hints = typing.get_type_hints(config)
    fields = {f.name for f in _cli_fields(config)}
    out: dict[str, Any] = {}
    for key, value in data.items():
        if key not in fields:
            raise InvalidArgumentError(
                f"unknown key {key!r} in config file {path!r}; {config.__name__} has "
                f"{', '.join(sorted(fields))}"
            )
        ok, converted = toml_value(hints[key], value)
        if not ok:
            raise InvalidArgumentError(
                f"{key}={value!r} in config file {path!r} must be {type_name(hints[key])}"
            )
        out[key] = converted
    return out


def _add_command(subs, cmd: Command, name: str | None = None) -> None:
    # argparse %-formats help strings ("5/50/95 % quantiles" would end --help in a ValueError)
    sub = subs.add_parser(name or cmd.name, help=cmd.help.replace("%", "%%"), description=cmd.help)
    sub.set_defaults(_command=cmd)
    if cmd.positional is None:
        sub.add_argument(
            "config_file",
            nargs="?",
            default=None,
            metavar="CONFIG",
            help=f"TOML file of {cmd.config.__name__} fields (key = value); options given on "
            "the command line override it",
        )
    else:
        sub.add_argument(
            "_positional",
            nargs="?",
            default=None,
            metavar=cmd.positional.upper(),
            help=f"the {cmd.positional} field (same as --{cmd.positional.replace('_', '-')})",
        )
    sub.add_argument("--out", default=cmd.default_out, help="output folder (default: %(default)s)")
    presets = {cmd.preset: getattr(cmd.config, cmd.preset)()}
    if cmd.full_preset is not None:
        presets[cmd.full_preset] = getattr(cmd.config, cmd.full_preset)()
        sub.add_argument(
            "--full",
            action="store_true",
            help=f"use the {cmd.full_preset!r} schedule instead of {cmd.preset!r}",
        )
    sub.add_argument(
        "--resume",
        action="store_true",
        help="continue from the checkpoints in OUT (same configuration) instead of afresh",
    )
    sub.add_argument("--no-figures", action="store_true", help="skip the PNG figures")
    sub.add_argument("--quiet", action="store_true", help="no progress bars")
    sub.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch and OpenMP threads per process (default: this process's share of the "
        "free cores, or OMP_NUM_THREADS if set; see devito_uq.threads.configure_threads)",
    )
    add_config_options(sub, cmd.config, presets)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``devito-uq``: one sub-command per application command.

    Returns
    -------
    argparse.ArgumentParser
        Two-word commands (``"amortize train"``) become a group with sub-commands.
    """
    parser = argparse.ArgumentParser(
        prog="devito-uq",
        description="Uncertainty quantification with Devito operators and normalizing flows.",
    )
    subs = parser.add_subparsers(dest="command", required=True)
    groups: dict[str, Any] = {}
    for cmd in commands():
        group, _, step = cmd.name.partition(" ")
        if not step:
            _add_command(subs, cmd)
            continue
        # "amortize simulate": a command group with its own sub-commands.
        if group not in groups:
            parent = subs.add_parser(group, help=f"{group} simulate|train|... (see --help)")
            groups[group] = parent.add_subparsers(dest=f"{group}_step", required=True)
        _add_command(groups[group], cmd, name=step)
    return parser


def resolve_config(cmd: Command, args: argparse.Namespace) -> Any:
    """The command's config: its preset, updated by the CONFIG file, then by the options.

    Parameters
    ----------
    cmd : Command
        The sub-command.
    args : argparse.Namespace
        Its parsed arguments.

    Returns
    -------
    config
        An instance of ``cmd.config``.

    Raises
    ------
    InvalidArgumentError
        A bad CONFIG file.
    """
    preset = cmd.full_preset if getattr(args, "full", False) else cmd.preset
    values = {}
    if getattr(args, "config_file", None) is not None:
        values = load_config_file(args.config_file, cmd.config)
    values.update(config_overrides(args, cmd.config))
    if cmd.positional is not None and getattr(args, "_positional", None) is not None:
        values[cmd.positional] = args._positional
    return getattr(cmd.config, preset)(**values)


def run_target(cmd: Command, config: Any) -> str:
    """The ``"module:function"`` that runs ``cmd`` with ``config``.

    Parameters
    ----------
    cmd : Command
        The sub-command.
    config
        Its resolved config.

    Returns
    -------
    str
        The first :data:`ALTERNATE_RUNS` entry of ``cmd`` whose field is set in
        ``config``, else ``cmd.run``.
    """
    for (name, field), target in ALTERNATE_RUNS.items():
        if name == cmd.name and getattr(config, field, None):
            return target
    return cmd.run


def _run(cmd: Command, args: argparse.Namespace, comm: Any) -> dict[str, Any]:
    config = resolve_config(cmd, args)
    # Every size is checked before anything is imported, read or computed (run
    # functions validate again: they are also called directly).
    if callable(getattr(config, "validate", None)):
        config.validate()
    module, _, function = run_target(cmd, config).partition(":")
    run = getattr(importlib.import_module(module), function)
    extra = {"comm": comm} if cmd.mpi else {}
    return run(
        config,
        args.out,
        resume=args.resume,
        progress=not args.quiet,
        figures=not args.no_figures,
        **extra,
    )


def _mpi_launch_size() -> int:
    """Number of ranks when started by an MPI launcher (1 otherwise), from its environment,
    so that a serial run never loads MPI."""
    for var in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MPI_LOCALNRANKS", "PMIX_SIZE"):
        value = os.environ.get(var, "")
        if value.isdigit():
            return int(value)
    return 1


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``devito-uq`` with the arguments ``argv`` (default: the command line).

    Parameters
    ----------
    argv : sequence of str or None
        The arguments after the program name.

    Returns
    -------
    int
        The exit status: 0, or 2 after a user error (one line on stderr; under MPI
        every rank is aborted). Warnings print as one line each
        (:func:`~devito_uq.errors.warning_printer`).
    """
    args = build_parser().parse_args(argv)
    # Devito prints one INFO line per operator call by default: not for a CLI user.
    os.environ.setdefault("DEVITO_LOGGING", "ERROR")
    comm = world() if _mpi_launch_size() > 1 else None  # failures then end every rank
    cmd: Command = args._command
    try:
        with warnings.catch_warnings():  # one line each, for the command line's user
            warnings.showwarning = warning_printer(rank_and_size(comm)[0], "devito-uq")
            # Before any torch or Devito work: each process gets its share of the cores (a
            # billion threads would reach OpenMP: at most 4 per core).
            if args.threads is not None:
                check_count("threads", args.threads, maximum=4 * (os.cpu_count() or 1))
            configure_threads(comm, threads=args.threads)
            summary = _run(cmd, args, comm)
    except DevitoUQError as exc:
        # A user error: one line, no traceback.
        message = " ".join(str(exc).split())
        print(f"devito-uq: error: {message}", file=sys.stderr)
        if comm is not None and comm.Get_size() > 1:
            abort(2, "user error; aborting every rank")
        return 2
    if not cmd.writes:
        return 0
    if comm is None or comm.Get_rank() == 0:  # one report, not one per rank
        print(json.dumps({k: summary[k] for k in cmd.report_keys if k in summary}, indent=2))
        print(f"results written to {os.path.abspath(args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
