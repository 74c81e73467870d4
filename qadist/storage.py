"""URIs -> pyarrow filesystems (local paths, file://, s3://), atomic writes, conditional commits.

S3 settings come from the standard AWS environment: AWS_ENDPOINT_URL (or AWS_ENDPOINT_URL_S3) for
an S3-compatible server, AWS_REGION / AWS_DEFAULT_REGION, and credentials from the usual chain.
Filesystems are built where they are used (never pickled to Ray workers: pyarrow's S3FileSystem
loses its retry strategy when pickled).
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading
import uuid
from urllib.parse import urlparse

import pyarrow.fs as pafs

from qadist.errors import UserError

S3_RETRIES = 10  # attempts per request (boto3 and pyarrow); AWS_MAX_ATTEMPTS overrides it


def s3_attempts() -> int:
    """Attempts per S3 request: transient errors (500, 503 SlowDown, dropped connections) are retried
    with jittered exponential backoff by both clients; 4xx errors are not. Read per call, so a Ray
    worker uses its own environment."""
    return max(1, int(os.environ.get("AWS_MAX_ATTEMPTS") or S3_RETRIES))


def is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


def s3_endpoint() -> str | None:
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")


def s3_region() -> str:
    # Always pass a region: without one pyarrow calls real AWS to resolve the bucket's region.
    return os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"


def s3_filesystem() -> pafs.S3FileSystem:
    kwargs: dict = {
        "region": s3_region(),
        "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=s3_attempts()),
    }
    endpoint = s3_endpoint()
    if endpoint:
        parsed = urlparse(endpoint)
        kwargs["endpoint_override"] = parsed.netloc or parsed.path
        kwargs["scheme"] = parsed.scheme or "https"
    return pafs.S3FileSystem(**kwargs)


def resolve(uri: str) -> tuple[pafs.FileSystem, str]:
    """A URI -> (filesystem, path inside it)."""
    if is_s3(uri):
        return s3_filesystem(), uri[len("s3://") :].rstrip("/")
    if uri.startswith("file://"):
        uri = uri[len("file://") :]
    return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(uri))


def join(uri: str, *parts: str) -> str:
    out = uri.rstrip("/")
    for part in parts:
        out = f"{out}/{part.strip('/')}"
    return out


def basename(uri: str) -> str:
    return uri.rstrip("/").rsplit("/", 1)[-1]


def file_type(uri: str) -> pafs.FileType:
    fs, path = resolve(uri)
    return fs.get_file_info(path).type


def exists(uri: str) -> bool:
    return file_type(uri) != pafs.FileType.NotFound


def list_files(uri: str, suffixes: tuple[str, ...] = ()) -> list[str]:
    """The file itself, or every file under a folder/prefix ending in one of `suffixes`, sorted.

    Hidden and underscore-prefixed names (`_manifest.json`, `.tmp-*`) are skipped in folders.
    """
    return [f["uri"] for f in list_sizes(uri, suffixes)]


def list_sizes(uri: str, suffixes: tuple[str, ...] = ()) -> list[dict]:
    """`list_files` with each file's size, from the same listing: [{"uri", "size"}], no request per file."""
    fs, path = resolve(uri)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.File:
        return [{"uri": uri, "size": info.size}]
    if info.type == pafs.FileType.NotFound:
        raise UserError(f"{uri}: no such file or folder; check the path (and AWS_ENDPOINT_URL for s3://)")
    found = fs.get_file_info(pafs.FileSelector(path, recursive=True))
    prefix = uri.rstrip("/")
    out = []
    for f in found:
        rel = f.path[len(path) :].lstrip("/")
        if f.type != pafs.FileType.File or any(p.startswith((".", "_")) for p in rel.split("/")):
            continue
        if suffixes and not rel.endswith(suffixes):
            continue
        out.append({"uri": f"{prefix}/{rel}", "size": f.size})
    return sorted(out, key=lambda f: f["uri"])


def list_folder(uri: str) -> list[tuple[str, int, float]]:
    """(name, size, modified time in seconds) of the files directly in a folder/prefix, in one listing
    (one request per 1,000 keys on S3; no request per file); [] when there is none."""
    fs, path = resolve(uri)
    infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    return sorted(
        (i.path.rsplit("/", 1)[-1], i.size or 0, i.mtime.timestamp() if i.mtime else 0.0)
        for i in infos
        if i.type == pafs.FileType.File
    )


def modified(uri: str) -> float:
    """When the store says the object was last written (seconds; S3: whole seconds)."""
    fs, path = resolve(uri)
    info = fs.get_file_info(path)
    assert info.mtime is not None, uri
    return info.mtime.timestamp()


def list_names(uri: str, prefix: str, start_after: str = "") -> list[str]:
    """The names of the files directly in a folder/prefix that start with `prefix` and sort after
    `start_after`, sorted: on S3 one request per 1,000 of *those* keys (`StartAfter`), so a reader that
    knows where its history's tail begins never lists the history."""
    if not is_s3(uri):
        _, path = resolve(uri)
        try:
            with os.scandir(path) as entries:  # names only: no stat per file
                names = [e.name for e in entries if e.name.startswith(prefix) and e.name > start_after and e.is_file()]
            return sorted(names)
        except FileNotFoundError:
            return []
    bucket, key = split_s3(uri)
    key = key.rstrip("/") + "/" if key else ""
    pages = (
        s3_client()
        .get_paginator("list_objects_v2")
        .paginate(
            Bucket=bucket, Prefix=key + prefix, StartAfter=key + start_after if start_after else "", Delimiter="/"
        )
    )
    return sorted(o["Key"][len(key) :] for page in pages for o in page.get("Contents", []))


