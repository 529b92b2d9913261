from __future__ import annotations

import csv
import errno
import filecmp
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from neardup.cli import gather as gather_cli
from neardup.sources import dataset
from neardup.sources.dataset import MANIFEST_COLUMNS, read_manifest
from neardup.sources.edits import resize

from .conftest import PROJECT_ROOT, finished
from .imagegen import make_tree, save, textured


def run_gather(source: str, output: str, *extra: str) -> int:
    return gather_cli.main(["--source", source, "--output", output, "-q", "--cache-dir", "cache",
                            *extra])


@pytest.fixture()
def source(in_tmp: Path) -> Path:
    make_tree("source", 30, folders=3)
    return in_tmp / "source"


class TestDataset:
    def test_haystack_copies_and_manifest(self, source: Path, capsys: pytest.CaptureFixture) -> None:
        assert run_gather("source", "out", "--samples", "4", "--copies", "3", "--seed", "5") == 0
        assert "30 haystack images, 4 samples, 12 copies" in capsys.readouterr().out
        with open("out/manifest.csv", newline="") as stream:
            assert tuple(csv.DictReader(stream).fieldnames or ()) == MANIFEST_COLUMNS
        rows = read_manifest("out/manifest.csv")
        assert all(Path("out", row.file).is_file() for row in rows)

        haystack = [row for row in rows if row.file.startswith("haystack/")]
        assert sorted(row.file.removeprefix("haystack/") for row in haystack) == sorted(
            str(path.relative_to(source)) for path in source.rglob("*.jpg"))
        originals = {row.file: row for row in haystack if row.role == "original"}
        assert len(originals) == 4 and len({row.group for row in originals.values()}) == 4
        assert all(row.role == "" and row.group == "" for row in haystack if row.file not in originals)

        copies = [row for row in rows if row.role == "copy"]
        assert len(copies) == 12
        for copy in copies:
            original = originals[copy.source]
            assert copy.group == original.group
            with Image.open(Path("out", copy.file)) as made, Image.open(Path("out", original.file)) as was:
                assert made.format == "JPEG"
                assert made.size != was.size, "a copy must really be resized"
                factor = made.width / was.width
                assert 0.94 <= factor <= 1.06
                assert abs(made.height - was.height * factor) <= 1, "aspect ratio kept"
            assert copy.edit.startswith("resize factor=")

    def test_random_copy_counts_stay_within_one_to_eight(self, source: Path) -> None:
        assert run_gather("source", "out", "--samples", "10", "--seed", "2") == 0
        rows = read_manifest("out/manifest.csv")
        counts = {}
        for row in rows:
            if row.role == "copy":
                counts[row.group] = counts.get(row.group, 0) + 1
        assert len(counts) == 10 and all(1 <= count <= 8 for count in counts.values())
        assert len(set(counts.values())) > 1

    def test_the_same_seed_gives_the_same_files(self, source: Path) -> None:
        assert run_gather("source", "one", "--samples", "3", "--seed", "9") == 0
        assert run_gather("source", "two", "--samples", "3", "--seed", "9") == 0
        assert Path("one/manifest.csv").read_bytes() == Path("two/manifest.csv").read_bytes()
        for row in read_manifest("one/manifest.csv"):
            assert filecmp.cmp(Path("one", row.file), Path("two", row.file), shallow=False)
        assert run_gather("source", "three", "--samples", "3", "--seed", "10") == 0
        assert Path("one/manifest.csv").read_bytes() != Path("three/manifest.csv").read_bytes()

    def test_without_a_seed_the_seed_is_printed(self, source: Path, capsys: pytest.CaptureFixture) -> None:
        assert run_gather("source", "out", "--samples", "2") == 0
        assert "(seed " in capsys.readouterr().out

    def test_unreadable_files_are_not_sampled(self, in_tmp: Path, capsys: pytest.CaptureFixture) -> None:
        make_tree("source", 3)
        for number in range(4):
            Path(f"source/bad{number}.jpg").write_text("not a picture")
        assert run_gather("source", "out", "--samples", "3", "--seed", "1") == 0
        rows = read_manifest("out/manifest.csv")
        assert {row.file for row in rows if row.role == "original"} == {
            f"haystack/{path}" for path in ("cat0/image_0000.jpg", "cat1/image_0001.jpg",
                                            "cat0/image_0002.jpg")}
        assert "not used as a sample" in capsys.readouterr().err


