"""What `pip install .` and the Debian package are built from agrees with the tree.

The package built and installed for real is tested in tests/realkernel/test_package.py.
"""

from __future__ import annotations

import re
import tomllib

from tests.helpers import PROJECT_ROOT

PYPROJECT = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())
DEBIAN = PROJECT_ROOT / "packaging" / "debian"


def test_every_python_package_of_the_tree_is_listed_for_the_wheel():
    """setuptools installs only the listed packages: a subpackage missing from the list is
    missing from `pip install .` and from the Debian package (ImportError at the first run)."""
    source = PROJECT_ROOT / "vmem_agent"
    packages = {".".join(path.parent.relative_to(PROJECT_ROOT).parts)
                for path in source.rglob("*.py") if "__pycache__" not in path.parts}
    assert sorted(PYPROJECT["tool"]["setuptools"]["packages"]) == sorted(packages)


def test_debian_changelog_version_is_the_projects():
    first = (DEBIAN / "changelog").read_text().splitlines()[0]
    assert re.fullmatch(r"vmem-agent \((\S+)\) \S+; urgency=\w+", first)
    assert first.split("(")[1].split(")")[0] == PYPROJECT["project"]["version"]


def test_the_unit_starts_the_script_where_the_package_installs_it():
    """pybuild installs [project.scripts] into /usr/bin."""
    unit = (PROJECT_ROOT / "packaging" / "systemd" / "vmem-agent.service").read_text()
    assert "vmem-agent" in PYPROJECT["project"]["scripts"]
    assert re.search(r"^ExecStart=/usr/bin/vmem-agent daemon$", unit, re.MULTILINE)


def test_debian_dependencies_keep_the_projects_floors():
    """dh_python3 turns each requirement into a Debian dependency; py3dist-overrides makes it
    keep the version floor (python3-click (>= 8.1)), so it must name every requirement."""
    required = {re.match(r"[A-Za-z0-9_.-]+", spec).group(0).lower() for spec in PYPROJECT["project"]["dependencies"]}
    overrides = {}
    for line in (DEBIAN / "py3dist-overrides").read_text().splitlines():
        dist, package = re.fullmatch(r"(\S+) (\S+); PEP386", line).groups()
        overrides[dist.lower()] = package
    assert set(overrides) == required
    assert all(package == f"python3-{dist}" for dist, package in overrides.items())


def test_debian_python_version_is_the_projects():
    control = (DEBIAN / "control").read_text()
    (declared,) = re.findall(r"^X-Python3-Version: (.*)$", control, re.MULTILINE)
    assert declared.replace(" ", "") == PYPROJECT["project"]["requires-python"]
