"""pyproject.toml agrees with the requirements files and the code it points at.

Installing for real (a fresh clone, `pip install '.[dask]'` in a new venv, the README's commands
and API example, a Dask cluster) is scripts/check-install.sh: minutes, so not part of the suite.
"""

from __future__ import annotations

import importlib
import re
import tomllib

import pytest

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


def test_install_hints_name_each_extras_packages(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Where neardup is installed (a wheel has no checkout to run `pip install '.[x]'` in), the
    hint lists the extra's packages as pyproject.toml does; otherwise the requirements file."""
    import importlib.metadata

    from neardup.errors import install_hint

    for extra in ("features", "dask", "serve", "heic", "fast"):
        needs = PROJECT["optional-dependencies"][extra]
        assert install_hint(extra) == "pip install " + " ".join(f"'{need}'" for need in needs)

    def not_installed(name: str) -> None:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "requires", not_installed)
    assert install_hint("features") == (
        "pip install -r requirements-features.txt (in the neardup checkout)")
    assert (PROJECT_ROOT / "requirements-features.txt").exists()


def test_the_help_names_extras_not_requirements_files() -> None:
    """A review: index.py --help told an installed user to `pip install -r
    requirements-dask.txt`, a file a wheel does not have; the help names the extra, as
    --features's does, which is right for a wheel and a checkout alike."""
    from neardup.cli import gather, index, search

    for command in (gather, index, search):
        text = " ".join(command.build_parser().format_help().split())
        assert "requirements-" not in text, command.__name__
    text = " ".join(index.build_parser().format_help().split())
    assert "on a Dask cluster (needs the extra 'dask': Dask's distributed;" in text
    assert "(needs the extra 'features': OpenCV and FAISS)" in text


def test_modules_of_the_commands_run_with_python_m() -> None:
    """`python -m neardup.cli.search` runs the command (it used to import it, do nothing and
    exit 0: a mistyped automation step would have passed)."""
    import subprocess
    import sys

    for name in ("gather", "index", "search"):
        run = subprocess.run([sys.executable, "-m", f"neardup.cli.{name}", "--help"],
                             capture_output=True, text=True, cwd=PROJECT_ROOT, timeout=60)
        assert run.returncode == 0
        assert run.stdout.startswith(f"usage: python -m neardup.cli.{name} "), run.stdout


def test_messages_of_python_m_name_the_other_commands_as_python_m(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A review: run with python -m from an installed package, messages said `search.py: error:
    ... (build one with index.py)`, commands an installed package does not have."""
    import subprocess
    import sys

    run = subprocess.run([sys.executable, "-m", "neardup.cli.search", "-s", "nope.shelve", "-q",
                          "x.jpg"], capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert run.returncode == 2
    assert run.stderr == ("python -m neardup.cli.search: error: nope.shelve: no such store (build"
                          " one with python -m neardup.cli.index)\n")


def test_the_source_distribution_holds_what_its_tests_and_docs_need(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A review: the sdist held the test modules but not conftest.py, imagegen.py or
    tests/__init__.py (every test failed to import), nor the docs the README links to, nor the
    requirements files it describes."""
    import subprocess
    import sys
    import tarfile

    pytest.importorskip("setuptools", reason="building the sdist here needs setuptools (pip's"
                        " isolated build installs it; Python 3.12+ venvs do not have it)")
    built = subprocess.run([sys.executable, "-c", "import sys; from setuptools import build_meta;"
                            " print(build_meta.build_sdist(sys.argv[1]))", str(tmp_path)],
                           capture_output=True, text=True, cwd=PROJECT_ROOT, timeout=120)
    assert built.returncode == 0, built.stderr
    with tarfile.open(tmp_path / built.stdout.split()[-1]) as archive:
        names = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    for needed in ("tests/__init__.py", "tests/conftest.py", "tests/imagegen.py",
                   "tests/hostile_images.py", "docs/features.md", "requirements.txt",
                   "requirements-features.txt", "pytest.ini", "scripts/test.sh", "index.py"):
        assert needed in names, needed
    assert not any("__pycache__" in name or name.endswith((".jpg", ".png")) for name in names)


def test_a_one_shot_search_loads_no_other_mode(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """search.py -q loads neither the HTTP server (and asyncio), the checker, nor the report and
    page writers: with them `search.py -q` on a store of CALTECH-101 took 0.66 s (the best of 15
    runs), 0.42 s without. Each mode is still there when asked for."""
    import subprocess
    import sys

    from neardup.cli import index as index_cli

    from .imagegen import textured

    (tmp_path / "images").mkdir()
    for number in range(3):
        textured(number, (160, 120)).save(tmp_path / "images" / f"{number}.png")
    assert index_cli.main(["-d", str(tmp_path / "images"), "-s", str(tmp_path / "db.shelve"),
                           "-q", "-j", "1"]) == 0
    probe = (
        "import sys\n"
        "from neardup.cli import search\n"
        "code = search.main(sys.argv[1:])\n"
        "other = ('asyncio', 'uvicorn', 'neardup.service.server', 'neardup.service.checker',"
        " 'neardup.evaluation.html', 'neardup.evaluation.montage', 'neardup.evaluation.report',"
        " 'neardup.evaluation.scoring', 'neardup.sources.dataset',"
        " 'neardup.cli.search_groups', 'neardup.cli.search_evaluate', 'neardup.cli.search_checker')\n"
        "print(code, sorted(m for m in sys.modules if m.split('.')[0] in other or m in other))\n")
    run = subprocess.run([sys.executable, "-c", probe, "-s", "db.shelve", "-q", "images/0.png",
                          "-m", "0"], capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines()[-1] == "0 []"
    grouped = subprocess.run([sys.executable, "-m", "neardup.cli.search", "-s", "db.shelve",
                              "--groups", "-m", "0"], capture_output=True, text=True, cwd=tmp_path,
                             timeout=60)
    assert grouped.returncode == 1 and grouped.stderr == "", grouped  # no group, no error
