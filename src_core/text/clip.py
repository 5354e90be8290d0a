"""CLIP for text prompts: OpenAI's ViT-B/32 weights, open_clip's model, our preprocessing.

The weights are OpenAI's released ``ViT-B-32.pt`` (a TorchScript archive). They are
downloaded on first use into the napari-sam cache (``<cache>/clip/``) by the same
resumable, verified download as SAM's checkpoints (:mod:`src_core.checkpoints`): its
sha256 is part of OpenAI's URL; its size is not published, so the file is checked by
its sha256 alone. A TorchScript archive holds code as well as weights, so it is
opened with ``torch.jit.load`` only after its sha256 matched OpenAI's; any other
file must be a plain state dict (loaded with ``weights_only=True``). The model is
then built by open_clip from the state dict's tensors, with no network access.

The tokenizer (open_clip's copy of OpenAI's BPE vocabulary) ships inside open_clip
and works offline. Text longer than CLIP's context (77 tokens with its start and
end tokens) is refused, never silently cut.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import checkpoints as ckpt
from ..jobs import check_stop
from ._openclip import TextExtraMissing, import_open_clip
from .crops import OPENAI_MEAN, OPENAI_STD, to_clip_tensor

__all__ = [
    "CLIP_MODEL",
    "CLIP_WEIGHTS",
    "ClipScorer",
    "Scores",
    "TextExtraMissing",
    "TextPromptError",
    "build_clip",
    "check_text",
    "clip_weights_path",
    "get_tokenizer",
    "load_clip",
    "load_clip_state_dict",
    "tokenize",
]

CLIP_MODEL = "ViT-B-32"
_OPENAI_SHA256 = "40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af"
#: OpenAI's ViT-B/32 CLIP file; OpenAI publishes its sha256 (in the URL), not its size.
CLIP_WEIGHTS = ckpt.CheckpointInfo(
    "CLIP ViT-B-32",
    f"https://openaipublic.azureedge.net/clip/models/{_OPENAI_SHA256}/ViT-B-32.pt",
    None,
    _OPENAI_SHA256,
    folder="clip",
)
_DEFAULT_LOGIT_SCALE = 100.0  # CLIP's trained scale (exp of its learned log-scale, clamped at 100)


class TextPromptError(ValueError):
    """A text prompt that cannot be used (empty, too long, nothing found); the message says why."""


# --------------------------------------------------------------------------
# Tokenizing
# --------------------------------------------------------------------------

_tokenizers: dict[str, Any] = {}


def get_tokenizer(model_name: str = CLIP_MODEL) -> Any:
    """open_clip's tokenizer for ``model_name`` (offline: the vocabulary ships with it)."""
    if model_name not in _tokenizers:
        _tokenizers[model_name] = import_open_clip().get_tokenizer(model_name)
    return _tokenizers[model_name]


def _short(text: str, n: int = 40) -> str:
    return text if len(text) <= n else text[: n - 3] + "..."


def check_text(text: object, what: str = "text") -> str:
    """``text`` stripped; TextPromptError when it is not a string or is empty."""
    if not isinstance(text, str):
        raise TextPromptError(f"the {what} must be a string, got {type(text).__name__}")
    text = " ".join(text.split())
    if not text:
        raise TextPromptError(
            f"the {what} is empty: type what to find, e.g. 'nucleus' or 'a fly'"
        )
    return text


def tokenize(texts: Sequence[str], tokenizer: Any = None, what: Sequence[str] | None = None) -> torch.Tensor:
    """(N, context_length) token ids of ``texts``, refusing any that CLIP cannot read whole.

    Raises
    ------
    TextPromptError
        A text is empty, has no token, or is longer than the context (77 tokens for
        OpenAI's CLIP, counting the start and end tokens).
    TextExtraMissing
        open_clip is not installed (only when ``tokenizer`` is not given).
    """
    tokenizer = tokenizer if tokenizer is not None else get_tokenizer()
    context = int(getattr(tokenizer, "context_length", 77))
    names = list(what) if what is not None else ["text"] * len(texts)
    cleaned = []
    for text, name in zip(texts, names):
        text = check_text(text, name)
        ids = tokenizer.encode(text)
        if not ids:
            raise TextPromptError(f"the {name} {text!r} has nothing CLIP can read (no word tokens)")
        if len(ids) + 2 > context:
            raise TextPromptError(
                f"the {name} {_short(text)!r} is {len(ids) + 2} tokens long, but CLIP reads at most "
                f"{context} (its start and end tokens included): shorten it to a few words"
            )
        cleaned.append(text)
    return tokenizer(cleaned)


