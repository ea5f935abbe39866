"""The top-level package: lazy re-exports of the public API and the error hierarchy."""

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


@pytest.mark.parametrize("name", sorted(set(devito_uq.__all__) - {"__version__"}))
def test_every_export_resolves(name):
    assert getattr(devito_uq, name) is not None


def test_unknown_attribute_raises():
    with pytest.raises(AttributeError, match="has no attribute 'Nope'"):
        devito_uq.Nope  # noqa: B018


def test_error_hierarchy_keeps_builtin_categories():
    for cls in (InvalidModelError, StabilityError, SegyError, CheckpointError):
        assert issubclass(cls, DevitoUQError) and issubclass(cls, ValueError)
    assert issubclass(InvalidDtypeError, TypeError)
    assert issubclass(TrainingDivergedError, RuntimeError)
