"""Run the doctests of every module (rewards, prompts, voting, resource sums, ... carry examples)."""

import doctest
import importlib
import pkgutil

import pytest

import lmcot

MODULES = sorted(m.name for m in pkgutil.walk_packages(lmcot.__path__, "lmcot."))


@pytest.mark.parametrize("name", MODULES)
def test_doctests(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
