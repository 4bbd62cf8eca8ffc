"""sds pack: index + media bytes → parquet shards in the Hugging Face layout."""

from __future__ import annotations

import json
import pathlib
import shutil
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from torchdata.nodes import Loader

from sdsnodes import build_text_to_video_graph, build_video_graph
from sdsnodes.cli import main
from sdsnodes.index.packed import shard_table
from sdsnodes.pack import MANIFEST, pack, parse_size, plan_shards


def _rows(folder) -> pa.Table:
    return pa.concat_tables(
        pq.read_table(p) for p in sorted(pathlib.Path(folder).glob("*.parquet"))
    )


def test_shards_hold_every_column_and_the_bytes_in_the_hf_layout(image_index, tmp_path):
    result = pack(image_index, tmp_path / "out", num_shards=3, row_group_size=5, progress=False)
    names = [pathlib.Path(s).name for s in result.shards]
    assert names == [f"train-0000{i}-of-00003.parquet" for i in range(3)]
    assert (result.rows, result.written, result.missing) == (24, 3, 0)
    index, table = pq.read_table(image_index), _rows(tmp_path / "out")
    assert table.column_names == index.column_names  # every column, in order
    assert table.schema.field("image").type == pa.struct(
        [("bytes", pa.binary()), ("path", pa.string())]
    )
    images = table.column("image").to_pylist()
    assert [i["path"] for i in images] == index.column("image").to_pylist()
    assert all(i["bytes"] == pathlib.Path(i["path"]).read_bytes() for i in images)
    assert table.column("caption").to_pylist() == index.column("caption").to_pylist()
    features = json.loads(table.schema.metadata[b"huggingface"])["info"]["features"]
    assert features == {
        "image": {"_type": "Image"},
        "caption": {"dtype": "string", "_type": "Value"},
    }
    meta = pq.ParquetFile(result.shards[0]).metadata
    assert max(meta.row_group(g).num_rows for g in range(meta.num_row_groups)) == 5


def test_size_cap_and_plan():
    assert parse_size("256MB") == 256 * 10**6 and parse_size("1GiB") == 2**30
    with pytest.raises(ValueError, match="256MB"):
        parse_size("lots")
    assert plan_shards([10] * 10, shard_size=30) == [(0, 3), (3, 5), (5, 8), (8, 10)]
    assert plan_shards([10] * 3, shard_size=1) == [(0, 1), (1, 2), (2, 3)]  # one row at least


def test_an_interrupted_pack_finishes_without_duplicating_rows(image_index, tmp_path):
    whole = pack(image_index, tmp_path / "whole", num_shards=4, progress=False)
    # what a killed pack leaves: the plan, some whole shards, a torn shard and a temporary file
    cut = tmp_path / "cut"
    cut.mkdir()
    shutil.copy(tmp_path / "whole" / MANIFEST, cut)
    shutil.copy(whole.shards[0], cut)
    torn = pathlib.Path(whole.shards[2]).read_bytes()
    (cut / pathlib.Path(whole.shards[2]).name).write_bytes(torn[: len(torn) // 2])
    (cut / f".{pathlib.Path(whole.shards[1]).name}.x.tmp").write_bytes(b"partial")
    again = pack(image_index, cut, num_shards=4, progress=False)
    assert again.written == 3  # shard 0 kept; 1, 2 (torn) and 3 written
    table = _rows(cut)
    assert table.num_rows == 24
    assert table.equals(_rows(tmp_path / "whole"))
    assert len(list(cut.glob("*.parquet"))) == 4
    with pytest.raises(ValueError, match="another pack"):
        pack(image_index, cut, num_shards=2, progress=False)


def test_packs_to_and_from_s3_and_the_cli(s3_server, s3_bucket, image_index, tmp_path, capsys):
    opts = s3_server.storage_options
    args = ["pack", image_index, f"{s3_bucket}/ds", "--num-shards", "2", "-q"]
    assert main([*args, "--dst-storage-options", json.dumps(opts)]) == 0
    assert "packed 24 rows into 2 shards" in capsys.readouterr().out
    table, schema = shard_table(f"{s3_bucket}/ds", opts)
    assert table.column("num_rows").to_pylist() in ([12, 12], [11, 13], [13, 11])
    assert table.column("shard").to_pylist()[1].endswith("/ds/train-00001-of-00002.parquet")
    assert "image" in schema.names
    assert main(["pack", image_index, str(tmp_path / "x"), "--shard-size", "lots"]) == 1
    # media on S3 (one missing): fetched as one fs.cat batch, the unreadable counted
    fs = s3_server.fs()
    paths = pq.read_table(image_index)["image"].to_pylist()[:4]
    urls = [f"{s3_bucket}/m/{pathlib.Path(p).name}" for p in paths]
    fs.pipe({u: pathlib.Path(p).read_bytes() for u, p in zip(urls, paths)})
    index = tmp_path / "index.parquet"
    pq.write_table(pa.table({"image": [*urls, f"{s3_bucket}/m/gone.jpg"]}), index)
    result = pack(
        index, tmp_path / "out", storage_options=s3_server.storage_options, progress=False
    )
    assert (result.rows, result.missing) == (5, 1)
    images = _rows(tmp_path / "out").column("image").to_pylist()
    assert [i["bytes"] for i in images[:4]] == [pathlib.Path(p).read_bytes() for p in paths]
    assert images[4] == {"bytes": None, "path": f"{s3_bucket}/m/gone.jpg"}


@pytest.mark.parametrize("preset", [build_video_graph, build_text_to_video_graph])
def test_the_video_presets_read_packed_clips_from_bytes(preset, video_index, tmp_path):
    pack(video_index, tmp_path / "v", num_shards=2, progress=False)
    graph = preset(str(tmp_path / "v"), num_frames=2, fps=4, size=32, batch_size=2, shuffle=False)
    batch = next(iter(Loader(graph)))
    assert batch["video"].shape == (2, 2, 3, 32, 32)
    assert batch["__key__"] == ["0", "1"]


@pytest.mark.slow
def test_the_pack_benchmark_runs(tmp_path):
    """``benchmarks/bench_pack.py --quick`` prints its tables (a smoke run, SDS_SLOW=1)."""
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "pack", "--quick", "--num-images", "64",
         "--dir", str(tmp_path / "data")],
        cwd=pathlib.Path(__file__).resolve().parents[1], capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "sds pack" in done.stdout and "sdsnodes packed shards (s3://)" in done.stdout
    assert "delivered" not in done.stdout  # every loader read all 64 images
