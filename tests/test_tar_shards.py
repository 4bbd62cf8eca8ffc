"""Tar shards in place: sdsnodes.index.tar (the index) and TarMemberReader (the reads), on tars
written with ``tarfile`` (GNU and PAX headers, a long name, a directory, a zero-size member),
local, over the HTTP test server (Range) and over moto S3."""

from __future__ import annotations

import io
import json
import os
import shutil
import tarfile

import pyarrow.parquet as pq
import pytest
from torchdata.nodes import Loader
from utils import check_dataloader_resume

from sdsnodes import (
    CacheOptions,
    ErrorOptions,
    FetchOptions,
    IndexReader,
    StreamingDataset,
    build_image_graph,
)
from sdsnodes._synthetic import write_image
from sdsnodes.cache import Cache
from sdsnodes.cli import main as sds
from sdsnodes.index.tar import member_address, parse_member, scan_tar, tar_index
from sdsnodes.nodes.tar_member_reader import TarMemberReader

PER_TAR = 6
LONG = "d" * 120 + "/sample-with-a-long-name"  # > 100 characters: a GNU long name / PAX path


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _image(root, seed: int, fmt: str, width: int = 64) -> bytes:
    path = root / f"img-{seed}.{fmt.lower()}"
    write_image(path, width=width, height=32, seed=seed, format=fmt)
    data = path.read_bytes()
    path.unlink()
    return data


def _write_tars(root, count: int = 2) -> dict[str, dict[str, bytes]]:
    """``count`` tars under ``root``; returns {tar name: {member name: bytes}} of the files."""
    members: dict[str, dict[str, bytes]] = {}
    for s in range(count):
        name = f"shard-{s:04d}.tar"
        fmt = tarfile.GNU_FORMAT if s % 2 == 0 else tarfile.PAX_FORMAT
        files: dict[str, bytes] = {}
        for i in range(PER_TAR):
            key = f"{s:02d}{i:04d}"
            image = _image(root, s * 10 + i, "JPEG" if i % 2 else "PNG", 40 + 8 * i)
            files[f"{key}.{'jpg' if i % 2 else 'png'}"] = image
            files[f"{key}.txt"] = f"caption {key}".encode()
            meta = {"width": 40 + 8 * i, "height": 32, "url": f"http://origin/{key}",
                    "exif": {"Make": "sds"}}  # fmt: skip
            files[f"{key}.json"] = json.dumps(meta).encode()
        files[f"{LONG}.png"] = _image(root, 99, "PNG")
        files[f"{LONG}.txt"] = b"a long name"
        files[f"{s:02d}zero.bin"] = b""  # a zero-size member
        with tarfile.open(root / name, "w", format=fmt) as tar:
            folder = tarfile.TarInfo("a-directory")
            folder.type = tarfile.DIRTYPE
            tar.addfile(folder)
            for member, data in files.items():
                _add(tar, member, data)
        members[name] = files
    return members


@pytest.fixture
def shards(tmp_path):
    root = tmp_path / "tars"
    root.mkdir()
    return root, _write_tars(root)


def _member_bytes(address: str) -> bytes:
    url, offset, size = parse_member(address)
    with open(url, "rb") as file:
        file.seek(offset)
        return file.read(size)


def test_index_reads_headers_and_sidecars(shards):
    root, members = shards
    table = tar_index(str(root / "*.tar"))
    rows = table.to_pylist()
    # per tar: PER_TAR samples, the long-named one and the zero-size one; no directory row
    assert len(rows) == 2 * (PER_TAR + 2)
    assert table.column_names[:5] == ["key", "url", "member", "offset", "size"]
    by_key = {r["key"]: r for r in rows}
    for name, files in members.items():
        url = str(root / name)
        for member, data in files.items():
            key, ext = (
                member.split(".", 1) if "/" not in member else (LONG, member[len(LONG) + 1 :])
            )
            row = by_key[key] if key != LONG else next(
                r for r in rows if r["key"] == LONG and r["url"] == url)  # fmt: skip
            assert row["url"] == url
            if ext == "txt":
                assert row["caption"] == data.decode()
            elif ext == "json":
                meta = json.loads(data)
                assert (row["width"], row["height"]) == (meta["width"], meta["height"])
                assert row["json.url"] == meta["url"] and row["exif.Make"] == "sds"
            else:
                column = "image" if ext in ("jpg", "png") else ext
                assert _member_bytes(row[column]) == data, (member, row)
                if column == "image":
                    assert (row["member"], row["size"]) == (member, len(data))
                    assert row[column] == member_address(url, row["offset"], len(data))
    assert by_key["00zero"]["bin"].endswith("&size=0")


