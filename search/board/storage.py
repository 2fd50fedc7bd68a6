"""Checkpoints and files under --storage, a local folder or a URI (s3://, gs://, whatever pyarrow's filesystems take).

    uri = storage_uri("s3://leuk/tune", "leuk/tune/s3smoke/run_trial_.../checkpoint_000001")  # Tune's path -> URI
    exists(uri, "checkpoint.pt")         # through the filesystem Tune wrote with
    folder = local_copy(uri)             # a local folder: the path itself, or a copy fetched once into the cache
    probe("s3://leuk/tune")              # pre-flight: None, or why the storage cannot be used (one line)

Tune hands back paths inside its filesystem (`leuk/tune/...`, no scheme); the rows keep the URI, made here. Every
download goes through pyarrow (no cloud SDK): credentials and endpoint come from the usual environment
(AWS_ACCESS_KEY_ID, AWS_ENDPOINT_URL, ...). A downloaded folder is cached under $LEUKTUNE_CACHE/storage/<hash of
the URI>/ and never fetched again (a checkpoint folder never changes once Tune wrote it).
"""
from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from pathlib import Path
from typing import Optional

import pyarrow.fs as pafs

CACHE_DIR = "storage"  # under the decode cache's home ($LEUKTUNE_CACHE or ~/.cache/leukemia-tune)
PROBE_FILE = ".leukemia-tune-probe"


def is_uri(location: Optional[str]) -> bool:
    return isinstance(location, str) and "://" in location


def filesystem(location: str) -> tuple[pafs.FileSystem, str]:
    """(pyarrow filesystem, path inside it) of a local path or a URI."""
    if not is_uri(location):
        return pafs.LocalFileSystem(), str(Path(location).expanduser().absolute())
    return pafs.FileSystem.from_uri(location)


def _split_query(uri: str) -> tuple[str, str]:
    """("s3://b/x", "?endpoint_override=...") of a URI with options, ("s3://b/x", "") without."""
    base, _, query = uri.partition("?")
    return base.rstrip("/"), f"?{query}" if query else ""


def storage_uri(storage: str, path: Optional[str]) -> Optional[str]:
    """The URI of `path`, a path Tune reported inside the filesystem of `storage`; a path that is already a URI, a
    local storage's path, or one outside `storage` is returned as it is."""
    if not path or not is_uri(storage) or is_uri(path):
        return path
    _, inner = filesystem(storage)
    inner, path = inner.rstrip("/"), str(path).rstrip("/")
    if path != inner and not path.startswith(inner + "/"):
        return path
    base, query = _split_query(storage)
    return f"{base}{path[len(inner):]}{query}"


def join(location: str, *parts: str) -> str:
    """`location`/parts..., keeping a URI's options (`?endpoint_override=...`) at its end."""
    base, query = _split_query(location) if is_uri(location) else (location.rstrip("/"), "")
    return "/".join([base, *parts]) + query


def exists(location: str, *parts: str) -> bool:
    """Whether the file `location`/parts... exists; False when the storage cannot be reached."""
    try:
        fs, inner = filesystem(join(location, *parts))
        return fs.get_file_info(inner).type == pafs.FileType.File
    except (OSError, ValueError):
        return False


def cache_root() -> Path:
    from leukmodels.data import default_cache_dir  # here: the data layer measured +0.1 s on the leaderboard's --help

    return default_cache_dir() / CACHE_DIR


def local_copy(location: str) -> str:
    """A local path holding what `location` holds (a file or a folder): a local path itself, a URI's copy in the
    cache (downloaded once: into a temporary folder, then renamed into place). FileNotFoundError naming the URI."""
    if not is_uri(location):
        return location
    fs, inner = filesystem(location)
    target = cache_root() / hashlib.sha256(location.encode()).hexdigest()[:24] / os.path.basename(inner.rstrip("/"))
    if target.exists():  # fetched before (what Tune wrote there never changes)
        return str(target)
    info = fs.get_file_info(inner)
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"{location}: no such file or folder in the storage")
    staging = target.parent / f".partial-{uuid.uuid4().hex}"
    staging.mkdir(parents=True, exist_ok=True)
    if info.type == pafs.FileType.Directory:
        (staging / target.name).mkdir()  # copy_files fills a folder but does not make it
    try:
        pafs.copy_files(inner, str(staging / target.name), source_filesystem=fs,
                        destination_filesystem=pafs.LocalFileSystem())
        os.replace(staging / target.name, target)  # a concurrent fetch of the same URI: either copy is whole
    except OSError:
        if not target.exists():
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return str(target)


