"""Many photos in one run: which files they are, what each one's outputs are called and where they go, all decided
before any model is loaded, so that a typo or a clash costs milliseconds and never a half-written batch.

Output names (``NAME`` in ``NAME_depth.npy`` ...), the same on every run for the same inputs:

1. a photo whose file stem no other input shares (case-insensitively: some file systems ignore case) keeps it:
   ``room.jpg`` -> ``room``;
2. photos sharing a stem but not an extension get the extension appended: ``a.jpg``, ``a.png`` -> ``a_jpg``, ``a_png``;
3. photos sharing the whole file name (from different folders) are numbered in input order: the first keeps the
   stem, the next get ``_2``, ``_3``, ...;
4. a name produced by 2 or 3 that another input already has (an input ``a_2.png`` beside two ``a.png``) is skipped for
   the next free number.

The same file given twice (directly and through its folder) is processed once.
"""

from __future__ import annotations

import os
import tempfile
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from .core.errors import OutputNotWritable
from .image_io import IMAGE_SUFFIXES, find_images


def collect_images(inputs: Sequence[str | os.PathLike[str]]) -> tuple[list[Path], list[tuple[str, str]]]:
    """Expand folders into their images (not recursively). Returns (images, [(input, problem), ...]): a missing
    file, a broken symbolic link (also one inside a folder), a folder without images."""
    images: list[Path] = []
    problems: list[tuple[str, str]] = []
    seen: set[Path] = set()

    def add(path: Path) -> None:
        key = path.resolve()
        if key not in seen:
            seen.add(key)
            images.append(path)

    for item in inputs:
        path = Path(item)
        if path.is_symlink() and not path.exists():
            problems.append((str(item), f"broken symbolic link (points to {os.readlink(path)})"))
        elif path.is_dir():
            found = find_images(path)
            broken = sorted(p for p in path.iterdir()
                            if p.suffix.lower() in IMAGE_SUFFIXES and p.is_symlink() and not p.exists())
            problems.extend((str(p), f"broken symbolic link (points to {os.readlink(p)})") for p in broken)
            if not found and not broken:
                problems.append((str(item), f"folder has no images ({', '.join(IMAGE_SUFFIXES)})"))
            for image in found:
                add(image)
        elif path.exists():
            add(path)
        else:
            problems.append((str(item), "file not found"))
    return images, problems


def output_names(images: Sequence[Path]) -> list[str]:
    """One distinct output name per image, by the rules in this module's docstring."""
    stems = Counter(p.stem.lower() for p in images)
    names_with_suffix = Counter(p.name.lower() for p in images)
    taken = {p.stem.lower() for p in images}  # every input's own stem is reserved for it
    names: list[str] = []
    used: set[str] = set()
    for path in images:
        stem = path.stem
        if stems[stem.lower()] == 1:
            name = stem
        elif names_with_suffix[path.name.lower()] == 1:
            name = f"{stem}_{path.suffix.lstrip('.').lower()}" if path.suffix else stem
            if name.lower() in taken or name.lower() in used:
                name = _next_free(stem, taken | used)
        elif stem.lower() not in used:
            name = stem  # the first of several with this file name keeps the stem
        else:
            name = _next_free(stem, taken | used)
        used.add(name.lower())
        names.append(name)
    return names


def _next_free(stem: str, taken: set[str]) -> str:
    n = 2
    while f"{stem}_{n}".lower() in taken:
        n += 1
    return f"{stem}_{n}"


def check_output_dir(out_dir: str | os.PathLike[str], inputs: Sequence[str | os.PathLike[str]]) -> Path:
    """Create ``out_dir`` if needed and prove it writable; refuse an input folder (its PNG outputs would be read
    back as photos by the next run). Raises OutputNotWritable naming the folder."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise OutputNotWritable(f"--out {out}: is a file, not a folder")
    for item in inputs:
        if Path(item).is_dir() and out.resolve() == Path(item).resolve():
            raise OutputNotWritable(
                f"--out {out}: is also an input folder; the next run would read its PNG outputs as photos. "
                "Choose another output folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=out, prefix=".metricgold-write-test-")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise OutputNotWritable(f"--out {out}: cannot create the folder or write to it ({exc.strerror or exc})") from None
    return out