# --------------------------------------------------------------------------
# Weights and model
# --------------------------------------------------------------------------


def clip_weights_path(
    checkpoint: str | os.PathLike | None = None,
    *,
    download: bool = True,
    cache: str | os.PathLike | None = None,
    progress: Callable[[int, int], object] | None = None,
    url: str | None = None,
) -> Path:
    """The CLIP weights file to load: ``checkpoint`` if given, else the cached (or
    freshly downloaded and verified) OpenAI file.

    Raises
    ------
    FileNotFoundError
        ``checkpoint`` does not exist, or the weights are not cached and ``download``
        is False (the message names the URL and where to save the file).
    RuntimeError
        The download failed (no network, HTTP error, wrong sha256); the message names
        the URL and where to save the file by hand.
    """
    if checkpoint is not None:
        return ckpt.local_file(checkpoint, "CLIP weights", f"Pass OpenAI's {CLIP_MODEL} file "
                               f"({CLIP_WEIGHTS.filename}) or a CLIP state dict, or leave it out to use the cached download.")
    found = ckpt.cached_checkpoint(CLIP_WEIGHTS, cache)
    if found is not None:
        return found
    if download:
        return ckpt.download_checkpoint(CLIP_WEIGHTS, cache=cache, progress=progress, url=url)
    dest = ckpt.checkpoint_path(CLIP_WEIGHTS, cache)
    raise FileNotFoundError(
        f"the CLIP weights ({CLIP_MODEL}) are not in the cache and downloading is off. "
        f"Download {CLIP_WEIGHTS.url} and save it as {dest}, allow downloading, or pass "
        "the path of the file (clip_checkpoint=... / --clip-checkpoint)."
    )


def load_clip_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The CLIP tensors of ``path``: OpenAI's TorchScript file (opened only when its
    sha256 is OpenAI's) or a plain state dict (no code runs)."""
    path = Path(path).expanduser()
    if ckpt.sha256_file(path) == CLIP_WEIGHTS.sha256:
        archive = torch.jit.load(str(path), map_location="cpu")
        return {k: v for k, v in archive.state_dict().items() if isinstance(v, torch.Tensor)}
    try:
        return ckpt.load_state_dict(path)
    except ValueError as exc:
        raise ValueError(
            f"{path} is neither OpenAI's {CLIP_MODEL} file (sha256 {CLIP_WEIGHTS.sha256[:12]}..., "
            f"from {CLIP_WEIGHTS.url}) nor a plain CLIP state dict; a TorchScript file with "
            f"another checksum is not opened, because it could run code. ({exc})"
        ) from exc


def build_clip(state_dict: dict[str, torch.Tensor]) -> torch.nn.Module:
    """open_clip's CLIP model for an OpenAI-layout state dict (geometry read from its
    shapes), in float32, in eval mode."""
    open_clip = import_open_clip()
    state = dict(state_dict)
    state.pop("attn_mask", None)  # a buffer open_clip makes itself (kept by a traced open_clip model)
    try:
        model = open_clip.model.build_model_from_openai_state_dict(state, cast_dtype=None)
    except (KeyError, RuntimeError, IndexError, ZeroDivisionError) as exc:
        raise ValueError(
            f"these weights are not an OpenAI-layout CLIP model ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0][:200] if str(exc) else 'no details'})"
        ) from exc
    # open_clip rounds the weights to float16 on the way (OpenAI's file is float16 in
    # part); load them again into the float32 model so a float32 file stays exact
    model = model.float()
    model.load_state_dict(state)  # the build removed the non-tensor entries from ``state``
    return model.eval()


def load_clip(
    checkpoint: str | os.PathLike | None = None,
    *,
    download: bool = True,
    cache: str | os.PathLike | None = None,
    progress: Callable[[int, int], object] | None = None,
    device: str | torch.device = "cpu",
) -> ClipScorer:
    """A :class:`ClipScorer` on OpenAI's ViT-B/32 (downloaded on first use) or ``checkpoint``.

    Raises TextExtraMissing (open_clip not installed) before anything is downloaded.
    """
    import_open_clip()  # fail fast, before a 350 MB download, when the extra is missing
    path = clip_weights_path(checkpoint, download=download, cache=cache, progress=progress)
    model = build_clip(load_clip_state_dict(path))
    return ClipScorer(model, get_tokenizer(), device=device)


