"""Image tables (Parquet) and the converters that make them."""

from clipcite.data.images import ImageDecodeError
from clipcite.data.ingest import ingest_coop, ingest_imagefolder
from clipcite.data.table import ClassList, read_classes, read_table, write_table

__all__ = [
    "ClassList",
    "ImageDecodeError",
    "ingest_coop",
    "ingest_imagefolder",
    "read_classes",
    "read_table",
    "write_table",
]
