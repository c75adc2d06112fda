"""Run the doctests of every core module (rewards, prompts, voting, ... carry examples)."""

import doctest
import importlib
import pkgutil

import pytest

import lmcot

CORE = sorted(m.name for m in pkgutil.walk_packages(lmcot.__path__, "lmcot.") if not m.name.startswith("lmcot.stages"))


@pytest.mark.parametrize("name", CORE)
def test_doctests(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
