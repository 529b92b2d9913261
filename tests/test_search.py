from __future__ import annotations

import errno
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import neardup
import neardup.core.cache as cache_module
import neardup.core.search as search_module
from neardup.cli import index as index_cli
from neardup.cli import search as search_cli
from neardup.core.hashing import MAX_UNDECIDED, Hash, Recipe, hash_file
from neardup.core.multiindex import MAX_SUBSTRING_RADIUS, WideMultiIndex
from neardup.core.search import HashIndex, find_matches
from neardup.core.store import IndexedFile, Store

from .conftest import PROJECT_ROOT
from .imagegen import faint_jpeg, hashed_apart, low_contrast, save, textured


def flip_bits(value: int, count: int, bits: int, rng: random.Random) -> int:
    for position in rng.sample(range(bits), count):
        value ^= 1 << position
    return value


class TestHashIndexAgainstPythonBruteForce:
    @pytest.mark.parametrize("bits", [64, 256])
    def test_same_answers_with_planted_neighbours(self, bits: int) -> None:
        rng = random.Random(bits)
        stored = {rng.getrandbits(bits) for _ in range(2000)}
        queries = [rng.getrandbits(bits) for _ in range(20)]
        for query in queries:  # neighbours at every distance from 0 to 12
            stored |= {flip_bits(query, distance, bits, rng) for distance in range(13)}
        index = HashIndex.from_hashes([Hash(value, bits) for value in stored])

        for query in queries:
            for radius in (0, 4, 8, 12):
                expected = sorted(
                    ((Hash(value, bits).hex(), (value ^ query).bit_count()) for value in stored
                     if (value ^ query).bit_count() <= radius),
                    key=lambda pair: (pair[1], pair[0]),
                )
                assert index.within(Hash(query, bits), radius) == expected
                assert len(expected) >= radius + 1  # the planted ones are really there

    def test_empty_index(self) -> None:
        for multi_index in (False, True):
            index = HashIndex.from_hashes([], multi_index=multi_index)
            assert index.within(Hash(0, 64), 10) == []


class TestFindMatches:
    def test_ordered_by_distance_then_path_and_exact_bucket_alone_at_zero(
        self, tmp_path: Path
    ) -> None:
        query = Hash(0x0F0F, 64)
        near = Hash(0x0F0E, 64)  # one bit away
        far = Hash(0xF0F0, 64)
        with Store.open_for_writing(str(tmp_path / "s"), Recipe(), "/d", {}) as store:
            store.apply([IndexedFile("z.jpg", 1, 1, query.hex()),
                         IndexedFile("a.jpg", 1, 1, near.hex()),
                         IndexedFile("b.jpg", 1, 1, query.hex()),
                         IndexedFile("far.jpg", 1, 1, far.hex())], [])
            within = find_matches(store, query, 4)
            assert [(m.path, m.distance) for m in within] == [("b.jpg", 0), ("z.jpg", 0), ("a.jpg", 1)]
            exact = find_matches(store, query, 0)
            assert [(m.path, m.distance) for m in exact] == [("b.jpg", 0), ("z.jpg", 0)]


