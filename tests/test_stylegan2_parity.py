"""Parity of facelab's StyleGAN2 generator with NVlabs' and rosinality's, on tiny random networks.

The references come from the dev dependency `draggan==1.1.6` and are imported only here (never from
`facelab`); `<draggan>` is its install directory:
- NVlabs: `<draggan>/stylegan2/training/networks.py` is the stylegan3 repo's `networks_stylegan2.py` (the
  network DragGAN's pickles hold) plus DragGAN's additions (`return_feature`, `input_is_w`, `resize`),
  with its `torch_utils` and `dnnlib`. On CPU its `bias_act` / `upfirdn2d` ops run their `_ref` versions.
- rosinality: `<draggan>/deprecated/stylegan2/model.py` + `op/`, checked line by line against
  rosinality/stylegan2-pytorch `model.py`@7e46e47 (`op/upfirdn2d.py`@f67fe5b, `op/fused_act.py`@0ce34eb):
  the numerics are the same (ModulatedConv2d fan-in scale and demodulation, the transposed conv + Blur
  with kernel x4 and pad (1, 1), Upsample pad (2, 1), NoiseInjection, FusedLeakyReLU x sqrt(2), EqualLinear
  lr_mul, ToRGB skip). The copy only changes imports (native ops when the CUDA build fails, which the
  fixture forces), adds an off-by-default `human` flag (4x2 inputs), and has the newer NCHW
  `upfirdn2d_native` wrapper around the same arithmetic.

Every bias, noise strength, noise buffer, const input and w_avg is randomised (they are zero or one at
init, which would hide mistakes). Outputs are compared in float32 to 1e-4 max abs difference.
"""

from __future__ import annotations

import importlib
import importlib.util
import pickle
import sys
import warnings
from pathlib import Path

import pytest
import torch
import torch.utils.cpp_extension

from facelab.nets.stylegan2 import Generator
from facelab.nets.stylegan2_checkpoints import load_generator, nvlabs_to_rosinality

TOLERANCE = 1e-4
_SPEC = importlib.util.find_spec("draggan")
pytestmark = pytest.mark.skipif(_SPEC is None, reason="needs the dev dependency draggan (the references)")
DRAGGAN_DIR = Path(_SPEC.submodule_search_locations[0]) if _SPEC else Path()
_NVLABS_PACKAGES = ("training", "torch_utils", "dnnlib")  # top-level names that would clash with others

# NVlabs Generator kwargs in the layouts real pickles have; z_dim != w_dim to catch a swapped dimension.
NVLABS_CASES = {
    # stylegan2-ada-pytorch and legacy.py (TF conversions): nested synthesis kwargs, no clamp.
    "ada-nested-32": dict(z_dim=24, w_dim=32, img_resolution=32, mapping_kwargs=dict(num_layers=2),
                          synthesis_kwargs=dict(channel_base=256, channel_max=32, num_fp16_res=0,
                                                conv_clamp=None)),
    # the stylegan3 repo's train.py --cfg=stylegan2: flat kwargs, conv_clamp left at its default (256).
    "stylegan3-flat-64": dict(z_dim=24, w_dim=32, img_resolution=64, mapping_kwargs=dict(num_layers=3),
                              channel_base=1024, channel_max=64, fused_modconv_default="inference_only"),
    # a clamp small enough to act, which pins where it is applied (after the activation gain).
    "clamped-32": dict(z_dim=24, w_dim=32, img_resolution=32, mapping_kwargs=dict(num_layers=2),
                       synthesis_kwargs=dict(channel_base=256, channel_max=32, num_fp16_res=0,
                                             conv_clamp=0.5)),
}
EXPECTED_CONFIG = {  # what facelab's loader must read from each
    "ada-nested-32": dict(channel_base=256, channel_max=32, mapping_layers=2, conv_clamp=None),
    "stylegan3-flat-64": dict(channel_base=1024, channel_max=64, mapping_layers=3, conv_clamp=256.0),
    "clamped-32": dict(channel_base=256, channel_max=32, mapping_layers=2, conv_clamp=0.5),
}


def assert_close(actual: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} vs {tuple(expected.shape)}"
    assert expected.abs().max() > 0.1, f"{what}: reference output is near zero; the comparison says nothing"
    difference = (actual - expected).abs().max().item()
    assert difference <= TOLERANCE, f"{what}: max abs difference {difference:.3g} > {TOLERANCE}"


