"""Docstring examples are part of the documentation, so they are run as tests."""

import doctest
import importlib

import pytest

MODULES = ["streams.schema", "streams.scenarios", "models.blend"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0
    assert result.failed == 0
