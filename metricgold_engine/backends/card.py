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


#: Published weights whose model card metadata is missing, or less strict than what the authors state: the Depth
#: Anything V2 authors release the Small weights under Apache-2.0 and the Base/Large ones under CC-BY-NC-4.0
#: (non-commercial), while the -hf cards carry no licence (Small, Base) or apache-2.0 (Large).
AUTHORS_LICENCES = {
    **{f"depth-anything/Depth-Anything-V2-Metric-{scene}-Small-hf": "apache-2.0" for scene in ("Indoor", "Outdoor")},
    **{f"depth-anything/Depth-Anything-V2-Metric-{scene}-{size}-hf": "cc-by-nc-4.0"
       for scene in ("Indoor", "Outdoor") for size in ("Base", "Large")},
}


def licence_for(name: str, card_licence: str | None) -> str | None:
    """The licence to show for a model loaded as ``name``: the card's, unless the authors state another for these
    published weights (then theirs, saying what the card says)."""
    authors = AUTHORS_LICENCES.get(name)
    if authors is None or authors == card_licence:
        return card_licence
    card = f"the model card says {card_licence}" if card_licence else "the model card names none"
    return f"{authors} (per the Depth Anything V2 authors; {card})"
