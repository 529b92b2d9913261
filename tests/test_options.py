"""Options that would do nothing are refused in one line; every option is explained; the outputs
of the README's commands stay out of `git status`; messages name the command as it was typed."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from neardup.cli import gather as gather_cli
from neardup.cli import index as index_cli
from neardup.cli import search as search_cli
from neardup.cli import search_checker, search_evaluate
from neardup.cli.common import run_command

from .conftest import PROJECT_ROOT
from .imagegen import textured
from .test_evaluation import build


def refused(capsys: pytest.CaptureFixture[str], main, argv: list[str]) -> str:  # type: ignore[no-untyped-def]
    """Run a command that must be refused: exit 2, exactly one line on stderr, nothing on stdout."""
    code = main(argv)
    captured = capsys.readouterr()
    assert code == 2, captured
    assert captured.err.count("\n") == 1, captured.err
    assert captured.out == ""
    return captured.err.strip()


@pytest.mark.parametrize(("extra", "message"), [
    (["--evaluate", "data/manifest.csv", "--montage", "x.png"],
     "--montage does nothing with --evaluate (it is for --query or --groups); --report DIR"
     " draws the misses"),
    (["-q", "data/haystack/A.png", "--report", "out"],
     "--report does nothing with --query (it is for --evaluate); --montage PNG draws the results"),
    (["--groups", "--report", "out"], "--report does nothing with --groups"),
    (["--groups", "--mirror"], "--mirror does nothing with --groups (it is for --query, --evaluate,"
     " --stdin or --serve)"),
    (["--stdin", "--json"], "--json does nothing with --stdin"),
    (["-q", "x.jpg", "--null"], "--null does nothing with --query (it is for --stdin)"),
    (["--serve", "127.0.0.1:1", "--report", "out"], "--report does nothing with --serve"),
    (["--stdin", "--max-upload-bytes", "5"],
     "--max-upload-bytes does nothing with --stdin (it is for --serve)"),
    (["-q", "data/haystack/A.png", "--token-file", "t"], "--token-file does nothing with --query"),
    (["--groups", "--max-matches", "3"],
     "--max-matches does nothing with --groups (it is for --stdin or --serve)"),
    (["--stdin", "--token-file", "token"], "--token-file does nothing with --stdin (it is for"
     " --serve)"),
    (["-q", "data/haystack/A.png", "--max-upload-bytes", "5"],
     "--max-upload-bytes does nothing with --query (it is for --serve)"),
    (["-q", "data/haystack/A.png", "--html", "x.html"], "--html does nothing with --query"),
    (["--groups", "--max-pixels", "1000"], "--max-pixels does nothing with --groups"),
    (["--evaluate", "data/manifest.csv", "--max-pixels", "1000"],
     "--max-pixels does nothing with --evaluate"),
    (["-q", "data/haystack/A.png", "--max-distance", "100"],
     "--max-distance 100 is more than the 64 bits of db.shelve's hashes"),
    (["--groups", "--max-distance", "65"], "--max-distance 65 is more than the 64 bits"),
    (["--stdin", "--max-distance", "65"], "--max-distance 65 is more than the 64 bits"),
    (["--evaluate", "data/manifest.csv", "--max-distance", "17"],
     "--max-distance 17: --evaluate scores the thresholds 0 to 16"),
])
def test_search_refuses_what_would_do_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    extra: list[str], message: str,
) -> None:
    build(tmp_path / "data", planted_duplicate=False)
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    before = sorted(os.listdir(tmp_path))
    line = refused(capsys, search_cli.main, ["-s", "db.shelve", *extra])
    assert line.startswith("search.py: error: " + message), line
    # Nothing written (SQLite's own -wal and -shm files of a reader aside).
    assert sorted(name for name in os.listdir(tmp_path)
                  if not name.endswith(("-wal", "-shm"))) == before


def test_serve_refuses_a_query_distance_beyond_the_hash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A review: --serve --max-query-distance 100 was taken on a 64-bit store, and
    ?max_distance=100 answered (everything matches), while -m 65 and the API refuse."""
    build(tmp_path / "data", planted_duplicate=False)
    monkeypatch.chdir(tmp_path)
    served: list[int] = []
    monkeypatch.setattr(search_checker, "serve", lambda checker, host, port, limits, **_:
                        served.append(limits.max_query_distance))
    serve = ["--serve", "127.0.0.1:0"]
    capsys.readouterr()
    assert refused(capsys, search_cli.main, ["-s", "db.shelve", *serve, "--max-query-distance",
                                             "100"]).startswith(
        "search.py: error: --max-query-distance 100 is more than the 64 bits of db.shelve's"
        " hashes")
    assert served == []
    assert search_cli.main(["-s", "db.shelve", *serve, "--max-query-distance", "64"]) == 0
    assert served == [64]
    # A default beyond the store's bits is not refused but lowered to them (the default 10 is
    # below every --hash-size's bits today: one beyond 64 shows it).
    monkeypatch.setattr(search_cli, "DEFAULT_MAX_QUERY_DISTANCE", 70)
    assert search_cli.main(["-s", "db.shelve", *serve]) == 0
    assert served == [64, 64]


