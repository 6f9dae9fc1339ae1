"""What a local image folder holds, as ``datasets``' imagefolder reads it: which folders hold
images, at which depth below the root; why it found no class labels; which folders beside the
class folders hold no image (and so are no class).

imagefolder (datasets.packaged_modules.folder_based_builder) names an image's class after the
folder that holds it, and only when every image it reads, over all splits, lies at the same depth
and those folders have at least two names. Split folders (train/, validation/, test/ and their
aliases such as val/) are found at any depth; when there are any, files outside them are not
read. A folder without images makes no class, so an empty ``train/zebra/`` is simply not there.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from datasets.data_files import DataFilesDict, get_data_patterns
from datasets.packaged_modules.imagefolder.imagefolder import ImageFolder

MAX_LISTED = 10  # folders a message lists
EXPECTED = (
    "Expected one subfolder per class, at least two, named after the classes and holding the "
    "images directly, either directly under the root (cat/1.png, dog/2.png) or under split "
    "folders (train/cat/1.png, validation/cat/3.png, test/...)"
)


def depth(folder: str) -> int:
    """Levels below the root of a folder relative to it ('.' is 0, 'train/cat' is 2)."""
    return len(PurePosixPath(folder).parts) if folder != "." else 0


@dataclass(frozen=True)
class FolderImages:
    """The image files under a dataset root, counted by the folder (relative to the root, '.'
    for itself) that holds them: those imagefolder reads, and those it does not (outside the
    split folders, when there are any)."""

    read: Counter
    unread: Counter

    @property
    def depths(self) -> list[int]:
        return sorted({depth(folder) for folder in self.read})


def is_image(path: str) -> bool:
    return Path(path).suffix.lower() in ImageFolder.EXTENSIONS


def hidden(path: Path, root: Path) -> bool:
    """A path that imagefolder skips: one of its parts below the root starts with '.' or '__'."""
    return any(part.startswith((".", "__")) for part in path.relative_to(root).parts)


def folder_images(folder: str) -> FolderImages:
    """The image files ``datasets.load_dataset(folder)`` reads (found by the split patterns it
    uses), and the other image files under the folder, by the folder that holds them."""
    root = Path(folder).expanduser().resolve()
    resolved = DataFilesDict.from_patterns(get_data_patterns(str(root)), base_path=str(root))
    read = {Path(f).resolve() for files in resolved.values() for f in files if is_image(str(f))}
    every = {f for f in root.rglob("*") if f.is_file() and is_image(f.name) and not hidden(f, root)}

    def by_folder(files: Iterable[Path]) -> Counter:
        return Counter(f.parent.relative_to(root).as_posix() for f in files)

    return FolderImages(by_folder(read), by_folder(every - read))


def listing(counts: Counter) -> str:
    """Each folder with its depth and image count ("'train/cat' (depth 2): 3 image(s)"), by
    depth, then name."""
    folders = sorted(counts, key=lambda f: (depth(f), f))
    return listed([f"{f!r} (depth {depth(f)}): {counts[f]} image(s)" for f in folders])


def listed(items: Sequence[str]) -> str:
    """The first MAX_LISTED items, comma-separated, and how many more."""
    more = f" and {len(items) - MAX_LISTED} more" if len(items) > MAX_LISTED else ""
    return ", ".join(items[:MAX_LISTED]) + more


def why_unlabelled(images: FolderImages) -> str:
    """Why imagefolder read no class labels from these images, in its own terms."""
    if len(images.depths) > 1:
        return (
            f"its images lie at {len(images.depths)} different depths below the root "
            f"({', '.join(map(str, images.depths))}), and imagefolder names classes after "
            "folders only when every image lies at the same depth"
        )
    if images.depths == [0]:
        return "its images lie directly in the root, in no class folder"
    names = sorted({PurePosixPath(f).name for f in images.read})
    return (
        f"every image lies in a folder named {names[0]!r}: one class, and imagefolder names "
        "classes after folders only when there are at least two names"
    )


def unlabelled_folder_error(dataset: str) -> str | None:
    """The message for an image folder that imagefolder read without class labels: why, which
    folders hold images at which depth, what is expected. None when it holds no image."""
    images = folder_images(dataset)
    if not images.read:
        return None
    unread = (
        f"; not read, being outside the split folders: {listing(images.unread)}"
        if images.unread
        else ""
    )
    return (
        f"dataset={dataset!r} is an image folder without class labels: {why_unlabelled(images)}. "
        "Folders holding images (relative to the root, with their depth below it): "
        f"{listing(images.read)}{unread}. {EXPECTED}; to predict on unlabelled images, pass "
        "them as predict_paths= instead"
    )


def empty_class_folders(dataset: str, image_paths: Iterable[str]) -> list[str]:
    """Folders (relative to the root) beside the class folders, those that hold the read
    ``image_paths``, that hold no image file themselves: imagefolder made no class of them.
    Hidden folders ('.x', '__x'), which imagefolder skips, are left out."""
    root = Path(dataset).expanduser().resolve()
    class_folders = {Path(p).resolve().parent for p in image_paths}
    class_folders = {f for f in class_folders if f.is_relative_to(root) and f != root}
    empty = set()
    for parent in {f.parent for f in class_folders}:
        for child in parent.iterdir():
            if not child.is_dir() or child in class_folders or child.name.startswith((".", "__")):
                continue
            if not any(f.is_file() and is_image(f.name) for f in child.rglob("*")):
                empty.add(child.relative_to(root).as_posix())
    return sorted(empty)


def empty_folders_line(dataset: str, empty: Sequence[str], classes: Sequence[str]) -> str | None:
    """One line on the ``empty`` folders of an image folder whose classes are ``classes``: the
    ones named like no class are not classes; the others are classes with no images there."""
    if not empty:
        return None
    not_classes = [f for f in empty if PurePosixPath(f).name not in classes]
    parts = []
    if not_classes:
        named = listed([repr(f) for f in not_classes])
        parts.append(f"{len(not_classes)} empty folder(s) are not classes: {named}")
    parts += [
        f"{f!r} is empty, so class {PurePosixPath(f).name!r} has no images there"
        for f in empty
        if f not in not_classes
    ][:MAX_LISTED]
    return (
        f"image folder {dataset!r}: {'; '.join(parts)} (imagefolder makes classes only of the "
        f"folders that hold images; the {len(classes)} classes: {listed(list(classes))})"
    )
