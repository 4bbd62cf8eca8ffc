"""``sdsnodes.index.listing.list_files``: the parallel listing equals ``fs.find`` exactly.

Against the real moto S3 server and the GCS emulator (tests/servers), and local directories. The
page size is lowered (``PAGE_SIZE``) so that 600 keys make dozens of pages, and so dozens
of split ranges: the split logic is exercised as it would be by millions of keys.
"""

from __future__ import annotations

import logging
import os
import random
import re
import string

import pyarrow.parquet as pq
import pytest

from sdsnodes.index import _key_ranges, read_index
from sdsnodes.index._key_ranges import _split_key
from sdsnodes.index.listing import list_files, listing_defaults

#: keys whose first character after the prefix is unusual, each sorted somewhere else
ODD_NAMES = [
    "0.jpg", "9z.jpg", "Abc.jpg", "Zed.jpg", "-dash.jpg", "_under.jpg", ".hidden.jpg",
    "é-accent.jpg", "ü/deep/er.jpg", " leading space.jpg", "mid dle.jpg", "~tilde.jpg",
    "a+b.jpg", "100%.jpg", "😀.jpg", "日本.jpg", "z", "x" * 200 + ".jpg", "same", "same0",
]  # fmt: skip


def tree_keys() -> dict[str, bytes]:
    """Relative keys → bytes: a flat prefix of 600 keys, a nested tree, the odd names."""
    keys = {f"flat/{i:05d}.jpg": b"x" * (i % 13) for i in range(600)}
    keys.update({f"flat/{name}": b"odd" for name in ODD_NAMES})
    for a in range(3):
        for b in range(4):
            for c in range(5):
                keys[f"tree/d{a}/e{b}/f{c}.mp4"] = bytes(a + b + c)
    keys["tree/top.png"] = b"png"
    keys["tree/d0/notes.txt"] = b"text"
    keys["other/outside.jpg"] = b"not under flat/ or tree/"
    return keys


@pytest.fixture(autouse=True)
def small_pages(monkeypatch):
    monkeypatch.setattr(_key_ranges, "PAGE_SIZE", 20)
    monkeypatch.setattr(_key_ranges, "SPLIT_MIN_KEYS", 40)


@pytest.fixture(scope="module")
def s3_tree(s3_server):
    s3_server.ensure_running()
    url = s3_server.make_bucket(f"sds-listing-{random.randrange(16**8):08x}")
    fs = s3_server.fs()
    fs.pipe({f"{url}/{k}": v for k, v in tree_keys().items()})
    fs.pipe({f"{url}/tree/d1/": b""})  # a directory placeholder object: not a file
    yield url, fs, s3_server.storage_options
    s3_server.ensure_running()
    fs.rm(url, recursive=True)


@pytest.fixture(scope="module")
def gcs_tree(gcs_server):
    gcs_server.ensure_running()
    url = gcs_server.make_bucket(f"sds-listing-{random.randrange(16**8):08x}")
    fs = gcs_server.fs()
    keys = {k: v for k, v in tree_keys().items() if not re.fullmatch(r"flat/\d{5}\.jpg", k)}
    keys.update({f"flat/{i:04d}.jpg": b"y" * (i % 5) for i in range(300)})
    fs.pipe({f"{url}/{k}": v for k, v in keys.items()})
    yield url, fs, gcs_server.storage_options
    gcs_server.ensure_running()
    fs.rm(url, recursive=True)


def find_files(fs, url: str) -> list[tuple[str, int]]:
    """What ``fs.find`` lists, as (URL, size), without directory placeholders (``.../``)."""
    fs.invalidate_cache()
    found = fs.find(fs._strip_protocol(url), detail=True)
    return sorted(
        (fs.unstrip_protocol(name), int(info["size"]))
        for name, info in found.items()
        if info.get("type") != "directory" and not name.endswith("/")
    )


def ranges_used(caplog) -> int:
    counts = [int(m) for m in re.findall(r"over (\d+) ranges", caplog.text)]
    assert counts, caplog.text
    return max(counts)


@pytest.mark.parametrize("num_threads", [1, 3, 16])
def test_s3_flat_prefix_equals_find(s3_tree, num_threads, caplog):
    url, fs, options = s3_tree
    caplog.set_level(logging.DEBUG, logger="sdsnodes.index.listing")
    got = list_files(f"{url}/flat", options, num_threads=num_threads)
    expected = find_files(fs, f"{url}/flat")
    assert len(expected) == 600 + len(ODD_NAMES)
    assert got == expected
    assert len({u for u, _ in got}) == len(got)  # none doubled
    if num_threads > 1:
        assert ranges_used(caplog) > 1  # the key space really was split


