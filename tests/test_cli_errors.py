"""The CLI's last line of defence: every failure is one line and an exit code."""

from __future__ import annotations

from click.testing import CliRunner

from vmem_agent.cli import commands as cli
from vmem_agent.kernel.sysfs import Sysfs


def test_unexpected_exception_is_one_line_without_traceback(monkeypatch, tmp_path):
    def broken(self, legacy=False):
        raise RuntimeError("something we did not foresee")

    monkeypatch.setattr(Sysfs, "snapshot", broken)
    result = CliRunner().invoke(cli.main, ["--sysfs-root", str(tmp_path), "status"])
    assert result.exit_code == 1
    assert result.output == "vmem-agent: internal error: RuntimeError: something we did not foresee (run with -vv for details)\n"


def test_usage_errors_keep_clicks_exit_code(tmp_path):
    result = CliRunner().invoke(cli.main, ["--sysfs-root", str(tmp_path), "resize"])
    assert result.exit_code == 2 and "resize needs a SIZE or --clear" in result.output
