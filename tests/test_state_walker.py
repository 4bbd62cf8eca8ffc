"""One walker for graphs of nodes and trees of states (sdsnodes.nodes.graph)."""

import pyarrow as pa
from torchdata.nodes import Batcher, Loader

from sdsnodes import IndexReader, Mixer, Shuffler, error_stats
from sdsnodes.errors import ErrorPolicy
from sdsnodes.nodes.epoch_reader import EpochReader
from sdsnodes.nodes.graph import NODE_KEY, find_states, iter_nodes, iter_states


def test_iter_states_yields_every_dict_through_lists_and_tuples():
    leaf, inner = {"x": 1}, {"y": [{"z": 2}, ({"w": 3},)]}
    state = {"a": leaf, "b": inner, "c": "text", "d": [1, 2]}
    found = list(iter_states(state))
    assert found[0] is state
    assert sorted(map(str, found[1:])) == sorted(map(str, [leaf, inner, {"z": 2}, {"w": 3}]))
    assert list(iter_states([1, "a", None])) == []


def test_iter_nodes_visits_each_node_once():
    reader = IndexReader(pa.table({"x": list(range(4))}), name="a")
    shuffled = Shuffler(reader)
    other = IndexReader(pa.table({"x": list(range(4))}), name="b")
    root = Batcher(Mixer({"a": shuffled, "b": other}), 2)
    root.also = [reader, {"again": shuffled}]  # reached a second time: still once
    nodes = list(iter_nodes(root))
    assert len(nodes) == len({id(n) for n in nodes}) == 5
    assert [n for n in nodes if isinstance(n, EpochReader)] in ([reader, other], [other, reader])


def test_find_states_by_tag_and_old_states_by_keys():
    tagged = {NODE_KEY: "R", "k": 1}
    look_alike = {"k": 1}  # holds the keys but no tag: not a reader in a tagged tree
    assert find_states({"a": [tagged, look_alike], "b": {NODE_KEY: "M"}}, "R", ["k"]) == [tagged]
    assert find_states({"a": [look_alike], "b": {"j": 2}}, "R", ["k"]) == [look_alike]
    assert find_states({"a": [look_alike]}, "R") == []


def test_a_graph_state_holds_one_tagged_state_per_reader_and_mixer():
    def stream(name):
        return Shuffler(IndexReader(pa.table({"x": list(range(6))}), name=name), seed=1)

    loader = Loader(Batcher(Mixer({"a": stream("a"), "b": stream("b")}), 2))
    next(iter(loader))
    state = loader.state_dict()
    readers = find_states(state, EpochReader.STATE_TAG)
    assert sorted(r[EpochReader.READER_KEY] for r in readers) == ["a/0", "b/0"]
    assert len(find_states(state, Mixer.STATE_TAG)) == 1


def test_error_stats_sums_every_error_policy_state():
    policy = ErrorPolicy()
    policy.skipped = {"decode": 2, "missing": 1}
    state = {"x": {"errors": policy.state()}, "y": [{"errors": policy.state()}], "z": {"seen": 3}}
    assert error_stats(state) == {"decode": 4, "missing": 2}