def siblings(location: str) -> list[str]:
    """The URIs of the folders beside `location` (a trial's other checkpoint folders), sorted by name."""
    fs, inner = filesystem(location)
    parent = inner.rstrip("/").rsplit("/", 1)[0]
    base, query = _split_query(location)
    prefix = base[: len(base) - len(inner.rstrip("/"))]  # "s3://"
    found = fs.get_file_info(pafs.FileSelector(parent, allow_not_found=True))
    return sorted(f"{prefix}{info.path}{query}" for info in found if info.type == pafs.FileType.Directory)


def folder_name(location: str) -> str:
    """The last part of a path or URI ("checkpoint_000003" of ".../run_trial_x/checkpoint_000003/")."""
    return str(location).rstrip("/").rsplit("/", 1)[-1]


def delete_folder(location: str) -> None:
    """Remove the folder `location` (a path or a URI) and everything in it."""
    fs, inner = filesystem(location)
    fs.delete_dir(inner)


def upload(local: Path, location: str) -> None:
    """Copy the local file `local` to the file `location` (a folder path or a URI)."""
    fs, inner = filesystem(location)
    fs.create_dir(inner.rsplit("/", 1)[0], recursive=True)
    pafs.copy_files(str(local), inner, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)


def download(location: str, local: Path) -> bool:
    """Copy the file `location` to `local`; False when there is none."""
    fs, inner = filesystem(location)
    if fs.get_file_info(inner).type != pafs.FileType.File:
        return False
    local.parent.mkdir(parents=True, exist_ok=True)
    pafs.copy_files(inner, str(local), source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
    return True


# -- pre-flight ------------------------------------------------------------------------------------------------------
REASONS = (  # (text in pyarrow's / the AWS SDK's error, lower case without "_", what the user is told), in order:
    # the credential codes first, since their messages say "does not exist" too
    ("invalidaccesskeyid", "credentials rejected: unknown access key id"),
    ("signaturedoesnotmatch", "credentials rejected: wrong secret key"),
    ("expiredtoken", "credentials expired"), ("tokenrefreshrequired", "credentials expired"),
    ("no credentials", "no credentials"), ("unable to locate credentials", "no credentials"),
    ("couldn't connect", "endpoint unreachable"), ("connection refused", "endpoint unreachable"),
    ("curlcode: 6", "endpoint unreachable (host not found)"), ("curlcode: 7", "endpoint unreachable"),
    ("curlcode: 28", "endpoint unreachable (timed out)"), ("nosuchbucket", "bucket does not exist"),
    ("bucket does not exist", "bucket does not exist"), ("does not exist", "bucket does not exist"),
    ("accessdenied", "access denied (no write permission?)"), ("forbidden", "access denied (no write permission?)"))


def reason(error: BaseException) -> str:
    """A short reason for a storage error, from its text; else the error's first line."""
    text = str(error).lower().replace("_", "")  # pyarrow says INVALID_ACCESS_KEY_ID, boto InvalidAccessKeyId
    for needle, said in REASONS:
        if needle in text:
            return said
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return first[:200]


def _bucket_missing(fs: pafs.FileSystem, bucket: str) -> bool:
    """Whether `bucket` does not exist. A HEAD request's refusal carries no error code (no body): a wrong key, a
    wrong secret and a missing permission all read "access denied" there, so the probe's write names which."""
    try:
        return fs.get_file_info(bucket).type == pafs.FileType.NotFound
    except OSError as error:
        if reason(error).startswith("access denied"):
            return False
        raise


def probe(storage: str) -> Optional[str]:
    """Why `storage` (a URI) cannot hold a search, or None: its bucket is reached, and a small object is written,
    read back and deleted there (what Tune's first checkpoint will need)."""
    try:
        fs, inner = filesystem(storage)
        bucket = inner.split("/", 1)[0]
        if _bucket_missing(fs, bucket):
            return f"bucket {bucket!r} does not exist"
        target = f"{inner.rstrip('/')}/{PROBE_FILE}-{uuid.uuid4().hex[:8]}"
        with fs.open_output_stream(target) as out:
            out.write(b"leukemia-tune pre-flight")
        with fs.open_input_stream(target) as back:
            back.read()
        fs.delete_file(target)
    except (OSError, ValueError) as error:
        return reason(error)
    return None


__all__ = ["CACHE_DIR", "cache_root", "download", "exists", "filesystem", "is_uri", "join", "local_copy", "probe",
           "reason", "siblings", "storage_uri", "upload"]
