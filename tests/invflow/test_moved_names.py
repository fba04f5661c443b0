"""Names that moved keep working at their old module for one release, with a
DeprecationWarning: the checks (now invflow.validation) and actnorm's CONSTANT_STD (now
invflow.nets, with data_init)."""

from __future__ import annotations

import importlib

import pytest

from invflow import nets, validation

MOVED = [
    ("invflow.layers.base", "check_number", validation),
    ("invflow.layers.base", "check_input", validation),
    ("invflow.layers.base", "LOW_PRECISION", validation),
    ("invflow.models.base", "as_size", validation),
    ("invflow.models.base", "check_ints", validation),
    ("invflow.layers.actnorm", "CONSTANT_STD", nets),
]


@pytest.mark.parametrize("old, name, new", MOVED, ids=[f"{m[0]}.{m[1]}" for m in MOVED])
def test_moved_name_warns_and_is_the_new_one(old, name, new):
    module = importlib.import_module(old)
    with pytest.warns(DeprecationWarning, match=f"import it from {new.__name__}"):
        value = getattr(module, name)
    assert value is getattr(new, name)


def test_unknown_names_still_raise_attribute_error():
    with pytest.raises(AttributeError):
        importlib.import_module("invflow.layers.base").no_such_name  # noqa: B018
