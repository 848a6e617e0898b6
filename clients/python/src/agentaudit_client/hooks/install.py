"""``agentaudit hook install AGENT``: adds the hook to the agent's settings file, keeping everything else.

The file is read, our entries are added to the hook events (replacing an earlier agentaudit entry, so running
install twice changes nothing), and written back atomically; a file that is not valid JSON is left untouched.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from .dialects import DIALECTS, Dialect

MARKER = "agentaudit hook"


class SettingsError(Exception):
    """The settings file exists but cannot be read as a JSON object."""


def settings_path(dialect: Dialect, *, user: bool, project_dir: Path) -> Path:
    """The settings file ``install`` writes: the project's by default, the user's with ``user``."""
    return Path(os.path.expanduser(dialect.user_settings)) if user else project_dir / dialect.project_settings


def _ours(entry: Any) -> bool:
    return MARKER in json.dumps(entry)


def merged(dialect: Dialect, settings: dict[str, Any], command: str) -> dict[str, Any]:
    """``settings`` with the hook added for every event the agent has, other entries as they were."""
    result = dict(settings)
    hooks = dict(result.get("hooks") or {})
    for event in [*dialect.events["pre"], *dialect.events["post"]]:
        kept = [e for e in hooks.get(event, []) if not _ours(e)]
        if dialect.name == "cursor":
            ours: dict[str, Any] = {"command": command}
        else:
            ours = {
                "matcher": ".*" if dialect.name == "gemini" else "*",
                "hooks": [{"type": "command", "command": command, "timeout": 30}],
            }
            if dialect.name == "gemini":
                ours["hooks"][0]["name"] = "agentaudit"
        hooks[event] = [*kept, ours]
    result["hooks"] = hooks
    if dialect.name == "cursor":
        result.setdefault("version", 1)
    return result


def install(agent: str, *, user: bool, project_dir: Path, command: str = "") -> Path:
    """Writes the hook configuration for ``agent``; returns the settings file written."""
    dialect = DIALECTS[agent]
    path = settings_path(dialect, user=user, project_dir=project_dir)
    settings: dict[str, Any] = {}
    if path.exists():
        try:
            loaded = json.loads(path.read_text() or "{}")
        except json.JSONDecodeError as exc:
            raise SettingsError(f"{path} is not valid JSON ({exc}); fix it, then run install again") from exc
        if not isinstance(loaded, dict):
            raise SettingsError(f"{path} does not hold a JSON object")
        settings = loaded
    updated = merged(dialect, settings, command or f"{MARKER} {agent}")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        json.dump(updated, f, indent=2)
        f.write("\n")
    if path.exists():
        os.chmod(tmp, path.stat().st_mode & 0o777)
    else:
        os.chmod(tmp, 0o644)
    os.replace(tmp, path)
    return path
