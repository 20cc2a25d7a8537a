"""`facelab-align`: FFHQ-align the faces of photos, and paste edited crops back into their photos.

    facelab-align INPUT OUT_DIR --size 1024          # a photo or a folder -> <stem>_<k>.png + <stem>_<k>.json
    facelab-align --paste EDITED.png --into PHOTO --meta SIDECAR.json --out OUT.png
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from facelab.io.files import atomic_write_bytes
from facelab.io.images import IMAGE_EXTENSIONS, list_images, read_rgb, save_image
from facelab.ops.align import MIN_SCORE, AlignedFace, NoFaceFoundError, align_photo, paste_back


def _parser() -> argparse.ArgumentParser:
    """The command-line interface of both modes."""
    parser = argparse.ArgumentParser(prog="facelab-align", description=__doc__.splitlines()[0])
    parser.add_argument("input", nargs="?", help="a photo or a folder of photos (searched recursively)")
    parser.add_argument("out_dir", nargs="?", help="folder for the aligned crops and their JSON sidecars")
    parser.add_argument("--size", type=int, default=1024, help="side of the aligned crops (default 1024)")
    parser.add_argument("--upsample", type=int, default=1, help="dlib upsampling (finds small faces)")
    parser.add_argument("--min-score", type=float, default=MIN_SCORE, help="minimum dlib detection score")
    parser.add_argument("--paste", metavar="EDITED", help="paste mode: an edited aligned crop")
    parser.add_argument("--into", metavar="PHOTO", help="paste mode: the original photo")
    parser.add_argument("--meta", metavar="SIDECAR", help="paste mode: the crop's JSON sidecar")
    parser.add_argument("--out", metavar="OUT", help="paste mode: where to write the composited photo")
    parser.add_argument("--feather", type=float, default=0.1, help="soft edge, fraction of the crop side")
    return parser


def _align(args: argparse.Namespace) -> int:
    """Align every photo under `args.input`; report files that fail (naming them) and keep going."""
    out_dir = Path(args.out_dir)
    if not Path(args.input).exists():
        raise FileNotFoundError(f"Input {args.input} does not exist (give a photo or a folder of photos).")
    paths = list_images(args.input)
    if not paths:
        raise FileNotFoundError(f"No images ({', '.join(IMAGE_EXTENSIONS)}) under {args.input}.")
    failures = 0
    for path in paths:
        try:
            faces = align_photo(path, output_size=args.size, upsample=args.upsample, min_score=args.min_score)
        except (NoFaceFoundError, ValueError) as error:  # CorruptImageError is a ValueError naming the file
            print(f"facelab-align: {error}", file=sys.stderr)
            failures += 1
            continue
        for face in faces:
            save_image(face.image, out_dir / f"{face.name}.png")
            meta = {**face.to_json(), "source": str(Path(path).resolve())}
            atomic_write_bytes(out_dir / f"{face.name}.json", json.dumps(meta, indent=1).encode())
        print(f"{path}: {len(faces)} face(s) -> {out_dir}")
    return 1 if failures else 0


def _paste(args: argparse.Namespace) -> int:
    """Paste one edited crop back into its photo using the sidecar's quad."""
    meta_path = Path(args.meta)
    if not meta_path.is_file():
        raise FileNotFoundError(f"Sidecar {meta_path} does not exist.")
    try:
        aligned = AlignedFace.from_json(json.loads(meta_path.read_text()))
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(f"Sidecar {meta_path} is not a facelab-align sidecar ({error!r}).") from error
    edited, photo = read_rgb(args.paste), read_rgb(args.into)
    if edited.shape[0] != edited.shape[1]:
        raise ValueError(f"Edited crop {args.paste} is not square ({edited.shape[1]}x{edited.shape[0]}).")
    try:
        result = paste_back(photo, edited, aligned, feather=args.feather)
    except ValueError as error:
        raise ValueError(f"Cannot paste into {args.into} with sidecar {meta_path}: {error}") from error
    save_image(result, args.out)
    print(f"{args.paste} -> {args.out}")
    return 0


def align_main(argv: list[str] | None = None) -> int:
    """Entry point of `facelab-align`; returns the exit status (1 if any photo failed)."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.paste:
        missing = [flag for flag in ("into", "meta", "out") if not getattr(args, flag)]
        if missing:
            parser.error(f"--paste also needs {', '.join('--' + m for m in missing)}")
        try:
            return _paste(args)
        except (FileNotFoundError, ValueError) as error:
            print(f"facelab-align: {error}", file=sys.stderr)
            return 1
    if not args.input or not args.out_dir:
        parser.error("give INPUT and OUT_DIR to align, or --paste/--into/--meta/--out to paste back")
    try:
        return _align(args)
    except FileNotFoundError as error:
        print(f"facelab-align: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(align_main())
