"""Encoded image bytes -> PIL, in one place. Ingest's check, the training and eval loaders, the header-size probe
and the served model all open images here, so a bad image gets the same error, naming where it came from, wherever
it is found."""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager

from PIL import Image

VERIFY_MODES = ("full", "header", "none")


class ImageDecodeError(ValueError):
    """An image that cannot be decoded; the message names where it came from."""


@contextmanager
def opened(data: bytes, where: str) -> Iterator[Image.Image]:
    """The image, lazily (header parsed, pixels not yet decoded); any failure inside, reading the header or the
    pixels, becomes an :class:`ImageDecodeError` naming ``where`` (PIL raises many types for bad data), so the
    body must touch only the image."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            yield image
    except Image.DecompressionBombError as e:  # from the header, before any pixel is decoded
        raise ImageDecodeError(f"{where}: refused, too many pixels ({e})") from e
    except (MemoryError, RecursionError):  # the machine's fault, not the image's: not a bad-image error
        raise
    except Exception as e:
        raise ImageDecodeError(f"{where}: corrupt or unreadable image ({type(e).__name__}: {e})") from e


def decode_image(data: bytes, where: str) -> Image.Image:
    """Decode to RGB."""
    with opened(data, where) as image:
        return image.convert("RGB")


def image_size(data: bytes, where: str) -> tuple[int, int]:
    """(width, height) from the header alone."""
    with opened(data, where) as image:
        return image.size


def check_image(data: bytes, where: str, verify: str) -> None:
    """``full`` decodes every pixel (catches truncated JPEGs), ``header`` only parses the header, ``none`` nothing."""
    if verify not in VERIFY_MODES:
        raise ValueError(f"verify must be one of {VERIFY_MODES}, got {verify!r}")
    if verify == "none":
        return
    with opened(data, where) as image:
        if verify == "full":
            image.load()
        else:
            image.verify()
