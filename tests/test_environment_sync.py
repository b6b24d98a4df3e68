"""environment.yml (conda, GPU servers) and pyproject.toml (pip, CI) must list the same packages."""

import re
import tomllib

from conftest import REPO


def normalise(requirement: str) -> str:
    return re.sub(r"\s+", "", requirement).lower()


def test_environment_yml_lists_the_pip_dependencies():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = {normalise(r) for r in project["dependencies"] + project["optional-dependencies"]["dev"]}
    listed = set()
    for line in (REPO / "environment.yml").read_text().splitlines():
        stripped = line.split("#", 1)[0].strip()
        if stripped.startswith("- ") and line.startswith("      - ") and stripped != "- -e .":
            listed.add(normalise(stripped[2:]))
    assert listed == wanted, {"only in pyproject": sorted(wanted - listed), "only in environment.yml": sorted(listed - wanted)}