def test_reader_local_gives_member_bytes(shards, tmp_path):
    root, members = shards
    index = tar_index(str(root / "shard-{0000..0001}.tar"))
    node = TarMemberReader(IndexReader(index), ["image", "bin"],
                           cache=CacheOptions(tmp_path / "cache"))  # fmt: skip
    got = {(s["url"], s["member"] or s["key"]): s for s in Loader(node)}
    assert len(got) == index.num_rows
    for (url, member), sample in got.items():
        name = os.path.basename(url)
        if sample["image"] is not None:
            assert sample["image"] == members[name][member]
        if sample["bin"] is not None:
            assert sample["bin"] == b""
    assert not os.path.exists(tmp_path / "cache")  # local tars are read in place


def _served_index(http_dir, shards, tmp_path, **kw):
    root, members = shards
    for name in members:
        shutil.copy(root / name, http_dir.path / name)
    (http_dir.path / "shards.txt").write_text("".join(f"{n}\n" for n in members))
    return tar_index(http_dir.url_for("shards.txt"), **kw), members


def test_http_index_and_ranged_reads(http_server, http_dir, shards, tmp_path):
    counts: dict[str, int] = {}
    index, members = _served_index(http_dir, shards, tmp_path, stats=counts)
    local = tar_index(str(shards[0] / "*.tar"))

    def strip(table):
        return [
            {k: v for k, v in r.items() if k not in ("url", "image", "bin")}
            for r in table.to_pylist()
        ]

    assert strip(index) == strip(local)
    assert counts["requests"] == 2  # small tars: one GET each
    assert all(u.startswith(http_dir.url) for u in index.column("url").to_pylist())
    assert tar_index(http_dir.url + "/*.tar").equals(index)  # a wildcard over the HTTP listing

    http_server.reset_stats()
    cache = CacheOptions(tmp_path / "cache")
    node = TarMemberReader(IndexReader(index), ["image"], cache=cache,
                           fetch=FetchOptions(max_in_flight=4))  # fmt: skip
    images = 0
    for sample in Loader(node):
        if sample["image"] is None:
            continue
        name = os.path.basename(sample["url"])
        with open(sample["image"], "rb") as file:
            assert file.read() == members[name][sample["member"]]
        assert sample["__url__.image"].startswith(sample["url"] + "#offset=")
        images += 1
    assert images == index.column("image").drop_null().__len__()
    stats = http_server.stats()
    sizes = sum(index.column("size").drop_null().to_pylist())
    assert stats["bytes"] == sizes  # only the members' bytes travelled
    ranges = [r for p in stats["paths"].values() for r in p["ranges"]]
    assert len(ranges) == images and all(r and r.startswith("bytes=") for r in ranges)


def test_index_modes_on_large_members(http_dir, tmp_path):
    with tarfile.open(http_dir.path / "big.tar", "w") as tar:
        for i in range(4):
            _add(tar, f"{i:03d}.mp4", os.urandom(3 << 20))  # 3 MiB: headers are skipped
            _add(tar, f"{i:03d}.txt", f"clip {i}".encode())
    size = os.path.getsize(http_dir.path / "big.tar")
    url = http_dir.url_for("big.tar")
    tables = {}
    for mode in ("auto", "headers", "whole"):
        rows, counts = scan_tar(url, mode=mode)
        tables[mode] = rows
        if mode == "whole":
            assert counts["bytes_read"] == size and counts["requests"] == 1
        else:
            assert counts["bytes_read"] < size / 50, (mode, counts)
    assert tables["auto"] == tables["headers"] == tables["whole"]
    assert [r["caption"] for r in tables["auto"]] == [f"clip {i}" for i in range(4)]
    assert tables["auto"][0]["video"].endswith(f"&size={3 << 20}")


def test_s3_index_and_reads(s3_server, s3_bucket, shards, tmp_path):
    root, members = shards
    fs = s3_server.fs()
    for name in members:
        fs.put(str(root / name), f"{s3_bucket}/tars/{name}")
    options = s3_server.storage_options
    index = tar_index(f"{s3_bucket}/tars/*.tar", options)
    assert index.num_rows == 2 * (PER_TAR + 2)
    fetch = FetchOptions(options)
    node = TarMemberReader(IndexReader(index), ["image", "bin"],
                           cache=CacheOptions(tmp_path / "cache"), fetch=fetch)  # fmt: skip
    checked = 0
    for sample in Loader(node):
        name = os.path.basename(sample["url"])
        if sample["image"] is not None:
            with open(sample["image"], "rb") as file:
                assert file.read() == members[name][sample["member"]]
            checked += 1
        if sample["bin"] is not None:
            assert sample["bin"] == b""
    assert checked == 2 * (PER_TAR + 1)