def read_bytes(uri: str) -> bytes:
    """A whole object in one read (S3: one GET through boto3; pyarrow's input streams took several times
    longer for objects of megabytes, on S3 and locally)."""
    data = read_if_exists(uri)
    if data is None:
        raise UserError(f"{uri}: no such file; check the path (and AWS_ENDPOINT_URL for s3://)")
    return data


def read_if_exists(uri: str) -> bytes | None:
    """A whole object, or None when there is none."""
    if is_s3(uri):
        bucket, key = split_s3(uri)
        client = s3_client()
        try:
            return client.get_object(Bucket=bucket, Key=key)["Body"].read()
        except client.exceptions.NoSuchKey:
            return None
    _, path = resolve(uri)
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        return None


def read_text(uri: str) -> str:
    return read_bytes(uri).decode("utf-8")


def write_bytes(uri: str, data: bytes) -> None:
    """Write a whole object so that readers see the old content or the new, never a part.

    Local: a temporary file beside the target, then an atomic rename. S3: a single PUT is atomic.
    """
    if is_s3(uri):
        bucket, key = split_s3(uri)
        s3_client().put_object(Bucket=bucket, Key=key, Body=data)
        return
    _, path = resolve(uri)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = os.path.join(os.path.dirname(path), f".tmp-{uuid.uuid4().hex}-{os.path.basename(path)}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        # A failed write (disk full, interrupt) must not leave a temporary file behind.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_if_absent(uri: str, data: bytes) -> bool:
    """Create the object only if nothing is there yet (a commit point). True if this call created it.

    Local: link(2) of a complete temporary file fails if the target exists. S3: a conditional PUT
    (If-None-Match: *), answered 412 when the object exists.
    """
    if is_s3(uri):
        from botocore.exceptions import ClientError

        bucket, key = split_s3(uri)
        try:
            s3_client().put_object(Bucket=bucket, Key=key, Body=data, IfNoneMatch="*")
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("PreconditionFailed", "412", "ConditionalRequestConflict"):
                return False
            raise
        return True
    _, path = resolve(uri)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = os.path.join(os.path.dirname(path), f".tmp-{uuid.uuid4().hex}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def delete(uri: str) -> None:
    """Delete a file or a folder (a prefix on S3); nothing when it is absent."""
    fs, path = resolve(uri)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.Directory:
        fs.delete_dir(path)
    elif info.type == pafs.FileType.File and is_s3(uri):
        # boto3: pyarrow's delete_file would put an empty "folder/" marker object in the file's place.
        bucket, key = split_s3(uri)
        s3_client().delete_object(Bucket=bucket, Key=key)
    elif info.type == pafs.FileType.File:
        with contextlib.suppress(FileNotFoundError):  # deleted by someone else since the look
            fs.delete_file(path)


def makedirs(uri: str) -> None:
    if not is_s3(uri):
        fs, path = resolve(uri)
        fs.create_dir(path, recursive=True)


def split_s3(uri: str) -> tuple[str, str]:
    bucket, _, key = uri[len("s3://") :].partition("/")
    return bucket, key


AWS_SETTINGS = ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_MAX_ATTEMPTS")  # fmt: skip


def s3_client():
    """A boto3 S3 client for the standard AWS environment (boto3 reads AWS_ENDPOINT_URL itself): one per
    process and settings, reused (building one costs more than a request; clients are thread-safe)."""
    with _CLIENT_LOCK:  # (boto3 builds clients from one shared session: not thread-safe)
        return _client(os.getpid(), tuple(os.environ.get(k) for k in AWS_SETTINGS))


_CLIENT_LOCK = threading.Lock()


@functools.lru_cache(maxsize=8)
def _client(pid: int, settings: tuple):
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        region_name=s3_region(),
        endpoint_url=s3_endpoint(),
        config=Config(retries={"total_max_attempts": s3_attempts(), "mode": "standard"}),
    )


def check_s3_access(uri: str, flag: str) -> None:
    """Fail fast, before any work, when an s3:// URI's bucket is missing or the credentials are refused
    (errors that no retry fixes); a UserError naming the URI and the flag. No-op for local paths."""
    if not is_s3(uri):
        return
    from botocore.exceptions import ClientError, NoCredentialsError

    bucket, _ = split_s3(uri)
    try:
        s3_client().head_bucket(Bucket=bucket)
    except NoCredentialsError as e:
        raise UserError(
            f"{uri} ({flag}): no AWS credentials found; set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, "
            "AWS_PROFILE or an instance role"
        ) from e
    except ClientError as e:
        code = str(e.response.get("Error", {}).get("Code"))
        if code in ("404", "NoSuchBucket"):
            raise UserError(f"{uri} ({flag}): bucket {bucket!r} does not exist; create it or fix {flag}") from e
        if code in (
            "403",
            "AccessDenied",
            "InvalidAccessKeyId",
            "SignatureDoesNotMatch",
            "ExpiredToken",
            "InvalidToken",
        ):
            raise UserError(
                f"{uri} ({flag}): access denied ({code}); check the AWS credentials and the bucket policy"
            ) from e
        raise