class TestOutputFolder:
    def test_a_non_empty_output_is_refused_without_force(
        self, source: Path, capsys: pytest.CaptureFixture
    ) -> None:
        assert run_gather("source", "out", "--samples", "2", "--seed", "1") == 0
        before = Path("out/manifest.csv").read_bytes()
        assert run_gather("source", "out", "--samples", "2", "--seed", "2") == 2
        assert "not empty; pass --force" in capsys.readouterr().err
        assert Path("out/manifest.csv").read_bytes() == before

    def test_force_replaces_an_earlier_run_entirely(self, source: Path) -> None:
        assert run_gather("source", "out", "--samples", "5", "--copies", "2", "--seed", "1") == 0
        assert run_gather("source", "out", "--samples", "1", "--copies", "1", "--seed", "2",
                          "--force") == 0
        on_disk = {str(p.relative_to("out")) for p in Path("out").rglob("*") if p.is_file()}
        listed = {row.file for row in read_manifest("out/manifest.csv")} | {"manifest.csv"}
        assert on_disk == listed
        assert not [name for name in os.listdir(".") if ".partial-" in name or ".old-" in name]

    def test_an_output_through_a_link_is_the_folder_it_leads_to(self, source: Path) -> None:
        """A review: --force with -o LINK renamed the link away (left as .out.old-*), put a
        plain folder in its place and kept the earlier run where the link led."""
        assert run_gather("source", "real", "--samples", "1", "--seed", "1") == 0
        os.symlink("real", "out")
        assert run_gather("source", "out", "--samples", "2", "--seed", "2", "--force") == 0
        assert os.path.islink("out") and os.readlink("out") == "real"
        assert sorted(os.listdir(".")) == ["out", "real", "source"]
        rows = read_manifest("real/manifest.csv")
        assert sum(row.role == "original" for row in rows) == 2

    def test_force_keeps_a_file_added_to_the_earlier_run_meanwhile(
        self, source: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
    ) -> None:
        """A review: --force looked at the earlier run only when it started; a file a user
        saved into it during the run went with it."""
        assert run_gather("source", "out", "--samples", "1", "--seed", "1") == 0
        before = Path("out/manifest.csv").read_bytes()
        write_manifest = dataset._write_manifest

        def saved_meanwhile(*args, **kwargs):  # type: ignore[no-untyped-def]
            Path("out/notes.txt").write_text("written while gather.py ran")
            return write_manifest(*args, **kwargs)

        monkeypatch.setattr(dataset, "_write_manifest", saved_meanwhile)
        assert run_gather("source", "out", "--samples", "2", "--seed", "2", "--force") == 2
        assert "holds 1 file gather.py did not write (notes.txt)" in capsys.readouterr().err
        assert Path("out/notes.txt").read_text() == "written while gather.py ran"
        assert Path("out/manifest.csv").read_bytes() == before
        assert sorted(os.listdir(".")) == ["out", "source"]

    def test_force_never_deletes_a_folder_gather_did_not_make(
        self, source: Path, capsys: pytest.CaptureFixture
    ) -> None:
        os.makedirs("precious")
        Path("precious/thesis.txt").write_text("years of work")
        assert run_gather("source", "precious", "--force") == 2
        assert "not an earlier gather.py output" in capsys.readouterr().err
        assert Path("precious/thesis.txt").read_text() == "years of work"

    def test_force_replaces_only_what_gather_wrote(
        self, source: Path, capsys: pytest.CaptureFixture
    ) -> None:
        """A review: --force deleted any folder holding a file named manifest.csv (a photo folder
        with another program's manifest), and with an earlier output whatever a user had added
        to it (a store kept inside, a photo of their own), without a word."""
        os.makedirs("Photos")
        Path("Photos/mine.jpg").write_bytes(b"a photo")
        Path("Photos/manifest.csv").write_text("name,size\nmine.jpg,7\n")
        assert run_gather("source", "Photos", "--force") == 2
        assert capsys.readouterr().err == (
            f"gather.py: error: {Path('Photos').resolve()}: its manifest.csv is not one"
            " gather.py wrote (its columns are not file, role, group, source, edit); refusing to"
            " replace the folder even with --force\n")
        assert sorted(os.listdir("Photos")) == ["manifest.csv", "mine.jpg"]

        assert run_gather("source", "out", "--samples", "2", "--seed", "1") == 0
        Path("out/db.shelve").write_bytes(b"a store")
        Path("out/haystack/cat0/added.jpg").write_bytes(b"a photo")
        capsys.readouterr()
        assert run_gather("source", "out", "--samples", "2", "--seed", "2", "--force") == 2
        assert capsys.readouterr().err == (
            f"gather.py: error: {Path('out').resolve()}: holds 2 files gather.py did not write (db.shelve,"
            " haystack/cat0/added.jpg); move them out, or choose another --output (--force"
            " replaces only an earlier gather.py run)\n")
        assert Path("out/db.shelve").read_bytes() == b"a store"
        assert Path("out/haystack/cat0/added.jpg").read_bytes() == b"a photo"
        os.remove("out/db.shelve")
        os.remove("out/haystack/cat0/added.jpg")
        assert run_gather("source", "out", "--samples", "2", "--seed", "2", "--force") == 0

    def test_one_sample_and_one_copy_are_said_in_the_singular(
        self, source: Path, capsys: pytest.CaptureFixture
    ) -> None:
        assert run_gather("source", "out", "--samples", "1", "--copies", "1", "--seed", "1") == 0
        assert "30 haystack images, 1 sample, 1 copy, manifest.csv" in capsys.readouterr().out

    def test_a_full_disk_names_the_output_folder(
        self, source: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A review (a 2 MB tmpfs): "gather.py: error: cannot write the results (No space left
        on device)" named neither the folder nor the file it could not write."""
        assert run_gather("source", "out", "--samples", "2", "--seed", "1") == 0
        before = Path("out/manifest.csv").read_bytes()

        def disk_full(*args: object, **kwargs: object) -> None:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        monkeypatch.setattr(Image.Image, "save", disk_full)
        assert run_gather("source", "out", "--samples", "2", "--seed", "2", "--force") == 2
        assert capsys.readouterr().err == (
            f"gather.py: error: {Path('out').resolve()}: cannot write the dataset there (No space"
            " left on device); the folder is as it was\n")
        assert Path("out/manifest.csv").read_bytes() == before
        assert not [name for name in os.listdir(".") if ".partial-" in name or ".old-" in name]

    def test_sigterm_removes_the_partial_folder_as_ctrl_c_does(
        self, source: Path
    ) -> None:
        """A review: gather.py stopped by SIGTERM (kill, timeout, a service stop) left its
        .OUT.partial-* folder behind (193 MB after 6 s of CALTECH-101), where Ctrl-C removed it.
        The run here sends itself SIGTERM once the haystack is written, so the signal arrives
        mid-run every time, not after some guessed delay."""
        script = (
            "import os, signal, sys\n"
            "from neardup.cli import gather\n"
            "from neardup.sources import dataset\n"
            "write_copies = dataset._write_copies\n"
            "def terminated_then_copies(*args, **kwargs):\n"
            "    os.kill(os.getpid(), signal.SIGTERM)\n"
            "    return write_copies(*args, **kwargs)\n"
            "dataset._write_copies = terminated_then_copies\n"
            "sys.exit(gather.main(sys.argv[1:]))\n"
        )
        with subprocess.Popen(
            [sys.executable, "-c", script, "--source", "source", "--output", "out", "-q",
             "--samples", "2", "--seed", "1"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)},
        ) as process:
            out, err = finished(process, 60)
        assert process.returncode == 128 + signal.SIGTERM, err
        assert (out, err) == ("", "gather.py: terminated; nothing was written to the output"
                              " folder\n")
        assert sorted(os.listdir(".")) == ["source"]

    @pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
    def test_a_signal_during_the_swap_leaves_one_whole_run_and_says_which(
        self, source: Path, signum: int
    ) -> None:
        """A review: --force swaps the earlier run out and the new one in by two renames, and
        removes the earlier one. A signal between the renames left no output folder (the earlier
        run hidden in .out.old-*); one after them said "nothing was written" with the new run in
        place and the old one half removed (13 of 20 tries). The run here signals itself right
        after the first rename, every time."""
        assert run_gather("source", "out", "--samples", "1", "--seed", "1") == 0
        code, out, err = _gather_signalled_in_its_swap(signum)
        assert code == 128 + signum, err
        what = "terminated" if signum == signal.SIGTERM else "interrupted"
        assert err == (f"gather.py: {what} once the dataset was written (the output folder holds"
                       " this run, whole)\n")
        assert out.startswith("out: ") and "(seed 2)" in out, out
        assert sorted(os.listdir(".")) == ["out", "source"]  # no .out.old-* left
        rows = read_manifest("out/manifest.csv")
        assert sum(row.role == "original" for row in rows) == 2  # the new run's two samples

    def test_an_ignored_ctrl_c_stays_ignored_during_the_swap(self, source: Path) -> None:
        """A second review: a gather.py started with SIGINT ignored (a background job of a
        script) was stopped "interrupted" (exit 130) by a SIGINT during the swap: the handler
        that holds signals there had replaced the ignoring."""
        assert run_gather("source", "out", "--samples", "1", "--seed", "1") == 0
        code, out, err = _gather_signalled_in_its_swap(signal.SIGINT, sigint_ignored=True)
        assert (code, err) == (0, "")
        assert "(seed 2)" in out
        assert sorted(os.listdir(".")) == ["out", "source"]

    def test_partial_folders_of_runs_that_are_gone_are_removed(self, source: Path) -> None:
        """A run killed outright (SIGKILL, a power cut) cannot clean up after itself: the next run
        into the same output removes what such a run left, never the folder of a run going on."""
        with subprocess.Popen([sys.executable, "-c", ""]) as ended:
            pass  # waited for, so its pid is no process's now
        host = dataset._host()  # this machine, as folder names give it
        stale = Path(f".out.partial-{host}-{ended.pid}-abcd_123")
        running = Path(f".out.partial-{host}-{os.getpid()}-abcd_123")
        other_host = Path(f".out.partial-{host}x-{ended.pid}-abcd_123")
        other_output = Path(f".other.partial-{host}-{ended.pid}-abcd_123")
        not_ours = Path(f".out.partial-{host}-{ended.pid}-kept")
        # An earlier run a killed run was removing once it had put its own in place.
        stale_old = Path(f".out.old-{host}-{ended.pid}-abcd_123")
        # A second review: a run in another pid namespace (a container sharing the host's name)
        # looks gone by its pid; one still writing was deleted under it. Only folders nothing
        # has been written into for ABANDONED_AFTER go.
        busy = Path(f".out.partial-{host}-{ended.pid}-busy_123")
        folders = (stale, stale_old, running, other_host, other_output, not_ours, busy)
        for folder in folders:
            (folder / "haystack").mkdir(parents=True)
            (folder / "haystack" / "a.jpg").write_bytes(b"half")
        long_ago = time.time() - dataset.ABANDONED_AFTER - 60
        for folder in folders[:-1]:
            for inside in (folder / "haystack", folder):
                os.utime(inside, (long_ago, long_ago))
        os.utime(busy, (long_ago, long_ago))  # its top folder old, a folder inside it written now
        assert run_gather("source", "out", "--samples", "2", "--seed", "1") == 0
        assert not stale.exists() and not stale_old.exists()
        assert all(folder.is_dir() for folder in folders[2:])

    def test_output_inside_the_source_is_refused(self, source: Path, capsys: pytest.CaptureFixture) -> None:
        assert run_gather("source", "source/out") == 2
        assert "must not be inside the source" in capsys.readouterr().err

    def test_bad_arguments(self, source: Path, capsys: pytest.CaptureFixture) -> None:
        assert run_gather("nowhere", "out") == 2
        assert capsys.readouterr().err == "gather.py: error: nowhere: no such file or folder\n"
        assert run_gather("source", "out", "--samples", "31") == 2
        assert "more than the 30 images" in capsys.readouterr().err
        with pytest.raises(SystemExit) as exited:
            run_gather("source", "out", "--scale", "2")
        assert exited.value.code == 2


