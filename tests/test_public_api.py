"""Every syncd module declares its public API in ``__all__``, and every listed name exists."""

from __future__ import annotations

import importlib
import importlib.metadata
import pkgutil

import pytest

import syncd

# private modules (``_name``) are implementation details of their package and are exempt
MODULES = sorted(
    m.name
    for m in pkgutil.walk_packages(syncd.__path__, prefix="syncd.")
    if not m.name.rsplit(".", 1)[-1].startswith("_")
)


@pytest.mark.parametrize("name", MODULES)
def test_module_declares_all(name: str) -> None:
    module = importlib.import_module(name)
    exported = getattr(module, "__all__", None)
    if name.startswith("syncd.commands.") and name != "syncd.commands.common":
        # command modules are found by discovery through NAME / HELP / add_arguments / run
        assert {"NAME", "HELP", "add_arguments", "run"} <= set(vars(module)), name
        return
    assert exported is not None, f"{name} has no __all__"
    missing = [n for n in exported if not hasattr(module, n)]
    assert not missing, f"{name}.__all__ lists names it does not define: {missing}"


def test_version_is_exported() -> None:
    assert syncd.__version__ == importlib.metadata.version("syncd")