class TestSearchCommand:
    def test_finds_the_image_and_its_copy(self, indexed: Path, capsys: pytest.CaptureFixture) -> None:
        assert search_cli.main(["-s", "db.shelve", "-q", "images/cat0/image_0000.jpg"]) == 0
        lines = capsys.readouterr().out.splitlines()
        assert lines[0] == "0\timages/cat0/image_0000.jpg"
        assert [line.split("\t")[1] for line in lines] == [
            "images/cat0/image_0000.jpg", "images/copy.jpg"]
        assert all(int(line.split("\t")[0]) <= 4 for line in lines)

    def test_json_output(self, indexed: Path, capsys: pytest.CaptureFixture) -> None:
        assert search_cli.main(["-s", "db.shelve", "-q", "images/copy.jpg", "--json"]) == 0
        (record,) = json.loads(capsys.readouterr().out)
        assert record["query"] == "images/copy.jpg"
        assert len(record["hash"]) == 16
        paths = {match["relpath"]: match["distance"] for match in record["matches"]}
        assert paths["copy.jpg"] == 0 and "cat0/image_0000.jpg" in paths

    def test_json_output_names_a_file_that_is_not_utf8_exactly_and_validly(
            self, indexed: Path, capsys: pytest.CaptureFixture) -> None:
        """A review: such a name was written as \\udce9, which strict JSON parsers refuse."""
        import base64

        odd = os.fsdecode(b"images/caf\xe9.jpg")
        Path(odd).write_bytes(Path("images/copy.jpg").read_bytes())
        assert index_cli.main(["-d", "images", "-s", "db.shelve", "-q", "-j", "1"]) == 0
        capsys.readouterr()
        assert search_cli.main(["-s", "db.shelve", "-q", odd, "--json"]) == 0
        out = capsys.readouterr().out
        out.encode("ascii")
        (record,) = json.loads(out)
        json.dumps(record, ensure_ascii=False).encode("utf-8")  # no lone surrogate anywhere
        assert record["query"] == "images/caf\ufffd.jpg"
        assert base64.b64decode(record["query_base64"]) == b"images/caf\xe9.jpg"
        (match,) = [m for m in record["matches"] if "relpath_base64" in m]
        assert match["relpath"] == "caf\ufffd.jpg"
        assert base64.b64decode(match["relpath_base64"]) == b"caf\xe9.jpg"
        assert os.path.exists(os.fsdecode(base64.b64decode(match["path_base64"])))
        assert search_cli.main(["-s", "db.shelve", "--groups", "--json"]) == 0
        (group,) = [g for g in json.loads(capsys.readouterr().out) if "relpaths_base64" in g]
        assert [base64.b64decode(name) if name else None for name in group["relpaths_base64"]
                ] == [None if relpath != "caf\ufffd.jpg" else b"caf\xe9.jpg"
                      for relpath in group["relpaths"]]

    def test_no_match_exits_1(self, indexed: Path, capsys: pytest.CaptureFixture) -> None:
        save(textured(999), str(indexed / "stranger.jpg"))
        assert search_cli.main(["-s", "db.shelve", "-q", "stranger.jpg", "-m", "2"]) == 1
        assert capsys.readouterr().out == ""

    def test_a_folder_of_queries_prefixes_each_line(
        self, indexed: Path, capsys: pytest.CaptureFixture
    ) -> None:
        assert search_cli.main(["-s", "db.shelve", "-q", "images/cat1", "-m", "0"]) == 0
        lines = capsys.readouterr().out.splitlines()
        assert len(lines) == 3
        for line in lines:
            query, distance, path = line.split("\t")
            assert distance == "0" and query.endswith(path.removeprefix("images/cat1/"))

    @pytest.mark.parametrize("as_json", [False, True])
    def test_a_query_folder_holding_no_image_is_an_error(
        self, indexed: Path, capsys: pytest.CaptureFixture, as_json: bool
    ) -> None:
        """It printed nothing and exited 1, as if no copy had been found."""
        Path("empty").mkdir()
        Path("notes").mkdir()
        Path("notes/readme.txt").write_text("hi\n")
        json_flag = ["--json"] if as_json else []
        code = search_cli.main(["-s", "db.shelve", "-q", "empty", "-q", "notes", *json_flag])
        captured = capsys.readouterr()
        assert code == 2
        assert captured.err == ("search.py: empty: holds no images\n"
                                "search.py: notes: holds no images\n")
        if as_json:
            assert json.loads(captured.out) == [{"query": "empty", "error": "holds no images"},
                                                {"query": "notes", "error": "holds no images"}]
        else:
            assert captured.out == ""

    def test_unreadable_query_is_reported_and_the_rest_answered(
        self, indexed: Path, capsys: pytest.CaptureFixture
    ) -> None:
        Path("bad.jpg").write_text("hello")
        code = search_cli.main(["-s", "db.shelve", "-q", "bad.jpg", "-q", "images/copy.jpg"])
        captured = capsys.readouterr()
        assert code == 2
        assert "bad.jpg: not an image" in captured.err
        assert "images/copy.jpg\t0\timages/copy.jpg" in captured.out

    def test_missing_store_is_one_line_exit_2(self, in_tmp: Path, capsys: pytest.CaptureFixture) -> None:
        assert search_cli.main(["-s", "nothing.shelve", "-q", "x.jpg"]) == 2
        err = capsys.readouterr().err
        assert err == "search.py: error: nothing.shelve: no such store (build one with index.py)\n"


