"""Convert a source layout to the project's image table (ImageFolder or a CoOp dataset)."""

from __future__ import annotations

import logging

from clipcite.data.coop import scan_coop
from clipcite.data.files import SkipCounter, rows_from_files
from clipcite.data.imagefolder import scan_imagefolder
from clipcite.data.prompts import template_for
from clipcite.data.table import ClassList, write_table

log = logging.getLogger(__name__)


def ingest_imagefolder(
    root: str,
    out_uri: str,
    *,
    layout: str = "class",
    split: str = "train",
    domain: str = "default",
    dataset: str = "",
    template: str = "",
    verify: str = "full",
    skip_bad_images: bool = False,
) -> dict:
    """ImageFolder tree -> table at ``out_uri``. Returns counts (rows, shards, classes, skipped)."""
    entries, classnames = scan_imagefolder(root, layout=layout, split=split, domain=domain)
    classes = ClassList(tuple(classnames), template_for(dataset, template), dataset)
    return _write(entries, classes, out_uri, verify, skip_bad_images)


def ingest_coop(
    data_root: str,
    dataset: str,
    out_uri: str,
    *,
    template: str = "",
    verify: str = "full",
    skip_bad_images: bool = False,
) -> dict:
    """A CoOp dataset under ``$DATA`` -> table with CoOp's splits, labels, class names and template."""
    entries, classnames, key = scan_coop(data_root, dataset)
    classes = ClassList(tuple(classnames), template_for(key, template), key)
    return _write(entries, classes, out_uri, verify, skip_bad_images)


def _write(entries, classes: ClassList, out_uri: str, verify: str, skip_bad_images: bool) -> dict:
    counter = SkipCounter()
    rows = rows_from_files(entries, verify=verify, skip_bad_images=skip_bad_images, counter=counter, total=len(entries))
    counts = write_table(rows, out_uri, classes)
    counts.update(classes=len(classes.names), skipped=counter.skipped)
    if counter.skipped:
        log.warning("skipped %d unreadable image(s), e.g. %s", counter.skipped, counter.examples[:2])
    log.info("wrote %s: %s", out_uri, counts)
    return counts
