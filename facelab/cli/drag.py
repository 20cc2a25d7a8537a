"""`facelab-drag`: one DragGAN drag from the command line, run as a one-item `facelab-fit experiment=draggan`
job.

    facelab-drag generator=ffhq512.pkl seed=0 points=[[300,200]] targets=[[290,185]] [mask=a.png] out=drag/
    facelab-drag generator=ffhq512.pkl latent=w.pt points=... targets=... out=drag/ \
        fit.module.stages.drag.steps=100

`points` / `targets` are [y, x] pixels of the generated image; any other `key=value` is a Hydra override of
the fit job (conf/fit/draggan.yaml). The outputs are the job's: `<out>/items/drag/drag/` (image.png, ws.pt,
drag.json, before_after.png, trajectory.gif) and the records beside them; a rerun with the same `out`
resumes or skips what is done.
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

from facelab.cli.common import compose_fit_config
from facelab.fit.job import run_fit
from facelab.nets.stylegan2_checkpoints import load_generator

DRAG_KEYS = ("generator", "seed", "latent", "points", "targets", "mask", "out")


def split_arguments(argv: list[str]) -> tuple[dict, list[str]]:
    """(the drag's own `key=value` fields, the remaining Hydra overrides)."""
    fields, overrides = {}, []
    for argument in argv:
        key, separator, value = argument.partition("=")
        if separator and key in DRAG_KEYS:
            fields[key] = yaml.safe_load(value)
        else:
            overrides.append(argument)
    missing = [key for key in ("generator", "points", "targets", "out") if key not in fields]
    if missing:
        usage = "facelab-drag generator=<pkl|pt> seed=N points=[[y,x],...] targets=[[y,x],...] out=<dir>"
        raise SystemExit(f"facelab-drag: missing {', '.join(f'{k}=' for k in missing)}; usage: {usage}")
    if "seed" not in fields and "latent" not in fields:
        raise SystemExit("facelab-drag: give seed=N or latent=<file.pt> to start from.")
    return fields, overrides


def drag_main(argv: list[str] | None = None) -> dict:
    fields, overrides = split_arguments(sys.argv[1:] if argv is None else argv)
    out = Path(str(fields["out"])).expanduser().resolve()
    generator = Path(str(fields["generator"])).expanduser().resolve()
    spec = {"item_id": "drag", "handle_points": fields["points"], "target_points": fields["targets"]}
    for key in ("seed", "latent", "mask"):
        if key in fields:
            spec[key] = str(Path(str(fields[key])).expanduser().resolve()) if key != "seed" else fields[key]
    out.mkdir(parents=True, exist_ok=True)
    manifest = out / "drag_manifest.yaml"
    manifest.write_text(yaml.safe_dump([spec], default_flow_style=None))
    resolution = load_generator(generator).img_resolution
    cfg = compose_fit_config(
        out,
        [
            "experiment=draggan",
            f"manifest={manifest}",
            f"output_dir={out}",
            f"fit.image_size={resolution}",
            f"fit.module.generator_path={generator}",
            *overrides,
        ],
    )
    return run_fit(cfg)


def main() -> None:
    """Console entry point."""
    drag_main()


if __name__ == "__main__":
    main()
