"""The README, the docs and the docstrings name only public, exported objects."""

import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ROLE = re.compile(r":(?:func|class|meth|data|mod|attr):`~?([A-Za-z_][\w.]*)`")
DOTTED = re.compile(r"`(marionette(?:\.[A-Za-z_]\w*)+)")


def resolve(name: str):
    """The object ``name`` (a dotted path) names, checking that every step is public: a module,
    or an attribute listed in its module's ``__all__`` (attributes of classes: not private)."""
    parts = name.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
            break
        except ImportError:
            continue
    else:
        raise AssertionError(f"{name}: no importable module")
    for part in parts[cut:]:
        if part.startswith("_"):
            raise AssertionError(f"{name}: {part} is private")
        exported = getattr(obj, "__all__", None)
        if isinstance(obj, type(importlib)) and exported is not None and part not in exported:
            raise AssertionError(f"{name}: {part} is not in {obj.__name__}.__all__")
        obj = getattr(obj, part)
    return obj


def references():
    """(where, name) of every cross-reference: roles in docstrings, dotted names in Markdown."""
    found = []
    for path in sorted((ROOT / "marionette").rglob("*.py")):
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        for name in ROLE.findall(path.read_text()):
            found.append((f"{path.name}", module, name))
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for name in DOTTED.findall(path.read_text()) + ROLE.findall(path.read_text()):
            found.append((path.name, None, name))
    return found


def test_there_are_references():
    assert len(references()) > 50


@pytest.mark.parametrize("where, module, name", references())
def test_reference_is_public(where, module, name):
    if name.startswith("marionette"):
        resolve(name)
        return
    # A relative name: a method or attribute of a class in the same module, or a name there.
    candidates = [f"{module}.{name}", f"marionette.core.{name}"]
    errors = []
    for candidate in candidates:
        try:
            resolve(candidate)
            return
        except (AssertionError, AttributeError) as error:
            errors.append(str(error))
    owner = importlib.import_module(module)
    head, _, rest = name.partition(".")
    classes = [v for v in vars(owner).values() if isinstance(v, type) and v.__module__ == module]
    if any(hasattr(cls, head) and not head.startswith("_") for cls in classes):
        return  # a method or attribute of a class defined here
    raise AssertionError(f"{where}: {name} does not resolve ({'; '.join(errors)})")