def test_preset_over_tars_keeps_the_budget_and_resumes(http_server, http_dir, shards, tmp_path):
    index, _ = _served_index(http_dir, shards, tmp_path)
    path = tmp_path / "tars.index.parquet"
    pq.write_table(index, path)
    largest = max(index.column("size").drop_null().to_pylist())
    budget = 6 * largest
    cache = CacheOptions(tmp_path / "cache", max_bytes=budget)
    graph = build_image_graph(str(path), size=16, batch_size=2, cache=cache,
                              fetch=FetchOptions(max_in_flight=1), prefetch_factor=0,
                              num_threads=0)  # fmt: skip
    http_server.reset_stats()
    batches = 0
    for batch in Loader(graph):
        batches += 1
        assert batch["image"].shape[1:] == (3, 16, 16)
        assert Cache(str(tmp_path / "cache")).stats()["bytes"] <= budget
    assert http_server.stats()["bytes"] > budget  # the cache evicted to stay in budget
    assert batches == 7  # 14 images (the zero-size sample has none: skipped)
    sample = StreamingDataset(graph)[0]  # random access runs the same TarMemberReader
    assert sample["image"].shape == (3, 16, 16) and sample["caption"].startswith("caption")

    def make():
        return StreamingDataset(lambda: build_image_graph(
            str(path), size=16, batch_size=3, cache=CacheOptions(tmp_path / "cache2"),
            errors=ErrorOptions(max_error_rate=1.0)))  # fmt: skip

    check_dataloader_resume(make, num_workers=2, midpoints=[1, 3])


def test_cli_builds_the_tar_index(shards, tmp_path, capsys):
    root, _ = shards
    out = tmp_path / "tars.index.parquet"
    assert sds(["index", "build", str(root / "*.tar"), "-o", str(out), "-q"]) == 0
    assert "indexed 2 tar(s)" in capsys.readouterr().out
    assert pq.read_table(out).equals(tar_index(str(root / "*.tar")))
    (tmp_path / "not.tar").write_bytes(b"not a tar at all" * 100)
    assert sds(["index", "build", str(tmp_path / "not.tar"), "-o", str(out), "-q"]) == 1
    assert "not.tar" in capsys.readouterr().err


def test_a_value_that_is_no_address_is_a_counted_skip(tmp_path):
    import pyarrow as pa

    table = pa.table({"image": ["/x.tar#offset=0&size=3", "/nope.jpg"]})
    node = TarMemberReader(IndexReader(table), ["image"],
                           errors=ErrorOptions("raise"))  # fmt: skip
    with pytest.raises(Exception, match="no tar member address|nope|x.tar"):
        list(Loader(node))


def test_index_reader_and_presets_take_tars_directly(shards, tmp_path):
    root, _ = shards
    src = str(root / "*.tar")
    reader = IndexReader(src, index_cache_dir=str(tmp_path / "index"))
    assert reader.index.table.select(["key", "image"]).equals(
        tar_index(src).select(["key", "image"])
    )
    graph = build_image_graph(src, size=16, batch_size=4, cache=CacheOptions(tmp_path / "c"))
    assert sum(b["image"].shape[0] for b in Loader(graph)) == 2 * (PER_TAR + 1)


def test_sidecars_of_mixed_types(tmp_path):
    with tarfile.open(tmp_path / "mixed.tar", "w") as tar:
        _add(tar, "a.json", json.dumps({"score": 1, "tags": ["x"], "key": "k1"}).encode())
        _add(tar, "a.cls", b" 7\n")
        _add(tar, "a.npy", b"\x93NUMPY")
        _add(tar, "b.json", json.dumps({"score": "high", "tags": {"nested": True}}).encode())
        _add(tar, "b.cls", b"cat")
        _add(tar, "c.json", b"{not json")
        _add(tar, "noextension", b"skipped")
    rows = tar_index(str(tmp_path / "mixed.tar")).to_pylist()
    a, b, c = rows
    assert (a["cls"], b["cls"]) == ("7", "cat")  # one column: the int became text with "cat"
    assert (a["score"], b["score"]) == ("1", "high")  # mixed types: text (others as JSON)
    assert a["json.key"] == "k1" and b["tags.nested"] is True
    assert a["latent"] == member_address(str(tmp_path / "mixed.tar"), 2560, 6)
    assert c["json"].endswith("&size=9")  # not JSON: addressed like any member
