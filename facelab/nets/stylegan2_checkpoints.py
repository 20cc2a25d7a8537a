"""StyleGAN2 generator checkpoints: NVlabs .pkl, rosinality .pt and facelab's own format.

- NVlabs pickles (stylegan2-ada-pytorch, the stylegan3 repo's `networks_stylegan2`) are read by a
  restricted unpickler that never runs code from the file: it admits only torch's tensor-rebuild records,
  plain containers, `dnnlib.util.EasyDict`, numpy scalars/arrays and the `torch_utils.persistence`
  records of known class names, whose embedded module source is never executed. From `G_ema` it takes
  `_init_kwargs` (nested as in stylegan2-ada-pytorch, or flat as in the stylegan3 repo), the layers'
  `conv_clamp`, and the parameters and buffers.
- rosinality checkpoints (`{"g_ema": ..., "latent_avg": ...}`, Barbershop's `ffhq.pt`) are renamed to
  NVlabs keys (the inverse of `nvlabs_to_rosinality`, the export `facelab-convert` writes).
- The own format `{"format": "facelab-stylegan2", "config": {...}, "state_dict": {...}}` loads with
  `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import io
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import torch

from facelab.io.files import atomic_write_bytes
from facelab.nets.stylegan2 import Generator

OWN_FORMAT = "facelab-stylegan2"
# torch_utils.persistence records the bare class name (`orig_class.__name__`) next to the module source,
# never the module path, so classes are recognised by name. These are the classes of a StyleGAN2 snapshot
# (G, D, G_ema, augment_pipe) from stylegan2-ada-pytorch or the stylegan3 repo's networks_stylegan2.
_SUPPORTED_CLASSES = {"Generator", "MappingNetwork", "SynthesisNetwork", "SynthesisBlock", "SynthesisLayer",
                      "ToRGBLayer", "FullyConnectedLayer", "Conv2dLayer", "Discriminator",
                      "DiscriminatorBlock", "DiscriminatorEpilogue", "MinibatchStdLayer", "AugmentPipe"}
_STYLEGAN3_CLASSES = ("SynthesisInput",)  # only in networks_stylegan3 (a StyleGAN3 G_ema has one)
# Generator kwargs that are not synthesis kwargs; the stylegan3 repo's Generator takes the synthesis
# kwargs flat (`**synthesis_kwargs`), stylegan2-ada-pytorch and legacy.py nest them in `synthesis_kwargs`.
_GENERATOR_KWARGS = ("z_dim", "c_dim", "w_dim", "img_resolution", "img_channels", "mapping_kwargs",
                     "synthesis_kwargs")
_LEGACY_TORCH_MAGIC = 0x1950A86A20F9469CFC6C  # torch/serialization.py MAGIC_NUMBER


class CheckpointError(ValueError):
    """A generator checkpoint that cannot be read, is not StyleGAN2, or does not fit the network."""


class PersistentRecord(dict):
    """What a `torch_utils.persistence` object becomes: its class name and its `__dict__`, never its code."""

    def __init__(self, class_name: str, state: dict):
        super().__init__(state or {})
        self.class_name = class_name


class _EasyDict(dict):
    """Stand-in for `dnnlib.util.EasyDict` (a plain dict with attribute access)."""


def _load_storage_from_bytes(data: bytes):
    return torch.load(io.BytesIO(data), weights_only=True)


def _make_persistent_record(meta: dict) -> PersistentRecord:
    class_name = meta.get("class_name", "?") if isinstance(meta, dict) else "?"
    if meta.get("type") != "class" or not isinstance(class_name, str):
        raise pickle.UnpicklingError(f"unsupported persistent record of type {meta.get('type')!r}")
    if class_name in _STYLEGAN3_CLASSES:
        raise pickle.UnpicklingError(f"{class_name} is not in a StyleGAN2 network (another architecture)")
    if class_name not in _SUPPORTED_CLASSES:
        raise pickle.UnpicklingError(f"refused persistent class {class_name}")
    return PersistentRecord(class_name, meta.get("state"))  # meta["module_src"] is deliberately ignored


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only an allow-list of globals; everything else is refused with its name."""

    _ALLOWED: dict[tuple[str, str], Any] = {
        ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
        ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
        ("torch._utils", "_rebuild_parameter_with_state"): torch._utils._rebuild_parameter_with_state,
        ("torch.storage", "_load_from_bytes"): _load_storage_from_bytes,
        ("collections", "OrderedDict"): __import__("collections").OrderedDict,
        ("builtins", "set"): set,
        ("builtins", "frozenset"): frozenset,
        ("torch", "Size"): torch.Size,
        ("dnnlib.util", "EasyDict"): _EasyDict,
        ("dnnlib", "EasyDict"): _EasyDict,
        ("torch_utils.persistence", "_reconstruct_persistent_obj"): _make_persistent_record,
    }

    def find_class(self, module: str, name: str):
        found = self._ALLOWED.get((module, name))
        if found is None and module in ("numpy.core.multiarray", "numpy._core.multiarray", "numpy"):
            import numpy  # numpy scalars in kwargs (e.g. lr multipliers); construction runs no file code

            multiarray = numpy._core.multiarray if hasattr(numpy, "_core") else numpy.core.multiarray
            found = {"scalar": multiarray.scalar, "dtype": numpy.dtype, "ndarray": numpy.ndarray,
                     "_reconstruct": multiarray._reconstruct}.get(name)
        if found is None:
            raise pickle.UnpicklingError(f"refused global {module}.{name}")
        return found


