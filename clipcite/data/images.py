"""Encoded image bytes -> PIL, in one place. Ingest's check, the training and eval loaders, the header-size probe
and the served model all open images here, so a bad image gets the same error, naming where it came from, wherever
it is found."""

from __future__ import annotations

import io
import re
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
    except Image.UnidentifiedImageError as e:  # PIL's message is "cannot identify image file <_io.BytesIO ...>"
        what = "empty: 0 bytes" if not data else f"{len(data)} bytes in no format PIL reads: expected PNG, JPEG, ..."
        raise ImageDecodeError(f"{where}: corrupt or unreadable image ({what})") from e
    except Exception as e:
        detail = _OBJECT_REPR.sub("the image", str(e))
        raise ImageDecodeError(f"{where}: corrupt or unreadable image ({type(e).__name__}: {detail})") from e


_OBJECT_REPR = re.compile(
    r"<[\w.]+ object at 0x[0-9a-fA-F]+>"
)  # e.g. <_io.BytesIO object at 0x7f...>: no use to anyone


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
