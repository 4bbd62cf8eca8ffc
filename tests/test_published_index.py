"""The index once per cluster: ``sds index build SRC --out URL`` converts once, machines fetch."""

from __future__ import annotations

import json
import logging

import pyarrow as pa
import pyarrow.csv as pa_csv
import pytest

from sdsnodes import IndexOptions, IndexReader
from sdsnodes.cli import main as sds
from sdsnodes.errors import DownloadError
from sdsnodes.index.published import MANIFEST


def _rows(reader: IndexReader) -> list[dict]:
    index = reader.index
    return [index.sample(i) for i in range(len(index))]


def _csv(n: int) -> bytes:
    table = pa.table({"url": [f"s3://media/{i:03d}.jpg" for i in range(n)],
                      "width": [64 * (i % 5) for i in range(n)]})  # fmt: skip
    sink = pa.BufferOutputStream()
    pa_csv.write_csv(table, sink)
    return sink.getvalue().to_pybytes()


def test_built_once_then_fetched_by_another_machine(s3_server, s3_bucket, tmp_path, monkeypatch,
                                                    caplog):  # fmt: skip
    fs, options = s3_server.fs(), s3_server.storage_options
    src, out = f"{s3_bucket}/meta/index.csv", f"{s3_bucket}/indexes/demo/"
    fs.pipe_file(src, _csv(40))
    monkeypatch.setenv("SDS_CACHE_DIR", str(tmp_path / "machine-a"))  # the building machine
    code = sds(["index", "build", src, "--out", out, "--storage-options", json.dumps(options),
                "--filter", "width >= 128", "--rename", "url=image", "-q"])  # fmt: skip
    assert code == 0
    wanted = IndexOptions(filter="width >= 128", rename={"url": "image"})
    converted = IndexReader(src, storage_options=options, index=wanted)  # machine A, converted
    manifest = json.loads(fs.cat_file(f"{out}{MANIFEST}"))
    assert manifest["rows"] == 24 and manifest["fingerprint"] == converted.index.fingerprint
    fs.rm(src)  # from now on nobody can convert the source: machine B must fetch

    cache_b = tmp_path / "machine-b"
    with caplog.at_level(logging.INFO, logger="sdsnodes.index"):
        fetched = IndexReader(out, storage_options=options, index_cache_dir=str(cache_b))
    assert [r.message for r in caplog.records if "fetched the published index" in r.message]
    assert not [r for r in caplog.records if r.message.startswith("indexed ")]  # no conversion
    assert fetched.index.fingerprint == converted.index.fingerprint
    assert _rows(fetched) == _rows(converted)
    assert sorted(p.name for p in cache_b.iterdir()) == [
        f"{manifest['fingerprint']}.arrow",
        f"{manifest['fingerprint']}.lock",
    ]
    caplog.clear()  # a second reader on machine B maps its copy: no second download
    with caplog.at_level(logging.INFO, logger="sdsnodes.index"):
        again = IndexReader(out, storage_options=options, index_cache_dir=str(cache_b))
    assert not [r for r in caplog.records if "fetched" in r.message] and len(again) == 24


def test_local_prefix_other_options_and_damage(image_index, tmp_path, monkeypatch):
    monkeypatch.setenv("SDS_CACHE_DIR", str(tmp_path / "a"))
    out = tmp_path / "published"
    assert sds(["index", "build", image_index, "--out", str(out), "-q"]) == 0
    reader = IndexReader(str(out), index_cache_dir=str(tmp_path / "b"))
    assert _rows(reader) == _rows(IndexReader(image_index))
    with pytest.raises(ValueError, match="was built with filter=None"):
        IndexReader(str(out), filter="caption is None", index_cache_dir=str(tmp_path / "c"))
    arrow = next(out.glob("*.arrow"))
    arrow.write_bytes(arrow.read_bytes()[:-8] + b"damaged!")  # same size, other bytes
    with pytest.raises(DownloadError, match="sha256"):
        IndexReader(str(out), index_cache_dir=str(tmp_path / "d"))
    assert not list((tmp_path / "d").glob("*.arrow"))  # nothing half-fetched is kept
    assert sds(["index", "build", image_index, "--out", str(out), "--parse", "(?P<x>.)"]) == 1
    assert sds(["index", "build", image_index, "--out", str(out), "--rename", "url"]) == 1
