"""pytest plugin for `make test` (what CI runs): a skipped test fails the run.

CI has everything every test needs (ComfyUI included, see scripts/comfyui_for_tests.sh), so a skip
there means a test silently stopped running. Plain `pytest` without this plugin still skips, with
the reason (`-rs`), where something is missing. Load with `-p scripts.pytest_no_skips`."""

from __future__ import annotations


def _skipped(config) -> int:
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    return len(reporter.stats.get("skipped", [])) if reporter is not None else 0


def pytest_sessionfinish(session, exitstatus):
    if hasattr(session.config, "workerinput"):  # an xdist worker: the controller counts
        return
    if exitstatus == 0 and _skipped(session.config):
        session.exitstatus = 1


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    n = _skipped(config)
    if n and not hasattr(config, "workerinput"):
        terminalreporter.write_line(f"no-skips: {n} test(s) skipped (reasons above); `make test` runs every test",
                                    red=True, bold=True)
