"""What changed in a folder data set between a baseline revision and the workspace, per class: the
"Data" section of `python -m pipeline report`.

Compared, per picture: every file of data.folder at the baseline – git's blob ids when git tracks
the pictures (`git ls-tree`), else DVC's MD5s (the `.dir` object of `<folder>.dvc` or of the
download stage's dep in the baseline's dvc.lock, from DVC's cache; `dvc fetch <rev>` brings a
missing one) – against the same hash of every file in the workspace's folder: a picture added,
removed or edited (moved to another class: removed from one, added to the other) counts in its
class. When neither is at hand, the decoded pictures' paths (files.json of the baseline's data/raw
in the cache, and of the workspace's): added and removed only. Per class and split, the pictures
the download stage decoded (report.json on both sides), and its folder digest.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from pipeline.core import paths
from pipeline.core.errors import PipelineError
from pipeline.core.images import SUFFIXES
from pipeline.core.repo import git
from pipeline.core.yamlio import read_yaml

SPLITS = ("train", "val", "test")


def cached(md5: str | None) -> bytes | None:
    """The content of DVC cache object `md5` (DVC 3's files/md5/ layout, or DVC 2's), or None."""
    if not md5:
        return None
    cache = paths.project_root() / ".dvc" / "cache"
    for path in (cache / "files" / "md5" / md5[:2] / md5[2:], cache / md5[:2] / md5[2:]):
        if path.is_file():
            return path.read_bytes()
    return None


def listing(md5: str | None) -> dict[str, str] | None:
    """A cached `.dir` object as {relative path: MD5}, or None."""
    data = cached(md5)
    try:
        return {e["relpath"]: e["md5"] for e in json.loads(data)} if data else None
    except (ValueError, KeyError, TypeError):
        return None


def download_stage(lock_text: str | None) -> dict[str, Any]:
    """The download stage of a dvc.lock's text ({} when there is none)."""
    try:
        lock = read_yaml(lock_text, "dvc.lock") if lock_text else None
        return lock["stages"]["download"] if isinstance(lock, dict) else {}
    except (KeyError, TypeError, PipelineError):  # a damaged lock reads as no record
        return {}


def entry(stage: dict[str, Any], kind: str, path: str) -> str | None:
    """The MD5 a stage's deps/outs record for `path`."""
    for item in stage.get(kind, []) or []:
        if isinstance(item, dict) and item.get("path") == path:
            return item.get("md5")
    return None


def class_of(relpath: str) -> str:
    """The class folder of a picture's path inside data.folder (or inside data/raw/folder's split
    layout)."""
    parts = relpath.split("/")
    return parts[1] if parts[0] in SPLITS and len(parts) > 2 else parts[0]


def raw_file(stage: dict[str, Any], rel: str) -> bytes | None:
    """A file of the baseline's data/raw (e.g. folder/report.json), from DVC's cache."""
    files = listing(entry(stage, "outs", str(paths.RAW)))
    return cached(files.get(rel)) if files else None


def picture_paths(read: Any) -> dict[str, str] | None:
    """{split/path: ""} of the decoded pictures, from files.json of each split; `read(rel)` gives
    a file of data/raw (bytes or None)."""
    out: dict[str, str] = {}
    for split in SPLITS:
        data = read(f"folder/{split}/files.json")
        if data:
            out.update({f"{split}/{p}": "" for p in json.loads(data)})
    return out or None


def git_listing(rev: str, folder: str) -> dict[str, str] | None:
    """{path inside `folder`: git blob id} of the pictures git tracks there at `rev`, or None."""
    out = git("ls-tree", "-r", "-z", rev, "--", f"{folder.rstrip('/')}/", check=False)
    found = {}
    for item in filter(None, out.split("\0")):
        meta, _, path = item.partition("\t")
        found[path.removeprefix(f"{folder.rstrip('/')}/")] = meta.split()[2]
    return found or None


def dvc_listing(rev: str, folder: str, stage: dict[str, Any]) -> dict[str, str] | None:
    """{path inside `folder`: MD5} from DVC at `rev`: `<folder>.dvc` (dvc add) or the download
    stage's dep in dvc.lock, its `.dir` object read from the cache; None when not cached."""
    text = git("show", f"{rev}:{folder.rstrip('/')}.dvc", check=False)
    try:
        outs = read_yaml(text, f"{folder}.dvc").get("outs", []) if text else []
        md5 = next((o.get("md5") for o in outs if isinstance(o, dict)), None)
    except (AttributeError, TypeError, PipelineError):
        md5 = None
    return listing(md5 or entry(stage, "deps", folder))


