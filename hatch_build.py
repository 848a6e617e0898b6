"""Hatchling build hook: a wheel carries the compiled redaction modules when a build for its sources is present.

``scripts/build_native.py`` leaves the mypyc build in ``gateway/redaction/_native/`` (ignored by git, so hatchling
would leave it out). When that build's stamp matches the sources being packaged (the same check the package makes
at import, ``gateway/redaction/native.py``), this hook adds the directory to the wheel and lets hatchling tag the
wheel for this interpreter and platform instead of ``py3-none-any``: a wheel holding C extensions must not claim
to fit every Python. Without a build, or for an editable install (which runs from the tree, build or not), the
wheel is the pure-Python one it always was. ADR 0027.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface


def _native_module(root: Path) -> Any:
    """``gateway/redaction/native.py`` loaded by path (it imports nothing of the project; the package is not built)."""
    spec = importlib.util.spec_from_file_location("_agentaudit_native", root / "gateway" / "redaction" / "native.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class CustomBuildHook(BuildHookInterface):  # type: ignore[type-arg]
    """Adds ``gateway/redaction/_native/`` to a wheel when it fits the sources."""

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        if self.target_name != "wheel" or version == "editable":
            return
        root = Path(self.root)
        package = root / "gateway" / "redaction"
        native = _native_module(root)
        if not native.usable(package):
            self.app.display_info("agentaudit: no compiled redaction build for these sources; a pure-Python wheel")
            return
        for path in sorted((package / "_native").iterdir()):
            build_data["force_include"][str(path)] = f"gateway/redaction/_native/{path.name}"
        build_data["pure_python"] = False
        build_data["infer_tag"] = True
        self.app.display_info("agentaudit: the wheel carries the compiled redaction (gateway/redaction/_native)")
