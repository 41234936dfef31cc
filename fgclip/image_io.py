"""The project's one image reader, :func:`load_image` (CLI, processors, evaluation, training data,
curation, LLaVA data, detection demo), and :func:`image_size`, which reads an image's size as
``load_image`` would give it from the header only. Kept apart from the processors so readers of
images need neither family's processing.
"""
from __future__ import annotations

import io
import os

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from .errors import ImageError

SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")  # 16-bit grey (PNG, TIFF): 0..65535
TRANSPOSING_ORIENTATIONS = (5, 6, 7, 8)  # EXIF orientations that swap width and height


def _open_image(source: str | os.PathLike | bytes, name: str) -> Image.Image:
    """``Image.open`` of a path or encoded bytes; a missing, empty or non-image file is an :class:`ImageError`."""
    if isinstance(source, bytes):
        if not source:
            raise ImageError(name, "empty image data")
        source = io.BytesIO(source)
    elif not os.path.isfile(source):
        raise ImageError(name, "image file not found")
    elif os.path.getsize(source) == 0:
        raise ImageError(name, "empty file (0 bytes), not an image")
    try:
        return Image.open(source)
    except Image.DecompressionBombError as error:
        raise ImageError(name, f"{error} (PIL's decompression-bomb guard; raise PIL.Image.MAX_IMAGE_PIXELS "
                               "for a trusted file)") from None
    except (UnidentifiedImageError, OSError) as error:
        raise ImageError(name, f"not an image file PIL can read ({error})") from None


def load_image(image: Image.Image | str | os.PathLike | bytes, name: str | None = None) -> Image.Image:
    """The project's one image reader (CLI, evaluation, training data, curation, LLaVA data): a path,
    encoded bytes or a PIL image, as an RGB PIL image.

    EXIF orientation is applied; 16-bit grey images are scaled to 8 bits (65535 -> 255); other
    modes are converted by PIL (``convert("RGB")``, as FG-CLIP's and LLaVA's loaders do: an alpha
    channel is dropped, not blended). A missing, empty, truncated or non-image file, or one above
    PIL's pixel limit, raises :class:`~fgclip.errors.ImageError` naming ``name`` (default: the path).
    """
    if not isinstance(image, Image.Image):
        if not isinstance(image, (str, os.PathLike, bytes)):
            raise TypeError(f"expected a PIL image, a path or bytes, got {type(image).__name__}")
        name = name or (str(image) if not isinstance(image, bytes) else "<image bytes>")
        opened = _open_image(image, name)
        try:
            opened.load()
        except Image.DecompressionBombError as error:
            raise ImageError(name, f"{error} (PIL's decompression-bomb guard)") from None
        except (OSError, SyntaxError, ValueError) as error:
            raise ImageError(name, f"truncated or corrupt image ({error})") from None
        image = opened
    image = ImageOps.exif_transpose(image)
    if image.mode in SIXTEEN_BIT_MODES:
        grey = np.asarray(image, dtype=np.float64).clip(0, 65535) / 257.0
        image = Image.fromarray(np.rint(grey).astype(np.uint8), mode="L")
    return image if image.mode == "RGB" else image.convert("RGB")


def image_size(path: str | os.PathLike, name: str | None = None) -> tuple[int, int]:
    """(width, height) of an image file as :func:`load_image` gives it (EXIF orientation applied),
    read from the header only; a file that is not a readable image raises :class:`ImageError`."""
    name = name or str(path)
    with _open_image(path, name) as image:
        width, height = image.size
        try:
            orientation = image.getexif().get(ExifTags.Base.Orientation, 1)
        except (OSError, SyntaxError, ValueError) as error:  # e.g. a PNG cut before its last chunk
            raise ImageError(name, f"truncated or corrupt image ({error})") from None
    return (height, width) if orientation in TRANSPOSING_ORIENTATIONS else (width, height)
