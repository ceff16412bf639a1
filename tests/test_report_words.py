"""Every reason and note code the policy and the engine can emit has words in cli.report."""

from __future__ import annotations

import pytest

from vmem_agent.cli import report
from vmem_agent.core import policy
from vmem_agent.engine import runner


def codes(prefix: str) -> list[str]:
    return sorted({value for module in (policy, runner) for name, value in vars(module).items()
                   if name.startswith(prefix) and isinstance(value, str)})


@pytest.mark.parametrize("code", codes("R_"))
def test_every_reason_code_is_worded(code):
    assert report.reason_text(code, {"group": "acpi:PNP0C80:01", "ratio": 301, "kernel_early": 1 << 31}) != code


@pytest.mark.parametrize("code", codes("N_"))
def test_every_note_code_is_worded(code):
    text = report.note_text(code, [3, 4], {"group": "virtio-mem:virtio2", "limit": 1 << 27, "timeout": 5.0, "text": "rounded"})
    assert text and text != code