def _gather_signalled_in_its_swap(signum: int, *, sigint_ignored: bool = False
                                  ) -> tuple[int, str, str]:
    """gather.py --force into ./out from ./source, sending itself `signum` right after the swap's
    first rename (the earlier run moved aside, the new one not yet in place), every time: its
    exit status, standard output and standard error."""
    script = (
        "import os, sys\n"
        "from neardup.cli import gather\n"
        "rename = os.rename\n"
        "def signalled_rename(source, target):\n"
        "    rename(source, target)\n"
        "    if '.old-' in os.fspath(target):\n"
        f"        os.kill(os.getpid(), {int(signum)})\n"
        "os.rename = signalled_rename\n"
        "sys.exit(gather.main(sys.argv[1:]))\n"
    )
    # Set either way: a test run started in the background of a shell without job control
    # inherits SIGINT ignored, and then the run that should be interrupted was not (exit 0).
    disposition = signal.SIG_IGN if sigint_ignored else signal.SIG_DFL
    ignore = lambda: signal.signal(signal.SIGINT, disposition)  # noqa: E731
    with subprocess.Popen(
        [sys.executable, "-c", script, "--source", "source", "--output", "out", "-q",
         "--samples", "2", "--seed", "2", "--force"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}, preexec_fn=ignore,
    ) as process:
        out, err = finished(process, 60)
    return process.returncode, out, err


