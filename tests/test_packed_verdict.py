"""The packed-dataset check remembers its verdict in the index cache: a restart reads no footer,
and a file that changed is looked at again."""

from __future__ import annotations

import os
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sdsnodes import CacheOptions, build_image_graph
from sdsnodes.index import packed as packed_module
from sdsnodes.index.packed import is_packed
from sdsnodes.pack import pack


@pytest.fixture
def footers_read(monkeypatch):
    """The paths whose parquet footer the packed module read (not the index conversion's)."""
    opened: list[str] = []
    real = packed_module._metadata

    def counting(fs, path):
        opened.append(path)
        return real(fs, path)

    monkeypatch.setattr(packed_module, "_metadata", counting)
    return opened


def test_the_verdict_is_kept_and_a_second_check_reads_no_footer(
    image_index, tmp_path, footers_read
):
    shards = pack(image_index, tmp_path / "packed", num_shards=2, progress=False).shards
    memo = tmp_path / "memo"
    assert is_packed(image_index, memo_dir=memo) is False  # a plain index: URL/path columns
    assert is_packed(str(tmp_path / "packed"), memo_dir=memo) is True
    assert len(footers_read) == 2 and len(list(memo.glob("packed-*.json"))) == 2
    assert is_packed(image_index, memo_dir=memo) is False
    assert is_packed(str(tmp_path / "packed"), memo_dir=memo) is True
    assert len(footers_read) == 2  # both verdicts from the memo
    assert is_packed(shards, memo_dir=memo) is True  # the same first file, listed otherwise
    assert len(footers_read) == 2
    assert is_packed(image_index) is False and len(footers_read) == 3  # no memo_dir: no memo


def test_a_file_that_changed_is_looked_at_again(image_index, tmp_path, footers_read):
    index = tmp_path / "index.parquet"
    shutil.copy(image_index, index)
    memo = tmp_path / "memo"
    assert is_packed(str(index), memo_dir=memo) is False
    packed = pack(image_index, tmp_path / "packed", num_shards=1, progress=False).shards[0]
    shutil.copy(packed, index)  # the same name, now a packed shard (another size and mtime)
    os.utime(index, ns=(1, 1))
    assert is_packed(str(index), memo_dir=memo) is True
    assert len(footers_read) == 2


def test_a_torn_or_foreign_memo_is_read_past(image_index, tmp_path, footers_read):
    memo = tmp_path / "memo"
    assert is_packed(image_index, memo_dir=memo) is False
    (entry,) = memo.glob("packed-*.json")
    for text in ("{", '{"packed": "yes"}', "[]", ""):
        entry.write_text(text)
        assert is_packed(image_index, memo_dir=memo) is False
    assert len(footers_read) == 5
    assert entry.read_text() == '{"packed": false}'  # rewritten whole


def test_a_memo_folder_that_cannot_be_written_costs_a_footer_per_check(
    image_index, tmp_path, footers_read
):
    memo = tmp_path / "memo"
    memo.write_text("a file where the folder would be")  # mkdir fails, as on a read-only disk
    assert is_packed(image_index, memo_dir=memo) is False
    assert is_packed(image_index, memo_dir=memo) is False
    assert len(footers_read) == 2 and memo.read_text().startswith("a file")
    assert [p.name for p in tmp_path.iterdir()] == ["memo"]  # no temporary file left


def test_a_preset_keeps_its_verdict_in_the_index_cache(image_index, tmp_path, footers_read):
    cache = CacheOptions(str(tmp_path / "cache"))
    for _ in range(2):
        graph = build_image_graph(image_index, size=32, batch_size=4, cache=cache)
        del graph
    assert len(footers_read) == 1
    assert len(list((tmp_path / "cache" / "index").glob("packed-*.json"))) == 1


def test_a_parquet_file_that_is_not_readable_still_says_so(tmp_path):
    bad = tmp_path / "index.parquet"
    bad.write_bytes(b"PAR1 not really")
    with pytest.raises(ValueError, match="not a readable parquet file"):
        is_packed(str(bad), memo_dir=tmp_path / "memo")
    assert not list(tmp_path.glob("memo/packed-*.json"))  # no verdict kept for it
    pq.write_table(pa.table({"image": ["a.jpg"]}), bad)
    assert is_packed(str(bad), memo_dir=tmp_path / "memo") is False
