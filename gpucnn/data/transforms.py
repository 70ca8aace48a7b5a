"""Image transforms with torchvision's meaning (its documentation and source are the spec; it is
not imported): decoding through Pillow, Resize (short side, bilinear), CenterCrop,
RandomResizedCrop.get_params (10 tries, then the central fall-back) and the horizontal flip.

Every function takes and returns PIL images except :func:`to_array` (a PIL image -> uint8
(C, H, W)). Randomness comes from a ``numpy.random.Generator`` the caller seeds (per sample:
gpucnn.data.folder seeds it by (seed, epoch, sample index)); the draws are torchvision's, in
its order, from that generator instead of torch's.
"""
from __future__ import annotations

import math
import os

import numpy as np

from .errors import DataError

__all__ = ["IMAGE_EXTENSIONS", "MAX_IMAGE_PIXELS", "MAX_IMAGE_BYTES", "SCALE", "RATIO",
           "decode", "resize", "resize_short", "cover_size", "center_crop", "resize_center",
           "resized_crop_params", "random_resized_crop", "hflip", "to_array", "augment_rng",
           "augmented_pixels", "as_image"]

# torchvision's IMG_EXTENSIONS less .ppm/.pgm/.tif/.tiff, plus .gif (torchvision lists no GIF;
# its first frame is used here). Matched case-insensitively, as torchvision does.
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
MAX_IMAGE_PIXELS = 64 << 20   # a decompression bomb is refused before it is decoded
MAX_IMAGE_BYTES = 256 << 20
SCALE = (0.08, 1.0)           # RandomResizedCrop's defaults
RATIO = (3.0 / 4.0, 4.0 / 3.0)
_SAMPLE_TAG = 0x534D  # mixed into a sample's augmentation seed (the loader's tags are others)


def decode(path, channels):
    """The image at ``path`` as a PIL image of ``channels`` (1: mode "L", 3: "RGB", Pillow's
    conversions; a GIF's first frame), fully decoded. Raises DataError saying why a file is
    not a readable image (the folder loader skips those, or stops under --strict)."""
    from PIL import Image, UnidentifiedImageError
    try:
        size = os.stat(path).st_size
        if size > MAX_IMAGE_BYTES:
            raise DataError(f"{path}: {size} bytes, more than the {MAX_IMAGE_BYTES} allowed "
                            f"for an image")
        with Image.open(path) as img:
            w, h = img.size
            if w * h > MAX_IMAGE_PIXELS:
                raise DataError(f"{path}: {w}x{h} pixels, more than the {MAX_IMAGE_PIXELS} "
                                f"allowed (a decompression bomb?)")
            img.seek(0)
            out = img.convert("L" if channels == 1 else "RGB")
            out.load()
            return out
    except DataError:
        raise
    except UnidentifiedImageError:
        raise DataError(f"{path}: not an image Pillow can read") from None
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as exc:
        raise DataError(f"{path}: damaged or unreadable image: {exc}") from None


def resize(img, size):
    """``img`` resized to ``size`` (width, height), PIL bilinear; a DataError when the result
    would pass MAX_IMAGE_PIXELS (an image of extreme proportions resized to cover a square:
    1 x 4,000,000 pixels at a 28-pixel short side would be 112 million pixels)."""
    from PIL import Image
    w, h = size
    if w * h > MAX_IMAGE_PIXELS:
        raise DataError(f"resizing its {img.width}x{img.height} pixels to {w}x{h} would make "
                        f"more than the {MAX_IMAGE_PIXELS} pixels allowed (proportions too "
                        f"extreme)")
    return img.resize((w, h), Image.BILINEAR)


def resize_short(img, size):
    """torchvision's Resize(size) with an int: the short side becomes ``size``, the long one
    int(size * long / short); PIL bilinear (antialiased, as torchvision's PIL path is)."""
    w, h = img.size
    short, long = (w, h) if w <= h else (h, w)
    if short == size:
        return img
    new_long = int(size * long / short)
    return resize(img, (size, new_long) if w <= h else (new_long, size))


