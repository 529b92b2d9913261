"""pyproject.toml agrees with the requirements files and the code it points at.

Installing for real (a fresh clone, `pip install '.[dask]'` in a new venv, the README's commands
and API example, a Dask cluster) is scripts/check-install.sh: minutes, so not part of the suite.
"""

from __future__ import annotations

import importlib
import re
import tomllib

from .conftest import PROJECT_ROOT

PROJECT = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]


def requirements(name: str) -> set[str]:
    lines = (PROJECT_ROOT / name).read_text().splitlines()
    return {re.sub(r"\s+", "", line.split("#")[0]) for line in lines if line.split("#")[0].strip()}


def test_each_extra_is_its_requirements_file() -> None:
    for extra, needs in PROJECT["optional-dependencies"].items():
        if extra == "test":
            continue  # requirements.txt carries pytest for the set-up scripts
        assert {need.replace(" ", "") for need in needs} == requirements(f"requirements-{extra}.txt")
    runtime = {need.replace(" ", "") for need in PROJECT["dependencies"]}
    test = {need.replace(" ", "") for need in PROJECT["optional-dependencies"]["test"]}
    assert runtime | test == requirements("requirements.txt")


def test_console_commands_point_at_the_cli_mains() -> None:
    assert set(PROJECT["scripts"]) == {"neardup-gather", "neardup-index", "neardup-search"}
    for target in PROJECT["scripts"].values():
        module, function = target.split(":")
        assert callable(getattr(importlib.import_module(module), function))