# --------------------------------------------------------------------------
# Scoring
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Scores:
    """CLIP's verdict on N crops for one text against K negative texts.

    Attributes
    ----------
    probability : (N,) float
        Softmax over [text, negatives...] of CLIP's scaled similarities: how much
        more the crop looks like the text than like any negative (0..1).
    similarity : (N,) float
        Cosine similarity between each crop and the text (-1..1).
    negative_similarity : (N, K) float
        Cosine similarity with each negative text.
    """

    probability: np.ndarray
    similarity: np.ndarray
    negative_similarity: np.ndarray


def _image_size(model: Any) -> int:
    size = getattr(getattr(model, "visual", None), "image_size", None)
    if size is None:
        size = getattr(model, "image_size", 224)
    if isinstance(size, (tuple, list)):
        size = size[0]
    return int(size)


class ClipScorer:
    """Scores image crops against a text with a CLIP model.

    Parameters
    ----------
    model : torch.nn.Module
        Anything with ``encode_image((N, 3, S, S) float) -> (N, D)`` and
        ``encode_text((M, L) int) -> (M, D)``; ``logit_scale`` (log of the scale) is
        used when present, else CLIP's 100. open_clip's CLIP, or a stand-in in tests.
    tokenizer : callable, optional
        open_clip's tokenizer (with ``encode`` and ``context_length``); default
        ViT-B-32's.
    image_size : int, optional
        Input side of the image tower (default: the model's, else 224).
    device : str or torch.device
    batch_size : int
        Crops encoded together.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any = None,
        *,
        image_size: int | None = None,
        device: str | torch.device = "cpu",
        batch_size: int = 32,
        mean: Sequence[float] = OPENAI_MEAN,
        std: Sequence[float] = OPENAI_STD,
    ) -> None:
        self.device = torch.device(device)
        self.model = model.to(self.device).eval() if isinstance(model, torch.nn.Module) else model
        self.tokenizer = tokenizer if tokenizer is not None else get_tokenizer()
        self.image_size = int(image_size) if image_size is not None else _image_size(model)
        self.batch_size = max(1, int(batch_size))
        self.mean, self.std = tuple(mean), tuple(std)

    @property
    def logit_scale(self) -> float:
        value = getattr(self.model, "logit_scale", None)
        if value is None:
            return _DEFAULT_LOGIT_SCALE
        return float(min(torch.as_tensor(value, dtype=torch.float32).exp().item(), _DEFAULT_LOGIT_SCALE))

    @torch.no_grad()
    def encode_text(self, texts: Sequence[str], what: Sequence[str] | None = None) -> torch.Tensor:
        """(M, D) unit-length text embeddings (TextPromptError for unusable texts)."""
        tokens = tokenize(texts, self.tokenizer, what).to(self.device)
        return torch.nn.functional.normalize(self.model.encode_text(tokens).float(), dim=-1)

    @torch.no_grad()
    def encode_crops(
        self, crops: np.ndarray, should_stop: Callable[[], bool] | None = None
    ) -> torch.Tensor:
        """(N, D) unit-length embeddings of (N, S, S, 3) uint8 crops, in batches."""
        parts = []
        for start in range(0, len(crops), self.batch_size):
            check_stop(should_stop, "the text search")
            x = to_clip_tensor(crops[start : start + self.batch_size], self.mean, self.std).to(self.device)
            parts.append(torch.nn.functional.normalize(self.model.encode_image(x).float(), dim=-1))
        if not parts:
            return torch.zeros((0, 1))
        return torch.cat(parts)

    def score(
        self,
        crops: np.ndarray,
        text: str,
        negatives: Sequence[str] = (),
        should_stop: Callable[[], bool] | None = None,
    ) -> Scores:
        """How well each crop matches ``text`` rather than the ``negatives``."""
        texts = [text, *negatives]
        names = ["text"] + ["negative text"] * len(negatives)
        text_emb = self.encode_text(texts, names)  # first: bad text fails before any image work
        image_emb = self.encode_crops(crops, should_stop)
        if not len(crops):
            empty = np.zeros(0, np.float32)
            return Scores(empty, empty, np.zeros((0, len(negatives)), np.float32))
        cos = (image_emb @ text_emb.T).cpu()
        prob = torch.softmax(self.logit_scale * cos, dim=1)[:, 0]
        return Scores(prob.numpy(), cos[:, 0].numpy(), cos[:, 1:].numpy())

