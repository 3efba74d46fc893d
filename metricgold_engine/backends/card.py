"""What a model folder's model card (``README.md``) says about the model: its licence."""

from __future__ import annotations

import os
from pathlib import Path


def read_licence(folder: str | os.PathLike[str]) -> str | None:
    """The licence in the model card's metadata (``README.md`` YAML front matter ``license:``, with
    ``license_name:`` when the licence is ``other``), or None when the folder has no such card."""
    readme = Path(folder) / "README.md"
    if not readme.is_file():
        return None
    import yaml  # huggingface_hub's own dependency, which parses the card's front matter with it
    from huggingface_hub import metadata_load

    try:
        meta = metadata_load(readme) or {}
    except (ValueError, UnicodeDecodeError, OSError, yaml.YAMLError):
        return None  # a card without readable metadata says nothing about the licence
    licence = meta.get("license")
    if isinstance(licence, list):
        licence = ", ".join(str(x) for x in licence)
    if licence is None:
        return None
    licence = str(licence)
    name = meta.get("license_name")
    if licence == "other" and name:
        return str(name)
    return licence
