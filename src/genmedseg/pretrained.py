"""Frozen pretrained parts named by their role (``vae``, ``sam``), and where their weights come from.

A method declares the parts it needs as :class:`PretrainedPart` objects; users give each one with
``--pretrained NAME=SOURCE`` (``--vae SOURCE`` is the short form for ``vae``). A source is a local file or folder or a
Hugging Face hub id. With no source, the part's environment variable is used, else its default (a hub id, or a file
that an installed package ships). Offline, a hub id that is not in the local cache fails at once with the message
that says how to supply the weights, instead of after a minute of retries.
"""

from __future__ import annotations

import hashlib
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

from genmedseg.errors import WeightsError

HUB_TIMEOUT_SECONDS = 1.5


@dataclass(frozen=True)
class ResolvedSource:
    """Where a part's weights were taken from, and why (``--pretrained``, the environment or the default)."""

    source: str
    origin: str


@dataclass(frozen=True)
class PretrainedPart:
    """One frozen pretrained part of a method.

    Args:
        description: what it is, for ``genmedseg models`` and error messages.
        loader: ``loader(source) -> module``; raises :class:`WeightsError` when ``source`` holds no usable weights.
        architecture: ``architecture(config) -> module`` with random weights, from the module's own ``config``
            (what a model folder records, so that it loads without the original weights).
        environment: variable consulted when no source is given.
        default: a hub id, or a function that returns a default source (e.g. a file of an installed package) or None.
        help: how to supply the weights, in one sentence or two.
    """

    description: str
    loader: Callable[[str], Any]
    architecture: Callable[[Any], Any]
    environment: str
    default: str | Callable[[], str | None] | None
    help: str

    def resolve(self, given: str | os.PathLike | None) -> ResolvedSource:
        """The source to load: ``given``, else the environment variable, else the default."""
        if given is not None and str(given):
            return ResolvedSource(str(given), "given")
        if os.environ.get(self.environment):
            return ResolvedSource(os.environ[self.environment], f"environment variable {self.environment}")
        default = self.default() if callable(self.default) else self.default
        if default is None:
            raise WeightsError(f"no weights for the {self.description}. {self.help}")
        return ResolvedSource(default, "default")

    def load(self, given: str | os.PathLike | None = None) -> Any:
        """Resolve the source and load the frozen part from it."""
        return self.loader(self.resolve(given).source)


def ensure_hub_reachable(repo_id: str, subfolder: str | None, help_text: str) -> bool:
    """Whether ``repo_id`` loads from the local hub cache (True) or needs the hub, which must then answer.

    Raises :class:`WeightsError` at once when the files are not cached and the hub cannot be reached (offline mode,
    no network), so that a missing part fails in about a second rather than after the hub client's retries.
    """
    from huggingface_hub import constants, try_to_load_from_cache

    config = "config.json" if not subfolder else f"{subfolder}/config.json"
    if isinstance(try_to_load_from_cache(repo_id, config), str):
        return True
    if constants.HF_HUB_OFFLINE:
        raise WeightsError(f"{repo_id} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set. {help_text}")
    endpoint = urlparse(constants.ENDPOINT)
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        with socket.create_connection((endpoint.hostname, port), timeout=HUB_TIMEOUT_SECONDS):
            pass
    except OSError as error:
        raise WeightsError(
            f"{repo_id} is not in the local Hugging Face cache and {endpoint.hostname} cannot be reached ({error}). "
            f"{help_text}"
        ) from None
    return False


def state_checksum(module: Any) -> str:
    """SHA-256 of a module's state (names, dtypes, shapes and values, in name order): the identity of frozen weights."""
    import torch

    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
