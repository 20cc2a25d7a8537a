"""Frozen networks inside trainable modules: kept out of checkpoints and optimisers.

A VGG for the perceptual loss (or, later, a pretrained StyleGAN2 in a latent fit) is a child module so that
Lightning moves it to the right device, but its weights come from their own file: saving them in every
checkpoint wastes space and makes a checkpoint depend on which loss was on. `register_frozen` drops the
child's keys from `state_dict()` and tolerates their absence in `load_state_dict()`.
"""

from __future__ import annotations

from torch import nn


def register_frozen(owner: nn.Module, name: str, network: nn.Module) -> nn.Module:
    """Attach `network` as `owner.<name>`, frozen, and exclude its keys from `owner`'s checkpoints."""
    network.requires_grad_(False)
    network.eval()
    if name in owner.__dict__ and owner.__dict__[name] is None:  # a `self.x = None` placeholder
        delattr(owner, name)
    owner.add_module(name, network)
    prefixes = getattr(owner, "_frozen_prefixes", None)
    if prefixes is None:
        prefixes = owner._frozen_prefixes = set()
        owner._register_state_dict_hook(_drop_frozen_keys)
        owner.register_load_state_dict_post_hook(_allow_missing_frozen_keys)
    prefixes.add(f"{name}.")
    return network


def _is_frozen_key(owner: nn.Module, key: str, prefix: str = "") -> bool:
    relative = key[len(prefix) :] if key.startswith(prefix) else key
    return any(relative.startswith(frozen) for frozen in owner._frozen_prefixes)


def _drop_frozen_keys(owner, state_dict, prefix, local_metadata):
    for key in [k for k in state_dict if _is_frozen_key(owner, k, prefix)]:
        del state_dict[key]


def _allow_missing_frozen_keys(owner, incompatible_keys):
    missing = incompatible_keys.missing_keys
    missing[:] = [key for key in missing if not any(f".{p}" in f".{key}" for p in owner._frozen_prefixes)]
