"""acetrack's own top-level packages, and a user's module that would shadow one of them.

acetrack installs two top-level packages, ``worker`` and ``config``. A user's module of the same
name earlier on ``sys.path`` (a ``config.py`` next to their hooks, with that folder on
``PYTHONPATH`` or as the current directory under ``python -m``) would be imported in place of
acetrack's, and Python keeps one module per name: acetrack and the user's hooks cannot both have
theirs. So the clash is named before anything imports ``config`` (``clash``), and a hook named
after one of acetrack's packages is refused with the same explanation (``shadowed_hook``).

Standard library only: this runs before acetrack's ``config`` may be imported.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

#: the folder that holds acetrack's top-level packages (site-packages, or the source checkout)
ROOT = Path(__file__).resolve().parent.parent
#: acetrack's top-level packages besides ``worker`` (which is running this)
PACKAGES = ("config",)


def _where(name: str) -> Path | None:
    """Where ``import name`` would load a top-level module from (not importing it); None if nowhere."""
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).resolve()


def clash() -> str | None:
    """One line naming a module that shadows one of acetrack's packages and what to do; else None."""
    for name in PACKAGES:
        found = _where(name)
        ours = ROOT / name / "__init__.py"
        if found is not None and found != ours:
            return (
                f"your module {str(found)!r} shadows acetrack's own package {name!r} ({ours.parent}); "
                f"rename yours (e.g. myapp_{name}.py), or take its folder off PYTHONPATH and the current directory"
            )
    return None


def shadowed_hook(module_name: str) -> str | None:
    """For a hook module named like one of acetrack's packages (``config.hooks``): what is wrong; else
    None. Such a name can only ever import acetrack's own module, never the user's."""
    top = module_name.partition(".")[0]
    if top not in PACKAGES:
        return None
    return (
        f"{top!r} is the name of acetrack's own package: a module of yours named {module_name!r} cannot be "
        "imported beside it; rename your package or module (e.g. myapp_hooks)"
    )
