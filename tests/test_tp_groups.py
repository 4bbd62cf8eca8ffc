"""Tensor/context-parallel groups (sdsnodes.groups): one real ``torchrun --nproc_per_node=4`` run
(gloo, CPU, 2 DP x 2 TP) for both modes, resume and the bad inputs, plus the example; the rest
in this process."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from torchdata.nodes import Batcher

from sdsnodes import GroupLoader, GroupMode, IndexReader, Mixer, Shuffler, StreamingDataset
from sdsnodes._group_wire import pack, unpack
from sdsnodes.groups import set_data_parallel
from sdsnodes.nodes.graph import iter_nodes

HERE = Path(__file__).parent
ROOT = HERE.parent


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(nproc, script, *args, timeout=120):
    cmd = [
        sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--nnodes=1",
        "--master_addr=127.0.0.1", f"--master_port={free_port()}", str(script), *map(str, args),
    ]  # fmt: skip
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(HERE)]),
        "OMP_NUM_THREADS": "1",
    }
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tp")
    index = tmp / "a.parquet"
    pq.write_table(pa.table({"x": list(range(40))}), index)  # 10 per (DP rank, worker) shard
    torchrun(4, HERE / "dist_tp_job.py", tmp, index)
    return [json.loads((tmp / f"rank{r}.json").read_text()) for r in range(4)]


def keys(batches):
    return [k for keys, _, _ in batches for k in keys]


@pytest.mark.parametrize("mode", ["broadcast", "replicate"])
def test_tp_ranks_get_identical_batches_dp_ranks_disjoint_ones(ranks, mode):
    runs = [r[mode] for r in ranks]
    for epoch in ("epoch0", "epoch1"):
        assert runs[0][epoch] == runs[1][epoch]  # keys, tensor sums and dtypes
        assert runs[2][epoch] == runs[3][epoch]
        assert not set(keys(runs[0][epoch])) & set(keys(runs[2][epoch]))
        assert set(keys(runs[0][epoch])) | set(keys(runs[2][epoch])) == {
            f"a/{i}" for i in range(40)
        }
        assert all(dtype == "torch.float32" for _, _, dtype in runs[0][epoch])
    assert runs[0]["epoch0"] != runs[0]["epoch1"]  # the next epoch, another order
    infos = [run["info"] for run in runs]  # dp_rank, dp_world_size, group_rank, group_size, source
    assert [i[:5] for i in infos] == [
        ["0", "2", "0", "2", "0"], ["0", "2", "1", "2", "0"],
        ["1", "2", "0", "2", "2"], ["1", "2", "1", "2", "2"],
    ]  # fmt: skip
    assert {i[5] for i in infos} == {mode}


@pytest.mark.parametrize("mode", ["broadcast", "replicate"])
def test_resume_is_exact_on_every_rank(ranks, mode):
    for r in ranks:
        run = r[mode]
        assert run["head"] == run["epoch0"][:2]
        assert run["resumed"] == run["epoch0"][2:]
    receivers = [r[mode]["state_is_empty"] for r in ranks]
    assert receivers == ([False, True, False, True] if mode == "broadcast" else [False] * 4)


def test_a_group_whose_ranks_disagree_fails_at_construction_on_every_rank(ranks):
    for r in ranks:
        assert r["mismatch"].startswith("ValueError: ranks 2 and 3 of one tensor/context-parallel")
        assert "seed=1" in r["mismatch"] and "seed=2" in r["mismatch"]


def test_a_graph_built_with_the_global_rank_is_refused(ranks):
    for r in ranks:
        assert f"rank={r['rank']}, world_size=4" in r["global_rank"]
        assert f"dp_rank={r['rank'] // 2}, dp_world_size=2" in r["global_rank"]


def test_a_receiver_iterating_the_dataloader_is_told_to_use_group_loader(ranks):
    for r in (ranks[1], ranks[3]):
        assert r["receiver_iterates"].startswith("RuntimeError: rank 1 of its group receives")
        assert "GroupLoader(dataloader)" in r["receiver_iterates"]


def test_an_error_of_the_loading_rank_reaches_the_whole_group(ranks):
    for r in ranks:
        error, seen = r["source_error"]
        assert error.startswith("KeyError") and "video" in error
        assert seen == [[0, 1, 2], [3, 4, 5]]
        assert "lambda" in r["pack_error"]  # a batch that cannot be sent fails everywhere


def test_example_runs_under_torchrun(ranks):
    for r in ranks:  # run inside the job: examples/tp_groups.py main() with --steps 3
        lines = r["example"]
        same = [line for line in lines if "same batch as its group" in line]
        assert len(same) == 3 and all(line.startswith(f"rank {r['rank']} ") for line in same)
        assert any("resumed exactly after step 2" in line for line in lines), lines
    steps = [
        [line.split("group ")[1] for line in r["example"] if "same batch" in line] for r in ranks
    ]
    assert steps[0] == steps[1] and steps[2] == steps[3] and steps[0] != steps[2]


# -- in this process ---------------------------------------------------------------------------


def test_pack_round_trip_keeps_values_dtypes_and_structure():
    batch = {
        "image": torch.randint(0, 255, (2, 3, 5, 7), dtype=torch.uint8),
        "latent": torch.randn(2, 4).to(torch.bfloat16),
        "mask": torch.tensor([True, False]),
        "scalar": torch.tensor(3.5, dtype=torch.float64),
        "strided": torch.arange(12).reshape(3, 4).t(),  # not contiguous
        "empty": torch.empty(0, 3),
        "caption": ["a", None],
        "nested": [{"t": torch.arange(5, dtype=torch.int16)}],
    }
    buffer, meta_len = pack(batch)
    back = unpack(buffer, meta_len)
    assert back.keys() == batch.keys() and back["caption"] == ["a", None]
    for key in ("image", "latent", "mask", "scalar", "strided", "empty"):
        assert back[key].dtype == batch[key].dtype and torch.equal(back[key], batch[key]), key
    assert torch.equal(back["nested"][0]["t"], batch["nested"][0]["t"])
    assert back["image"].untyped_storage().data_ptr() == buffer.untyped_storage().data_ptr()


def make_graph(index, **kwargs):
    return Batcher(Shuffler(IndexReader(index, **kwargs), seed=0), 2)


def test_explicit_dp_position_replicates_and_sets_the_readers(tmp_path):
    index = tmp_path / "i.parquet"
    pq.write_table(pa.table({"x": list(range(8))}), index)
    ds = StreamingDataset(lambda: make_graph(index), dp_rank=1, dp_world_size=2)
    assert ds.group_info.mode is GroupMode.REPLICATE and ds.group_info.loads
    reader = ds.graph.source.source
    assert (reader.rank, reader.world_size) == (1, 2)
    other = StreamingDataset(lambda: make_graph(index), dp_rank=0, dp_world_size=2)
    mine, theirs = ([s["__key__"] for b in d for s in b] for d in (ds, other))
    assert len(mine) == len(theirs) == 4 and not set(mine) & set(theirs)


def test_a_mixers_readers_and_the_mixer_get_the_dp_position(tmp_path):
    index = tmp_path / "i.parquet"
    pq.write_table(pa.table({"x": list(range(8))}), index)
    streams = {"a": make_graph(index, name="a"), "b": make_graph(index, name="b")}
    ds = StreamingDataset(lambda: Mixer(streams, {"a": 0.5, "b": 0.5}), dp_rank=1, dp_world_size=3)
    placed = [
        (type(n).__name__, n.rank, n.world_size) for n in iter_nodes(ds.graph) if "rank" in vars(n)
    ]
    assert sorted(placed) == [("IndexReader", 1, 3), ("IndexReader", 1, 3), ("Mixer", 1, 3)]


def test_bad_group_arguments(tmp_path):
    index = tmp_path / "i.parquet"
    pq.write_table(pa.table({"x": list(range(8))}), index)
    with pytest.raises(ValueError, match="dp_rank and dp_world_size"):
        StreamingDataset(lambda: make_graph(index), dp_rank=1)
    with pytest.raises(ValueError, match="needs group="):
        StreamingDataset(
            lambda: make_graph(index), dp_rank=0, dp_world_size=1, group_mode="broadcast"
        )
    with pytest.raises(ValueError, match="'sideways'"):
        StreamingDataset(
            lambda: make_graph(index), dp_rank=0, dp_world_size=1, group_mode="sideways"
        )
    with pytest.raises(ValueError, match="needs group= or dp_rank"):
        StreamingDataset(lambda: make_graph(index), group_mode="replicate")
    with pytest.raises(ValueError, match="rank=0, world_size=4"):
        set_data_parallel(make_graph(index, rank=0, world_size=4), 0, 2)
    with pytest.raises(ValueError, match="GroupLoader needs"):
        GroupLoader([1, 2])


def test_group_loader_state_refuses_a_receivers_state_on_a_loading_rank(tmp_path):
    index = tmp_path / "i.parquet"
    pq.write_table(pa.table({"x": list(range(8))}), index)
    ds = StreamingDataset(lambda: make_graph(index), dp_rank=0, dp_world_size=1)
    from torchdata.stateful_dataloader import StatefulDataLoader

    loader = GroupLoader(StatefulDataLoader(ds, batch_size=None))
    with pytest.raises(ValueError, match="broadcast receiver"):
        loader.load_state_dict({"mode": "replicate", "loader": None})
    with pytest.raises(ValueError, match="mode 'broadcast'"):
        loader.load_state_dict({"mode": "broadcast", "loader": {}})
    assert len(list(loader)) == 4
    from sdsnodes import load_state, save_state

    save_state(loader.state_dict(), str(tmp_path / "state.json"), graph=loader)
    assert load_state(str(tmp_path / "state.json"), graph=loader) == loader.state_dict()


def test_the_first_ranks_states_resume_elastically_without_groups(tmp_path):
    from torchdata.stateful_dataloader import StatefulDataLoader

    from sdsnodes import elastic_cursor, load_elastic_state

    index = tmp_path / "i.parquet"
    pq.write_table(pa.table({"x": list(range(20))}), index)
    read, states = [], []
    for dp_rank in range(2):  # the loading rank of each of 2 groups, 2 batches of 2 each
        ds = StreamingDataset(lambda: make_graph(index), dp_rank=dp_rank, dp_world_size=2)
        loader = GroupLoader(StatefulDataLoader(ds, batch_size=None))
        it = iter(loader)
        read += [s["__key__"] for _ in range(2) for s in next(it)]
        states.append(loader.state_dict()["loader"])
    assert elastic_cursor(states)["readers"]["0"]["base"] == 8
    rest = StreamingDataset(lambda: make_graph(index))  # one rank, no groups
    load_elastic_state(rest, states)
    rest_keys = [s["__key__"] for b in StatefulDataLoader(rest, batch_size=None) for s in b]
    assert sorted(read + rest_keys, key=int) == [str(i) for i in range(20)]
