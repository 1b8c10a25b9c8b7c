"""ImageFolder trees to entries: ``<class>/*``, ``<domain>/<class>/*``, optionally with a split level.

The one parser of folder layouts, for ``clipcite ingest imagefolder`` and for the pipeline's folder sources
(:mod:`clipcite.data.folder`, local or ``s3://``). ``layout`` names the directory levels above the image files,
outermost first: ``"class"``, ``"domain/class"``, ``"split/class"`` or ``"split/domain/class"``.

The rule for class names (:func:`class_name`): labels follow the sorted class folder names (torchvision's rule),
the same in every domain and split; a folder's name becomes the class name with underscores read as spaces
(``blue_circle`` -> ``blue circle``, CoOp's rule), which is what ``classes.json``, the prompts and the labels the
served model returns all say.
"""

from __future__ import annotations

from pathlib import Path

from clipcite import storage
from clipcite.data.files import IMAGE_SUFFIXES, FileEntry

LEVELS = ("split", "domain", "class")


def class_name(folder: str) -> str:
    """The class name a class folder stands for (``blue_circle`` -> ``blue circle``)."""
    return folder.replace("_", " ")


def check_layout(layout: str, where: str) -> tuple[str, ...]:
    levels = tuple(layout.strip("/").split("/"))
    if "class" not in levels or any(lv not in LEVELS for lv in levels) or len(set(levels)) != len(levels):
        raise ValueError(f"{where}: layout {layout!r}: use levels from {LEVELS} separated by '/', including 'class'")
    return levels


def layout_entries(
    root: str, images: list[str], layout: str, split: str = "train", domain: str = "default"
) -> tuple[list[FileEntry], list[str]]:
    """Entries for ``images`` (paths relative to ``root``, a directory or ``s3://`` prefix) and the class names in
    label order. ``split``/``domain`` fill the levels the layout does not have."""
    levels = check_layout(layout, root)
    parsed = []
    for rel in images:
        parts = rel.split("/")
        if len(parts) != len(levels) + 1:
            raise ValueError(f"{storage.join(root, rel)}: not in the {layout!r} layout")
        parsed.append((dict(zip(levels, parts[:-1], strict=True)), rel))
    folders = sorted({p["class"] for p, _ in parsed})
    if not folders:
        raise ValueError(f"{root}: no images found in a {layout!r} layout")
    index = {name: i for i, name in enumerate(folders)}
    entries = [
        FileEntry(
            path=storage.join(root, rel),
            id=rel,
            label=index[p["class"]],
            classname=class_name(p["class"]),
            domain=p.get("domain", domain),
            split=p.get("split", split),
        )
        for p, rel in parsed
    ]
    return entries, [class_name(f) for f in folders]


def scan_imagefolder(
    root: str | Path, layout: str = "class", split: str = "train", domain: str = "default"
) -> tuple[list[FileEntry], list[str]]:
    """Every image under a local ImageFolder ``root``: the entries and the class names in label order."""
    if not Path(root).is_dir():
        raise FileNotFoundError(f"{root}: ImageFolder root is not a directory")
    check_layout(layout, str(root))
    images = [rel for rel, _ in storage.walk(root) if Path(rel).suffix.lower() in IMAGE_SUFFIXES]
    return layout_entries(str(root), images, layout, split, domain)
