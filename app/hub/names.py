"""Names from the network, made safe to use as paths, and GGUF file names read as models.

A repo id or file name comes from a server Tandem does not control: a name with `..`, an absolute
path or a backslash once became an arbitrary file write in another local model runner (a digest
turned into a path). Every name is checked here before it touches the disk, and the final path is
checked to lie inside the models folder after symlinks are resolved.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from tandem.app.errors import InvalidRequest

REPO_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
FILE_PART = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._ +()\[\]-]{0,199}$")
SPLIT = re.compile(r"^(?P<stem>.+)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf$", re.IGNORECASE)
# Quant names as llama.cpp and the quantizers that publish on the hub write them.
QUANT = re.compile(
    r"(?<![A-Za-z0-9])(I?Q[1-8]_(?:K_(?:XXS|XS|S|M|L|XL)|K|[01]|NL|XXS|XS|S|M)|IQ[1-4]_(?:XXS|XS|S|M|NL)|"
    r"Q[1-8](?:_0|_1)?|F16|BF16|F32|FP16|TQ[12]_0|MXFP4)(?![A-Za-z0-9])",
    re.IGNORECASE,
)


class UnsafeName(InvalidRequest):
    code = "unsafe_name"


def check_repo_id(repo_id: str) -> tuple[str, str]:
    """(owner, name) of a hub repo id, or UnsafeName saying what is wrong with it."""
    parts = repo_id.split("/") if isinstance(repo_id, str) else []
    if len(parts) != 2 or not all(REPO_PART.match(p) and p not in (".", "..") and ".." not in p for p in parts):
        raise UnsafeName(
            f"{repo_id!r} is not a Hugging Face repo id. Write it as owner/name, e.g. "
            "bartowski/Llama-3.2-1B-Instruct-GGUF (letters, digits, '.', '_' and '-' only)."
        )
    return parts[0], parts[1]


def check_file_name(name: str) -> PurePosixPath:
    """A repo file name as a relative path (subfolders allowed, each part checked)."""
    if not isinstance(name, str) or not name or "\\" in name or "\x00" in name or name.startswith("/"):
        raise UnsafeName(f"The hub named a file {name!r}, which is not a safe file name; Tandem refused it.")
    parts = name.split("/")
    if len(parts) > 4 or any(p in ("", ".", "..") or not FILE_PART.match(p) for p in parts):
        raise UnsafeName(f"The hub named a file {name!r}, which is not a safe file name; Tandem refused it.")
    return PurePosixPath(*parts)


def safe_path(root: Path, *names: str | PurePosixPath) -> Path:
    """root/names... after checking that, with symlinks resolved, it stays inside root."""
    base = root.resolve()
    target = base.joinpath(*[str(n) for n in names])
    resolved = target.resolve()  # follows any symlink already on disk
    if resolved != base and base not in resolved.parents:
        raise UnsafeName(f"{target} leads outside the models folder {base}; Tandem refused to write there.")
    return target


def quant_of(file_name: str) -> str | None:
    """The quantization a file name states ('Llama-3.2-1B-Instruct-Q4_K_M.gguf' -> 'Q4_K_M')."""
    stem = PurePosixPath(file_name).name
    found = QUANT.findall(stem)
    if not found:
        return None
    q = found[-1].upper()
    return "F16" if q == "FP16" else q


def split_info(file_name: str) -> tuple[str, int, int] | None:
    """(stem, part number, part count) of a split file ('x-00001-of-00003.gguf'), else None."""
    m = SPLIT.match(PurePosixPath(file_name).name)
    if not m:
        return None
    return m["stem"], int(m["no"]), int(m["count"])


@dataclass
class RemoteFile:
    name: str  # path in the repo
    size: int | None
    sha256: str | None  # the LFS object id: the SHA-256 of the content


@dataclass
class RemoteModel:
    """One downloadable model of a repo: a single GGUF, or all parts of a split one."""

    key: str  # the first part's name: how a model is named in a repo
    quant: str | None
    files: list[RemoteFile] = field(default_factory=list)
    complete: bool = True  # every part of a split model is listed

    @property
    def size(self) -> int:
        return sum(f.size or 0 for f in self.files)

    def to_dict(self) -> dict:
        return {"key": self.key, "quant": self.quant, "size": self.size, "complete": self.complete,
                "parts": len(self.files), "files": [vars(f) for f in self.files]}


def group_models(files: list[RemoteFile]) -> list[RemoteModel]:
    """The GGUF models in a repo's file list: split parts joined, projectors (mmproj) left out."""
    singles, splits = [], {}
    for f in files:
        base = PurePosixPath(f.name).name
        if not base.lower().endswith(".gguf") or "mmproj" in base.lower():
            continue
        s = split_info(f.name)
        if s is None:
            singles.append(RemoteModel(f.name, quant_of(f.name), [f]))
        else:
            stem, no, count = s
            key = (str(PurePosixPath(f.name).parent / stem), count)
            splits.setdefault(key, {})[no] = f
    out = singles
    for (stem, count), parts in splits.items():
        ordered = [parts[i] for i in sorted(parts)]
        model = RemoteModel(ordered[0].name, quant_of(ordered[0].name), ordered,
                            complete=sorted(parts) == list(range(1, count + 1)))
        out.append(model)
    out.sort(key=lambda m: (m.size, m.key))
    return out


def find_model(models: list[RemoteModel], wanted: str | None) -> RemoteModel:
    """The model a person named after REPO: (a quant like Q4_K_M, or a file name); None: ask."""
    if not models:
        raise InvalidRequest("This repo has no GGUF files; Tandem runs GGUF models. Search with `tandem search`.")
    if wanted is None:
        raise InvalidRequest("Name the file or quant to download: " + ", ".join(
            f"{m.quant or m.key}" for m in models) + ".")
    w = wanted.lower()
    exact = [m for m in models if w in (m.key.lower(), PurePosixPath(m.key).name.lower())
             or any(w == f.name.lower() for f in m.files)]
    if exact:
        return exact[0]
    by_quant = [m for m in models if m.quant and m.quant.lower() == w]
    if len(by_quant) == 1:
        return by_quant[0]
    if len(by_quant) > 1:
        raise InvalidRequest(f"{wanted} names several files: {', '.join(m.key for m in by_quant)}; give the file name.")
    have = ", ".join(sorted({m.quant or m.key for m in models}))
    raise InvalidRequest(f"No GGUF file in this repo matches {wanted!r}. It has: {have}.")


def slug(text: str) -> str:
    s = re.sub(r"[^a-z0-9_]+", "-", text.lower()).strip("-")
    return s or "model"


def unique_id(bases: list[str], path: str, taken: dict[str, str]) -> str:
    """The first id of `bases` not used by another model (taken: id -> path), else base-2, base-3...

    The built-in model's id is always taken: it is registered again at every start, and would
    overwrite a downloaded model that had its id.
    """
    from tandem.runtime.embedded import MODEL_ID

    taken = {**taken, MODEL_ID: taken.get(MODEL_ID, "<built-in>")}
    for candidate in [*bases, *(f"{bases[0]}-{i}" for i in range(2, 1000))]:
        if candidate not in taken or taken[candidate] == path:
            return candidate
    raise InvalidRequest(f"Too many models named {bases[0]}; remove some with `tandem rm`.")