def undecided_query(rng: random.Random, value: int, bits: int, count: int) -> Hash:
    undecided = 0
    for position in rng.sample(range(bits), count):
        undecided |= 1 << position
    return Hash(value, bits, undecided)


def without_undecided(value: int, query: Hash) -> int:
    return query.search_distance(Hash(value, query.bits))


class TestUndecidedBits:
    """A query's undecided bits (hashing.UNDECIDED_BAND) count as agreeing with any stored hash,
    whichever way the index looks: the exact bucket, the multi-index, the scan."""

    def test_they_are_not_part_of_the_hash(self) -> None:
        query = Hash(0b1010, 64, undecided=0b0011)
        assert query == Hash(0b1010, 64) and hash(query) == hash(Hash(0b1010, 64))
        assert query.hex() == Hash(0b1010, 64).hex()
        assert query.search_distance(Hash(0b1001, 64)) == 0  # both differing bits undecided
        assert query.search_distance(Hash(0b0101, 64)) == 2
        assert query.distance(Hash(0b1001, 64)) == 2  # the bits as they are
        assert Hash(0b1001, 64).search_distance(query) == 2  # only the query's count
        assert sorted(h.value for h in query.settled()) == [0b1000, 0b1001, 0b1010, 0b1011]
        assert all(h.undecided == 0 for h in query.settled())
        with pytest.raises(ValueError, match="undecided"):
            Hash(0, 8, undecided=1 << 8)

    @pytest.mark.parametrize("bits", [64, 256])
    def test_every_path_counts_them_as_agreeing(self, bits: int) -> None:
        rng = random.Random(f"undecided{bits}")
        stored = {rng.getrandbits(bits) for _ in range(25_000)}
        queries = [undecided_query(rng, rng.getrandbits(bits), bits, count)
                   for count in (1, 2, 3, MAX_UNDECIDED, MAX_UNDECIDED + 3) for _ in range(3)]
        for query in queries:  # planted: flips of undecided bits, of others, and of both
            positions = [b for b in range(bits) if query.undecided >> b & 1]
            for distance in range(9):
                value = flip_bits(query.value, distance, bits, rng)
                for position in rng.sample(positions, rng.randint(1, len(positions))):
                    value ^= 1 << position
                stored |= {value, flip_bits(query.value, distance, bits, rng)}
        hashes = [Hash(value, bits) for value in stored]
        multi = HashIndex.from_hashes(hashes, multi_index=True)
        brute = HashIndex.from_hashes(hashes, multi_index=False)
        for query in queries:
            # Brute force in Python, once per query at the largest radius; each smaller radius
            # keeps a prefix of that order.
            nearest = sorted(((Hash(value, bits).hex(), distance) for value in stored
                              if (distance := without_undecided(value, query)) <= 8),
                             key=lambda pair: (pair[1], pair[0]))
            for radius in (0, 1, 2, 4, 8):
                expected = [pair for pair in nearest if pair[1] <= radius]
                assert brute.within(query, radius) == expected, (query, radius)
                assert multi.within(query, radius) == expected, (query, radius)
                assert len(expected) > radius  # the planted neighbours are there

    def test_a_query_with_many_of_them_is_scanned_where_that_is_cheaper(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Each setting of the undecided bits is one probing of the multi-index: with 4, sixteen.
        Where one scan costs less (the multi-index's own cost rule, times the lookups), the
        query is scanned; the answers are the same either way."""
        rng = random.Random("many")
        values = [rng.getrandbits(64) for _ in range(60_000)]
        index = HashIndex.from_hashes([Hash(value, 64) for value in values], multi_index=True)
        assert index.multi is not None
        assert index.multi.worth_it(4) and not index.multi.worth_it(4, 16)
        probed: list[int] = []
        within = index.multi.within
        monkeypatch.setattr(index.multi, "within",
                            lambda value, radius: probed.append(value) or within(value, radius))
        for count, lookups in ((4, 0), (1, 2)):
            probed.clear()
            query = undecided_query(rng, values[0], 64, count)
            expected = sorted((Hash(value, 64).hex(), without_undecided(value, query))
                              for value in set(values) if without_undecided(value, query) <= 4)
            assert sorted(index.within(query, 4)) == expected
            assert len(probed) == lookups
        assert index.within(query, -1) == [] and index.within(Hash(values[0], 64), -1) == []

    def test_the_exact_bucket_is_each_setting_of_them(self, tmp_path: Path) -> None:
        query = Hash(0x0F0F, 64, undecided=0x0101)
        with Store.open_for_writing(str(tmp_path / "s"), Recipe(), "/d", {}) as store:
            store.apply([IndexedFile("same.jpg", 1, 1, "0000000000000f0f"),
                         IndexedFile("settled.jpg", 1, 1, "0000000000000e0e"),
                         IndexedFile("other.jpg", 1, 1, "0000000000000f0d")], [])
            assert [(m.path, m.distance) for m in find_matches(store, query, 0)] == [
                ("same.jpg", 0), ("settled.jpg", 0)]
            assert [(m.path, m.distance) for m in find_matches(store, query, 1)] == [
                ("same.jpg", 0), ("settled.jpg", 0), ("other.jpg", 1)]

    def test_low_contrast_copies_share_the_exact_bucket(
        self, in_tmp: Path, capsys: pytest.CaptureFixture
    ) -> None:
        """Copies resized by under 1 % and saved again: a low-contrast picture's hash has cells a
        fraction of a level from a bit's edge, and plain ImageHash-style distances put a third of
        them 1 to 3 bits from their original; search.py finds every one at distance 0."""
        rng = random.Random(5)
        apart = 0
        for seed in range(12):
            original = low_contrast(seed)
            factor = 1 + rng.uniform(-0.01, 0.01)
            copy = original.resize((round(400 * factor), round(300 * factor)),
                                   Image.Resampling.LANCZOS)
            save(original, str(in_tmp / "images" / f"o{seed:02d}.jpg"), quality=95)
            save(copy, str(in_tmp / "images" / f"c{seed:02d}.jpg"), quality=90)
            apart += hash_file(f"images/o{seed:02d}.jpg", Recipe()) != hash_file(
                f"images/c{seed:02d}.jpg", Recipe())
        assert apart >= 3  # the case is real: these hashes differ
        assert index_cli.main(["-d", "images", "-s", "db.shelve", "-q", "-j", "1"]) == 0
        capsys.readouterr()
        for seed in range(12):
            for query, wanted in ((f"c{seed:02d}", f"o{seed:02d}"), (f"o{seed:02d}", f"c{seed:02d}")):
                assert search_cli.main(["-s", "db.shelve", "-q", f"images/{query}.jpg",
                                        "-m", "0"]) == 0
                found = [line.split("\t") for line in capsys.readouterr().out.splitlines()]
                assert ["0", f"images/{wanted}.jpg"] in found, (query, found)
        # The checker (its queries hashed in worker processes) and the Python API answer alike.
        copies = "".join(f"images/c{seed:02d}.jpg\n" for seed in range(12))
        checked = subprocess.run([sys.executable, str(PROJECT_ROOT / "search.py"), "-s", "db.shelve",
                                  "--stdin", "-m", "0"], input=copies, capture_output=True,
                                 text=True, timeout=120)
        assert checked.returncode == 0, checked.stderr
        answers = [json.loads(line) for line in checked.stdout.splitlines()]
        assert search_cli.main(["-s", "db.shelve", "-q", "images", "-m", "0", "--json"]) == 0
        for seed, answer in enumerate(answers):
            assert {"relpath": f"o{seed:02d}.jpg", "distance": 0} in [
                {"relpath": match["relpath"], "distance": match["distance"]}
                for match in answer["matches"]], answer
        # Each answer says which of its bits were left out: every distance shown is the bits
        # outside that mask by which the two hashes differ, where the hashes alone could not
        # explain a copy shown at 0 whose hash differs.
        unexplained = 0
        for answer in answers + json.loads(capsys.readouterr().out):
            assert len(answer["undecided"]) == len(answer["hash"]) == 16, answer
            query, undecided = int(answer["hash"], 16), int(answer["undecided"], 16)
            for match in answer["matches"]:
                differing = query ^ int(match["hash"], 16)
                assert match["distance"] == (differing & ~undecided).bit_count(), answer
                unexplained += differing != 0
        assert unexplained >= 3
        with neardup.open_store("db.shelve") as store:
            for seed in range(12):
                assert f"o{seed:02d}.jpg" in [found.relpath for found in store.search(
                    f"images/c{seed:02d}.jpg", max_distance=0)]


def clustered_hashes(rng: random.Random, count: int) -> list[int]:
    """Like real dHashes: many near all-zero bits and around a few popular centres."""
    centres = [0, (1 << 64) - 1] + [rng.getrandbits(64) for _ in range(6)]
    return [flip_bits(rng.choice(centres), rng.randint(0, 10), 64, rng) for _ in range(count)]


class TestMultiIndexAgreesWithBruteForce:
    @pytest.mark.parametrize("kind", ["random", "clustered"])
    def test_same_answers_at_every_radius(self, kind: str) -> None:
        rng = random.Random(kind)
        if kind == "random":
            values = [rng.getrandbits(64) for _ in range(20_000)]
        else:
            values = clustered_hashes(rng, 20_000)
        queries = [rng.choice(values) for _ in range(10)] + [rng.getrandbits(64) for _ in range(10)]
        for query in queries:  # plant neighbours at every distance up to 16
            values += [flip_bits(query, distance, 64, rng) for distance in range(17)]
        hashes = [Hash(value, 64) for value in values]
        multi = HashIndex.from_hashes(hashes, multi_index=True)
        brute = HashIndex.from_hashes(hashes, multi_index=False)
        assert multi.multi is not None and brute.multi is None
        for query in queries:
            for radius in range(0, 17):
                expected = brute.within(Hash(query, 64), radius)
                assert multi.within(Hash(query, 64), radius) == expected, (query, radius)
                assert len(expected) > radius
                # And the multi-index itself, whether or not the cost rule would pick it:
                if radius // 3 <= MAX_SUBSTRING_RADIUS:
                    positions, distances = multi.multi.within(query, radius)
                    scanned, scan_distances = brute.scan(Hash(query, 64), radius)
                    assert sorted(zip(positions.tolist(), distances.tolist(), strict=True)) == \
                        sorted(zip(scanned.tolist(), scan_distances.tolist(), strict=True))

    @pytest.mark.parametrize("kind", ["random", "clustered"])
    def test_every_pair_at_once_is_every_pair_brute_force_finds(
        self, kind: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        from neardup.core import multiindex

        rng = random.Random(f"pairs-{kind}")
        # Most of the time goes to radius 12 (697 probes per substring per value): 1,000 values
        # take about 3 s there, and still give 29,000 clustered pairs, 300 chunks of them.
        values = ([rng.getrandbits(64) for _ in range(800)] if kind == "random"
                  else clustered_hashes(rng, 800))
        values += [flip_bits(value, rng.randint(0, 12), 64, rng) for value in values[:200]]
        hashes = [Hash(value, 64) for value in values]
        index = HashIndex.from_hashes(hashes, multi_index=True)
        matrix = index.matrix[:, 0]
        distances = np.bitwise_count(matrix[:, None] ^ matrix[None, :]).astype(np.int64)
        # Small chunks, so that queries are split across them and a big run stands alone.
        monkeypatch.setattr(multiindex, "PAIRS_PER_CHUNK", 97)
        for radius in (0, 1, 2, 3, 4, 5, 8, 12):
            first, second, found = index.multi.pairs_within(radius)
            expected = np.argwhere(np.triu(distances <= radius, k=1))
            assert sorted(zip(first.tolist(), second.tolist(), strict=True)) == \
                sorted(map(tuple, expected.tolist())), radius
            assert found.tolist() == distances[first, second].tolist()


class TestWideMultiIndexAgreesWithBruteForce:
    @pytest.mark.parametrize("bits", [256, 100, 36])
    @pytest.mark.parametrize("kind", ["random", "clustered"])
    def test_same_answers_at_every_radius(self, bits: int, kind: str) -> None:
        rng = random.Random(f"{kind}{bits}")
        if kind == "random":
            values = [rng.getrandbits(bits) for _ in range(5_000)]
        else:  # smooth images crowd near all-zero bits; a few popular centres
            centres = [0, (1 << bits) - 1] + [rng.getrandbits(bits) for _ in range(6)]
            values = [flip_bits(rng.choice(centres), rng.randint(0, bits // 6), bits, rng)
                      for _ in range(5_000)]
        queries = [rng.choice(values) for _ in range(5)] + [rng.getrandbits(bits) for _ in range(5)]
        top = min(bits // 2, 40)
        for query in queries:  # plant neighbours at every distance up to `top`
            values += [flip_bits(query, distance, bits, rng) for distance in range(top + 1)]
        hashes = [Hash(value, bits) for value in values]
        wide = HashIndex.from_hashes(hashes, multi_index=True)
        brute = HashIndex.from_hashes(hashes, multi_index=False)
        assert isinstance(wide.multi, WideMultiIndex) and brute.multi is None
        for query in queries:
            for radius in (0, 1, 2, 4, 8, 12, 16, 24, 32, 40):
                if radius > top:
                    continue
                positions, distances = wide.multi.within(query, radius)
                scanned, scan_distances = brute.scan(Hash(query, bits), radius)
                assert sorted(zip(positions.tolist(), distances.tolist(), strict=True)) == \
                    sorted(zip(scanned.tolist(), scan_distances.tolist(), strict=True)), \
                    (query, radius)
                assert len(scanned) > radius
                assert wide.within(Hash(query, bits), radius) == brute.within(
                    Hash(query, bits), radius)

    def test_dhash_256_store_uses_it_and_caches_its_tables(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(search_module, "MULTI_INDEX_MIN_HASHES", 100)
        monkeypatch.setattr(cache_module, "CACHE_MIN_HASHES", 100)
        rng = random.Random(256)
        values = [rng.getrandbits(256) for _ in range(300)]
        path = str(tmp_path / "db.shelve")
        recipe = Recipe("dhash", 16)
        with Store.open_for_writing(path, recipe, "/d", {}) as store:
            store.apply([IndexedFile(f"{n}.jpg", 1, 1, Hash(v, 256).hex())
                         for n, v in enumerate(values)], [])
        query = Hash(values[0] ^ 0b1011, 256)
        expected = HashIndex.from_hashes([Hash(v, 256) for v in values], multi_index=False)
        for _ in range(2):  # built, then read back from the cache
            with Store.open_for_reading(path) as store, store.snapshot():
                index = HashIndex.from_store(store)
                assert isinstance(index.multi, WideMultiIndex)
                assert index.within(query, 16) == expected.within(query, 16)
                assert index.within(query, 16)[0] == (Hash(values[0], 256).hex(), 3)
        assert any(name.endswith(".multiindex.npy") for name in os.listdir(path + ".cache"))


def cached_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, seed: int
                 ) -> tuple[str, list[int]]:
    """A store of 400 clustered hashes, large enough (thresholds lowered) for the multi-index
    and the search arrays' cache beside it: its path and its hashes."""
    monkeypatch.setattr(search_module, "MULTI_INDEX_MIN_HASHES", 100)
    monkeypatch.setattr(cache_module, "CACHE_MIN_HASHES", 100)
    values = clustered_hashes(random.Random(seed), 400)
    path = str(tmp_path / "db.shelve")
    with Store.open_for_writing(path, Recipe(), "/d", {}) as store:
        store.apply([IndexedFile(f"{n}.jpg", 1, 1, Hash(v, 64).hex())
                     for n, v in enumerate(values)], [])
    return path, values


def test_large_stores_use_the_multi_index_and_a_cache_that_follows_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path, values = cached_store(tmp_path, monkeypatch, seed=5)
    query = Hash(values[0], 64)

    def answer() -> list[tuple[str, int]]:
        with Store.open_for_reading(path) as store, store.snapshot():
            index = HashIndex.from_store(store)
            assert index.multi is not None
            return index.within(query, 8)

    first = answer()
    cached = sorted(os.listdir(path + ".cache"))
    stem = cached[0].split(".")[0]  # <store id>-<generation>
    assert cached == [f"{stem}.hashes.npy", f"{stem}.json", f"{stem}.multiindex.npy"]
    assert answer() == first  # read back from the cache files
    expected = HashIndex.from_hashes([Hash(v, 64) for v in values], multi_index=False)
    assert first == expected.within(query, 8)

    # A later state is answered from the cached base plus the keys logged since; a reader never
    # deletes an entry, and writes none while the change is small.
    near = Hash(query.value ^ 0b111, 64)
    with Store.open_for_writing(path, Recipe(), "/d", {}) as store:
        store.apply([IndexedFile("new.jpg", 1, 1, near.hex())], [])
    assert (near.hex(), 3) in answer()
    assert sorted(os.listdir(path + ".cache")) == cached


@pytest.mark.parametrize("failing", ["hashes", "manifest", "feature index"])
def test_a_full_disk_leaves_no_partial_cache_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    """The search arrays are written beside the store under a temporary .partial name, then
    renamed. A disk full part way through (ENOSPC, EDQUOT, EIO) left that partial file behind,
    at every search, until index.py pruned it an hour later; the search answered regardless."""
    path, values = cached_store(tmp_path, monkeypatch, seed=6)

    def full(*args: object, **_kwargs: object) -> None:
        # np.save(stream, array) or json.dump(manifest, stream): a part is written, then no more.
        stream = args[1] if failing == "manifest" else args[0]
        stream.write("{" if failing == "manifest" else b"\x93NUMPY")  # type: ignore[attr-defined]
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    if failing == "manifest":
        monkeypatch.setattr(cache_module.json, "dump", full)
    else:
        monkeypatch.setattr(cache_module.np, "save", full)
    query = Hash(values[0], 64)
    expected = HashIndex.from_hashes([Hash(v, 64) for v in values], multi_index=False)
    with Store.open_for_reading(path) as store, store.snapshot():
        if failing == "feature index":
            array = cache_module.cached_array(store, "test", lambda: np.arange(10), small_too=True)
            assert array.tolist() == list(range(10))  # still served to this process
        else:
            assert HashIndex.from_store(store).within(query, 8) == expected.within(query, 8)
    assert not [name for name in os.listdir(path + ".cache") if name.endswith(".partial")]


class TestStoresOfOtherRecipeVersions:
    """Stores of older versions stay searchable with their own preprocessing; a store from a newer
    neardup is refused."""

    @pytest.mark.parametrize("version", [2, 3])
    def test_a_store_of_an_older_version_is_searched_with_its_hashes(
        self, in_tmp: Path, capsys: pytest.CaptureFixture, version: int
    ) -> None:
        from neardup.core.hashing import hash_file

        older = Recipe(preprocess_version=version)
        query = hashed_apart("faint.jpg", older)
        with Store.open_for_writing("db.shelve", older, str(in_tmp), {}) as store:
            store.apply([IndexedFile("faint.jpg", 1, 1, hash_file(query, older).hex())], [])
        assert search_cli.main(["-s", "db.shelve", "-q", query, "--max-distance", "0"]) == 0
        assert capsys.readouterr().out.split("\t")[0] == "0"

    def test_a_store_from_a_newer_recipe_is_one_line_exit_2(
        self, in_tmp: Path, capsys: pytest.CaptureFixture
    ) -> None:
        import json
        import sqlite3

        query = faint_jpeg("faint.jpg")
        with Store.open_for_writing("db.shelve", Recipe(), str(in_tmp), {}) as store:
            store.apply([IndexedFile("faint.jpg", 1, 1, "0" * 16)], [])
        future = json.dumps({**Recipe().to_dict(), "preprocess_version": 99})
        with sqlite3.connect("db.shelve") as connection:
            connection.execute("UPDATE neardup_meta SET value = ? WHERE name = 'recipe'", (future,))
        connection.close()
        assert search_cli.main(["-s", "db.shelve", "-q", query]) == 2
        error = capsys.readouterr().err
        assert "preprocessing v99 is not known" in error and len(error.splitlines()) == 1
