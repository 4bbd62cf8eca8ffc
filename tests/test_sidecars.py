"""Directories of SDS data as it is: ``000123.mp4`` beside ``000123.txt``/``.json``/``.pkl``
give one row per key (``sdsnodes.index._sidecars``), locally and on the moto S3 server."""

from __future__ import annotations

import json
import logging
import random
import threading

from sdsnodes.index import read_index
from sdsnodes.index._sidecars import split_key
from sdsnodes.index.listing import listing_defaults
from sdsnodes.storage import filesystem


def sds_files() -> dict[str, bytes]:
    """Relative name → bytes: two samples under a directory with dots in its name, one caption
    that is not UTF-8, one .json that is a list, a key without media, and a README."""
    files = {}
    for i in range(3):
        key = f"set.v1.0/{i:06d}"
        files[f"{key}.mp4"] = b"video" * (i + 1)
        files[f"{key}.txt"] = f"a caption {i}".encode()
        files[f"{key}.json"] = json.dumps(
            {"fps": 24 + i, "exif": {"Make": "cam"}, "caption": "x"}
        ).encode()
        files[f"{key}.emb.pkl"] = b"pickle"
        files[f"{key}.npy"] = b"latent"
    files["set.v1.0/000001.txt"] = b"caf\xe9 \xff"  # latin-1, not UTF-8
    files["set.v1.0/000002.json"] = b"[1, 2]"  # JSON, but not an object
    files["set.v1.0/000009.txt"] = b"a caption without a video"
    files["README.md"] = b"notes"  # a key without media too
    return files


def check_grouped(table, root: str, stats: dict[str, int]) -> None:
    rows = table.to_pylist()
    assert [r["key"] for r in rows] == [f"set.v1.0/{i:06d}" for i in range(3)]
    assert table.column_names[:6] == ["key", "path", "size", "video", "latent", "caption"]
    first, second, third = rows
    assert first["video"] == first["path"] == f"{root}/set.v1.0/000000.mp4"
    assert first["size"] == 5 and third["size"] == 15
    assert first["latent"] == f"{root}/set.v1.0/000000.npy"
    assert first["emb.pkl"] == f"{root}/set.v1.0/000000.emb.pkl"
    assert first["caption"] == "a caption 0" and third["caption"] == "a caption 2"
    assert first["fps"] == 24 and first["exif.Make"] == "cam"
    assert first["json.caption"] == "x"  # a field named like a column keeps both
    # not UTF-8: a counted outcome, the file kept as a path, the row kept
    assert second["caption"] is None and second["txt"] == f"{root}/set.v1.0/000001.txt"
    assert second["fps"] == 25
    # not an object: kept as a path under "json", its fields absent
    assert third["fps"] is None and third["json"] == f"{root}/set.v1.0/000002.json"
    assert stats == {"too_large": 0, "not_utf8": 1, "json_not_object": 1, "without_media": 2}


def test_key_is_webdatasets_split():
    assert split_key("set.v1.0/000123.seg.png") == ("set.v1.0/000123", "seg.png")
    assert split_key("a/b/000123.MP4") == ("a/b/000123", "mp4")
    assert split_key("a.b/noext") is None


def test_local_directory_is_grouped_by_key(tmp_path, caplog):
    for name, data in sds_files().items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(data)
    stats: dict[str, int] = {}
    with caplog.at_level(logging.WARNING):
        table = read_index(tmp_path, stats=stats)
    check_grouped(table, str(tmp_path), stats)
    assert "2 keys have no media file" in caplog.text and "not UTF-8" in caplog.text
    # explicit choices: one row per media file as before, or every key kept
    flat = read_index(tmp_path, group_by_key=False)
    assert flat.column_names == ["path", "size", "video", "latent"] and flat.num_rows == 6
    every = read_index(tmp_path, group_by_key=True)
    assert every.column("key").to_pylist() == [
        "README",
        *(f"set.v1.0/{i:06d}" for i in (0, 1, 2, 9)),
    ]


def test_directory_without_sidecars_keeps_one_row_per_media_file(tmp_path):
    for i in range(3):
        (tmp_path / f"{i}.jpg").write_bytes(b"x")
    (tmp_path / "notes.txt").write_text("a stray note, no sample's key")
    table = read_index(tmp_path)
    assert table.column_names == ["path", "size", "image"] and table.num_rows == 3


def test_metadata_only_directory_and_large_caption(tmp_path, monkeypatch):
    from sdsnodes.index import _sidecars

    monkeypatch.setattr(_sidecars, "SIDECAR_MAX_BYTES", 8)
    (tmp_path / "a.txt").write_text("short")
    (tmp_path / "a.pkl").write_bytes(b"p")
    (tmp_path / "b.txt").write_text("a caption longer than the cap")
    stats: dict[str, int] = {}
    table = read_index(tmp_path, group_by_key=True, stats=stats)
    rows = {r["key"]: r for r in table.to_pylist()}
    assert rows["a"]["caption"] == "short" and rows["a"]["pkl"] == str(tmp_path / "a.pkl")
    assert rows["b"]["caption"] is None and rows["b"]["txt"] == str(tmp_path / "b.txt")
    assert stats["too_large"] == 1


def test_s3_directory_is_grouped_with_concurrent_reads(s3_server, monkeypatch, capsys):
    s3_server.ensure_running()
    url = s3_server.make_bucket(f"sds-sidecars-{random.randrange(16**8):08x}")
    fs = s3_server.fs()
    fs.pipe({f"{url}/data/{k}": v for k, v in sds_files().items()})
    threads: set[str] = set()
    used = filesystem(url, s3_server.storage_options)[0]  # the instance read_index gets
    read = used.cat_file

    def cat_file(path, *args, **kwargs):
        threads.add(threading.current_thread().name)
        return read(path, *args, **kwargs)

    monkeypatch.setattr(used, "cat_file", cat_file)
    stats: dict[str, int] = {}
    try:
        with listing_defaults(num_threads=4, progress=True):
            table = read_index(f"{url}/data", s3_server.storage_options, stats=stats)
        check_grouped(table, f"{url}/data", stats)
        assert len(threads) > 1  # read by a pool, not one after another
        assert "reading sidecars of" in capsys.readouterr().err
    finally:
        fs.rm(url, recursive=True)
