"""The tests' helper modules are each one module: imported under one name, whoever imports them."""

from __future__ import annotations

import sys
from pathlib import Path

import receivers
import servers
import support

import probe_hooks
from worker import hooks

TESTS = Path(__file__).resolve().parent


def test_the_hook_the_settings_name_is_the_module_the_tests_read() -> None:
    settings = support.fast_settings("http://127.0.0.1:1")
    (resolved,) = hooks.resolve_hooks(settings.hooks).values()
    assert resolved is probe_hooks.record
    assert "tests.probe_hooks" not in sys.modules


def test_each_file_under_tests_is_one_module() -> None:
    names: dict[Path, list[str]] = {}
    for name, module in list(sys.modules.items()):
        file = getattr(module, "__file__", None)
        if file and Path(file).resolve().parent == TESTS:
            names.setdefault(Path(file).resolve(), []).append(name)
    assert {p.name for p in names} >= {"support.py", "servers.py", "receivers.py", "probe_hooks.py"}
    assert all(len(n) == 1 for n in names.values()), {p.name: n for p, n in names.items() if len(n) > 1}
    assert "tests.conftest" not in sys.modules and "tests.support" not in sys.modules


def test_conftest_keeps_fixtures_and_the_helpers_live_in_their_modules() -> None:
    conftest = next(m for n, m in sys.modules.items() if getattr(m, "__file__", "") == str(TESTS / "conftest.py"))
    assert conftest.SKIPPED_REAL is support.SKIPPED_REAL  # one list, counted by the summary line
    assert servers.free_port is not None and receivers.serve is not None


def test_no_module_of_the_server_is_over_400_lines() -> None:
    # one concept per module: a module past 400 lines holds two (split it along its seam)
    root = Path(__file__).parent.parent
    sizes = {
        p.relative_to(root): len(p.read_text(encoding="utf-8").splitlines())
        for d in ("worker", "config")
        for p in (root / d).rglob("*.py")
    }
    assert sizes and not {str(p): n for p, n in sizes.items() if n > 400}
