"""`vmem-agent doctor` output: findings as lines for people, or one JSON document (docs/json.md).

Bump DOCTOR_SCHEMA_VERSION on any incompatible change of the document.
"""

from __future__ import annotations

from ..core.doctor import ERROR, INFO, WARNING, Finding, count_by_severity

DOCTOR_SCHEMA_VERSION = 1


def doctor_document(findings: tuple[Finding, ...], exit_code: int) -> dict:
    return {
        "doctor": {
            "schema_version": DOCTOR_SCHEMA_VERSION,
            "findings": [finding.to_json() for finding in findings],
            "counts": count_by_severity(findings),
            "exit_code": exit_code,
        }
    }


def render_doctor(findings: tuple[Finding, ...]) -> str:
    """`severity: message [check]`, then `  fix: ...`; a verdict line last."""
    lines = []
    for finding in findings:
        lines.append(f"{finding.severity}: {finding.message} [{finding.check}]")
        if finding.fix:
            lines.append(f"  fix: {finding.fix}")
    counts = count_by_severity(findings)
    if counts[ERROR] or counts[WARNING]:
        lines.append(f"{_count(counts[ERROR], ERROR)}, {_count(counts[WARNING], WARNING)}, {_count(counts[INFO], 'note')}")
    else:
        lines.append(f"no problems found ({_count(counts[INFO], 'note')})")
    return "\n".join(lines)


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"