def randomise_inert_values(network: torch.nn.Module, seed: int) -> None:
    """Random values for what init leaves at 0 or 1 (biases, noise, const, w_avg), in either naming scheme."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in [*network.named_parameters(), *network.named_buffers()]:
            noise = torch.randn(tensor.shape, generator=generator)
            if name.endswith(("affine.bias", "modulation.bias")):  # styles stay near 1, as trained nets
                tensor.copy_(1 + 0.3 * noise)
            elif name.endswith(("bias", "noise_strength", "noise.weight")):
                tensor.copy_(0.3 * noise)
            elif name.endswith(("noise_const", "const", "w_avg", "input.input")) or ".noise_" in name:
                tensor.copy_(noise)


# ----------------------------------------------------------------------------- NVlabs


@pytest.fixture(scope="module")
def nvlabs():
    """NVlabs' `training.networks`, imported from draggan with its top-level packages, unloaded afterwards."""
    def loaded():
        return {name: mod for name, mod in sys.modules.items() if name.split(".")[0] in _NVLABS_PACKAGES}

    others = loaded()
    for name in others:  # any other `training`/`dnnlib` already imported would shadow NVlabs' ones
        del sys.modules[name]
    root = str(DRAGGAN_DIR / "stylegan2")
    sys.path.insert(0, root)
    try:
        yield importlib.import_module("training.networks")
    finally:
        sys.path.remove(root)
        for name in loaded():
            del sys.modules[name]
        sys.modules.update(others)


def nvlabs_generator(networks, case: str, seed: int = 0):
    torch.manual_seed(seed)
    reference = networks.Generator(c_dim=0, img_channels=3, **NVLABS_CASES[case]).eval().requires_grad_(False)
    randomise_inert_values(reference, seed + 1)
    return reference


def facelab_twin(reference) -> Generator:
    """Ours, built from the reference's hyper-parameters, with its state dict loaded strictly."""
    kwargs = reference.init_kwargs
    synthesis = {**kwargs, **kwargs.get("synthesis_kwargs", {})}
    ours = Generator(z_dim=kwargs["z_dim"], w_dim=kwargs["w_dim"], img_resolution=kwargs["img_resolution"],
                     mapping_layers=kwargs["mapping_kwargs"]["num_layers"],
                     channel_base=synthesis["channel_base"], channel_max=synthesis["channel_max"],
                     conv_clamp=reference.synthesis.b4.conv1.conv_clamp)
    ours.load_state_dict(reference.state_dict(), strict=True)
    return ours.eval().requires_grad_(False)