def _is_legacy_torch_file(path: Path) -> bool:
    """Whether the file is a pre-1.6 `torch.save` file (a pickle stream opening with torch's magic number)."""
    with open(path, "rb") as handle:
        try:
            return RestrictedUnpickler(handle).load() == _LEGACY_TORCH_MAGIC
        except Exception:  # anything else is not a legacy torch file; it is judged later
            return False


def _restricted_load(path: Path) -> Any:
    with open(path, "rb") as handle:
        try:
            return RestrictedUnpickler(handle).load()
        except (pickle.UnpicklingError, AttributeError, EOFError, TypeError) as error:
            raise CheckpointError(
                f"Cannot read {path} as an NVlabs StyleGAN2 pickle: {error}. Only pickles of NVlabs "
                "StyleGAN2 networks are accepted; no code in a pickle is run."
            ) from error


def _flatten_module(record: PersistentRecord, prefix: str = "") -> dict[str, torch.Tensor]:
    """Parameters and persistent buffers of a pickled module tree, keyed like `state_dict()`."""
    state: dict[str, torch.Tensor] = {}
    for name, value in (record.get("_parameters") or {}).items():
        if value is not None:
            state[prefix + name] = value.detach().clone()
    non_persistent = record.get("_non_persistent_buffers_set") or set()
    for name, value in (record.get("_buffers") or {}).items():
        if value is not None and name not in non_persistent:
            state[prefix + name] = value.clone()
    for name, child in (record.get("_modules") or {}).items():
        if isinstance(child, PersistentRecord):
            state.update(_flatten_module(child, f"{prefix}{name}."))
        elif child is not None:
            raise CheckpointError(f"unexpected submodule {prefix}{name} of type {type(child).__name__}")
    return state


def _pickled_conv_clamps(record: PersistentRecord) -> set:
    """The `conv_clamp` attribute of every pickled layer under `record` (what NVlabs' forward uses)."""
    clamps = {record["conv_clamp"]} if "conv_clamp" in record else set()
    for child in (record.get("_modules") or {}).values():
        if isinstance(child, PersistentRecord):
            clamps |= _pickled_conv_clamps(child)
    return clamps


