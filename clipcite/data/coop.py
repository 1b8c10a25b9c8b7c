"""The CoOp benchmark layouts (docs/data.md): a dataset name and ``$DATA`` give exactly CoOp's splits and labels.

Three kinds of layout exist: a ``split_zhou_<Name>.json`` file of ``[relative_path, label, classname]`` triples;
ImageNet-style class folders named by WordNet id with ``classnames.txt`` (ImageNet, -Sketch, -A, -R: label = index
of the folder among the sorted folders present, as CoOp does, which gives the 200-class subsets of -A and -R);
ImageNet-V2's folders named by the integer class index; and FGVCAircraft's ``variants.txt`` with split text files.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from clipcite.data.files import FileEntry, is_image
from clipcite.data.prompts import canonical_dataset


@dataclass(frozen=True)
class CoopDataset:
    folder: str  # under $DATA
    image_dir: str  # under the folder
    split_file: str = ""  # split_zhou_*.json under the folder, when the dataset has one
    reader: str = "split_file"  # split_file | imagenet | imagenetv2 | wnid_folders | aircraft


DATASETS: dict[str, CoopDataset] = {
    "imagenet": CoopDataset("imagenet", "images", reader="imagenet"),
    "caltech101": CoopDataset("caltech-101", "101_ObjectCategories", "split_zhou_Caltech101.json"),
    "oxford_pets": CoopDataset("oxford_pets", "images", "split_zhou_OxfordPets.json"),
    "stanford_cars": CoopDataset("stanford_cars", "", "split_zhou_StanfordCars.json"),
    "oxford_flowers": CoopDataset("oxford_flowers", "jpg", "split_zhou_OxfordFlowers.json"),
    "food101": CoopDataset("food-101", "images", "split_zhou_Food101.json"),
    "fgvc_aircraft": CoopDataset("fgvc_aircraft", "images", reader="aircraft"),
    "sun397": CoopDataset("sun397", "SUN397", "split_zhou_SUN397.json"),
    "dtd": CoopDataset("dtd", "images", "split_zhou_DescribableTextures.json"),
    "eurosat": CoopDataset("eurosat", "2750", "split_zhou_EuroSAT.json"),
    "ucf101": CoopDataset("ucf101", "UCF-101-midframes", "split_zhou_UCF101.json"),
    "imagenetv2": CoopDataset("imagenetv2", "imagenetv2-matched-frequency-format-val", reader="imagenetv2"),
    "imagenet_sketch": CoopDataset("imagenet-sketch", "images", reader="wnid_folders"),
    "imagenet_a": CoopDataset("imagenet-adversarial", "imagenet-a", reader="wnid_folders"),
    "imagenet_r": CoopDataset("imagenet-rendition", "imagenet-r", reader="wnid_folders"),
}


def scan_coop(data_root: str | Path, dataset: str) -> tuple[list[FileEntry], list[str], str]:
    """Return (entries, class names in label order, canonical dataset name) for a CoOp dataset under ``$DATA``."""
    key = canonical_dataset(dataset)
    if key not in DATASETS:
        raise ValueError(f"unknown CoOp dataset {dataset!r}; known: {', '.join(sorted(DATASETS))}")
    spec = DATASETS[key]
    folder = Path(data_root) / spec.folder
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: dataset folder for {key} not found under {data_root}")
    readers: dict[str, Callable[[Path, Path, CoopDataset, str], tuple[list[FileEntry], list[str]]]] = {
        "split_file": _read_split_file,
        "imagenet": _read_imagenet,
        "imagenetv2": _read_imagenetv2,
        "wnid_folders": _read_wnid_folders,
        "aircraft": _read_aircraft,
    }
    entries, classnames = readers[spec.reader](folder, folder / spec.image_dir, spec, key)
    return entries, classnames, key


def _entry(image_dir: Path, rel: str, label: int, classname: str, domain: str, split: str) -> FileEntry:
    return FileEntry(image_dir / rel, f"{domain}/{rel}", int(label), classname, domain, split)


def _read_split_file(folder: Path, image_dir: Path, spec: CoopDataset, key: str):
    path = folder / spec.split_file
    if not path.is_file():
        raise FileNotFoundError(f"{path}: CoOp split file missing (see CoOp's DATASETS.md for {key})")
    try:
        splits = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e
    names: dict[int, str] = {}
    entries = []
    for split in ("train", "val", "test"):
        for i, item in enumerate(splits.get(split, [])):
            if not (isinstance(item, list) and len(item) == 3):
                raise ValueError(f"{path}: {split}[{i}] is not a [path, label, classname] triple: {item!r}")
            rel, label, name = item
            if names.setdefault(int(label), name) != name:
                raise ValueError(f"{path}: {split}[{i}] label {label} is {name!r}, elsewhere {names[int(label)]!r}")
            entries.append(_entry(image_dir, rel, label, name, key, split))
    return entries, _dense_names(names, str(path))


def _dense_names(names: dict[int, str], source: str) -> list[str]:
    if sorted(names) != list(range(len(names))):
        raise ValueError(f"{source}: labels are not 0..{len(names) - 1}")
    return [names[i] for i in range(len(names))]


def _read_classnames(folder: Path) -> dict[str, str]:
    """``classnames.txt``: lines ``n01440764 tench``, in file order."""
    path = folder / "classnames.txt"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing (lines '<wnid> <class name>', as CoOp's ImageNet)")
    out = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            wnid, _, name = line.strip().partition(" ")
            if not name:
                raise ValueError(f"{path}:{n}: expected '<wnid> <class name>', got {line!r}")
            out[wnid] = name.strip()
    return out


def _class_folders(directory: Path) -> list[Path]:
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory}: image folder not found")
    return sorted(p for p in directory.iterdir() if p.is_dir() and not p.name.startswith("."))


def _folder_entries(image_dir: Path, folders: list[Path], labels: list[int], names: list[str], key, split):
    entries = []
    for folder, label, name in zip(folders, labels, names, strict=True):
        for image in sorted(p for p in folder.iterdir() if is_image(p)):
            entries.append(_entry(image_dir, image.relative_to(image_dir).as_posix(), label, name, key, split))
    return entries


def _wnid_labels(folder: Path, folders: list[Path]) -> tuple[list[int], list[str]]:
    classnames = _read_classnames(folder)
    unknown = [f.name for f in folders if f.name not in classnames]
    if unknown:
        raise ValueError(f"{folder}/classnames.txt has no entry for folder(s) {unknown[:5]}")
    return list(range(len(folders))), [classnames[f.name] for f in folders]


def _read_imagenet(folder: Path, image_dir: Path, spec, key):
    entries, names = [], []
    for split, sub in (("train", "train"), ("test", "val")):
        folders = _class_folders(image_dir / sub)
        labels, names_here = _wnid_labels(folder, folders)
        names = names or names_here
        if names_here != names:
            raise ValueError(f"{image_dir / sub}: class folders differ from {image_dir / 'train'}")
        entries += _folder_entries(image_dir, folders, labels, names_here, key, split)
    return entries, names


def _read_wnid_folders(folder: Path, image_dir: Path, spec, key):
    folders = _class_folders(image_dir)
    labels, names = _wnid_labels(folder, folders)
    return _folder_entries(image_dir, folders, labels, names, key, "test"), names


def _read_imagenetv2(folder: Path, image_dir: Path, spec, key):
    classnames = list(_read_classnames(folder).values())
    folders = sorted(_class_folders(image_dir), key=lambda p: int(p.name) if p.name.isdigit() else -1)
    bad = [f.name for f in folders if not f.name.isdigit() or int(f.name) >= len(classnames)]
    if bad:
        raise ValueError(f"{image_dir}: folders must be class indices 0..{len(classnames) - 1}, found {bad[:5]}")
    labels = [int(f.name) for f in folders]
    entries = _folder_entries(image_dir, folders, labels, [classnames[i] for i in labels], key, "test")
    return entries, classnames


def _read_aircraft(folder: Path, image_dir: Path, spec, key):
    variants = folder / "variants.txt"
    if not variants.is_file():
        raise FileNotFoundError(f"{variants}: missing (one variant name per line)")
    names = [line.strip() for line in variants.read_text().splitlines() if line.strip()]
    index = {name: i for i, name in enumerate(names)}
    entries = []
    for split in ("train", "val", "test"):
        path = folder / f"images_variant_{split}.txt"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing")
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            image_id, _, name = line.strip().partition(" ")
            if name not in index:
                raise ValueError(f"{path}:{n}: variant {name!r} is not in {variants}")
            entries.append(_entry(image_dir, f"{image_id}.jpg", index[name], name, key, split))
    return entries, names