def latents(reference, seed: int = 2, batch: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """z [batch, z_dim] and a W+ [batch, num_ws, w_dim] whose latents differ per layer."""
    generator = torch.Generator().manual_seed(seed)
    z = torch.randn(batch, reference.z_dim, generator=generator)
    ws = reference.mapping(z, None) + 0.5 * torch.randn(batch, reference.num_ws, reference.w_dim,
                                                        generator=generator)
    return z, ws


@pytest.mark.parametrize("case", NVLABS_CASES)
def test_nvlabs_state_dict_gives_the_same_mapping_and_images(nvlabs, case):
    reference = nvlabs_generator(nvlabs, case)
    ours = facelab_twin(reference)
    z, ws = latents(reference)
    for psi, cutoff in ((1.0, None), (0.7, None), (0.5, 4)):
        expected = reference.mapping(z, None, truncation_psi=psi, truncation_cutoff=cutoff)
        assert_close(ours.mapping(z, truncation_psi=psi, truncation_cutoff=cutoff), expected, f"ws psi={psi}")
    for mode in ("const", "none"):
        expected = reference.synthesis(ws, noise_mode=mode, force_fp32=True)
        assert_close(ours.synthesis(ws, noise_mode=mode), expected, f"synthesis noise_mode={mode}")
    # NVlabs' non-fused path (used in training) scales activations instead of weights: same function.
    expected = reference.synthesis(ws, noise_mode="const", force_fp32=True, fused_modconv=False)
    assert_close(ours.synthesis(ws, noise_mode="const"), expected, "synthesis, NVlabs not fused")
    # Random noise: both draw [B, 1, res, res] per layer in the same order, so seeded runs agree.
    torch.manual_seed(5)
    expected = reference.synthesis(ws, noise_mode="random", force_fp32=True)
    torch.manual_seed(5)
    assert_close(ours.synthesis(ws, noise_mode="random"), expected, "synthesis noise_mode=random")
    expected = reference(z, None, truncation_psi=0.7, noise_mode="const")
    assert_close(ours(z, truncation_psi=0.7), expected, "G(z)")


@pytest.mark.parametrize("case", ["ada-nested-32", "clamped-32"])
def test_nvlabs_block_features_and_latent_gradients_match(nvlabs, case):
    """What DragGAN uses: the blocks' features, and gradients through them back to the W+ latents."""
    reference = nvlabs_generator(nvlabs, case, seed=3)
    ours = facelab_twin(reference)
    _, ws = latents(reference, seed=4, batch=2)
    ws_ours, ws_reference = ws.clone().requires_grad_(True), ws.clone().requires_grad_(True)
    img, features = ours.synthesis(ws_ours, noise_mode="const", return_features=True)
    img_reference, features_reference = reference.synthesis(ws_reference, noise_mode="const", force_fp32=True,
                                                             return_feature=True)
    assert_close(img, img_reference, "image")
    for res, feature_reference in zip(reference.synthesis.block_resolutions, features_reference, strict=True):
        assert_close(features[res], feature_reference, f"features of block {res}")
    # A fixed random read-out of the 16x16 features (DragGAN reads a middle block) and of the image.
    readout = torch.Generator().manual_seed(6)
    weights = torch.randn(features[16].shape, generator=readout), torch.randn(img.shape, generator=readout)
    ((features[16] * weights[0]).sum() + (img * weights[1]).sum()).backward()
    ((features_reference[2] * weights[0]).sum() + (img_reference * weights[1]).sum()).backward()
    # Gradients are sums over many pixels, so their scale is the readout's; compare relative to it.
    scale = ws_reference.grad.abs().max()
    assert_close(ws_ours.grad / scale, ws_reference.grad / scale, "d readout / d ws (relative)")


@pytest.mark.parametrize("case", NVLABS_CASES)
def test_nvlabs_pickle_loads_without_running_its_code(nvlabs, case, tmp_path):
    reference = nvlabs_generator(nvlabs, case, seed=7)
    discriminator = nvlabs.Discriminator(c_dim=0, img_resolution=reference.img_resolution, img_channels=3,
                                         channel_base=256, channel_max=32).eval()
    # As training_loop.py writes network-snapshot-*.pkl: persistent classes carry their module source.
    snapshot = dict(G=reference, D=discriminator, G_ema=reference, augment_pipe=None,
                    training_set_kwargs=dict(resolution=reference.img_resolution))
    path = tmp_path / "network-snapshot-000000.pkl"
    path.write_bytes(pickle.dumps(snapshot))
    assert b"class SynthesisBlock" in path.read_bytes()  # the embedded source that must not be run

    modules_before = set(sys.modules)
    loaded = load_generator(path)
    assert not [name for name in set(sys.modules) - modules_before if name.startswith("_imported_module_")]
    assert {k: loaded.config[k] for k in EXPECTED_CONFIG[case]} == EXPECTED_CONFIG[case]
    z, ws = latents(reference, seed=8)
    expected = reference.synthesis(ws, noise_mode="const", force_fp32=True)
    assert_close(loaded.synthesis(ws), expected, "synthesis")
    expected = reference(z, None, truncation_psi=0.7, noise_mode="const")
    assert_close(loaded(z, truncation_psi=0.7), expected, "G(z)")


# ----------------------------------------------------------------------------- rosinality


def _refuse_extension_build(*args, **kwargs):
    raise OSError("parity tests use rosinality's native ops; no CUDA extension is built")


@pytest.fixture(scope="module")
def rosinality():
    """draggan's copy of rosinality's model.py, imported with its native (pure PyTorch) ops."""
    with pytest.MonkeyPatch.context() as patch, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the copy warns when it falls back to the native ops
        patch.setattr(torch.utils.cpp_extension, "load", _refuse_extension_build)
        return importlib.import_module("draggan.deprecated.stylegan2.model")


# rosinality's widths are fixed (512 up to 32 px, then 256 * channel_multiplier at 64 ...).
@pytest.mark.parametrize(("size", "channel_multiplier"), [(32, 2), (64, 1)])
def test_rosinality_checkpoint_gives_the_same_mapping_and_images(rosinality, size, channel_multiplier,
                                                                  tmp_path):
    torch.manual_seed(9)
    reference = rosinality.Generator(size, 32, 3, channel_multiplier=channel_multiplier).eval()
    reference.requires_grad_(False)
    randomise_inert_values(reference, seed=10)
    latent_avg = torch.randn(32, generator=torch.Generator().manual_seed(11))
    path = tmp_path / "ffhq.pt"  # the layout of convert_weight.py's output and Barbershop's ffhq.pt
    torch.save({"g_ema": reference.state_dict(), "latent_avg": latent_avg}, path)
    ours = load_generator(path)
    assert ours.num_ws == reference.n_latent

    generator = torch.Generator().manual_seed(12)
    z = torch.randn(2, 32, generator=generator)
    assert_close(ours.mapping(z)[:, 0], reference.style(z), "mapping")
    ws = ours.mapping(z) + 0.5 * torch.randn(2, ours.num_ws, 32, generator=generator)
    expected, _ = reference([ws], input_is_latent=True, randomize_noise=False)  # uses its noise buffers
    assert_close(ours.synthesis(ws, noise_mode="const"), expected, "synthesis, noise buffers")
    zeros = [torch.zeros_like(buffer) for buffer in reference.noises.buffers()]
    expected, _ = reference([ws], input_is_latent=True, noise=zeros)
    assert_close(ours.synthesis(ws, noise_mode="none"), expected, "synthesis without noise")
    expected, _ = reference([z], truncation=0.7, truncation_latent=latent_avg, randomize_noise=False)
    assert_close(ours(z, truncation_psi=0.7), expected, "G(z) with truncation")

    # The export back to rosinality's layout gives its state dict exactly (blur kernels x4 included).
    exported = nvlabs_to_rosinality(ours.state_dict())
    assert exported["g_ema"].keys() == reference.state_dict().keys()
    for key, value in reference.state_dict().items():
        torch.testing.assert_close(exported["g_ema"][key], value, rtol=0, atol=0, msg=key)
    torch.testing.assert_close(exported["latent_avg"], latent_avg, rtol=0, atol=0)
