"""Old module paths kept importable for one release, without files of their own.

A finder at the end of `sys.meta_path` answers only for the old names: the module it gives reads every
attribute from the module that took the name, and importing it warns with both names.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import types
import warnings

# Old module -> the module it became.
RENAMED = {
    "vchain.backends.diffusers": "vchain.backends.diffusers_image",
    "vchain.backends._diffusers": "vchain.backends.diffusers_video",
}


class RenamedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports `RENAMED`'s old names as aliases of the new modules, with a `DeprecationWarning`."""

    def find_spec(self, fullname, path=None, target=None):
        return importlib.util.spec_from_loader(fullname, self) if fullname in RENAMED else None

    def create_module(self, spec):
        new = RENAMED[spec.name]
        warnings.warn(
            f"{spec.name} is now {new}; import from there (the old path goes in the next release)",
            DeprecationWarning,
            stacklevel=2,
        )
        target = importlib.import_module(new)
        module = types.ModuleType(spec.name, target.__doc__)
        module.__getattr__ = lambda name: getattr(target, name)
        return module

    def exec_module(self, module) -> None:
        """Nothing to run: every attribute comes from the new module."""
