"""Barbershop (Zhu et al., SIGGRAPH Asia 2021) as optimisation-as-fit: hair shape and appearance transfer on a
pretrained StyleGAN2, stage for stage as the official code (ZPdesu/Barbershop main.py, models/*.py).

Stages (each item is one transfer: `identity`, hair-`shape` reference, hair-`appearance` reference, which
defaults to the shape reference):

- embed_w (per image, cached): W+ from w_avg; MSE + LPIPS at 256 + P-norm (Embedding.invert_images_in_W).
- embed_fs (per image, cached): F = the 32x32 block's output and S = the W+ rows after it; same loss
  (invert_images_in_FS).
- parse (no steps): BiSeNet labels, the composed target mask with its Navier-Stokes fill
  (Alignment.create_target_segmentation_mask).
- mask_fill_1, mask_fill_2: W+ rows 0-5 from w_avg per pair, parser CE (`realistic` / `fidelity`): the
  official's GAN-based filling of the target mask.
- align_identity: the identity's W+ rows 0-5 per pair, parser CE to the target (align_images step 1).
- align_reference: the reference's W+ rows 0-5 per pair, CE + masked style loss (4e4), then F mixing
  (align_images step 2).
- blend: u in [0, 1]^(N x 512), masked LPIPS to the identity (face) and the appearance reference (hair)
  (Blending.blend_images).

"Per pair": the (identity, shape) pair, and the (identity, appearance) pair when the appearance reference is
another image; both are fitted in one batched generator call. The blend is fitted on the appearance pair's
F, and the final image uses the shape pair's F with the blended S, as the official.

Deliberate differences, each a config value: noise is the generator's constant noise (`noise_mode`; the
official rosinality generator draws new noise at every call, which makes each search stochastic and would
tie an item's result to the random stream of its batch); the S split is derived from the generator (the
official `layer_num - 11` is right at 1024 px only); the unused L_F term is not there.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from datamodules.fit_inputs import paste_into_photo
from facelab.losses.barbershop import (
    embedding_loss,
    lpips_features,
    masked_lpips,
    masked_style,
    parsing_cross_entropy,
)
from facelab.metrics.perceptual import PerceptualDistance
from facelab.nets.bisenet import load_bisenet
from facelab.nets.bisenet import normalize as bisenet_input
from facelab.nets.frozen import register_frozen
from facelab.nets.item_by_item import item_by_item
from facelab.nets.stylegan2_checkpoints import load_generator
from facelab.nets.vgg import VGG16Features
from facelab.ops.hair_masks import (
    ParserLabels,
    compose_target,
    dilate,
    erode,
    mix_structure,
    nearest,
    region,
    within,
)
from facelab.ops.latent_pca import generator_pca
from facelab.ops.resample import downsample_to, lanczos_resize
from lightning_modules.latent_fit import Latent, LatentFit

PAIRS = ("shape", "appearance")
STYLE_LAYERS = (
    "relu1_2",
    "relu2_2",
    "relu3_3",
    "relu4_3",
)  # VGG16 features[3, 8, 15, 22], losses/align_loss.py


class Barbershop(LatentFit):
    """The Barbershop pipeline; see the module docstring for the stages."""

    image_stages = ("embed_w", "embed_fs")
    image_columns = ("identity", "shape", "appearance")
    image_outputs = {
        "embed_w": ("image",),
        "embed_fs": ("image",),
        "parse": ("target_shape_view", "target_appearance_view"),
        "mask_fill_2": ("target_shape_view", "target_appearance_view"),
        "align_reference": ("aligned_shape", "aligned_appearance"),
        "blend": ("result", "face_mask", "hair_mask"),
    }

    def __init__(
        self,
        stages,
        generator_path: str,
        parser_path: str | None,
        labels: dict | None = None,
        sign: str = "realistic",
        smooth: int = 5,
        f_resolution: int = 32,
        parse_size: int = 512,
        perceptual_size: int = 256,
        weights: dict | None = None,
        pca_samples: int = 1_000_000,
        pca_seed: int = 0,
        pca_cache_dir: str | None = None,
        blend_blocks: tuple[int, ...] = (1, 2, 3),
        blend_mask_iterations: int = 5,
        noise_mode: str = "const",
        paste_back: bool = False,
        lpips_trunk_path: str | None = None,
        vgg_weights_path: str | None = None,
        image_columns: tuple[str, ...] = ("identity", "shape", "appearance"),
        run_stages: list[str] | None = None,
        init_seed: int = 0,
    ):
        super().__init__(stages, init_seed, run_stages)
        self.image_columns = tuple(image_columns)
        if sign not in ("realistic", "fidelity"):
            raise ValueError(f"fit.module.sign={sign!r}: choose realistic or fidelity (Barbershop's --sign).")
        self.labels = ParserLabels(**(labels or {}))
        self.sign, self.smooth, self.noise_mode, self.paste_back = sign, smooth, noise_mode, paste_back
        self.f_resolution, self.parse_size, self.perceptual_size = f_resolution, parse_size, perceptual_size
        self.weights = {
            "mse": 1.0,
            "lpips": 1.0,
            "p_norm": 1e-3,
            "ce": 1.0,
            "style": 4e4,
            "face": 1.0,
            "hair": 1.0,
            **(weights or {}),
        }
        self.blend_blocks, self.blend_mask_iterations = tuple(blend_blocks), blend_mask_iterations
        self.generator_path = str(generator_path)
        self.generator = self.parser = self.lpips = self.vgg = None
        register_frozen(self, "generator", load_generator(generator_path))
        needs_parser = any(stage not in self.image_stages for stage in self.stage_names)
        if needs_parser and not parser_path:
            raise ValueError("fit.module.parser_path is needed by the stages after the embeddings.")
        if parser_path:
            register_frozen(self, "parser", item_by_item(load_bisenet(parser_path)))
        register_frozen(self, "lpips", item_by_item(PerceptualDistance("vgg", weights_path=lpips_trunk_path)))
        register_frozen(
            self, "vgg", item_by_item(VGG16Features(STYLE_LAYERS, vgg_weights_path, imagenet_input=False))
        )
        synthesis = self.generator.synthesis
        if f_resolution not in synthesis.block_resolutions[:-1]:
            raise ValueError(
                f"fit.module.f_resolution={f_resolution}: choose one of "
                f"{synthesis.block_resolutions[:-1]} for this {synthesis.img_resolution} px generator."
            )
        self.s_index = synthesis.first_w_index[2 * f_resolution]  # 7 at every resolution for F at 32 px
        self._generator_digest, self.pca = generator_pca(
            self.generator.mapping, generator_path, pca_samples, pca_seed, pca_cache_dir
        )

    # The frozen networks ---------------------------------------------------------------------------------
    @property
    def num_ws(self) -> int:
        return self.generator.num_ws

    def average_ws(self, count: int) -> torch.Tensor:
        """`[count, num_ws, w_dim]` copies of the generator's w_avg (`latent_avg`)."""
        return self.generator.mapping.w_avg.view(1, 1, -1).repeat(count, self.num_ws, 1)

    def synthesize(self, ws: torch.Tensor) -> torch.Tensor:
        return self.generator.synthesis(ws, noise_mode=self.noise_mode)  # [B, 3, R, R]

    def structure(self, ws: torch.Tensor) -> torch.Tensor:
        """F: the output of the `f_resolution` block, `[B, C, f, f]`."""
        return self.generator.synthesis(ws, noise_mode=self.noise_mode, stop_after=self.f_resolution)

    def synthesize_fs(self, ws: torch.Tensor, structure: torch.Tensor) -> torch.Tensor:
        """The image from F and the later W+ rows; the earlier blocks' RGB is dropped (rosinality's
        skip=None at start_layer=4)."""
        return self.generator.synthesis(
            ws,
            noise_mode=self.noise_mode,
            start_at=self.f_resolution,
            start_features=structure,
            start_img=None,
        )

    def parse_logits(self, images: torch.Tensor) -> torch.Tensor:
        """Parser logits at `parse_size` for [-1, 1] images (bicubic-downsampled as the official)."""
        return self.parser(bisenet_input(downsample_to(images, self.parse_size)))

    @torch.no_grad()
    def parse_labels(self, images: torch.Tensor) -> torch.Tensor:
        """Labels `[B, parse_size, parse_size]` of real images (clamped to [0, 1] after downsampling)."""
        small = downsample_to(images, self.parse_size).clamp(-1, 1)
        return self.parser(bisenet_input(small)).argmax(1)

    def low(self, images: torch.Tensor) -> torch.Tensor:
        return downsample_to(images, self.perceptual_size)

    def cache_identity(self, stage: str) -> str:
        """What an image stage's result depends on besides the image (see facelab/fit/cache.py)."""
        parts = [
            self._generator_digest,
            self.noise_mode,
            str(self.perceptual_size),
            str(self.f_resolution),
            repr(sorted(self.weights.items())),
            repr(self.pca.stdev[:4].tolist()),
        ]
        for name in self.image_stages[: self.image_stages.index(stage) + 1]:
            parts.append(
                f"{name}:{self.stage_settings[name]['steps']}:{self.stage_settings[name]['optimizer']}"
            )
        return hashlib.sha256("\n".join(parts).encode()).hexdigest()

    # Stage set-up -----------------------------------------------------------------------------------------
    def init_latents(self, stage: str, batch: dict) -> dict[str, Latent]:
        size = len(batch["meta"]["item_id"])
        previous = batch.get("previous", {})
        if stage == "embed_w":
            return {"w": Latent(self.average_ws(size))}
        if stage == "embed_fs":
            ws = previous["embed_w"]["w"]
            return {
                "w": Latent(ws, trainable=slice(self.s_index, self.num_ws)),
                "f": Latent(self.structure(ws)),
            }
        if stage == "parse":
            return {}
        if stage in ("mask_fill_1", "mask_fill_2"):
            return {f"w_{pair}": Latent(self.average_ws(size), trainable=slice(0, 6)) for pair in PAIRS}
        if stage == "align_identity":
            start = self._pair_start(previous, "identity")
            return {f"w_{pair}": Latent(start, trainable=slice(0, 6)) for pair in PAIRS}
        if stage == "align_reference":
            return {
                f"w_{pair}": Latent(self._pair_start(previous, pair), trainable=slice(0, 6)) for pair in PAIRS
            }
        if stage == "blend":
            return {"u": Latent(torch.zeros_like(previous["embed_fs"]["identity_w"]))}
        raise KeyError(stage)

    def _pair_start(self, previous: dict, column: str) -> torch.Tensor:
        """The official alignment start: W+ rows 0-5 of the W+ embedding, the rest of the FS embedding."""
        w_plus, fs = previous["embed_w"][f"{column}_w"], previous["embed_fs"][f"{column}_w"]
        return torch.cat([w_plus[:, :6], fs[:, 6:]], dim=1)

    def init_item_state(self, stage: str, batch: dict) -> dict[str, torch.Tensor]:
        """Each stage's fixed per-item targets (saved with the chunk checkpoint, read from batch["state"])."""
        previous = batch.get("previous", {})
        if stage in self.image_stages:
            return {
                "target_low": lanczos_resize(batch["image"], self.perceptual_size)
            }  # the official 256 px copy
        if stage == "parse":
            return self._parse(batch)
        if stage == "mask_fill_1":
            return {f"target_{pair}": previous["parse"][f"target_{pair}"] for pair in PAIRS} | {
                f"foreground_{pair}": previous["parse"][f"foreground_{pair}"] for pair in PAIRS
            }
        if stage == "mask_fill_2":  # the second search may not put hair where the reference lends it none
            return {
                f"target_{pair}": torch.where(
                    previous["parse"][f"uncovered_{pair}"], 0, previous["mask_fill_1"][f"target_{pair}"]
                )
                for pair in PAIRS
            } | {f"foreground_{pair}": previous["parse"][f"foreground_{pair}"] for pair in PAIRS}
        targets = {f"target_{pair}": previous["mask_fill_2"][f"target_{pair}"] for pair in PAIRS}
        if stage == "align_reference":
            return targets | self._reference_style_targets(previous)
        if stage == "blend":
            return self._blend_targets(batch, previous)
        return targets

    def _parse(self, batch: dict) -> dict[str, torch.Tensor]:
        """The labels of the three images and each pair's composed target."""
        appearance = batch.get("appearance", batch["shape"])
        labels = {
            c: self.parse_labels(image)
            for c, image in (
                ("identity", batch["identity"]),
                ("shape", batch["shape"]),
                ("appearance", appearance),
            )
        }
        state = {f"labels_{c}": labels[c] for c in labels}
        for pair in PAIRS:
            target = compose_target(labels["identity"], labels[pair], self.labels)
            state[f"target_{pair}"] = target.labels
            state[f"uncovered_{pair}"] = target.uncovered
            state[f"foreground_{pair}"] = target.foreground
        return state

    @torch.no_grad()
    def _reference_style_targets(self, previous: dict) -> dict[str, torch.Tensor]:
        """Each reference's reconstruction at the alignment's start: its hair mask and hair region at the
        perceptual size (the official `HM_Structure`, `downsample_256(I_Structure_Style_changed) * HM`)."""
        state = {}
        for pair in PAIRS:
            image = self.synthesize(self._pair_start(previous, pair))
            hair = nearest(
                region(self.parse_logits(image).argmax(1), self.labels.transfer), self.perceptual_size
            )
            state[f"style_mask_{pair}"] = hair
            state[f"style_image_{pair}"] = self.low(image) * hair
        return state

    @torch.no_grad()
    def _blend_targets(self, batch: dict, previous: dict) -> dict[str, torch.Tensor]:
        """Blending.blend_images: the face/background mask (1 - the dilated hair of the identity, of the
        appearance reference and of the aligned image) and the eroded hair of the appearance reference, at
        the perceptual size, with the two 256 px references."""
        appearance = batch.get("appearance", batch["shape"])
        size, iterations = self.perceptual_size, self.blend_mask_iterations

        def hair_of(labels: torch.Tensor) -> torch.Tensor:
            return nearest(region(labels, self.labels.transfer), size)

        identity_hair = hair_of(self.parse_labels(batch["identity"]))
        appearance_hair = hair_of(self.parse_labels(appearance))
        identity_s = previous["embed_fs"]["identity_w"]
        aligned = self.synthesize_fs(identity_s, previous["align_reference"]["f_appearance"])
        aligned_hair = hair_of(self.parse_logits(aligned).argmax(1))
        face = (1 - dilate(identity_hair, iterations)) * (1 - dilate(appearance_hair, iterations))
        return {
            "face_mask": face * (1 - dilate(aligned_hair, iterations)),
            "hair_mask": erode(appearance_hair, iterations),
            "identity_low": lanczos_resize(batch["identity"], size),
            "appearance_low": lanczos_resize(appearance, size),
        }

    # Losses -------------------------------------------------------------------------------------------------
    def item_losses(self, stage: str, latents: dict, batch: dict) -> dict[str, torch.Tensor]:
        if stage == "embed_w":
            return self._embedding_terms(self.synthesize(latents["w"]), latents["w"], batch)
        if stage == "embed_fs":
            return self._embedding_terms(self.synthesize_fs(latents["w"], latents["f"]), latents["w"], batch)
        if stage in ("mask_fill_1", "mask_fill_2"):
            return self._pair_terms(latents, batch, self._fill_terms)
        if stage == "align_identity":
            return self._pair_terms(latents, batch, self._identity_terms)
        if stage == "align_reference":
            return self._pair_terms(latents, batch, self._reference_terms)
        if stage == "blend":
            return self._blend_terms(latents, batch)
        raise KeyError(stage)

    def _lpips_target(self, name: str, batch: dict) -> list[torch.Tensor]:
        return self.fixed_features(name, batch, lambda images: lpips_features(self.lpips, images))

    def _embedding_terms(self, image: torch.Tensor, ws: torch.Tensor, batch: dict) -> dict[str, torch.Tensor]:
        target_features = self._lpips_target("target_low", batch)
        return embedding_loss(
            image, batch["image"], self.low(image), target_features, ws, self.lpips, self.pca, self.weights
        )

    def separate_appearance(self, batch: dict) -> torch.Tensor:
        """Bool `[B]`: items whose appearance reference is another image than the shape reference."""
        meta = batch["meta"]
        shapes = meta.get("shape_path", [None] * len(meta["item_id"]))
        appearances = meta.get("appearance_path") or shapes
        return torch.tensor(
            [a is not None and a != s for a, s in zip(appearances, shapes, strict=True)],
            dtype=torch.bool,
            device=self.device,
        )

    def _pair_terms(self, latents: dict, batch: dict, terms_of) -> dict[str, torch.Tensor]:
        """Both pairs' W+ through the generator and parser in one call, then each pair's terms. The appearance
        pair runs only for items whose appearance reference is another image (elsewhere it would repeat the
        shape pair); its terms are 0 for the others, whose appearance latents therefore never move."""
        size = len(batch["meta"]["item_id"])
        separate = self.separate_appearance(batch).nonzero().squeeze(1)
        ws = torch.cat([latents["w_shape"], latents["w_appearance"].index_select(0, separate)])
        images = self.synthesize(ws)
        logits = self.parse_logits(images)
        state, ids = batch["state"], list(batch["meta"]["item_id"])
        shape_state = {k[: -len("_shape")]: v for k, v in state.items() if k.endswith("_shape")}
        shape_state |= {"pair": "shape", "item_ids": ids}
        out = {f"{k}_shape": v for k, v in terms_of(shape_state, logits[:size], images[:size]).items()}
        appearance_state = {
            k[: -len("_appearance")]: v.index_select(0, separate)
            for k, v in state.items()
            if k.endswith("_appearance")
        }
        appearance_state |= {"pair": "appearance", "item_ids": [ids[i] for i in separate.tolist()]}
        appearance = terms_of(appearance_state, logits[size:], images[size:]) if len(separate) else None
        for name in [k[: -len("_shape")] for k in out]:
            value = out[f"{name}_shape"].new_zeros(size)
            if appearance is not None:
                value = value.index_put((separate,), appearance[name])
            out[f"{name}_appearance"] = value
        return out

    def _fill_terms(self, pair_state: dict, logits: torch.Tensor, image: torch.Tensor) -> dict:
        """The auto-inpainting's CE: `fidelity` plain; `realistic` without the background class plus the
        background class alone against the foreground map (losses/align_loss.py)."""
        ce = self.weights["ce"]
        if self.sign == "fidelity":
            return {"ce": ce * parsing_cross_entropy(logits, pair_state["target"])}
        only_background = torch.zeros(logits.shape[1], device=logits.device)
        only_background[self.labels.background] = 1
        return {
            "ce": ce * parsing_cross_entropy(logits, pair_state["target"], 1 - only_background),
            "ce_background": ce * parsing_cross_entropy(logits, pair_state["foreground"], only_background),
        }

    def _identity_terms(self, pair_state: dict, logits: torch.Tensor, image: torch.Tensor) -> dict:
        return {"ce": self.weights["ce"] * parsing_cross_entropy(logits, pair_state["target"])}

    def _reference_terms(self, pair_state: dict, logits: torch.Tensor, image: torch.Tensor) -> dict:
        hair = nearest(region(logits.argmax(1), self.labels.transfer), self.perceptual_size)  # no gradient
        style_mask, pair = pair_state["style_mask"], pair_state["pair"]

        def reference_taps(style_image: torch.Tensor) -> list[torch.Tensor]:  # fixed: computed once per stage
            with torch.no_grad():
                return list(self.vgg(style_image * self.state(f"style_mask_{pair}")).values())

        items = {"meta": {"item_id": pair_state["item_ids"]}}
        target_taps = self.fixed_features(f"style_image_{pair}", items, reference_taps)
        taps = list(self.vgg(self.low(image) * hair).values())
        return {
            "ce": self.weights["ce"] * parsing_cross_entropy(logits, pair_state["target"]),
            "style": self.weights["style"] * masked_style(target_taps, taps, style_mask, hair),
        }

    def blended_ws(self, u: torch.Tensor, batch: dict) -> torch.Tensor:
        """S = S_identity + u * (S_appearance - S_identity), `[B, num_ws, w_dim]`."""
        identity, appearance = (
            batch["previous"]["embed_fs"]["identity_w"],
            batch["previous"]["embed_fs"]["appearance_w"],
        )
        return identity + u * (appearance - identity)

    def _blend_terms(self, latents: dict, batch: dict) -> dict[str, torch.Tensor]:
        state = batch["state"]
        ws = self.blended_ws(latents["u"], batch)
        image = self.low(self.synthesize_fs(ws, batch["previous"]["align_reference"]["f_appearance"]))
        return {
            "face": self.weights["face"]
            * masked_lpips(
                self.lpips,
                image,
                self._lpips_target("identity_low", batch),
                state["face_mask"],
                self.blend_blocks,
            ),
            "hair": self.weights["hair"]
            * masked_lpips(
                self.lpips,
                image,
                self._lpips_target("appearance_low", batch),
                state["hair_mask"],
                self.blend_blocks,
            ),
        }

    def project(self, stage: str, latents: dict) -> None:
        if stage == "blend":
            latents["u"].clamp_(0, 1)  # ClampOptimizer: Adam, then u clamped to [0, 1]

    # Outputs ------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def stage_outputs(self, stage: str, latents: dict, batch: dict) -> dict[str, torch.Tensor]:
        state, previous = batch["state"], batch.get("previous", {})
        if stage == "embed_w":
            return {"w": latents["w"], "image": self.synthesize(latents["w"])}
        if stage == "embed_fs":
            return {
                "w": latents["w"],
                "f": latents["f"],
                "image": self.synthesize_fs(latents["w"], latents["f"]),
            }
        if stage == "parse":
            out = {
                k: v
                for k, v in state.items()
                if k.startswith(("labels_", "target_", "uncovered_", "foreground_"))
            }
            return out | {f"target_{p}_view": self.label_view(state[f"target_{p}"]) for p in PAIRS}
        if stage in ("mask_fill_1", "mask_fill_2"):
            return self._filled_targets(stage, latents, batch)
        if stage == "align_identity":
            return {f"f_{pair}": self.structure(latents[f"w_{pair}"]) for pair in PAIRS}
        if stage == "align_reference":
            return self._mixed_structures(latents, batch)
        if stage == "blend":
            ws = self.blended_ws(latents["u"], batch)
            result = self.synthesize_fs(ws, previous["align_reference"]["f_shape"])
            return {
                "u": latents["u"],
                "ws": ws,
                "result": result,
                "face_mask": state["face_mask"],
                "hair_mask": state["hair_mask"],
            }
        raise KeyError(stage)

    def _filled_targets(self, stage: str, latents: dict, batch: dict) -> dict[str, torch.Tensor]:
        """The GAN-based label filling: after the first search, the generated labels where the identity's hair
        is freed; after the second, the generated non-background labels in the uncovered region."""
        parse, out = batch["previous"]["parse"], {}
        separate = self.separate_appearance(batch)
        for pair in PAIRS:
            generated = self.parse_logits(self.synthesize(latents[f"w_{pair}"])).argmax(1)
            if stage == "mask_fill_1":
                freed = within(parse["labels_identity"], self.labels.transfer) & ~within(
                    parse[f"labels_{pair}"], self.labels.transfer
                )
                target = torch.where(freed, generated, parse[f"target_{pair}"])
            else:
                kept = batch["previous"]["mask_fill_1"][f"target_{pair}"]
                fill = parse[f"uncovered_{pair}"] & (generated != self.labels.background)
                target = torch.where(fill, generated, kept)
            out[f"target_{pair}"] = target
        # Where the appearance reference is the shape reference, its pair is the shape pair.
        out["target_appearance"] = torch.where(
            separate.view(-1, 1, 1), out["target_appearance"], out["target_shape"]
        )
        if stage == "mask_fill_2":
            out |= {f"target_{p}_view": self.label_view(out[f"target_{p}"]) for p in PAIRS}
        return out

    def _mixed_structures(self, latents: dict, batch: dict) -> dict[str, torch.Tensor]:
        """Each pair's aligned F (F mixing) and the image it gives with the identity's S."""
        previous, out = batch["previous"], {}
        parse = previous["parse"]
        identity_s = previous["embed_fs"]["identity_w"]
        separate = self.separate_appearance(batch).view(-1, 1, 1, 1)
        for pair in PAIRS:
            target_hair = region(batch["state"][f"target_{pair}"], self.labels.transfer)
            mixed = mix_structure(
                intermediate=previous["align_identity"][f"f_{pair}"],
                identity_f=previous["embed_fs"]["identity_f"],
                aligned_reference_f=self.structure(latents[f"w_{pair}"]),
                reference_f=previous["embed_fs"][f"{pair}_f"],
                identity_hair=region(parse["labels_identity"], self.labels.transfer),
                target_hair=target_hair,
                reference_hair=region(parse[f"labels_{pair}"], self.labels.transfer),
                smooth=self.smooth,
                mask_size=self.perceptual_size,
            )
            if pair == "appearance":
                mixed = torch.where(separate, mixed, out["f_shape"])
            out[f"f_{pair}"] = mixed
            out[f"aligned_{pair}"] = self.synthesize_fs(identity_s, mixed)
        return out

    def finish_item(self, values: dict, item_dir: Path) -> list[Path]:
        """With `paste_back`, the result put back into the identity's original photo (when the identity was
        aligned from a raw photo by the job): `<item>/paste_back.png`."""
        if not self.paste_back:
            return []
        return paste_into_photo(
            values, "identity", item_dir / "blend" / "result.png", item_dir / "paste_back.png"
        )

    def label_view(self, labels: torch.Tensor) -> torch.Tensor:
        """Labels `[B, H, W]` as a picture `[B, 3, H, W]` in [-1, 1] (a fixed colour per class)."""
        palette = torch.Generator().manual_seed(7)
        colours = torch.rand(self.parser.n_classes, 3, generator=palette).to(labels.device) * 2 - 1
        colours[self.labels.background] = -1
        return colours[labels].permute(0, 3, 1, 2)