@pytest.mark.parametrize("store", ["s3", "gcs"])
def test_split_keys_that_are_object_keys_lose_nothing(store, request, monkeypatch, caplog):
    """The boundary case of the proof: a split key that is itself a key belongs to exactly one
    range (the lower one; GCS's startOffset is inclusive, S3's StartAfter is not). Every split
    here is made on an existing key."""
    url, fs, options = request.getfixturevalue(f"{store}_tree")
    bucket = url.split("://", 1)[1]
    keys = sorted(k.removeprefix(bucket + "/") for k in fs.find(f"{bucket}/flat"))

    def split_on_a_key(after, end, base, alphabet, sample=None, leap=1):
        between = [k for k in keys if after < k and (end is None or k < end)]
        return between[len(between) // 2] if between else None

    monkeypatch.setattr(_key_ranges, "_split_key", split_on_a_key)
    caplog.set_level(logging.DEBUG, logger="sdsnodes.index.listing")
    assert list_files(f"{url}/flat", options, num_threads=8) == find_files(fs, f"{url}/flat")
    assert ranges_used(caplog) > 4


def test_s3_unusual_first_characters_are_not_lost(s3_tree):
    url, _, options = s3_tree
    got = {u for u, _ in list_files(f"{url}/flat", options, num_threads=16)}
    missing = [name for name in ODD_NAMES if f"{url}/flat/{name}" not in got]
    assert not missing


def test_s3_nested_tree_and_whole_bucket_equal_find(s3_tree):
    url, fs, options = s3_tree
    assert list_files(f"{url}/tree", options, num_threads=8) == find_files(fs, f"{url}/tree")
    whole = list_files(url, options, num_threads=8)
    assert whole == find_files(fs, url)
    assert len(whole) == len(tree_keys())  # the "tree/d1/" placeholder is not a file
    assert f"{url}/tree/d1/e2/f3.mp4" in {u for u, _ in whole}


def test_s3_extensions_single_object_and_missing(s3_tree):
    url, fs, options = s3_tree
    mp4 = list_files(f"{url}/tree", options, extensions=[".MP4"])
    assert [u for u, _ in mp4] == [
        u for u, _ in find_files(fs, f"{url}/tree") if u.endswith(".mp4")
    ]
    assert len(mp4) == 60
    assert list_files(f"{url}/tree/top.png", options) == [(f"{url}/tree/top.png", 3)]
    with pytest.raises(FileNotFoundError):
        list_files(f"{url}/no-such-prefix", options)


@pytest.mark.parametrize("num_threads", [2, 16])
def test_gcs_equals_find(gcs_tree, num_threads, caplog):
    url, fs, options = gcs_tree
    caplog.set_level(logging.DEBUG, logger="sdsnodes.index.listing")
    got = list_files(f"{url}/flat", options, num_threads=num_threads)
    assert got == find_files(fs, f"{url}/flat")
    assert {f"{url}/flat/{name}" for name in ODD_NAMES} <= {u for u, _ in got}
    assert ranges_used(caplog) > 1
    assert list_files(url, options, num_threads=num_threads) == find_files(fs, url)


def test_local_tree_equals_find(tmp_path):
    import fsspec

    root = tmp_path / "data"
    for key, value in tree_keys().items():
        if re.fullmatch(r"flat/\d{5}\.jpg", key) and not key.startswith("flat/000"):
            continue  # 600 local files are not needed: the walk is per directory
        path = root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(value)
    (root / "empty" / "deeper").mkdir(parents=True)
    os.symlink(root / "tree", root / "tree" / "d2" / "loop")  # a cycle: must end
    fs = fsspec.filesystem("file")
    got = list_files(root / "tree" / "d0", num_threads=4)
    assert got == sorted(
        (n, int(i["size"])) for n, i in fs.find(str(root / "tree" / "d0"), detail=True).items()
    )
    everything = list_files(str(root), num_threads=4)
    names = [n for n, _ in everything]
    assert names == sorted(set(names))
    assert (
        str(root / "flat" / "😀.jpg") in names
        and str(root / "tree" / "d1" / "e3" / "f4.mp4") in names
    )
    assert not any("/empty" in n for n in names)
    assert all(not n.startswith("file://") for n in names)  # a plain path in, plain paths out
    as_url = list_files(f"file://{root}/tree/d1", extensions=[".mp4"])
    assert as_url == [
        (f"file://{root}/tree/d1/e{b}/f{c}.mp4", 1 + b + c) for b in range(4) for c in range(5)
    ]
    with pytest.raises(FileNotFoundError):
        list_files(root / "missing")
    with pytest.raises(ValueError, match="num_threads"):
        list_files(root, num_threads=0)


def test_http_directory_walk_equals_find(http_dir):
    import fsspec

    for rel in ["a.jpg", "sub/b.jpg", "sub/deeper/c 1.jpg", "é.jpg", "sub/notes.txt"]:
        path = http_dir.path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"abc")
    fs = fsspec.filesystem("http", skip_instance_cache=True)
    got = list_files(http_dir.url, num_threads=4)
    assert [u for u, _ in got] == sorted(fs.find(http_dir.url))
    assert http_dir.url_for("sub/deeper/c 1.jpg") in {u for u, _ in got}
    assert {size for _, size in got} == {-1}  # an HTML listing has no sizes
    assert len(list_files(http_dir.url, extensions=[".jpg"])) == 4


