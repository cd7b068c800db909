"""``imagefolder:PATH``: one sub-folder per class of PNG/JPEG images (optionally pre-split into train/val/test)."""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.data.core import DATASETS, DatasetSplits, as_hw, finish, resize, split_indices
from pipeline.errors import ConfigError, InputError
from pipeline.logs import get_logger

log = get_logger(__name__)  # under the runner's logger: reaches stderr and run.log
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
# Pillow's decompression-bomb guard, set explicitly so a library default change cannot lift it: 64 megapixels is
# far above any image this pipeline trains on; larger images are refused as InputError naming the file.
MAX_IMAGE_PIXELS = 64 * 1024 * 1024
# Files that may sit in a class folder without being images.
_IGNORED = {"thumbs.db", "desktop.ini", "readme", "readme.txt", "readme.md", "license", "license.txt"}


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
        entries = [f for f in d.iterdir() if not f.name.startswith(".") and f.name.lower() not in _IGNORED]
        strays = sorted(f for f in entries if f.is_file() and f.suffix.lower() not in IMAGE_EXTENSIONS)
        if strays:
            # Warned, not refused: stray notes or metadata files are common and harmless once skipped.
            log.warning("image folder class %r contains non-image file %r%s; it is skipped: remove it or move it "
                        "out of the class folder (only .png/.jpg/.jpeg files are read)", str(d), str(strays[0]),
                        f" (and {len(strays) - 1} more)" if len(strays) > 1 else "")
        files = sorted(f for f in entries if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS)
        if not files:
            raise InputError(f"image folder class {str(d)!r} contains no PNG/JPEG images; add images or remove "
                             f"the folder")
        items += [(f, label) for f in files]
    return items


def _read_images(items: list[tuple[Path, int]], input_size: "tuple[int, int] | None", gray: bool) -> torch.Tensor:
    from PIL import Image, UnidentifiedImageError

    Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
    arrays: list[np.ndarray] = []
    first: tuple[Path, tuple[int, int]] | None = None
    for f, _ in items:
        try:
            with warnings.catch_warnings():
                # Pillow warns between 1x and 2x the limit and raises above; both are refused.
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                with Image.open(f) as im:
                    im.load()
                    im = _to_mode(im, gray)
                    size = im.size
                    # PIL sizes are (W, H); the policy is a plain bilinear resize to (H, W), aspect not kept, no pad
                    if input_size is not None and size != (input_size[1], input_size[0]):
                        im = im.resize((input_size[1], input_size[0]), Image.BILINEAR)
                    a = np.asarray(im, dtype=np.float32)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise InputError(f"image {str(f)!r} is too large ({e}); images above {MAX_IMAGE_PIXELS} pixels are "
                             f"refused as possible decompression bombs: downscale or remove it") from e
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
    # _to_mode gives 8-bit-range values for every source depth, so one scale fits all.
    x = torch.from_numpy(np.stack(arrays)).float() / 255.0
    return x


def _to_mode(im: Any, gray: bool) -> Any:
    """Convert to 8-bit L or RGB; 16/32-bit integer images are scaled by their bit depth, not clipped at 255."""
    from PIL import Image

    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        a = np.asarray(im, dtype=np.float64)
        # I;16* are 16-bit by definition; mode I (a 16-bit PNG often decodes as I) is 16-bit when values fit.
        peak = 65535.0 if im.mode.startswith("I;16") or a.max(initial=0) <= 65535 else float(2 ** 31 - 1)
        im = Image.fromarray(np.clip(np.rint(a / peak * 255.0), 0, 255).astype(np.uint8), "L")
        return im if gray else im.convert("RGB")
    return im.convert("L" if gray else "RGB")


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
    if root.exists() and not root.is_dir():
        raise InputError(f"image folder {path!r} is a file, not a folder; pass 'imagefolder:PATH' with one "
                         f"sub-folder per class")
    if not root.is_dir():
        raise InputError(f"image folder {path!r} does not exist; pass 'imagefolder:PATH' with one "
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
