"""Where model versions live, and moving them there: a local directory, a mounted volume, or an object store.

A retrain writes its candidate to a local directory (`versions_dir`): the mounted model
store when `rollout.model_store_path` is set (a pvc:// store: the predictor reads the same
files), else `data_dir/models`. With an object store (`rollout.model_store_uri` such as
s3://, gs://, az://, any fsspec protocol, and no mount), a promoted version is uploaded to
`{model_store_uri}/{name}` (`publish`) and that URI is what its ModelVersion row records;
the next retrain, which starts from the active version, downloads it once into
`data_dir/cache/models` (`local_copy`). fsspec is the transfer layer, so credentials come
from the usual places (AWS_*/GOOGLE_APPLICATION_CREDENTIALS, the pod's workload identity).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from labeler.settings import LabelerConfig

# The file that marks a directory as a complete download (written last by `local_copy`).
COMPLETE = ".llava-labeler-complete"


class ModelStoreError(RuntimeError):
    """A version could not be uploaded to or fetched from the model store; the message says which and why."""


def versions_dir(settings: LabelerConfig) -> Path:
    """The local directory candidates are written to (absolute: other processes load the version's URI)."""
    return (settings.rollout.model_store_path or Path(settings.data_dir) / "models").resolve()


def check(settings: LabelerConfig) -> None:
    """Refuse, before hours of training, a store the versions could not reach."""
    if settings.rollout.model_store_uri.startswith("pvc://") and settings.rollout.model_store_path is None:
        raise ModelStoreError(
            f"the model store {settings.rollout.model_store_uri} is a volume: mount it and set rollout.model_store_path"
        )


def uploads(settings: LabelerConfig) -> bool:
    """Whether promoted versions go to an object store (a store URI and no local mount of it)."""
    return bool(settings.rollout.model_store_uri) and settings.rollout.model_store_path is None


def store_uri(settings: LabelerConfig, name: str) -> str:
    return f"{settings.rollout.model_store_uri.rstrip('/')}/{name}"


def publish(settings: LabelerConfig, local: Path, name: str) -> str:
    """Make `local` available as version `name`; the URI to record (the store's copy, or `local` itself)."""
    if not uploads(settings):
        return str(local)
    import fsspec

    target = store_uri(settings, name)
    try:
        fs, path = fsspec.core.url_to_fs(target)
        if fs.exists(path):
            raise ModelStoreError(f"{target} already exists in the model store; not overwriting a published version")
        fs.put(str(local), path, recursive=True)
    except ModelStoreError:
        raise
    except Exception as exc:  # fsspec backends raise their own types (botocore, google.api_core, OSError)
        raise ModelStoreError(f"uploading {local} to {target} failed: {type(exc).__name__}: {exc}") from exc
    return target


def is_remote(uri: str) -> bool:
    """A URI fsspec must fetch (s3://, gs://, file://, ...), as opposed to a local path or a hub id."""
    return "://" in uri


def local_copy(settings: LabelerConfig, uri: str) -> str:
    """A path training can load for `uri`: itself when local (or a hub id), else a cached download."""
    if not is_remote(uri):
        return uri
    import fsspec

    cache = Path(settings.data_dir).resolve() / "cache" / "models" / uri.rstrip("/").rsplit("/", 1)[-1]
    if (cache / COMPLETE).is_file():
        return str(cache)
    shutil.rmtree(cache, ignore_errors=True)
    try:
        fs, path = fsspec.core.url_to_fs(uri)
        if not fs.isdir(path):
            raise ModelStoreError(f"model version {uri} is not in the model store")
        cache.parent.mkdir(parents=True, exist_ok=True)
        fs.get(path.rstrip("/") + "/", str(cache), recursive=True)
    except ModelStoreError:
        raise
    except Exception as exc:
        raise ModelStoreError(f"downloading {uri} failed: {type(exc).__name__}: {exc}") from exc
    (cache / COMPLETE).write_text(uri + "\n")
    return str(cache)
