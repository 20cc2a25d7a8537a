"""The compiled HOG kernel (`hog_kernel.c`): float32 cell histograms on the CPU in one pass per image.

Eager PyTorch pays one trip through memory per op, and the fast path's dozen ops are each memory-bound
(the README's HOG section has the breakdown); the kernel does all of them per image row while the row is
in L1. It is plain C with no Python or torch headers, built on first use with the system's C compiler
(`$CC`, else `cc`) into `<facelab cache>/hog_kernel/` and loaded with ctypes, so the build takes about a
second and needs no ninja or CUDA toolkit. Built for the CPU it runs on (`-march=native`; the file name
carries a digest of the source, the flags and the CPU model, so a shared home on a mixed cluster keeps
one build per CPU kind).

Without a compiler, or with `FACELAB_HOG_KERNEL=0`, `fast_cell_histograms` keeps its vectorised torch
path, which computes the same thing; the reason is logged once. ctypes releases the GIL, so a batch is
split over `torch.get_num_threads()` threads.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from facelab.io.files import user_cache_dir

__all__ = ["kernel_cell_histograms", "kernel_off", "load_kernel"]

log = logging.getLogger("facelab")
SOURCE = Path(__file__).with_name("hog_kernel.c")
FLAGS = ("-O3", "-march=native", "-fno-math-errno", "-fPIC", "-shared")  # no -ffast-math: signed zeros matter
_INT64 = ctypes.c_int64


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("model name", "flags")):
                return line
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _library_path(compiler: str) -> Path:
    digest = hashlib.sha256()
    for part in (SOURCE.read_bytes(), " ".join((compiler, *FLAGS)).encode(), _cpu_model().encode()):
        digest.update(part)
    return user_cache_dir("hog_kernel") / f"hog_kernel-{digest.hexdigest()[:16]}.so"


def _build(compiler: str, target: Path) -> None:
    """Compile into a temporary file beside `target`, then rename: concurrent builds never see half a file."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as work:
        partial = Path(work) / target.name
        result = subprocess.run(
            [compiler, *FLAGS, str(SOURCE), "-o", str(partial), "-lm"], capture_output=True, text=True
        )
        if result.returncode != 0:
            raise OSError(f"{compiler} could not build {SOURCE.name}: {result.stderr.strip()[-2000:]}")
        os.replace(partial, target)


@functools.lru_cache(maxsize=1)
def load_kernel():
    """The kernel's C function, or None (with the reason logged once) when it cannot be built here."""
    if os.environ.get("FACELAB_HOG_KERNEL", "1") == "0":
        log.info("HOG: FACELAB_HOG_KERNEL=0, the compiled kernel is off; using the torch fast path.")
        return None
    compiler = os.environ.get("CC") or "cc"
    if shutil.which(compiler) is None:
        log.info("HOG: no C compiler (%s) on PATH; using the torch fast path (set CC to enable).", compiler)
        return None
    target = _library_path(compiler)
    try:
        if not target.exists():
            _build(compiler, target)
        function = ctypes.CDLL(str(target)).facelab_hog_cells_f32
    except OSError as error:
        log.warning("HOG: the compiled kernel is unavailable (%s); using the torch fast path.", error)
        return None
    function.restype = ctypes.c_int
    function.argtypes = [ctypes.c_void_p, *[_INT64] * 7, ctypes.c_void_p]
    return function


@contextlib.contextmanager
def kernel_off():
    """Within the block `fast_cell_histograms` takes its torch path (benchmarks and tests compare the two)."""
    saved = os.environ.get("FACELAB_HOG_KERNEL")
    os.environ["FACELAB_HOG_KERNEL"] = "0"
    load_kernel.cache_clear()
    try:
        yield
    finally:
        if saved is None:
            del os.environ["FACELAB_HOG_KERNEL"]
        else:
            os.environ["FACELAB_HOG_KERNEL"] = saved
        load_kernel.cache_clear()


def kernel_cell_histograms(
    kernel,
    images: torch.Tensor,  # [B, C, H, W] float32 on the CPU
    orientations: int,
    cell: tuple[int, int],
) -> torch.Tensor:
    """Per-cell histograms `[B, n_cells_row, n_cells_col, orientations]` (float32) from the kernel."""
    images = images.contiguous()
    batch, channels, height, width = images.shape
    hist = images.new_zeros(batch, height // cell[0], width // cell[1], orientations)
    threads = max(1, min(batch, torch.get_num_threads()))
    bounds = [batch * i // threads for i in range(threads + 1)]
    parts = [(first, end - first) for first, end in zip(bounds[:-1], bounds[1:], strict=True) if end > first]
    image_bytes, hist_bytes = (t.stride(0) * t.element_size() for t in (images, hist))  # contiguous

    def run(part: tuple[int, int]) -> int:
        first, length = part
        return kernel(
            images.data_ptr() + first * image_bytes, length, channels, height, width, orientations, *cell,
            hist.data_ptr() + first * hist_bytes,
        )

    if len(parts) <= 1:
        codes = [run(part) for part in parts]
    else:
        with ThreadPoolExecutor(len(parts)) as pool:
            codes = list(pool.map(run, parts))
    if any(codes):
        raise MemoryError("The HOG kernel could not allocate its row buffers.")
    return hist
