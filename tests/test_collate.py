import pytest
import torch

from sdsnodes import collate


def test_stacks_tensors_lists_the_rest():
    samples = [
        {
            "v": torch.zeros(2, 3, dtype=torch.uint8),
            "c": "a",
            "i": 1,
            "n": None,
            "ragged": torch.zeros(i + 1),
        }
        for i in range(3)
    ]
    batch = collate(samples)
    assert batch["v"].shape == (3, 2, 3) and batch["v"].dtype == torch.uint8
    assert batch["c"] == ["a"] * 3 and batch["n"] == [None] * 3
    assert torch.equal(batch["i"], torch.tensor([1, 1, 1]))
    assert isinstance(batch["ragged"], list) and len(batch["ragged"]) == 3


def test_rejects_empty_and_mismatched():
    with pytest.raises(ValueError, match="empty"):
        collate([])
    with pytest.raises(ValueError, match="share keys"):
        collate([{"a": 1}, {"b": 1}])


def test_reserved_keys_only_some_samples_carry_are_none_in_the_others():
    local = {"__key__": "a", "image": torch.zeros(2)}
    remote = {"__key__": "b", "image": torch.ones(2), "__url__.image": "https://h/b.jpg"}
    batch = collate([local, remote])
    assert batch["__url__.image"] == [None, "https://h/b.jpg"]
    assert batch["image"].shape == (2, 2)
    with pytest.raises(ValueError, match="do not share keys"):
        collate([local, {"__key__": "c", "caption": "x", "image": torch.ones(2)}])


def test_numbers_become_int64_float64_bool_as_documented():
    # docs/quickstart.md and docs/nodes.md: int → int64, float → float64 (Python floats are
    # doubles: a clip start in seconds keeps its precision), bool → bool
    batch = collate([{"i": 1, "f": 0.1, "b": True}, {"i": 2, "f": 1e-9 + 1.0, "b": False}])
    assert batch["i"].dtype == torch.int64 and batch["b"].dtype == torch.bool
    assert batch["f"].dtype == torch.float64 and batch["f"][1].item() == 1e-9 + 1.0