def test_the_same_options_work_where_they_apply(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    build(tmp_path / "data", planted_duplicate=True)
    monkeypatch.chdir(tmp_path)
    assert search_cli.main(["-s", "db.shelve", "--groups", "--montage", "g.png", "--max-pixels",
                            "100000000", "--max-distance", "16"]) == 0
    assert search_cli.main(["-s", "db.shelve", "-q", "data/haystack/A.png", "--max-distance",
                            "64", "--include-low-information"]) == 0
    assert search_cli.main(["-s", "db.shelve", "--evaluate", "data/manifest.csv", "--mirror",
                            "--include-low-information", "--max-distance", "16"]) == 0
    assert os.path.exists("g.png")


def test_evaluate_prints_a_few_misses_and_points_to_the_rest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    build(tmp_path / "data", planted_duplicate=True)  # one missed copy, one other match
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    monkeypatch.setattr(search_evaluate, "LISTED_MISSES", 1)
    assert search_cli.main(["-s", "db.shelve", "--evaluate", "data/manifest.csv"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-2].startswith("  missed  g1 copies/A_mirror.png")
    assert out[-1] == ("  ... and 1 more missed copies and other matches, all listed in"
                       " --report DIR or --html PAGE")
    assert search_cli.main(["-s", "db.shelve", "--evaluate", "data/manifest.csv",
                            "--html", "page.html"]) == 0
    assert capsys.readouterr().out.splitlines()[-1].endswith("all listed in the --html page")
    assert "haystack/B_duplicate.png" in Path("page.html").read_text(encoding="utf-8")


def test_index_refuses_cluster_options_that_would_do_nothing(
    in_tmp: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    os.makedirs("images")
    base = ["-d", "images", "-s", "db.shelve", "-q"]
    assert refused(capsys, index_cli.main, [*base, "--partition-size", "5"]) == (
        "index.py: error: --partition-size does nothing without --scheduler or --local-cluster")
    assert refused(capsys, index_cli.main, [*base, "--connect-timeout", "5"]).startswith(
        "index.py: error: --connect-timeout does nothing without --scheduler")
    assert refused(capsys, index_cli.main, [*base, "--local-cluster", "1", "-j", "2"]).startswith(
        "index.py: error: --jobs does nothing with --local-cluster")
    assert refused(capsys, index_cli.main, [*base, "--scheduler", "tcp://127.0.0.1:1",
                                            "--batch-size", "9"]).startswith(
        "index.py: error: --batch-size does nothing with --scheduler")
    assert refused(capsys, index_cli.main, [*base, "--local-cluster", "1", "--connect-timeout",
                                            "3"]).startswith(
        "index.py: error: --connect-timeout does nothing with --local-cluster")
    assert refused(capsys, index_cli.main, [*base, "--algorithm", "whash", "--hash-size", "12"]) \
        == "index.py: error: whash needs a hash size that is a power of 2"
    assert not os.path.exists("db.shelve")


def test_gather_refuses_scale_without_resize(in_tmp: Path, capsys: pytest.CaptureFixture[str]) -> None:
    os.makedirs("source")
    assert refused(capsys, gather_cli.main, ["-o", "out", "--source", "source", "--edits", "crop",
                                             "--scale", "0.2"]) == (
        "gather.py: error: --scale does nothing without resize in --edits (it sets how much"
        " resize copies are scaled)")
    assert not os.path.exists("out")


@pytest.mark.parametrize("module", [gather_cli, index_cli, search_cli])
def test_every_option_has_help(module) -> None:  # type: ignore[no-untyped-def]
    parser: argparse.ArgumentParser = module.build_parser()
    for action in parser._actions:  # argparse offers no public list of its options
        assert action.help, f"{module.PROG} {'/'.join(action.option_strings)} has no help"


def test_readme_outputs_are_ignored_by_git() -> None:
    if not (PROJECT_ROOT / ".git").exists() or shutil.which("git") is None:
        pytest.skip("not a git checkout")
    outputs = ["images/manifest.csv", "db.shelve", "db.shelve.lock", "db.shelve-wal",
               "db.shelve-shm", "db.shelve.cache/hashes-1.npy", "dhash-8.shelve",
               "phash-8.shelve.lock", "report/evaluation-db-shelve-3f2a9c1b.html", "demo/db.shelve",
               "groups.html", "sheet.png", "neardup.egg-info/PKG-INFO"]
    ignored = subprocess.run(["git", "check-ignore", "--no-index", *outputs], cwd=PROJECT_ROOT,
                             capture_output=True, text=True).stdout.split()
    assert sorted(ignored) == sorted(outputs)


def test_messages_name_the_command_as_typed(tmp_path: Path) -> None:
    console = Path(sys.executable).parent / "neardup-search"
    if not console.exists():
        pytest.skip("neardup is not installed in this venv (bash scripts/setup-venv.sh does it)")
    # A console command names its siblings as console commands too: a wheel has no index.py.
    for command, name, sibling in (([str(console)], "neardup-search", "neardup-index"),
                                   ([sys.executable, str(PROJECT_ROOT / "search.py")], "search.py",
                                    "index.py")):
        done = subprocess.run([*command, "-s", "missing.shelve", "--groups"], cwd=tmp_path,
                              capture_output=True, text=True)
        assert done.returncode == 2
        assert done.stderr == f"{name}: error: missing.shelve: no such store (build one with" \
            f" {sibling})\n"
        usage = subprocess.run([*command, "--help"], capture_output=True, text=True, cwd=tmp_path)
        assert usage.stdout.startswith(f"usage: {name} ")
        assert f"store built by {sibling}" in " ".join(usage.stdout.split())


def test_the_checkers_log_lines_name_the_command_as_typed(monkeypatch: pytest.MonkeyPatch) -> None:
    import logging

    pytest.importorskip("uvicorn", reason="the checker's extra (serve) is not installed")
    from neardup.service.logs import OneLineFormatter

    record = logging.LogRecord("neardup", logging.INFO, __file__, 1, "127.0.0.1:5 GET /x: 404",
                               None, None)
    for argv0, name in (("/venv/bin/neardup-search", "neardup-search"),
                        ("search.py", "search.py")):
        monkeypatch.setattr(sys, "argv", [argv0, "--serve", "127.0.0.1:0"])
        assert OneLineFormatter().format(record) == f"{name}: 127.0.0.1:5 GET /x: 404"


def test_an_event_asyncio_logs_on_two_lines_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    import logging

    pytest.importorskip("uvicorn", reason="the checker's extra (serve) is not installed")
    from neardup.service.logs import OneLineFormatter

    monkeypatch.setattr(sys, "argv", ["search.py", "--serve", "127.0.0.1:0"])
    try:
        raise OSError(24, "Too many open files")
    except OSError:
        record = logging.LogRecord("asyncio", logging.ERROR, __file__, 1, "socket.accept() out"
                                   " of system resource\nsocket: <TransportSocket fd=8>", None,
                                   sys.exc_info())
    assert OneLineFormatter().format(record) == (
        "search.py: socket.accept() out of system resource socket: <TransportSocket fd=8>"
        " (OSError: [Errno 24] Too many open files)")


@pytest.mark.parametrize(("extra", "message"), [
    (["--evaluate", "data/manifest.csv", "--report", "a_file"],
     "--report a_file: is a file, not a folder; give a folder for the report's files"),
    (["--evaluate", "data/manifest.csv", "--report", "a_file/report"],
     "--report a_file/report: cannot make this folder (Not a directory)"),
    (["--groups", "--html", "data"], "--html data: is a folder; give a file name"),
    (["--groups", "--montage", "missing/x.png"], "--montage missing/x.png: no such folder"),
])
def test_output_paths_are_checked_before_any_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    extra: list[str], message: str,
) -> None:
    build(tmp_path / "data", planted_duplicate=False)
    monkeypatch.chdir(tmp_path)
    Path("a_file").write_text("not a folder\n")
    capsys.readouterr()
    line = refused(capsys, search_cli.main, ["-s", "db.shelve", *extra])
    assert line.startswith("search.py: error: " + message), line


def test_an_output_replaces_only_a_page_or_sheet_neardup_wrote(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """A review: --html and --montage renamed their file over whatever was at the path: the store
    being read (`--html db.shelve`), a query photo, a manifest, a device node (as root,
    `--montage /dev/full` became a PNG file). Each is refused before any work, and kept."""
    build(tmp_path / "data", planted_duplicate=False)
    monkeypatch.chdir(tmp_path)
    os.mkfifo("a_pipe")
    capsys.readouterr()
    kept = {name: Path(name).read_bytes() for name in
            ("db.shelve", "data/haystack/A.png", "data/manifest.csv")}
    for extra, message in (
            (["--groups", "--html", "db.shelve"],
             "--html db.shelve: is not an HTML page (it is an SQLite database: a store?); give"
             " another file name, or remove it first"),
            (["--groups", "--montage", "db.shelve"],
             "--montage db.shelve: is not a contact sheet neardup drew (it is an SQLite database:"
             " a store?); give another file name, or remove it first"),
            (["-q", "data/haystack/A.png", "--montage", "data/haystack/A.png"],
             "--montage data/haystack/A.png: is not a contact sheet neardup drew; give another"
             " file name, or remove it first"),
            (["--evaluate", "data/manifest.csv", "--html", "data/manifest.csv"],
             "--html data/manifest.csv: is not an HTML page; give another file name, or remove"
             " it first"),
            (["--groups", "--montage", "a_pipe"],
             "--montage a_pipe: is not a regular file; give a file name")):
        line = refused(capsys, search_cli.main, ["-s", "db.shelve", *extra])
        assert line == "search.py: error: " + message, line
    assert {name: Path(name).read_bytes() for name in kept} == kept
    # Through a link, the page it leads to is written, and the link stays a link.
    Path("served").mkdir()
    Path("served/page.html").write_text("<!DOCTYPE html>\n<p>the page of an earlier run</p>\n")
    os.symlink("served/page.html", "link.html")
    assert search_cli.main(["-s", "db.shelve", "--groups", "--html", "link.html"]) == 0
    assert os.path.islink("link.html")
    assert "earlier run" not in Path("served/page.html").read_text()
    # What neardup wrote is replaced run after run, as the README's commands do.
    for extra in (["--groups", "--html", "page.html"], ["--groups", "--montage", "sheet.png"],
                  *(["--groups", "--montage", f"sheet.{kind}"]
                    for kind in ("jpg", "webp", "gif", "tif"))):
        for _run in range(2):
            assert search_cli.main(["-s", "db.shelve", *extra]) == 0, capsys.readouterr().err


def test_an_output_file_that_cannot_be_read_is_kept(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """A review: a file at --html's or --montage's path that the user may not read counted as
    nothing there, and was replaced (the folder being theirs). Root reads any file, so the
    refusal to read is made here."""
    from neardup.evaluation import output

    build(tmp_path / "data", planted_duplicate=False)
    monkeypatch.chdir(tmp_path)
    secret = {name: f"{name}: another user's file".encode() for name in ("page.html", "sheet.png")}
    for name, data in secret.items():
        Path(name).write_bytes(data)

    def refusing_open(path, *args, **kwargs):  # type: ignore[no-untyped-def]
        if os.path.basename(os.fspath(path)) in secret:
            raise PermissionError(13, "Permission denied", path)
        return open(path, *args, **kwargs)

    monkeypatch.setattr(output, "open", refusing_open, raising=False)
    capsys.readouterr()
    for option, name, wanted in (("--html", "page.html", "an HTML page"),
                                 ("--montage", "sheet.png", "a contact sheet neardup drew")):
        line = refused(capsys, search_cli.main, ["-s", "db.shelve", "--groups", option, name])
        assert line == (f"search.py: error: {option} {name}: cannot be read, so nothing shows it"
                        f" is {wanted}; give another file name, or remove it first"), line
    assert {name: Path(name).read_bytes() for name in secret} == secret

@pytest.mark.parametrize(("main", "argv", "option"), [
    (index_cli.main, ["-d", "", "-s", "db.shelve"], "-d/--dataset"),
    (index_cli.main, ["-d", "photos", "-s", ""], "-s/--shelve"),
    (search_cli.main, ["-s", "", "--groups"], "-s/--shelve"),
    (search_cli.main, ["-s", "db.shelve", "-q", " "], "-q/--query"),
    (gather_cli.main, ["--output", "", "--source", "photos"], "-o/--output"),
    (gather_cli.main, ["--output", "out", "--source", ""], "--source"),
])
def test_an_empty_path_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                  capsys: pytest.CaptureFixture[str], main, argv: list[str],  # type: ignore[no-untyped-def]
                                  option: str) -> None:
    """A review: an unset shell variable (-s "$STORE") made index.py index into SQLite's
    temporary database (summary "2 images in the store", exit 0, no file), and -d "" indexed the
    current folder, whatever it holds."""
    monkeypatch.chdir(tmp_path)
    make_photos(tmp_path / "photos")
    with pytest.raises(SystemExit) as stopped:
        main(argv)
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {option}: is empty (an unset shell variable?)" in err, err
    assert sorted(os.listdir(tmp_path)) == ["photos"]


def test_a_folder_named_with_a_blank_is_a_folder(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Blanks are refused as an unset variable only where nothing has that name (a review:
    -d ' ' was refused with a folder ' ' there)."""
    monkeypatch.chdir(tmp_path)
    make_photos(tmp_path / " ")
    assert index_cli.main(["-d", " ", "-s", "db.shelve", "-q", "-j", "1"]) == 0
    assert search_cli.main(["-s", "db.shelve", "-q", " /0.png", "-m", "0"]) == 0


def test_a_store_named_like_sqlites_memory_database_is_a_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """-s ':memory:' was SQLite's in-memory database: "2 images in the store", and nothing kept."""
    monkeypatch.chdir(tmp_path)
    make_photos(tmp_path / "photos")
    assert index_cli.main(["-d", "photos", "-s", ":memory:", "-q", "-j", "1"]) == 0
    assert (tmp_path / ":memory:").is_file()
    assert search_cli.main(["-s", ":memory:", "-q", "photos/0.png"]) == 0


def test_more_workers_than_the_machine_can_use_are_refused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """A review: `-j 100000` started a process per file (9,145 on CALTECH-101, about 50 MB each);
    --local-cluster and the API's jobs had no bound either."""
    import neardup
    from neardup.core import indexing

    monkeypatch.chdir(tmp_path)
    make_photos(tmp_path / "photos")
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    assert indexing.max_workers() == 32
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    assert indexing.max_workers() == 128
    base = ["-d", "photos", "-s", "db.shelve", "-q"]
    for option in ("--jobs", "--local-cluster"):
        line = refused(capsys, index_cli.main, [*base, option, "129"])
        assert line == (f"index.py: error: {option} 129 is more workers than this machine can use:"
                        " at most 128 on its 16 cores"), line
    with pytest.raises(neardup.NeardupError, match="jobs 129 is more workers"):
        neardup.index_folder("photos", "db.shelve", jobs=129)
    with pytest.raises(neardup.NeardupError, match="jobs -1 is negative"):
        neardup.index_folder("photos", "db.shelve", jobs=-1)
    assert sorted(os.listdir(tmp_path)) == ["photos"]
    assert index_cli.main([*base, "-j", "128"]) == 0  # the bound itself is allowed


@pytest.mark.parametrize("argv", [["-m", "-1"], ["-0", "--max-distance", "-2"],
                                  ["--stdin", "-0", "-m", "-3"]])
def test_a_negative_distance_is_named_as_negative(capsys: pytest.CaptureFixture[str],
                                                  argv: list[str]) -> None:
    """search.py has a "-0" option, so argparse read every negative number as an option:
    `-m -1` said "expected one argument" (a review)."""
    with pytest.raises(SystemExit) as stopped:
        search_cli.main(["-s", "db.shelve", *argv] if "--stdin" in argv
                        else ["-s", "db.shelve", "-q", "x.png", *argv])
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert err.rstrip().endswith("argument -m/--max-distance: " + argv[-1] + " is negative"), err


def make_photos(folder: Path) -> None:
    folder.mkdir()
    for number in range(2):
        textured(30 + number, (96, 72)).save(folder / f"{number}.png")


def test_a_report_file_name_taken_by_a_folder_or_device_is_one_line(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """A second review: a folder at the report's <stem>.json was an IsADirectoryError traceback,
    and (as root) a device node at <stem>.png was replaced by the chart."""
    from neardup.evaluation.report import report_stem

    build(tmp_path / "data", planted_duplicate=False)
    monkeypatch.chdir(tmp_path)
    stem = report_stem("db.shelve")
    os.makedirs(f"out/{stem}.json")
    capsys.readouterr()
    assert search_cli.main(["-s", "db.shelve", "--evaluate", "data/manifest.csv", "--report",
                            "out"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == (f"search.py: error: {Path(f'out/{stem}.json').resolve()}: cannot write the"
                   " report (there is something there that is not a file)"), err
    os.rmdir(f"out/{stem}.json")
    os.mkfifo(f"out/{stem}.png")
    assert search_cli.main(["-s", "db.shelve", "--evaluate", "data/manifest.csv", "--report",
                            "out"]) == 2
    assert stat.S_ISFIFO(os.stat(f"out/{stem}.png").st_mode)


def test_results_on_a_full_disk_are_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    build(tmp_path / "data", planted_duplicate=False)
    monkeypatch.chdir(tmp_path)
    with open("/dev/full", "w") as full:
        result = subprocess.run([sys.executable, str(PROJECT_ROOT / "search.py"), "-s", "db.shelve",
                                 "--groups", "--max-distance", "16"], stdout=full,
                                stderr=subprocess.PIPE, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.endswith("error: cannot write the results (No space left on device)\n")
    assert "Traceback" not in result.stderr


def test_unusable_serve_address_and_hash_size_are_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    build(tmp_path / "data", planted_duplicate=False)
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    line = refused(capsys, search_cli.main, ["-s", "db.shelve", "--serve", "h\u00f4st:18080"])
    assert "expected HOST:PORT" in line
    for size in ("1000", "0", "1", "6"):  # 0 was "must be at least 1"; 6 a traceback
        with pytest.raises(SystemExit) as stopped:  # argparse: its usage, then the one line
            index_cli.main(["-d", "data", "-s", "big.shelve", "--hash-size", size])
        assert stopped.value.code == 2
        assert capsys.readouterr().err.splitlines()[-1] == (
            "index.py: error: argument --hash-size: must be a multiple of 4 from 4 to 32 (a store"
            " keeps each hash as whole bytes)")
    assert not Path("big.shelve").exists()


BROKEN_PIPE_SCRIPT = """
import sys
from neardup.cli.common import run_command
def body():
    if sys.argv[1] == "print":
        for _ in range(100_000):
            print("x" * 100)
        return 0
    raise BrokenPipeError(32, "Broken pipe")  # a pipe to a worker, say
sys.exit(run_command("x.py", body))
"""


def test_only_a_broken_standard_output_is_silent(tmp_path: Path) -> None:
    """`search.py ... | head` ends quietly; a pipe to worker processes that broke (they could not
    start) exited 2 without a word too."""
    script = tmp_path / "broken.py"
    script.write_text(BROKEN_PIPE_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    other = subprocess.run([sys.executable, str(script), "raise"], capture_output=True, text=True,
                           env=env)
    assert other.returncode == 2
    assert other.stderr == ("x.py: error: a pipe to a helper process broke (Broken pipe); worker"
                            " processes may have failed to start\n")
    with subprocess.Popen([sys.executable, str(script), "print"], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, env=env) as reader:
        assert reader.stdout is not None and reader.stderr is not None
        reader.stdout.readline()
        reader.stdout.close()  # as `| head -1` does
        assert reader.stderr.read() == b""
        assert reader.wait(timeout=30) == 2


CTRL_C_IN_A_DESTRUCTOR_SCRIPT = """
import sys
from neardup.cli.common import run_command
class Pressed:
    def __del__(self):
        raise KeyboardInterrupt  # a second Ctrl-C, landing in a destructor
class Broken:
    def __del__(self):
        raise ValueError("a bug in a destructor")
def body():
    held = [Pressed(), Broken()]  # freed with the interrupted run's traceback
    raise KeyboardInterrupt
sys.exit(run_command("x.py", body))
"""


def test_a_ctrl_c_in_a_destructor_prints_no_traceback_other_errors_there_do(
        tmp_path: Path) -> None:
    """A test of a review's case (Ctrl-C pressed again and again while an interrupted
    --local-cluster run closes) failed about 1 run in 10: a press landed in a Dask future's
    __del__ as the run let go of them, and Python printed "Exception ignored in: <function
    Future.__del__>" and its traceback after the run's one line."""
    script = tmp_path / "destructor.py"
    script.write_text(CTRL_C_IN_A_DESTRUCTOR_SCRIPT)
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)})
    assert done.returncode == 130
    assert done.stderr.startswith("x.py: interrupted\n"), done.stderr
    assert "KeyboardInterrupt" not in done.stderr and "Pressed" not in done.stderr, done.stderr
    assert "ValueError: a bug in a destructor" in done.stderr  # a bug still shows


def test_a_thread_refused_by_the_system_is_one_line_and_other_thread_errors_show() -> None:
    """Under a limit on processes and threads (a container's pids.max), Python's RuntimeError
    "can't start new thread" ended a command in a traceback (review r24), and a helper thread
    that died of it printed one; any other error still shows as the bug it is."""
    import threading

    def refused() -> int:
        raise RuntimeError("can't start new thread")

    def buggy() -> int:
        raise RuntimeError("a bug")

    def in_a_thread() -> int:
        def run() -> None:
            raise RuntimeError(sys.argv[0] if said else "can't start new thread")
        for _ in (1, 2):
            thread = threading.Thread(target=run)
            thread.start()
            thread.join()
            said.append(1)
        return 0

    said: list[int] = []
    seen: list[BaseException | None] = []
    earlier = threading.excepthook
    threading.excepthook = lambda args: seen.append(args.exc_value)
    try:
        stderr = io.StringIO()
        with contextlib.redirect_stderr(stderr):
            assert run_command("x.py", refused) == 2
            assert run_command("x.py", in_a_thread) == 0
        with pytest.raises(RuntimeError, match="a bug"):
            run_command("x.py", buggy)
    finally:
        threading.excepthook = earlier
    assert stderr.getvalue() == (
        "x.py: error: a thread could not be started (can't start new thread): a limit on"
        " processes and threads reached (ulimit -u, a container's pids.max)?\n"
        "x.py: a thread ended: can't start new thread (a limit on processes and threads"
        " reached?)\n")
    assert [str(error) for error in seen] == [sys.argv[0]]  # the refused one: the line above
    assert threading.excepthook is earlier


def test_a_closed_standard_output_is_one_line_where_results_go_there(tmp_path: Path) -> None:
    """A review: search.py run with standard output closed (`>&-`, as from cron) ended in an
    AttributeError traceback, and --groups exited 0 having printed nothing. index.py, whose
    result is the store, still indexes."""
    make_photos(tmp_path / "photos")

    def closed_stdout() -> None:
        os.close(1)

    def run(script: str, *argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, str(PROJECT_ROOT / script), *argv], cwd=tmp_path,
                              preexec_fn=closed_stdout, stderr=subprocess.PIPE, text=True,
                              timeout=120)

    done = run("index.py", "-d", "photos", "-s", "db.shelve", "-q", "-j", "1")
    assert (done.returncode, done.stderr) == (0, "")
    assert (tmp_path / "db.shelve").is_file()
    for argv in (["-q", "photos/0.png"], ["-q", "photos/0.png", "--json"], ["--groups"]):
        done = run("search.py", "-s", "db.shelve", *argv)
        assert done.returncode == 2, (argv, done.stderr)
        assert done.stderr == ("search.py: error: standard output is closed, so the results"
                               " would go nowhere (run it with > FILE)\n"), argv


def test_a_closed_standard_error_keeps_the_results_clean(tmp_path: Path) -> None:
    """A second review: with standard error closed (`2>&-`) Python's print(file=None) wrote the
    error lines to standard output, so --json output stopped being JSON."""
    make_photos(tmp_path / "photos")
    assert index_cli.main(["-d", str(tmp_path / "photos"), "-s", str(tmp_path / "db.shelve"),
                           "-q", "-j", "1"]) == 0

    def closed_stderr() -> None:
        os.close(2)

    done = subprocess.run([sys.executable, str(PROJECT_ROOT / "search.py"), "-s", "db.shelve",
                           "-q", "photos/0.png", "-q", "missing.png", "--json"], cwd=tmp_path,
                          preexec_fn=closed_stderr, stdout=subprocess.PIPE, text=True, timeout=120)
    answers = json.loads(done.stdout)
    assert [answer["query"] for answer in answers] == ["photos/0.png", "missing.png"]


def test_file_urls_name_the_folder_on_this_machine(
        in_tmp: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A review: Path.as_uri() of a folder with a space (percent-encoded) and file://localhost/
    were "not a folder", and a local run refused every file:// URL the README says works."""
    from .imagegen import make_tree

    make_tree("my photos", 2)
    folder = Path("my photos").absolute()
    for number, url in enumerate((folder.as_uri(), f"file://localhost{folder}")):
        assert index_cli.main(["-d", url, "-s", f"db{number}.shelve", "-q", "-j", "1"]) == 0, url
        assert "indexed 2," in capsys.readouterr().out
    assert index_cli.main(["-d", "file://elsewhere/photos", "-s", "other.shelve", "-q"]) == 2
    assert capsys.readouterr().err == (
        "index.py: error: file://elsewhere/photos: a file:// URL of another host (elsewhere);"
        " give the folder as this machine sees it\n")
    assert not os.path.exists("other.shelve")


@pytest.mark.parametrize("how", ["script", "module", "console"])
def test_ctrl_c_while_python_loads_the_libraries_is_one_line(tmp_path: Path, how: str) -> None:
    """Ctrl-C in the first 0.3 s (numpy, Pillow and sqlite3 loading, before main() runs) printed
    a KeyboardInterrupt traceback. A stand-in for ImageHash that raises KeyboardInterrupt when
    imported puts the interrupt there every time."""
    (tmp_path / "imagehash.py").write_text("raise KeyboardInterrupt\n")
    command = {"script": ([sys.executable, str(PROJECT_ROOT / "index.py")], "index.py"),
               "module": ([sys.executable, "-m", "neardup.cli.index"], "python -m neardup.cli.index"),
               "console": ([str(Path(sys.executable).parent / "neardup-index")], "neardup-index")}
    argv, name = command[how]
    if how == "console" and not Path(argv[0]).exists():
        pytest.skip("neardup is not installed in this venv (bash scripts/setup-venv.sh does it)")
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(tmp_path), str(PROJECT_ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([*argv, "-d", "images", "-s", "db.shelve"], cwd=tmp_path, env=environment,
                          capture_output=True, text=True, timeout=60)
    assert done.stderr == f"{name}: interrupted\n"
    # As a shell reports any command stopped by Ctrl-C: killed by SIGINT, or exit status 130.
    assert done.returncode in (-2, 130)
    assert not (tmp_path / "db.shelve").exists()


def test_messages_that_name_another_command_name_it_as_typed(
        in_tmp: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Run as a console command (neardup-search), hints named index.py and search.py in a few
    places (a review): the empty store, --file-timeout with -j 1, a store's -wal copy."""
    import sqlite3

    from neardup.core.hashing import Recipe
    from neardup.core.store import Store

    Path("images").mkdir()
    with Store.open_for_writing("db.shelve", Recipe(), str(in_tmp / "images"), {}):
        pass
    textured(5).save("query.jpg")
    monkeypatch.setattr(sys, "argv", ["/venv/bin/neardup-search"])
    assert search_cli.main(["-s", "db.shelve", "-q", "query.jpg"]) == 1
    assert capsys.readouterr().err == (
        "neardup-search: db.shelve: holds no images yet (did neardup-index stop before its first"
        " batch?); neardup-index fills it\n")
    with contextlib.closing(sqlite3.connect("empty.shelve")) as empty:
        empty.execute("PRAGMA user_version = 1")  # no tables: what a copy without its -wal holds
        empty.commit()
    assert search_cli.main(["-s", "empty.shelve", "-q", "query.jpg"]) == 2
    assert "a copy of a store neardup-index was writing" in capsys.readouterr().err
    monkeypatch.setattr(sys, "argv", ["/venv/bin/neardup-index"])
    assert index_cli.main(["-d", "images", "-s", "db.shelve", "-j", "1",
                           "--file-timeout", "5"]) == 2
    err = capsys.readouterr().err
    assert "in neardup-index's own process" in err and "index.py" not in err
