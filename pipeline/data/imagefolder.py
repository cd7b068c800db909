"""``imagefolder:PATH``: one sub-folder per class of PNG/JPEG images (optionally pre-split into train/val/test)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from pipeline.data.core import DATASETS, DatasetSplits, as_hw, finish, resize, split_indices
from pipeline.errors import ConfigError, InputError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")


def _class_dirs(root: Path, what: str) -> list[Path]:
    dirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not dirs:
        raise InputError(f"image folder {what} {str(root)!r} has no class sub-folders; lay it out as "
                         f"{root}/<class_name>/<image>.png")
    return dirs


def _scan(root: Path, class_names: list[str], what: str) -> list[tuple[Path, int]]:
    items: list[tuple[Path, int]] = []
    for label, name in enumerate(class_names):
        d = root / name
        if not d.is_dir():
            raise InputError(f"image folder {what} {str(root)!r} lacks class folder {name!r} that the train split has; "
                             f"every split needs the same class folders")
        files = sorted(f for f in d.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS
                       and not f.name.startswith("."))
        if not files:
            raise InputError(f"image folder class {str(d)!r} contains no PNG/JPEG images; add images or remove "
                             f"the folder")
        items += [(f, label) for f in files]
    return items


def _read_images(items: list[tuple[Path, int]], input_size: "tuple[int, int] | None", gray: bool) -> torch.Tensor:
    from PIL import Image, UnidentifiedImageError

    arrays: list[np.ndarray] = []
    first: tuple[Path, tuple[int, int]] | None = None
    for f, _ in items:
        try:
            with Image.open(f) as im:
                im.load()
                im = im.convert("L" if gray else "RGB")
                size = im.size
                # PIL sizes are (W, H); the policy is a plain bilinear resize to (H, W), aspect not kept, no pad
                if input_size is not None and size != (input_size[1], input_size[0]):
                    im = im.resize((input_size[1], input_size[0]), Image.BILINEAR)
                a = np.asarray(im, dtype=np.uint8)
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
            raise InputError(f"image {str(f)!r} cannot be read ({type(e).__name__}: {e}); replace or delete it") from e
        if input_size is None:
            if first is None:
                first = (f, size)
            elif size != first[1]:
                raise InputError(
                    f"images have different sizes: {str(first[0])!r} is {first[1][0]}x{first[1][1]} but {str(f)!r} "
                    f"is {size[0]}x{size[1]} (W x H); set dataset.input_size: [H, W] to resize them all"
                )
        arrays.append(a[None] if gray else a.transpose(2, 0, 1))
    x = torch.from_numpy(np.stack(arrays)).float() / 255.0
    return x


def _all_gray(items: list[tuple[Path, int]]) -> bool:
    from PIL import Image, UnidentifiedImageError

    for f, _ in items:
        try:
            with Image.open(f) as im:
                if im.mode not in ("L", "1", "I;16", "I", "LA"):
                    return False
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
            raise InputError(f"image {str(f)!r} cannot be read ({type(e).__name__}: {e}); replace or delete it") from e
    return True


@DATASETS.register("imagefolder", needs_path=True, any_hw=True)
def load_imagefolder(path: str | None, seed: int, input_size: "int | tuple[int, int] | None") -> DatasetSplits:
    """Load ``PATH/<class>/*.png|jpg``; or ``PATH/{train,val,test}/<class>/...`` when those split folders exist.

    Grayscale-only folders give 1 channel, anything else RGB. Without split folders the images are split
    60/10/30 % stratified by ``seed``; with ``train`` and ``test`` but no ``val``, 10 % of train becomes val.

    Args:
        path: the root folder.
        seed: split seed.
        input_size: resize every image to this ``(H, W)`` (or square side) by bilinear interpolation of each axis
            on its own (aspect ratio not kept, no padding or cropping); without it all images must share one size.

    Raises:
        ConfigError: no path.
        InputError: missing folder, no class folders, an empty class folder, an unreadable image, mixed sizes.
    """
    if not path:
        raise ConfigError("dataset 'imagefolder' needs a folder: use 'imagefolder:path/to/folder'")
    root = Path(path).expanduser()
    if not root.is_dir():
        raise InputError(f"image folder {path!r} does not exist or is not a folder; pass 'imagefolder:PATH' with one "
                         f"sub-folder per class")
    try:
        from PIL import Image  # noqa: F401
    except ImportError as e:  # pragma: no cover - pillow comes with matplotlib
        raise InputError("reading image folders needs Pillow: pip install pillow") from e
    presplit = (root / "train").is_dir() and (root / "test").is_dir()
    if presplit:
        class_names = [d.name for d in _class_dirs(root / "train", "split")]
        split_items = {s: _scan(root / s, class_names, "split") for s in ("train", "val", "test") if (root / s).is_dir()}
    else:
        class_names = [d.name for d in _class_dirs(root, "")]
        split_items = {"all": _scan(root, class_names, "")}
    every = [it for items in split_items.values() for it in items]
    gray = _all_gray(every)
    # Read everything in one pass so the mixed-size check compares files across splits too.
    x_all = _read_images(every, None if input_size is None else as_hw(input_size), gray)
    y_all = torch.tensor([label for _, label in every], dtype=torch.int64)
    bounds, start = {}, 0
    for s, items in split_items.items():
        bounds[s] = (start, start + len(items))
        start += len(items)

    def part(s: str) -> tuple[torch.Tensor, torch.Tensor]:
        a, b = bounds[s]
        return x_all[a:b], y_all[a:b]

    if not presplit:
        idx = split_indices(len(y_all), y_all.numpy(), seed)
        parts = [(x_all[torch.from_numpy(i)], y_all[torch.from_numpy(i)]) for i in idx]
    else:
        xtr, ytr = part("train")
        if "val" in split_items:
            parts = [(xtr, ytr), part("val"), part("test")]
        else:
            tr, va, _ = split_indices(len(ytr), ytr.numpy(), seed, (0.9, 0.1, 0.0))
            parts = [(xtr[torch.from_numpy(tr)], ytr[torch.from_numpy(tr)]),
                     (xtr[torch.from_numpy(va)], ytr[torch.from_numpy(va)]), part("test")]
    xs = tuple(resize(x, tuple(x_all.shape[-2:])) for x, _ in parts)
    return finish(f"imagefolder:{root.name}", xs, tuple(y for _, y in parts), len(class_names), class_names)
