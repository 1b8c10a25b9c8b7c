"""ImageFolder trees to entries: ``root/<class>/*``, ``root/<domain>/<class>/*``, optionally with a split level.

``layout`` names the directory levels above the image files, outermost first, for example ``"class"``,
``"domain/class"``, ``"split/class"`` or ``"split/domain/class"``. Class labels follow the sorted class folder
names (torchvision's rule), the same in every domain and split.
"""

from __future__ import annotations

from pathlib import Path

from clipcite.data.files import FileEntry, is_image

LEVELS = ("split", "domain", "class")


def scan_imagefolder(
    root: str | Path, layout: str = "class", split: str = "train", domain: str = "default"
) -> tuple[list[FileEntry], list[str]]:
    """Return the entries and the class names in label order."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: ImageFolder root is not a directory")
    levels = tuple(layout.strip("/").split("/"))
    if "class" not in levels or any(lv not in LEVELS for lv in levels) or len(set(levels)) != len(levels):
        raise ValueError(f"layout {layout!r}: use levels from {LEVELS} separated by '/', including 'class'")

    found: list[tuple[dict[str, str], Path]] = []
    _walk(root, levels, {}, found)
    classes = sorted({parts["class"] for parts, _ in found})
    if not classes:
        raise ValueError(f"{root}: no images found in a {layout!r} layout")
    index = {name: i for i, name in enumerate(classes)}
    entries = [
        FileEntry(
            path=path,
            id=path.relative_to(root).as_posix(),
            label=index[parts["class"]],
            classname=parts["class"],
            domain=parts.get("domain", domain),
            split=parts.get("split", split),
        )
        for parts, path in found
    ]
    return entries, classes


def _walk(directory: Path, levels: tuple[str, ...], parts: dict[str, str], out: list) -> None:
    if not levels:
        out.extend((dict(parts), p) for p in sorted(directory.iterdir()) if is_image(p))
        return
    for sub in sorted(p for p in directory.iterdir() if p.is_dir() and not p.name.startswith(".")):
        _walk(sub, levels[1:], {**parts, levels[0]: sub.name}, out)
