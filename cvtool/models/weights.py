"""Where published weights live on disk and how they get there: the standard caches of torch
(`$TORCH_HOME/hub/checkpoints/`) and of the Hugging Face Hub (`$HF_HOME/hub/`), filled once by
torch.hub's and huggingface_hub's own download code, read with no network afterwards.

Offline (`CVTOOL_OFFLINE=1` or `HF_HUB_OFFLINE=1`), or when a download fails, a missing file is
one line naming its URL and the path to put it at. Every network attempt is bounded in time.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from cvtool.errors import CvtoolError

OFFLINE_VARIABLES = ("CVTOOL_OFFLINE", "HF_HUB_OFFLINE")
# Seconds a connect or a read may stall: an unreachable host fails in this time instead of
# waiting for the OS's TCP timeout (minutes); a slow but live download keeps going.
NETWORK_TIMEOUT = 20.0
HF_FILENAMES = ("model.safetensors", "pytorch_model.bin")  # timm's hub files, preferred first


@dataclass(frozen=True)
class WeightsSpec:
    """Published (or local) weights for one architecture, resolved from `model.pretrained`."""

    source: str  # "file" | "torchvision" | "timm"
    arch: str
    name: str  # the resolved name: IMAGENET1K_V1, resnet18.a1_in1k, hf-hub:org/repo, or the file
    file: Path  # where the weights are, or are put when downloaded
    url: str | None = None
    repo: str | None = None  # a Hugging Face Hub repo (timm)
    hash_prefix: str | None = None  # torch.hub's check of the downloaded file
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    selector: str | None = None  # `cvtool weights fetch ARCH --weights <this>`; None: the arch's default

    def label(self) -> str:
        if self.source == "timm":
            return self.name if self.name.startswith("hf-hub:") else f"timm/{self.name}"
        return f"{self.arch} {self.name}" if self.source != "file" else str(self.file)

    def fetch_command(self) -> str:
        """The `cvtool weights fetch` command that caches exactly these weights."""
        return f"cvtool weights fetch {self.arch}" + (f" --weights {self.selector}" if self.selector else "")

    def record(self) -> dict[str, Any]:
        """What a checkpoint stores about the weights a run started from."""
        return {"source": self.source, "arch": self.arch, "name": self.name, "url": self.url, "file": str(self.file)}


def offline_variable() -> str | None:
    """The variable that switches downloads off (`CVTOOL_OFFLINE=1`, `HF_HUB_OFFLINE=1`), or None."""
    on = ("1", "true", "yes", "on")
    return next((name for name in OFFLINE_VARIABLES if os.environ.get(name, "").strip().lower() in on), None)


def torch_checkpoints_dir() -> Path:
    """torch.hub's checkpoint cache: $TORCH_HOME/hub/checkpoints (default ~/.cache/torch/...)."""
    import torch.hub

    return Path(torch.hub.get_dir()) / "checkpoints"


def hf_cache_dir() -> Path:
    """The Hugging Face Hub cache, read from the environment at call time (as huggingface_hub does at import)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(xdg) / "huggingface" / "hub"


def url_file(url: str) -> Path:
    """The path torch.hub caches `url` at: the checkpoints dir plus the URL's file name."""
    return torch_checkpoints_dir() / os.path.basename(urlparse(url).path)


def hub_cached(repo: str) -> Path | None:
    """The cached weights file of a Hub repo (safetensors first), or None."""
    from huggingface_hub import try_to_load_from_cache

    for filename in HF_FILENAMES:
        found = try_to_load_from_cache(repo, filename, cache_dir=hf_cache_dir())
        if isinstance(found, str):
            return Path(found)
    return None


def hub_manual_file(repo: str) -> Path:
    """Where a hand-copied Hub weights file is read from (the Hub cache itself needs commit hashes)."""
    return torch_checkpoints_dir() / f"{repo.replace('/', '--')}--{HF_FILENAMES[0]}"


