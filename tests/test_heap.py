"""facelab.heap.keep_freed_memory: large tensors stop being mapped afresh, and the entry points apply it."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
from omegaconf import OmegaConf

import facelab.cli.common as common

# Counts glibc's mmapped blocks (mallinfo2().hblks) while a 64 MiB tensor is alive, before and after.
_PROBE = textwrap.dedent(
    """
    import ctypes, sys
    import torch
    from facelab.heap import keep_freed_memory

    class MallInfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in
                    ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
                     "fordblks", "keepcost")]

    libc = ctypes.CDLL(None)
    libc.mallinfo2.restype = MallInfo2
    if sys.argv[1] == "keep":
        assert keep_freed_memory() and keep_freed_memory()  # idempotent
    before = libc.mallinfo2().hblks
    tensor = torch.ones(16 * 1024 * 1024)  # 64 MiB, above glibc's largest mmap threshold (32 MiB)
    during = libc.mallinfo2().hblks
    del tensor
    print(during - before)
    """
)


def _mapped_blocks_for_a_large_tensor(mode: str) -> int:
    done = subprocess.run([sys.executable, "-c", _PROBE, mode], capture_output=True, text=True, check=True)
    return int(done.stdout.strip().splitlines()[-1])


def test_a_large_tensor_comes_from_the_kept_heap_not_a_fresh_mapping():
    assert _mapped_blocks_for_a_large_tensor("system") == 1  # glibc's default: one mmap per large block
    assert _mapped_blocks_for_a_large_tensor("keep") == 0


@pytest.mark.parametrize("setting, applied", [(None, True), (True, True), (False, False)])
def test_the_entry_points_keep_freed_memory_unless_the_config_says_not(monkeypatch, setting, applied):
    calls = []
    monkeypatch.setattr(common, "keep_freed_memory", lambda: calls.append(1))
    extras = {"print_config": False} if setting is None else {"keep_freed_memory": setting}
    common.apply_extras(OmegaConf.create({"extras": extras}))
    assert bool(calls) == applied
