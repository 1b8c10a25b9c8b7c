"""Container images the components run in, pinned by tag or digest; override with environment variables.

``CLIPCITE_IMAGE`` (CPU steps) and ``CLIPCITE_GPU_IMAGE`` (GPU steps) are read when the pipeline is compiled, e.g.
``CLIPCITE_GPU_IMAGE=registry.example.com/clipcite-cuda@sha256:... python pipeline.py compile``. ``make images``
builds and pushes both from docker/ with the tag below.
"""

import os

VERSION = "0.1.0"
REGISTRY = os.environ.get("CLIPCITE_REGISTRY", "ghcr.io/clipcite")
CPU_IMAGE = os.environ.get("CLIPCITE_IMAGE", f"{REGISTRY}/clipcite-cpu:{VERSION}")
GPU_IMAGE = os.environ.get("CLIPCITE_GPU_IMAGE", f"{REGISTRY}/clipcite-cuda:{VERSION}")
