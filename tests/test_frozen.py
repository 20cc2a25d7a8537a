"""Frozen child networks stay out of checkpoints and do not break loading."""

import torch
from torch import nn

from facelab.nets.frozen import register_frozen


class Owner(nn.Module):
    def __init__(self):
        super().__init__()
        self.trainable = nn.Linear(3, 3)
        register_frozen(self, "backbone", nn.Linear(3, 5))


def test_frozen_keys_are_dropped_and_tolerated_on_load():
    owner = Owner()
    keys = set(owner.state_dict())
    assert keys == {"trainable.weight", "trainable.bias"}
    assert not any(p.requires_grad for p in owner.backbone.parameters())
    fresh = Owner()
    result = fresh.load_state_dict(owner.state_dict(), strict=True)  # strict: frozen keys are not "missing"
    assert result.missing_keys == [] and result.unexpected_keys == []
    assert torch.equal(fresh.trainable.weight, owner.trainable.weight)


def test_other_missing_keys_still_fail():
    owner = Owner()
    state = owner.state_dict()
    del state["trainable.bias"]
    try:
        Owner().load_state_dict(state, strict=True)
    except RuntimeError as error:
        assert "trainable.bias" in str(error)
    else:
        raise AssertionError("a missing trainable key must fail a strict load")


def test_nested_owner_prefixes():
    parent = nn.Module()
    parent.child = Owner()
    assert set(parent.state_dict()) == {"child.trainable.weight", "child.trainable.bias"}
    assert nn.Module.load_state_dict(parent, parent.state_dict(), strict=True).missing_keys == []
