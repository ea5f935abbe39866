"""The top-level package: lazy re-exports of the public API and the error hierarchy."""

import importlib
import subprocess
import sys

import pytest

import devito_uq
from devito_uq.errors import (
    CheckpointError,
    DevitoUQError,
    InvalidDtypeError,
    InvalidModelError,
    SegyError,
    StabilityError,
    TrainingDivergedError,
)


def test_import_does_not_load_devito():
    code = "import sys, devito_uq; print('devito' in sys.modules, 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_cli_parser_does_not_load_devito():
    """Building the devito-uq parser (for --help) reads the app configs only."""
    code = (
        "import sys; from devito_uq.cli import build_parser; build_parser(); "
        "print('devito' in sys.modules, 'devito_uq.apps.avp.run' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


@pytest.mark.parametrize("name", sorted(devito_uq._WHERE))
def test_every_export_is_its_subpackage_object(name):
    """A top-level name is the very object its subpackage exports (no stale copy)."""
    module = next(m for m, names in devito_uq._EXPORTS.items() if name in names)
    sub = importlib.import_module(module)
    assert name in sub.__all__
    assert getattr(devito_uq, name) is getattr(sub, name)


def test_unknown_attribute_raises():
    with pytest.raises(AttributeError, match="has no attribute 'Nope'"):
        devito_uq.Nope  # noqa: B018


def test_error_hierarchy_keeps_builtin_categories():
    for cls in (InvalidModelError, StabilityError, SegyError, CheckpointError):
        assert issubclass(cls, DevitoUQError) and issubclass(cls, ValueError)
    assert issubclass(InvalidDtypeError, TypeError)
    assert issubclass(TrainingDivergedError, RuntimeError)


def test_version_and_base_error():
    assert devito_uq.DevitoUQError is DevitoUQError
    assert tuple(int(v) for v in devito_uq.__version__.split(".")) >= (0, 1, 0)
