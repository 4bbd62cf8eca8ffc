"""What a preset checks on its index while it is built: which columns hold URLs."""

from __future__ import annotations

import pyarrow as pa
import pytest

from sdsnodes._preset_parts import _may_hold_urls, has_urls
from sdsnodes.nodes.index_reader import IndexReader


@pytest.mark.parametrize(
    ("chunks", "urls"),
    [
        ([["a/b.mp4", "c.mp4"], ["d.mp4"]], False),
        ([["a/b.mp4"], ["s3://bucket/d.mp4"]], True),
        ([["file:///data/a.mp4", "b.mp4"]], False),  # file:// is local
        ([["file:///data/a.mp4", "https://host/b.mp4"]], True),
        ([["a:", "//b"]], False),  # "://" across two values: the bytes match, the values not
        ([[None, "gs://b/c.mp4"]], True),
        ([[None, None]], False),
    ],
)
def test_has_urls_agrees_with_the_values(chunks, urls):
    column = pa.chunked_array(chunks, type=pa.string())
    reader = IndexReader(pa.table({"video": column}))
    assert has_urls(reader, "video") is urls
    by_values = any(
        v is not None and "://" in v and not v.startswith("file://") for v in column.to_pylist()
    )
    assert by_values is urls


def test_the_byte_search_only_says_no_when_no_value_holds_the_scheme_mark():
    values = pa.chunked_array([["a/b", "c"], ["x://y"]])
    assert _may_hold_urls(values) is True
    assert _may_hold_urls(pa.chunked_array([["a/b", "c"]])) is False
    assert _may_hold_urls(pa.chunked_array([], type=pa.large_string())) is False
    sliced = pa.array(["x://y", "a/b"]).slice(1)  # the buffer still holds the first value
    assert _may_hold_urls(pa.chunked_array([sliced])) is True  # a maybe: the values decide
    reader = IndexReader(pa.table({"video": pa.chunked_array([sliced])}))
    assert has_urls(reader, "video") is False