def hub_url(repo: str) -> str:
    return f"https://huggingface.co/{repo}/resolve/main/{HF_FILENAMES[0]}"


@contextlib.contextmanager
def bounded_network() -> Iterator[None]:
    """Every socket opened inside (urllib's, torch.hub's) gives up after NETWORK_TIMEOUT seconds."""
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(NETWORK_TIMEOUT)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def _where(spec: WeightsSpec) -> str:
    return f"download {spec.url} and put it at {spec.file} (or run `{spec.fetch_command()}` where there is network)"


def ensure_cached(spec: WeightsSpec) -> Path:
    """The local file of `spec`, downloaded into the standard cache (once, with a progress bar) if missing."""
    if spec.file.is_file():
        return spec.file
    if spec.source == "file":
        raise CvtoolError(f"model.pretrained: file not found: {spec.file}")
    variable = offline_variable()
    if variable:
        raise CvtoolError(f"model.pretrained: {spec.label()} weights are not cached and {variable} is set: "
                          f"{_where(spec)}")
    try:
        with bounded_network():
            return _hub_download(spec.repo) if spec.repo else _url_download(spec)
    except CvtoolError:
        raise
    except Exception as exc:  # no network, DNS, HTTP errors, a corrupt download: the user's environment
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise CvtoolError(f"model.pretrained: cannot download {spec.label()} weights ({reason}): "
                          f"{_where(spec)}") from None


def _url_download(spec: WeightsSpec) -> Path:
    import torch.hub

    assert spec.url is not None, spec
    _reachable(spec.url)
    spec.file.parent.mkdir(parents=True, exist_ok=True)
    # download_url_to_file writes a temp file and renames it: an interrupted download leaves no file
    torch.hub.download_url_to_file(spec.url, str(spec.file), spec.hash_prefix, progress=True)
    return spec.file


def _reachable(url: str) -> None:
    """One bounded TCP connect to the URL's host: no network fails here at once, before the
    download code's own retries (huggingface_hub backs off for about a minute)."""
    import urllib.request

    parts = urlparse(url)
    proxy = urllib.request.getproxies().get(parts.scheme)
    if proxy and not urllib.request.proxy_bypass(parts.hostname or ""):  # behind a proxy: reach the proxy
        parts = urlparse(proxy if "://" in proxy else f"http://{proxy}")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    with socket.create_connection((parts.hostname or "", port), timeout=NETWORK_TIMEOUT):
        pass


def _hub_download(repo: str) -> Path:
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.utils import EntryNotFoundError, LocalEntryNotFoundError

    _reachable(constants.ENDPOINT)
    for filename in HF_FILENAMES[:-1]:
        try:
            return Path(hf_hub_download(repo, filename, cache_dir=hf_cache_dir()))
        except LocalEntryNotFoundError:
            raise
        except EntryNotFoundError:  # the repo has no such file: try the next name
            continue
    return Path(hf_hub_download(repo, HF_FILENAMES[-1], cache_dir=hf_cache_dir()))


def cached_weights() -> list[dict[str, Any]]:
    """Weights files in both caches: {source, name, bytes, path}, torch's first, by name."""
    rows: list[dict[str, Any]] = []
    folder = torch_checkpoints_dir()
    if folder.is_dir():
        rows += [{"source": "torch", "name": path.name, "bytes": path.stat().st_size, "path": str(path)}
                 for path in sorted(folder.iterdir()) if path.is_file() and not path.name.startswith(".")]
    hub = hf_cache_dir()
    for repo in sorted(hub.glob("models--*")) if hub.is_dir() else []:
        files = {path.resolve() for path in repo.rglob("*") if path.is_file()}  # snapshots link to blobs
        rows.append({"source": "hf-hub", "name": repo.name.removeprefix("models--").replace("--", "/"),
                     "bytes": sum(path.stat().st_size for path in files), "path": str(repo)})
    return rows