def workspace_listing(folder: str, kind: str) -> dict[str, str]:
    """{path inside `folder`: git blob id or MD5 (`kind`)} of every file in the workspace's
    folder, hashed here as git or DVC would."""
    import hashlib

    root = paths.project_root() / folder
    out = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        data = path.read_bytes()
        digest = (
            hashlib.sha1(b"blob %d\0" % len(data) + data) if kind == "git" else hashlib.md5(data)
        )
        out[path.relative_to(root).as_posix()] = digest.hexdigest()
    return out


def picture_listings(
    baseline: str, folder: str, stage: dict[str, Any]
) -> tuple[dict[str, str], dict[str, str], str] | None:
    """(baseline's pictures, the workspace's, what was compared), each {path: hash}; None when
    the baseline's pictures are neither in git nor in DVC's cache."""
    if not folder:
        return None
    old = git_listing(baseline, folder)
    if old is not None:
        how = f"every file of `{folder}` at `{baseline}` (git's blob ids) and in the workspace"
        return old, workspace_listing(folder, "git"), how
    old = dvc_listing(baseline, folder, stage)
    if old is not None:
        how = f"every file of `{folder}` at `{baseline}` (DVC's MD5s, from its cache) and now"
        return old, workspace_listing(folder, "md5"), how
    return None


def changes(old: dict[str, str], new: dict[str, str]) -> dict[str, Counter]:
    """Per class: pictures added, removed, edited (same path, other hash)."""
    out: dict[str, Counter] = {}
    for rel in old.keys() | new.keys():
        if "/" not in rel or Path(rel).suffix.lower() not in SUFFIXES:
            continue  # a text file beside the class folders is no picture
        kind = "added" if rel not in old else "removed" if rel not in new else None
        if kind is None and old[rel] != new[rel]:
            kind = "edited"
        if kind:
            out.setdefault(class_of(rel), Counter())[kind] += 1
    return out


def section(baseline: str, folder: str, per_class: dict[str, dict[str, Any]]) -> list[str]:
    """The report's Markdown lines on the data: per class, pictures changed, counts per split on
    both sides, and the test accuracy's change (`per_class`: `dvc metrics diff` entries)."""
    old_stage = download_stage(git("show", f"{baseline}:dvc.lock", check=False) or None)
    ws = paths.project_root() / paths.RAW

    def read_ws(rel: str) -> bytes | None:
        return (ws / rel).read_bytes() if (ws / rel).is_file() else None

    reports = [raw_file(old_stage, "folder/report.json"), read_ws("folder/report.json")]
    lines = ["", "## Data", ""]
    if not all(reports):
        return [
            *lines,
            "No folder data set on both sides (`data/raw/folder/report.json` of the baseline "
            "from DVC's cache, of the workspace): nothing to compare per picture.",
        ]
    old_report, new_report = (json.loads(r) for r in reports)
    found = picture_listings(baseline, folder, old_stage)
    if found is None:
        found = (
            picture_paths(lambda r: raw_file(old_stage, r)) or {},
            picture_paths(read_ws) or {},
            "the decoded pictures' paths (data/raw's files.json; edits in place are not seen)",
        )
    if old_report.get("digest") == new_report.get("digest"):
        return [*lines, f"The same pictures (folder digest `{str(new_report['digest'])[:12]}`)."]
    moved = changes(found[0], found[1]) if found[0] and found[1] else {}
    how = found[2] if found[0] and found[1] else "no listing of the baseline's pictures"
    lines += [
        f"Folder digest `{str(old_report.get('digest'))[:12]}` → "
        f"`{str(new_report.get('digest'))[:12]}`. Compared: {how}, and report.json's pictures "
        "per class.",
        "",
        f"| class | added | removed | edited | train `{baseline}` → workspace "
        f"| test `{baseline}` → workspace | test accuracy `{baseline}` → workspace |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for cls in sorted(set(old_report["classes"]) | set(new_report["classes"])):
        counts = [
            " → ".join(
                str(r["splits"].get(s, {}).get("per_class", {}).get(cls, 0))
                for r in (old_report, new_report)
            )
            for s in ("train", "test")
        ]
        acc = per_class.get(cls, {})
        accuracy = " → ".join(
            "–" if acc.get(k) is None else f"{acc[k]:.4f}" for k in ("old", "new")
        )
        c = moved.get(cls, Counter())
        lines.append(
            f"| {cls} | {c['added']} | {c['removed']} | {c['edited']} | {counts[0]} | {counts[1]} "
            f"| {accuracy} |"
        )
    return lines
