"""Attributes a package imports on first use: Mask2Former/OneFormer (transformers' heads) stay off
the import path of ``import nat_lightning``, the classifier's and UPerNet's."""

from __future__ import annotations

import importlib


def lazy_attributes(package: str, table: dict[str, tuple[str, str]]):
    """A module ``__getattr__`` for ``package``: ``table`` maps a name to (the module, relative
    to the package, and the attribute there) imported when the name is first asked for."""

    def __getattr__(name: str):
        if name in table:
            module, attribute = table[name]
            return getattr(importlib.import_module(module, package), attribute)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
