"""DragGAN (Pan et al., SIGGRAPH 2023) as optimisation-as-fit: point-based drag editing on a StyleGAN2, one
manifest item per drag, many drags per fit as a batch of independent searches.

One stage, `drag`. The latent is W+ with only its first 6 vectors trainable (the renderer rebuilds
`cat(ws[:, :6], w0[:, 6:])` every step); the start is the official seed start (numpy RandomState(seed),
truncation 0.7), a saved latent (`.pt`) or another job's output. Each step is the official renderer's after
its 2023-07-18 fix (facelab/ops/drag_step.py): the 128x128 block's features (no later block is run), point
tracking first, then motion supervision around the tracked handles plus the mask term; an item whose handles
are all within the stop distance stops (no update from that step on) while the others go on, and the stage
ends when all have stopped or at `steps` (300 as the paper's landmark benchmark). A real photo is first
inverted (`invert`) and, optionally, the generator tuned on it (`pti`, lightning_modules/draggan_pti.py); the
drag then renders with that photo's tuned weights.

Per-item state, saved in and restored from the chunk checkpoint: the handles as tracked, the targets, the
start's features and reference features, the editable mask, and the trajectory (tracked handles at every
step). Outputs per drag: the final image, the final latent, `drag.json` (loss terms and tracked points at
every step, final handle-target distances, steps, seconds), the before/after pair, and a GIF of the
trajectory with the handles (red), targets (blue) and the fixed region dimmed.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image, ImageDraw

from datamodules.fit_inputs import paste_into_photo
from facelab.losses.barbershop import embedding_loss, lpips_features
from facelab.metrics.perceptual import PerceptualDistance
from facelab.nets.frozen import register_frozen
from facelab.nets.item_by_item import item_by_item
from facelab.nets.stylegan2_checkpoints import load_generator
from facelab.ops.drag import FEATURE_RESOLUTION, drag_features, seed_start_ws
from facelab.ops.drag_spec import DragSpecError, check_drag_spec
from facelab.ops.drag_step import DragSettings, DragStart, drag_start, drag_step
from facelab.ops.latent_pca import generator_pca
from facelab.ops.resample import downsample_to, lanczos_resize
from lightning_modules.draggan_pti import PTI_STAGE, PivotalTuning, with_pti_stage
from lightning_modules.latent_fit import Latent, LatentFit

EDITED_ROWS = 6  # the renderer optimises ws[:, :6] (L297-300)


class DragGAN(PivotalTuning, LatentFit):
    """DragGAN drags; see the module docstring."""

    image_outputs = {"drag": ("image", "start_image"), "invert": ("image",), PTI_STAGE: ("image",)}
    image_columns = ("photo",)

    def __init__(
        self,
        stages,
        generator_path: str,
        settings: dict | None = None,
        truncation_psi: float = 0.7,
        frame_every: int = 10,
        frame_size: int = 256,
        inversion: dict | None = None,
        paste_back: bool = False,
        run_stages: list[str] | None = None,
        init_seed: int = 0,
        pti: dict | None = None,
    ):
        pti = dict(pti or {})
        super().__init__(stages, init_seed, with_pti_stage(run_stages, stages, bool(pti.get("enabled"))))
        self.generator_path = str(generator_path)
        self.generator = self.lpips = None
        register_frozen(self, "generator", load_generator(generator_path))
        self.paste_back = paste_back
        # A real photo is first inverted in W+ with Barbershop's embedding (a per-image, cached stage), then
        # optionally the generator is tuned on it (PTI, lightning_modules/draggan_pti.py; cached alike).
        self.image_stages = tuple(s for s in ("invert", PTI_STAGE) if s in self.stage_settings)
        if self.image_stages:
            self._setup_inversion(**(inversion or {}))
        self._setup_pti(**pti)
        self.settings = DragSettings(**(settings or {}))
        self.truncation_psi, self.frame_every, self.frame_size = truncation_psi, frame_every, frame_size
        self.final_pass = False

    @property
    def image_size(self) -> int:
        return self.generator.img_resolution

    def _setup_inversion(
        self,
        weights: dict | None = None,
        perceptual_size: int = 256,
        pca_samples: int = 1_000_000,
        pca_seed: int = 0,
        pca_cache_dir: str | None = None,
        lpips_trunk_path: str | None = None,
    ):
        self.inversion_weights = {"mse": 1.0, "lpips": 1.0, "p_norm": 1e-3, **(weights or {})}
        self.perceptual_size = min(perceptual_size, self.image_size)
        register_frozen(self, "lpips", item_by_item(PerceptualDistance("vgg", weights_path=lpips_trunk_path)))
        self._generator_digest, self.pca = generator_pca(
            self.generator.mapping, self.generator_path, pca_samples, pca_seed, pca_cache_dir
        )

    def cache_identity(self, stage: str) -> str:
        """What the inversion (or tuning) of a photo depends on besides the photo (facelab/fit/cache.py)."""
        if stage == PTI_STAGE:
            return self.pti_identity(self.cache_identity("invert"))
        settings = self.stage_settings[stage]
        parts = [
            self._generator_digest,
            str(self.perceptual_size),
            repr(sorted(self.inversion_weights.items())),
            repr(self.pca.stdev[:4].tolist()),
            f"{stage}:{settings['steps']}:{settings['optimizer']}",
        ]
        return hashlib.sha256("\n".join(parts).encode()).hexdigest()

    def _inversion_terms(self, ws: torch.Tensor, batch: dict) -> dict[str, torch.Tensor]:
        image = self.generator.synthesis(ws, noise_mode="const")
        target_features = self.fixed_features("target_low", batch, lambda x: lpips_features(self.lpips, x))
        low = downsample_to(image, self.perceptual_size)
        return embedding_loss(
            image, batch["image"], low, target_features, ws, self.lpips, self.pca, self.inversion_weights
        )

    # Inputs ----------------------------------------------------------------------------------------------
    def check_item(self, values: dict, source: str) -> None:
        """The drag spec's checks (facelab/ops/drag_spec.py) before any step: raises DragSpecError."""
        spec = {"generator": values.get("generator") or self.generator_path, **values}
        check_drag_spec(spec, source, load=self._same_generator)
        starts = [key for key in ("seed", "latent", "photo") if values.get(key) is not None]
        if len(starts) != 1:
            raise DragSpecError(
                f"drag spec {source}, field 'seed': give exactly one start: a seed, a latent (.pt) or a "
                f"photo (got {starts or 'none'})"
            )
        if values.get("photo") is not None and not self.image_stages:
            raise DragSpecError(
                f"drag spec {source}, field 'photo': a photo needs the inversion stage; run "
                "experiment=draggan_photo"
            )

    def _same_generator(self, path: Path):
        if Path(path).resolve() != Path(self.generator_path).resolve():
            raise DragSpecError(
                f"generator {path} differs from the job's fit.module.generator_path "
                f"{self.generator_path}; drags of one job share one generator"
            )
        return self.generator

    def start_ws(self, batch: dict) -> torch.Tensor:
        """`[B, num_ws, w_dim]`: each item's seed start, its given latent (W `[w_dim]` or W+) or its photo's
        inversion."""
        starts, meta = [], batch["meta"]
        inverted = batch.get("previous", {}).get("invert", {}).get("photo_w")
        for index, seed in enumerate(meta.get("seed", [None] * len(meta["item_id"]))):
            if inverted is not None:
                starts.append(inverted[index].to(self.device))
            elif "latent" in batch and meta.get("latent_path", [None])[index] is not None:
                latent = batch["latent"][index].to(self.device)
                starts.append(latent.expand(self.generator.num_ws, -1) if latent.ndim == 1 else latent)
            else:
                starts.append(seed_start_ws(self.generator, int(seed), self.truncation_psi)[0])
        return torch.stack(starts)

    def init_latents(self, stage: str, batch: dict) -> dict[str, Latent]:
        if stage == PTI_STAGE:
            return self._pti_latents(batch)
        if stage == "invert":  # from w_avg, every row (Barbershop's W+ embedding)
            size = len(batch["meta"]["item_id"])
            w_avg = self.generator.mapping.w_avg.view(1, 1, -1).repeat(size, self.generator.num_ws, 1)
            return {"w": Latent(w_avg)}
        return {"ws": Latent(self.start_ws(batch), trainable=slice(0, EDITED_ROWS))}

    @torch.no_grad()
    def init_item_state(self, stage: str, batch: dict) -> dict[str, torch.Tensor]:
        if stage == PTI_STAGE:
            return self._pti_state(batch)
        if stage == "invert":
            return {"target_low": lanczos_resize(batch["image"], self.perceptual_size)}
        meta, size = batch["meta"], len(batch["meta"]["item_id"])
        count = max(len(points) for points in meta["handle_points"])
        handles = torch.zeros(size, count, 2, dtype=torch.long)
        targets = torch.zeros(size, count, 2)
        valid = torch.zeros(size, count, dtype=torch.bool)
        for index, (handle, target) in enumerate(
            zip(meta["handle_points"], meta["target_points"], strict=True)
        ):
            handles[index, : len(handle)] = torch.tensor(
                np.round(np.asarray(handle, dtype=np.float64))
            ).long()
            targets[index, : len(target)] = torch.tensor(target, dtype=torch.float32)
            valid[index, : len(handle)] = True
        handles, targets, valid = handles.to(self.device), targets.to(self.device), valid.to(self.device)
        features0 = self._drag_features(self.start_ws(batch), batch)
        start = drag_start(features0, handles, self.image_size, self.settings)
        masks = batch.get("mask")
        editable = (
            (masks[:, :1] > 0).float()
            if masks is not None
            else torch.ones(size, 1, self.image_size, self.image_size)
        )
        has_mask = torch.tensor(
            [p is not None for p in meta.get("mask_path", [None] * size)], dtype=torch.bool
        )
        steps = self.stage_steps(stage)
        return {
            "handles": handles,
            "targets": targets,
            "valid": valid,
            "features0": start.features0,
            "reference": start.reference,
            "editable": editable.to(self.device),
            "has_mask": has_mask.to(self.device),
            "trajectory": handles[:, None].repeat(1, steps + 1, 1, 1),  # [B, steps + 1, N, 2]
            "frames": torch.zeros(
                size,
                steps // self.frame_every + 2,
                3,
                self.frame_size,
                self.frame_size,
                dtype=torch.uint8,
                device=self.device,
            ),
        }

    # The step --------------------------------------------------------------------------------------------
    def item_losses(self, stage: str, latents: dict, batch: dict) -> dict[str, torch.Tensor]:
        if stage == PTI_STAGE:
            return self._pti_terms(latents, batch)
        if stage == "invert":
            return self._inversion_terms(latents["w"], batch)
        state = batch["state"]
        features = self._drag_features(latents["ws"], batch)
        masked = state["has_mask"][:, None, None, None]
        editable = torch.where(masked, state["editable"], torch.ones_like(state["editable"]))
        step = drag_step(
            features,
            DragStart(state["features0"], state["reference"]),
            state["handles"],
            state["targets"],
            state["valid"],
            editable if bool(masked.any()) else None,
            self.image_size,
            self.settings,
        )
        if not self.final_pass:
            self._commit_tracking(batch, step.handle_points)
        self._finished = step.finished
        return {"motion": step.motion_loss, "mask": step.mask_loss}

    @torch.no_grad()
    def _commit_tracking(self, batch: dict, tracked: torch.Tensor) -> None:
        """Tracked handles into the chunk's state (the items of `batch` only) and their trajectory."""
        ids = list(self.batch["meta"]["item_id"])
        positions = torch.tensor([ids.index(i) for i in batch["meta"]["item_id"]], device=self.device)
        self.state("handles")[positions] = tracked
        step = self.state("steps_taken")[positions]
        self.state("trajectory")[positions, step] = tracked
        frames = positions[step % self.frame_every == 0]
        if len(frames):
            self._store_frames(frames, self.state("steps_taken")[frames] // self.frame_every)

    def _drag_features(self, ws: torch.Tensor, batch: dict) -> torch.Tensor:
        """The feature block's output `[B, C, s, s]`, by each item's PTI generator when it has one."""
        weights = self.tuned_weights(batch)
        if weights is None:
            return drag_features(self.generator, ws)
        return self.synthesize(ws, weights, noise_mode="const", stop_after=FEATURE_RESOLUTION)

    def stop_items(self, stage: str, latents: dict, batch: dict, terms: dict) -> torch.Tensor | None:
        if stage == PTI_STAGE:
            return self._pti_stop()
        return self._finished if stage == "drag" else None

    @torch.no_grad()
    def _store_frames(self, positions: torch.Tensor, slots: torch.Tensor) -> None:
        ws = self.latents(positions)["ws"]
        weights = self.tuned_weights(self.batch)
        weights = None if weights is None else weights.index_select(0, positions.to(weights.device))
        image = self.synthesize(ws, weights, noise_mode="const")
        small = torch.nn.functional.interpolate(
            image, size=(self.frame_size,) * 2, mode="bilinear", antialias=True, align_corners=False
        )
        pixels = ((small.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        self.state("frames")[positions, slots] = pixels

    # Outputs ---------------------------------------------------------------------------------------------
    @torch.no_grad()
    def stage_outputs(self, stage: str, latents: dict, batch: dict) -> dict[str, torch.Tensor]:
        if stage == PTI_STAGE:
            return self._pti_outputs(latents, batch)
        if stage == "invert":
            return {"w": latents["w"], "image": self.generator.synthesis(latents["w"], noise_mode="const")}
        state = batch["state"]
        weights = self.tuned_weights(batch)  # the photo's PTI generator, if it was tuned
        image = self.synthesize(latents["ws"], weights, noise_mode="const")
        start = self.synthesize(self.start_ws(batch), weights, noise_mode="const")
        distance = torch.linalg.norm(state["targets"] - state["handles"].float(), dim=-1)  # [B, N]
        return {
            "image": image,
            "start_image": start,
            "ws": latents["ws"],
            "handles": state["handles"],
            "targets": state["targets"],
            "valid": state["valid"],
            "distance": distance,
            "trajectory": state["trajectory"],
            "frames": state["frames"],
            "editable": state["editable"],
            "has_mask": state["has_mask"],
        }

    def final_results(self):
        self.final_pass = True
        try:
            return super().final_results()
        finally:
            self.final_pass = False

    def finish_item(self, values: dict, item_dir: Path) -> list[Path]:
        """drag.json, the before/after pair and the trajectory GIF from the drag stage's outputs."""
        folder = item_dir / "drag"
        load = lambda name: torch.load(folder / f"{name}.pt", weights_only=True)  # noqa: E731
        valid, trajectory = load("valid"), load("trajectory")
        record = json.loads((item_dir.parent.parent / "stages" / item_dir.name / "drag.json").read_text())
        steps = int(record["steps"])
        curves = (folder / "curves.csv").read_text().splitlines() if (folder / "curves.csv").exists() else []
        columns = curves[0].split(",") if curves else []
        summary = {
            "handles_start": trajectory[0][valid].tolist(),
            "targets": load("targets")[valid].tolist(),
            "handles_final": load("handles")[valid].tolist(),
            "distance_start": torch.linalg.norm(load("targets") - trajectory[0].float(), dim=-1)[
                valid
            ].tolist(),
            "distance_final": load("distance")[valid].tolist(),
            "steps": steps,
            "seconds": record.get("fit_seconds"),
            "per_step": [
                dict(zip(columns, map(float, line.split(",")), strict=True))
                | {"handles": trajectory[int(float(line.split(",")[0]))][valid].tolist()}
                for line in curves[1:]
            ],
        }
        written = [
            folder / "drag.json",
            folder / "before_after.png",
            folder / "trajectory.gif",
            folder / "trajectory.mp4",
        ]
        written[0].write_text(json.dumps(summary, indent=1))
        self._write_pictures(folder, load, valid, trajectory, steps, written)
        if self.paste_back:  # the edit back into the original photo, when the job aligned one
            written += paste_into_photo(values, "photo", folder / "image.png", item_dir / "paste_back.png")
        return written

    def _write_pictures(self, folder, load, valid, trajectory, steps, written) -> None:
        before = np.asarray(Image.open(folder / "start_image.png").convert("RGB"))
        after = np.asarray(Image.open(folder / "image.png").convert("RGB"))
        Image.fromarray(np.concatenate([before, after], axis=1)).save(written[1])
        frames, targets = load("frames"), load("targets")[valid]
        editable = load("editable")[0] if bool(load("has_mask")) else None
        count = steps // self.frame_every + 1
        scale = self.frame_size / self.image_size
        pictures = []
        for slot in range(count):
            picture = frames[slot].permute(1, 2, 0).numpy().copy()
            if editable is not None:  # the fixed region dimmed
                fixed = (
                    torch.nn.functional.interpolate(editable[None], size=picture.shape[:2])[0, 0].numpy()
                    < 0.5
                )
                picture[fixed] = (picture[fixed] * 0.6).astype(np.uint8)
            image = Image.fromarray(picture)
            draw = ImageDraw.Draw(image)
            for (hy, hx), (ty, tx) in zip(
                trajectory[min(slot * self.frame_every, steps)][valid].tolist(), targets.tolist(), strict=True
            ):
                draw.ellipse(
                    [hx * scale - 3, hy * scale - 3, hx * scale + 3, hy * scale + 3], fill=(255, 0, 0)
                )
                draw.ellipse(
                    [tx * scale - 3, ty * scale - 3, tx * scale + 3, ty * scale + 3], fill=(0, 0, 255)
                )
                draw.line([hx * scale, hy * scale, tx * scale, ty * scale], fill=(255, 255, 255))
            pictures.append(image)
        pictures[0].save(written[2], save_all=True, append_images=pictures[1:], duration=100, loop=0)
        write_mp4(pictures, written[3])


def write_mp4(pictures: list[Image.Image], path: Path, fps: int = 10) -> None:
    """The trajectory as an MPEG-4 video (OpenCV's mp4v), written to a temp file and renamed."""
    width, height = pictures[0].size
    temp = path.with_name(f".{path.stem}.tmp.mp4")
    writer = cv2.VideoWriter(str(temp), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    if not writer.isOpened():
        raise RuntimeError(f"OpenCV cannot write an mp4v video to {temp}.")
    for picture in pictures:
        writer.write(cv2.cvtColor(np.asarray(picture.convert("RGB")), cv2.COLOR_RGB2BGR))
    writer.release()
    temp.replace(path)