def cover_size(w, h, out_h, out_w):
    """(width, height) of the aspect-kept resize of a w x h image that just covers
    out_h x out_w; for a square output it is resize_short's (torchvision's Resize)."""
    if out_h * w >= out_w * h:  # out_h / h >= out_w / w: the height decides
        return int(out_h * w / h), out_h
    return out_w, int(out_w * h / w)


def center_crop(img, out_h, out_w):
    """torchvision's CenterCrop((out_h, out_w)) of an image at least that large: offsets
    int(round((size - crop) / 2)) (Python's round, half to even, as torchvision's)."""
    w, h = img.size
    top = int(round((h - out_h) / 2.0))
    left = int(round((w - out_w) / 2.0))
    return img.crop((left, top, left + out_w, top + out_h))


def resize_center(img, out_h, out_w):
    """The evaluation transform: an image already out_h x out_w is used as it is; others are
    resized (bilinear, aspect kept) to just cover out_h x out_w, then centre-cropped."""
    w, h = img.size
    if (w, h) == (out_w, out_h):
        return img
    if out_h == out_w:
        img = resize_short(img, out_h)
    else:
        new = cover_size(w, h, out_h, out_w)
        if new != (w, h):
            img = resize(img, new)
    return center_crop(img, out_h, out_w)


def resized_crop_params(rng, height, width, scale=SCALE, ratio=RATIO):
    """torchvision's RandomResizedCrop.get_params: (top, left, h, w) of a crop of an
    height x width image whose area is a uniform share in ``scale`` and whose aspect ratio is
    log-uniform in ``ratio``; 10 tries, then the central crop of the ratio clamped to
    ``ratio`` (the whole image when its own ratio is inside)."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_ratio[0], log_ratio[1]))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return top, left, h, w
    in_ratio = float(width) / float(height)
    if in_ratio < min(ratio):
        w = width
        h = int(round(w / min(ratio)))
    elif in_ratio > max(ratio):
        h = height
        w = int(round(h * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def random_resized_crop(img, rng, out_h, out_w, scale=SCALE, ratio=RATIO):
    """The crop of resized_crop_params, resized to out_h x out_w (bilinear), as torchvision's
    F.resized_crop: crop first, then resize."""
    from PIL import Image
    top, left, h, w = resized_crop_params(rng, img.size[1], img.size[0], scale, ratio)
    crop = img.crop((left, top, left + w, top + h))
    return crop.resize((out_w, out_h), Image.BILINEAR)


def hflip(img):
    from PIL import Image
    return img.transpose(Image.FLIP_LEFT_RIGHT)


def to_array(img):
    """uint8 (C, H, W) of a mode "L" or "RGB" PIL image."""
    a = np.asarray(img, dtype=np.uint8)
    return a[None] if a.ndim == 2 else np.ascontiguousarray(a.transpose(2, 0, 1))


def augment_rng(seed, epoch, index):
    """The generator of training sample ``index``'s augmentation in ``epoch``."""
    return np.random.default_rng([int(seed), int(epoch), int(index), _SAMPLE_TAG])


def as_image(src, channels):
    """A PIL image of ``src``: an image file (decoded as :func:`decode` does) or the uint8
    (C, H, W) array of one (gpucnn.data.decoded_cache), the same pixels either way."""
    if isinstance(src, np.ndarray):
        from PIL import Image
        return Image.fromarray(np.ascontiguousarray(src[0] if src.shape[0] == 1
                                                    else src.transpose(1, 2, 0)))
    return decode(src, channels)


def augmented_pixels(src, channels, size, seed, epoch, index):
    """uint8 (C, H, W) of training sample ``index`` in ``epoch`` (``src``: its file or its
    decoded pixels): RandomResizedCrop to ``size`` (H, W), then a horizontal flip with
    probability 1/2, drawn from augment_rng."""
    rng = augment_rng(seed, epoch, index)
    img = random_resized_crop(as_image(src, channels), rng, *size)
    if rng.random() < 0.5:
        img = hflip(img)
    return to_array(img)
