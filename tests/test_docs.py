"""Docstrings: every example in the package runs (doctests), and every public name is documented in numpydoc form
with its parameters, what it returns and an example."""

from __future__ import annotations

import doctest
import importlib
import inspect
import pkgutil

import pytest

import isodose


def _modules() -> list[str]:
    names = ["isodose"]
    for info in pkgutil.walk_packages(isodose.__path__, "isodose."):
        if not info.name.endswith("__main__"):
            names.append(info.name)
    return sorted(names)


@pytest.mark.parametrize("module_name", _modules())
def test_the_examples_of_every_module_run(module_name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # examples that write files write them here
    module = importlib.import_module(module_name)
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    for test in finder.find(module, module_name):
        runner.run(test)
    results = runner.summarize(verbose=False)
    assert results.failed == 0, f"{results.failed} example(s) of {module_name} failed (see the output above)"


def _public():
    for name in isodose.__all__:
        if name != "__version__":
            yield name, getattr(isodose, name)


@pytest.mark.parametrize("name, value", list(_public()), ids=[name for name, _ in _public()])
def test_every_public_name_has_a_numpydoc_docstring_with_an_example(name, value):
    doc = inspect.getdoc(value) or ""
    sections = {
        line.strip() for line, rule in zip(doc.splitlines(), doc.splitlines()[1:]) if set(rule.strip()) == {"-"}
    }
    assert "Examples" in sections, f"{name}: no Examples section"
    assert ">>>" in doc.split("Examples", 1)[1], f"{name}: the Examples section holds no example"
    if inspect.isclass(value):
        init = [p for p in inspect.signature(value).parameters if p not in ("self", "args", "kwargs")]
        if init and not issubclass(value, Exception):
            assert "Parameters" in sections or "Attributes" in sections, f"{name}: fields not documented"
        return
    parameters = [p for p in inspect.signature(value).parameters if p not in ("self", "args", "kwargs")]
    if parameters:
        assert "Parameters" in sections, f"{name}: no Parameters section"
    assert "Returns" in sections, f"{name}: no Returns section"