def _config_from_nvlabs(network: PersistentRecord, path: Path) -> dict:
    kwargs = dict(network.get("_init_kwargs") or {})
    mapping = dict(kwargs.get("mapping_kwargs") or {})
    flat_synthesis = {k: v for k, v in kwargs.items() if k not in _GENERATOR_KWARGS}
    synthesis = {**flat_synthesis, **dict(kwargs.get("synthesis_kwargs") or {})}
    # A missing conv_clamp kwarg means 256 in the stylegan3 repo's networks_stylegan2 but None in
    # stylegan2-ada-pytorch, and the pickle does not say which module it came from, so the value is read
    # from the pickled layers themselves.
    clamps = _pickled_conv_clamps(network) or {synthesis.get("conv_clamp")}
    unsupported = []
    if len(clamps) > 1:
        unsupported.append(f"different conv_clamp values per layer {sorted(map(str, clamps))}")
    if kwargs.get("c_dim", 0):
        unsupported.append(f"c_dim={kwargs['c_dim']} (conditional generators)")
    if synthesis.get("architecture", "skip") != "skip":
        unsupported.append(f"architecture={synthesis['architecture']!r}")
    if list(synthesis.get("resample_filter", [1, 3, 3, 1])) != [1, 3, 3, 1]:
        unsupported.append(f"resample_filter={synthesis['resample_filter']}")
    if synthesis.get("activation", "lrelu") != "lrelu" or mapping.get("activation", "lrelu") != "lrelu":
        unsupported.append("activation other than lrelu")
    if mapping.get("layer_features") not in (None, kwargs.get("w_dim")):
        unsupported.append(f"mapping layer_features={mapping['layer_features']}")
    if synthesis.get("use_noise", True) is not True:
        unsupported.append("use_noise=False")
    if synthesis.get("resize") is not None:  # DragGAN's patched Generator can resize its output
        unsupported.append(f"resize={synthesis['resize']}")
    if unsupported:
        raise CheckpointError(f"{path}: unsupported StyleGAN2 generator settings: {', '.join(unsupported)}")
    conv_clamp = clamps.pop()
    return dict(z_dim=int(kwargs["z_dim"]), w_dim=int(kwargs["w_dim"]),
                img_resolution=int(kwargs["img_resolution"]), img_channels=int(kwargs["img_channels"]),
                mapping_layers=int(mapping.get("num_layers", 8)),
                channel_base=int(synthesis.get("channel_base", 32768)),
                channel_max=int(synthesis.get("channel_max", 512)),
                conv_clamp=None if conv_clamp is None else float(conv_clamp),
                mapping_lr_multiplier=float(mapping.get("lr_multiplier", 0.01)))


def _from_nvlabs(data: Any, path: Path) -> tuple[dict, dict]:
    network = data.get("G_ema") if isinstance(data, dict) and not isinstance(data, PersistentRecord) else data
    if not isinstance(network, PersistentRecord):
        found = list(data)[:10] if isinstance(data, dict) else type(data).__name__
        raise CheckpointError(f"{path}: no 'G_ema' generator in this pickle (found {found})")
    if network.class_name != "Generator":
        raise CheckpointError(f"{path}: 'G_ema' is a {network.class_name}, not a Generator")
    if network.get("_init_args"):
        raise CheckpointError(f"{path}: positional init args are not supported: {network['_init_args']}")
    return _config_from_nvlabs(network, path), _flatten_module(network)


_ROSINALITY_CONV = re.compile(r"convs\.(\d+)\.(.+)")
_ROSINALITY_RGB = re.compile(r"to_rgbs\.(\d+)\.(.+)")


