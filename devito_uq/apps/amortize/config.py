"""The config of ``devito-uq amortize simulate|train|study|all``: one class per problem.

Each amortizable problem declares its knobs in its own file, ``<problem>_config.py``
beside this one (:mod:`~devito_uq.apps.amortize.avp_config`,
:mod:`~devito_uq.apps.amortize.imaging_config`): a dataclass inheriting the common
training knobs (:class:`~devito_uq.apps.amortize.training_config.AmortizeTraining`) whose
``problem`` field defaults to the problem's name. They are found here by that name
(:data:`PROBLEMS`), so a new problem adds its file and nothing else.

One TOML file drives the whole workflow of one problem, picked by its ``problem`` key;
the command line offers every problem's options, so the command's config,
:class:`AmortizeConfig`, holds the fields of all of them (built from theirs, none
declared here). ``AmortizeConfig.for_problem()`` keeps the chosen problem's fields
(a field of another problem is ignored) and the runs work on that. The defaults are the
AVP workflow of ``make amortize`` (< 30 min on 2 cores); ``examples/amortize_marmousi.toml``
sets the 2D case.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
import typing
from typing import Any

from devito_uq.apps.amortize.training_config import AmortizeTraining
from devito_uq.errors import InvalidArgumentError
from devito_uq.validation import check_choice

__all__ = ["AmortizeConfig", "PROBLEMS", "problem_config"]

_SUFFIX = "_config"


def _problem_classes() -> dict[str, type]:
    """``{problem: config class}`` of every ``<problem>_config.py`` of this package."""
    package = importlib.import_module(__name__.rpartition(".")[0])
    found: dict[str, type] = {}
    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda i: i.name):
        name = info.name.removesuffix(_SUFFIX)
        if not info.name.endswith(_SUFFIX) or name in ("", "training"):
            continue
        module = importlib.import_module(f"{package.__name__}.{info.name}")
        for obj in vars(module).values():
            if (
                isinstance(obj, type)
                and issubclass(obj, AmortizeTraining)
                and obj.__module__ == module.__name__
            ):
                found[obj.__dataclass_fields__["problem"].default] = obj
    return found


_CLASSES = _problem_classes()
#: The problems an amortized posterior is built for.
PROBLEMS = tuple(_CLASSES)


def problem_config(values: dict[str, Any]) -> AmortizeTraining:
    """The config of problem ``values["problem"]`` (default ``"avp"``) from ``values``;
    keys of other problems are ignored (an ``amortized.pt`` written before the split holds
    every problem's keys).

    Raises
    ------
    InvalidArgumentError
        ``problem`` names no amortizable problem.
    """
    problem = check_choice("problem", values.get("problem", "avp"), PROBLEMS)
    cls = _CLASSES[problem]
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in values.items() if k in names})


def _union_fields() -> list[tuple[str, Any, dataclasses.Field]]:
    """Every problem's fields, once each (the common ones first, then by problem), as
    :func:`dataclasses.make_dataclass` takes them; ``problem`` defaults to ``"avp"``."""
    out: dict[str, tuple[str, Any, dataclasses.Field]] = {}
    for cls in (AmortizeTraining, *_CLASSES.values()):
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if f.name not in out:
                default = "avp" if f.name == "problem" else f.default
                out[f.name] = (
                    f.name,
                    hints[f.name],
                    dataclasses.field(default=default, metadata=f.metadata),
                )
    return list(out.values())


class _Command:
    """Methods of :class:`AmortizeConfig` (the fields come from the problems' configs)."""

    @classmethod
    def short(cls, **overrides: Any) -> Any:
        """The AVP workflow of ``make amortize`` (< 30 min on 2 cores), with ``overrides``."""
        return cls(**overrides)

    def for_problem(self) -> AmortizeTraining:
        """The config of the chosen ``problem`` with its fields of ``self``."""
        return problem_config(dataclasses.asdict(self))

    def validate(self) -> Any:
        """Raise :class:`InvalidArgumentError` naming the first bad value of the chosen
        problem's fields; return ``self``."""
        if not isinstance(self.problem, str):
            raise InvalidArgumentError(f"problem={self.problem!r} must be one of {PROBLEMS}")
        self.for_problem().validate()
        return self

    def to_dict(self) -> dict[str, Any]:
        """Plain-data copy of every field."""
        return dataclasses.asdict(self)


AmortizeConfig = dataclasses.make_dataclass(
    "AmortizeConfig",
    _union_fields(),
    bases=(_Command,),
    namespace={
        "__doc__": "Every amortized problem's fields, for the command line and the TOML "
        "file; ``for_problem()`` gives the chosen problem's config.",
        "__module__": __name__,
    },
)