def test_listing_defaults_apply_and_are_restored(tmp_path, capsys):
    (tmp_path / "a.jpg").write_bytes(b"1")
    with listing_defaults(progress=True, num_threads=2):
        assert list_files(tmp_path) == [(str(tmp_path / "a.jpg"), 1)]
    assert "listing" in capsys.readouterr().err  # the tqdm bar
    list_files(tmp_path)
    assert "listing" not in capsys.readouterr().err
    with pytest.raises(ValueError, match="num_threads"):
        with listing_defaults(num_threads=0):
            pass


def test_split_key_lies_strictly_between_its_bounds():
    rng = random.Random(0)
    alphabet = string.ascii_letters + string.digits + "-_. /~é😀"
    for _ in range(20_000):
        a, b = ("".join(rng.choice(alphabet) for _ in range(rng.randint(0, 7))) for _ in range(2))
        if a == b:
            continue
        after, end = min(a, b), max(a, b)
        if rng.random() < 0.2:
            end = None
        first = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 7)))
        sample = (20, min(first, after), after) if rng.random() < 0.5 else None
        m = _split_key(after, end, "", set(rng.sample(alphabet, 6)), sample, rng.randint(1, 32))
        assert m is None or (after < m and (end is None or m < end)), (after, end, sample, m)
    assert _split_key("p/0000", None, "p/", set("0123456789")) is not None
    # an open-ended range is cut a few pages ahead of its last page, not halfway to the top
    leap = _split_key("p/0999", None, "p/", set("0123456789"), (1000, "p/0000", "p/0999"), 4)
    assert "p/0999" < leap < "p/6"
    assert _split_key("p/a", "p/a0", "p/", set("0a")) is None  # nothing strictly between


def test_read_index_and_cli_build_use_the_listing(s3_tree, s3_server, tmp_path, capsys):
    import json

    from sdsnodes.cli import main

    url, fs, options = s3_tree
    table = read_index(f"{url}/tree", options)
    expected = [u for u, _ in find_files(fs, f"{url}/tree") if u.endswith((".mp4", ".png"))]
    assert table.column("path").to_pylist() == expected  # notes.txt is not media
    out = tmp_path / "index.parquet"
    code = main([
        "index", "build", f"{url}/tree", "-o", str(out), "--threads", "4",
        "--storage-options", json.dumps(options), "--parse", r"/(?P<dir>d\d)/",
    ])  # fmt: skip
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "listing" in captured.err  # the progress bar
    built = pq.read_table(out)
    assert built.column("path").to_pylist() == expected
    assert built.column("size").to_pylist()[:2] == [0, 1]  # tree/d0/e0/f0.mp4, f1.mp4
    assert set(built.column("dir").to_pylist()) == {"d0", "d1", "d2", None}
    assert main(["index", "build", url, "-o", str(out), "--storage-options", "[1]"]) == 1
    assert "JSON object" in capsys.readouterr().err


def test_listing_benchmark_quick_runs_and_prints_its_table(capsys):
    from benchmarks.run import main

    assert main(["listing", "--quick", "--num-objects", "300"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any(line.startswith("loader") and "objects/s (median)" in line for line in lines)
    assert any(line.startswith("one fs.find *") for line in lines)
    assert any(line.startswith("list_files (16 threads)") for line in lines)
    assert any(line.startswith("checked: every loader lists the same 300") for line in lines)