def rosinality_to_nvlabs(g_ema: dict[str, torch.Tensor], latent_avg: torch.Tensor) -> tuple[dict, dict]:
    """Rename a rosinality `g_ema` state dict (+ `latent_avg`) to NVlabs keys; returns (config, state)."""
    mapping_layers = len({k.split(".")[1] for k in g_ema if k.startswith("style.") and k.endswith(".weight")})
    w_dim, z_dim = g_ema["style.1.weight"].shape
    img_resolution = 4 * 2 ** len({k.split(".")[1] for k in g_ema if k.startswith("to_rgbs.")})
    channels = {4: g_ema["input.input"].shape[1]}
    for k in range(1, img_resolution.bit_length() - 3 + 1):
        channels[4 * 2**k] = g_ema[f"convs.{2 * k - 2}.conv.weight"].shape[1]
    channel_max, channel_base = channels[4], channels[img_resolution] * img_resolution
    if any(min(channel_base // res, channel_max) != c for res, c in channels.items()):
        raise CheckpointError(f"rosinality channel widths {channels} fit no (channel_base, channel_max)")
    config = dict(z_dim=int(z_dim), w_dim=int(w_dim), img_resolution=img_resolution,
                  img_channels=int(g_ema["to_rgb1.bias"].shape[1]), mapping_layers=mapping_layers,
                  channel_base=int(channel_base), channel_max=int(channel_max), conv_clamp=None,
                  mapping_lr_multiplier=0.01)

    layer_names = ["b4.conv1"] + [f"b{4 * 2**k}.conv{i}" for k in range(1, img_resolution.bit_length() - 2)
                                  for i in (0, 1)]
    state: dict[str, torch.Tensor] = {"mapping.w_avg": latent_avg.reshape(-1).clone()}
    unused = []
    for key, value in g_ema.items():
        value = value.clone()
        if key.startswith("style."):
            _, index, leaf = key.split(".")
            state[f"mapping.fc{int(index) - 1}.{leaf}"] = value
        elif key == "input.input":
            state["synthesis.b4.const"] = value[0]
        elif key.startswith("noises.noise_"):
            state[f"synthesis.{layer_names[int(key.rsplit('_', 1)[1])]}.noise_const"] = value[0, 0]
        elif key.startswith("conv1."):
            state.update(_rosinality_layer("synthesis.b4.conv1", key[len("conv1."):], value))
        elif match := _ROSINALITY_CONV.fullmatch(key):
            state.update(_rosinality_layer(f"synthesis.{layer_names[int(match[1]) + 1]}", match[2], value))
        elif key.startswith("to_rgb1."):
            state.update(_rosinality_rgb("synthesis.b4.torgb", key[len("to_rgb1."):], value))
        elif match := _ROSINALITY_RGB.fullmatch(key):
            state.update(_rosinality_rgb(f"synthesis.b{8 * 2 ** int(match[1])}.torgb", match[2], value))
        else:
            unused.append(key)
    if unused:
        raise CheckpointError(f"unexpected keys in the rosinality state dict: {unused}")
    # rosinality keeps the blur kernel times factor**2 only on upsampling layers; NVlabs keeps the
    # normalised [1,3,3,1] filter on every block and layer. Fill them from a fresh network.
    for key, value in Generator(**config).state_dict().items():
        if key.endswith("resample_filter"):
            state[key] = value
    return config, state


def _rosinality_layer(prefix: str, leaf: str, value: torch.Tensor) -> dict[str, torch.Tensor]:
    renamed = {"conv.weight": ("weight", lambda v: v[0]), "conv.modulation.weight": ("affine.weight", None),
               "conv.modulation.bias": ("affine.bias", None),
               "noise.weight": ("noise_strength", lambda v: v.reshape(())),
               "activate.bias": ("bias", lambda v: v.reshape(-1)),
               "conv.blur.kernel": (None, None)}
    if leaf not in renamed:
        raise CheckpointError(f"unexpected rosinality key {leaf!r} in a conv layer")
    name, transform = renamed[leaf]
    return {} if name is None else {f"{prefix}.{name}": transform(value) if transform else value}


def _rosinality_rgb(prefix: str, leaf: str, value: torch.Tensor) -> dict[str, torch.Tensor]:
    renamed = {"conv.weight": ("weight", lambda v: v[0]), "conv.modulation.weight": ("affine.weight", None),
               "conv.modulation.bias": ("affine.bias", None), "bias": ("bias", lambda v: v.reshape(-1)),
               "upsample.kernel": (None, None)}
    if leaf not in renamed:
        raise CheckpointError(f"unexpected rosinality key {leaf!r} in a ToRGB layer")
    name, transform = renamed[leaf]
    return {} if name is None else {f"{prefix}.{name}": transform(value) if transform else value}


def nvlabs_to_rosinality(state_dict: dict[str, torch.Tensor]) -> dict[str, Any]:
    """The NVlabs -> rosinality export (`{"g_ema", "latent_avg"}`), for tests and rosinality-based tools."""
    g_ema: dict[str, torch.Tensor] = {}
    resolutions = sorted({int(m[1]) for k in state_dict if (m := re.match(r"synthesis\.b(\d+)\.", k))})
    layers = ["b4.conv1"] + [f"b{res}.conv{i}" for res in resolutions[1:] for i in (0, 1)]
    for key, value in state_dict.items():
        if match := re.fullmatch(r"mapping\.fc(\d+)\.(weight|bias)", key):
            g_ema[f"style.{int(match[1]) + 1}.{match[2]}"] = value
    g_ema["input.input"] = state_dict["synthesis.b4.const"][None]
    for index, layer in enumerate(layers):
        source = f"synthesis.{layer}"
        target = "conv1" if index == 0 else f"convs.{index - 1}"
        g_ema[f"{target}.conv.weight"] = state_dict[f"{source}.weight"][None]
        g_ema[f"{target}.conv.modulation.weight"] = state_dict[f"{source}.affine.weight"]
        g_ema[f"{target}.conv.modulation.bias"] = state_dict[f"{source}.affine.bias"]
        g_ema[f"{target}.noise.weight"] = state_dict[f"{source}.noise_strength"].reshape(1)
        g_ema[f"{target}.activate.bias"] = state_dict[f"{source}.bias"]
        g_ema[f"noises.noise_{index}"] = state_dict[f"{source}.noise_const"][None, None]
        if layer.endswith("conv0"):
            g_ema[f"{target}.conv.blur.kernel"] = state_dict[f"{source}.resample_filter"] * 4
    for index, res in enumerate(resolutions):
        source, target = f"synthesis.b{res}.torgb", ("to_rgb1" if index == 0 else f"to_rgbs.{index - 1}")
        g_ema[f"{target}.conv.weight"] = state_dict[f"{source}.weight"][None]
        g_ema[f"{target}.conv.modulation.weight"] = state_dict[f"{source}.affine.weight"]
        g_ema[f"{target}.conv.modulation.bias"] = state_dict[f"{source}.affine.bias"]
        g_ema[f"{target}.bias"] = state_dict[f"{source}.bias"].reshape(1, -1, 1, 1)
        if index > 0:
            g_ema[f"{target}.upsample.kernel"] = state_dict[f"synthesis.b{res}.resample_filter"] * 4
    return {"g_ema": g_ema, "latent_avg": state_dict["mapping.w_avg"]}


def build_generator(config: dict, state_dict: dict[str, torch.Tensor], source: str | Path = "<memory>",
                    device: str | torch.device = "cpu") -> Generator:
    """A Generator from config + state dict; missing or unexpected keys (or shapes) raise naming them."""
    generator = Generator(**config)
    expected = generator.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    shared = set(expected) & set(state_dict)
    wrong_shape = sorted(k for k in shared if expected[k].shape != state_dict[k].shape)
    if missing or unexpected or wrong_shape:
        raise CheckpointError(
            f"{source} does not fit a StyleGAN2 generator with {config}: missing keys {missing}, "
            f"unexpected keys {unexpected}, wrong shapes {wrong_shape}")
    generator.load_state_dict(state_dict, strict=True)
    return generator.to(device).eval().requires_grad_(False)


def load_generator(path: str | Path, device: str | torch.device = "cpu") -> Generator:
    """Load a StyleGAN2 generator from an NVlabs .pkl, a rosinality .pt or facelab's own file (by content)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"StyleGAN2 checkpoint {path} not found. Put the file there: an NVlabs pickle (e.g. ffhq.pkl "
            "from nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/, or stylegan2-ffhq-512x512.pkl "
            "from NVIDIA NGC), a rosinality .pt (Barbershop's ffhq.pt), or a file from facelab-convert.")
    if zipfile.is_zipfile(path) or _is_legacy_torch_file(path):  # torch.save: own format or rosinality
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as error:
            raise CheckpointError(f"{path}: refused by torch.load(weights_only=True): {error}") from error
        if isinstance(data, dict) and data.get("format") == OWN_FORMAT:
            return build_generator(data["config"], data["state_dict"], path, device)
        if isinstance(data, dict) and "g_ema" in data and "latent_avg" in data:
            config, state = rosinality_to_nvlabs(data["g_ema"], data["latent_avg"])
            return build_generator(config, state, path, device)
        keys = list(data)[:10] if isinstance(data, dict) else type(data).__name__
        raise CheckpointError(
            f"{path}: not a StyleGAN2 generator checkpoint (found {keys}); expected "
            f"'format: {OWN_FORMAT}', rosinality 'g_ema' + 'latent_avg', or an NVlabs pickle"
        )
    config, state = _from_nvlabs(_restricted_load(path), path)
    return build_generator(config, state, path, device)


def save_generator(generator: Generator, path: str | Path) -> None:
    """Write facelab's own format atomically; it loads with `torch.load(weights_only=True)`."""
    state = {k: v.detach().cpu().clone() for k, v in generator.state_dict().items()}
    buffer = io.BytesIO()
    torch.save({"format": OWN_FORMAT, "config": dict(generator.config), "state_dict": state}, buffer)
    atomic_write_bytes(path, buffer.getvalue())