def test_resizing_never_returns_the_same_size() -> None:
    picture = textured(1, (300, 200))
    for scale in (0.0001, 0.001):
        for seed in range(20):
            assert resize(picture, random.Random(seed), scale)[0].size != picture.size


def test_exif_rotated_samples_are_copied_upright(in_tmp: Path) -> None:
    upright = textured(4, (120, 80))
    exif = Image.Exif()
    exif[0x0112] = 6
    save(upright.transpose(Image.Transpose.ROTATE_90), "source/sideways.jpg", exif=exif, quality=95)
    assert run_gather("source", "out", "--samples", "1", "--copies", "1", "--seed", "1") == 0
    with Image.open("out/copies/g01_copy1.jpg") as copy:
        assert copy.width > copy.height  # upright, as a viewer shows the original


@pytest.mark.parametrize(("samples", "first"), [(3, "g01"), (12, "g01"), (120, "g001")])
def test_groups_are_named_with_at_least_two_digits(in_tmp: Path, samples: int, first: str) -> None:
    """The README's examples query images/copies/g01_copy1.jpg: a trial with fewer than ten
    samples named it g1_copy1.jpg, and the example said "file not found" (a review)."""
    Path("source").mkdir()
    for number in range(samples):
        textured(number, (64, 48)).save(f"source/{number:03d}.png")
    assert run_gather("source", "out", "--samples", str(samples), "--copies", "1",
                      "--seed", "1") == 0
    assert Path(f"out/copies/{first}_copy1.jpg").is_file()
