"""CLIP tokenizers for single-file checkpoints, found or derived offline (no hub access).

A ``.safetensors`` checkpoint carries the text encoders' weights but not their tokenizer. Both
SD1.5's CLIP ViT-L/14 and SDXL's second encoder (OpenCLIP ViT-bigG/14) use the same byte-level
BPE (49,408 ids: 256 byte symbols, the same 256 with ``</w>``, 48,894 merges,
``<|startoftext|>`` = 49406, ``<|endoftext|>`` = 49407); they differ only in the padding token
(``<|endoftext|>`` for the first encoder, ``!`` = id 0 for OpenCLIP). One BPE source therefore
serves every encoder. Sources, first found wins:

1. ``<models root>/tokenizers/clip/`` holding ``vocab.json`` + ``merges.txt`` (e.g. copied from
   the ``tokenizer/`` folder of any SD1.5 diffusers model);
2. ``bpe_simple_vocab_16e6.txt.gz`` (the merges list CLIP and OpenCLIP publish) at the registry
   role :data:`BPE_ROLE` when the registry has it, else ``<models root>/tokenizers/``;
3. the local Hugging Face cache (read only, never downloaded): the tokenizer of
   ``openai/clip-vit-large-patch14`` or of an SD1.5 / SDXL diffusers repository;
4. the ``bpe_simple_vocab_16e6.txt.gz`` shipped inside the ``open_clip_torch`` package, when it
   is installed (located without importing it).

From the ``.gz`` the vocabulary is rebuilt by the published construction (see
:func:`vocab_from_merges`). Nothing is cached between calls.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import logging
import tempfile
from pathlib import Path
from typing import Optional, Sequence

from ..errors import ModelUnavailable

logger = logging.getLogger(__name__)

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
MAX_TOKENS = 77
#: Number of BPE merges the CLIP vocabulary uses (49408 - 2 × 256 - 2 special tokens).
CLIP_MERGES = 48894
BPE_GZ = "bpe_simple_vocab_16e6.txt.gz"
#: Registry role of the BPE vocabulary file.
BPE_ROLE = "clip_bpe_vocab"
#: Padding token per encoder index (0: CLIP ViT-L, 1: OpenCLIP ViT-bigG of SDXL).
PAD_TOKENS = (EOS, "!")
#: (repository, subfolder) whose cached tokenizer files serve as a source.
HF_CACHE_SOURCES = (("openai/clip-vit-large-patch14", ""),
                    ("stable-diffusion-v1-5/stable-diffusion-v1-5", "tokenizer"),
                    ("runwayml/stable-diffusion-v1-5", "tokenizer"),
                    ("stabilityai/stable-diffusion-xl-base-1.0", "tokenizer"))


def clip_byte_symbols() -> list[str]:
    """The 256 byte stand-ins of CLIP's byte-level BPE, in vocabulary order.

    Printable bytes (``!``..``~``, ``¡``..``¬``, ``®``..``ÿ``) come first and stand for
    themselves; the other 68 bytes follow, in byte order, as ``chr(256 + n)``.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    kept = set(printable)
    others = [b for b in range(256) if b not in kept]
    return [chr(b) for b in printable] + [chr(256 + n) for n in range(len(others))]


def vocab_from_merges(merges: Sequence[str]) -> dict[str, int]:
    """CLIP's vocabulary: byte symbols, byte symbols + ``</w>``, each merge joined, BOS, EOS.

    ``merges``: ``"a b"`` lines, in priority order. With all 48,894 merges: 49,408 ids.
    """
    symbols = clip_byte_symbols()
    tokens = symbols + [s + "</w>" for s in symbols]
    tokens += ["".join(line.split()) for line in merges] + [BOS, EOS]
    return {token: index for index, token in enumerate(tokens)}


def merges_from_gz(path: Path, limit: int = CLIP_MERGES) -> list[str]:
    """The first ``limit`` merges of a ``bpe_simple_vocab_16e6.txt.gz`` (its line 1 is a header)."""
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        lines = handle.read().split("\n")
    merges = [line for line in lines[1:limit + 1] if line.strip()]
    if not merges or any(len(line.split()) != 2 for line in merges):
        raise ModelUnavailable(f"{path} is not a CLIP BPE merges file (expected 'a b' lines).")
    return merges


def _tokenizer_from_files(vocab: Path, merges: Path, pad_token: str):
    """A ``CLIPTokenizer`` (77 tokens) from ``vocab.json`` + ``merges.txt``; files only."""
    from transformers import CLIPTokenizer

    with tempfile.TemporaryDirectory(prefix="easyphoto-clip-tok-") as tmp:
        folder = Path(tmp)
        (folder / "vocab.json").write_bytes(vocab.read_bytes())
        (folder / "merges.txt").write_bytes(merges.read_bytes())
        config = {"tokenizer_class": "CLIPTokenizer", "model_max_length": MAX_TOKENS,
                  "bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": pad_token,
                  "do_lower_case": True}
        (folder / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
        return CLIPTokenizer.from_pretrained(str(folder), local_files_only=True)


def tokenizer_from_bpe_gz(path: Path, pad_token: str = EOS):
    """A ``CLIPTokenizer`` rebuilt from a ``bpe_simple_vocab_16e6.txt.gz`` file."""
    merges = merges_from_gz(Path(path))
    with tempfile.TemporaryDirectory(prefix="easyphoto-clip-bpe-") as tmp:
        folder = Path(tmp)
        vocab = folder / "vocab.json"
        vocab.write_text(json.dumps(vocab_from_merges(merges), ensure_ascii=False),
                         encoding="utf-8")
        merges_txt = folder / "merges.txt"
        merges_txt.write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
        return _tokenizer_from_files(vocab, merges_txt, pad_token)


def _hf_cached_files() -> Optional[tuple[Path, Path]]:
    """(vocab.json, merges.txt) of a cached CLIP tokenizer, or None. Never downloads."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - huggingface_hub comes with diffusers
        return None
    for repo, subfolder in HF_CACHE_SOURCES:
        prefix = f"{subfolder}/" if subfolder else ""
        found = [try_to_load_from_cache(repo, prefix + name) for name in ("vocab.json",
                                                                          "merges.txt")]
        if all(isinstance(item, str) for item in found):
            return Path(found[0]), Path(found[1])
    return None


def _open_clip_gz() -> Optional[Path]:
    """The BPE file inside an installed ``open_clip_torch`` package, located without import."""
    try:
        spec = importlib.util.find_spec("open_clip")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin:
        return None
    path = Path(spec.origin).parent / BPE_GZ
    return path if path.is_file() else None


def _bpe_gz_candidates(store) -> list[Path]:
    """Where a ``bpe_simple_vocab_16e6.txt.gz`` may be: registry role, models root, open_clip."""
    candidates = []
    if store is not None:
        if BPE_ROLE in {spec.role for spec in store.specs()}:
            candidates.append(store.path(BPE_ROLE))
        candidates.append(Path(store.models_root) / "tokenizers" / BPE_GZ)
    packaged = _open_clip_gz()
    if packaged is not None:
        candidates.append(packaged)
    return candidates


def clip_tokenizers(count: int, store=None) -> list:
    """``count`` (1 for SD1.5, 2 for SDXL) CLIP tokenizers from the first source found.

    ``store``: the :class:`~easyphoto.weights.ModelStore` whose models root is searched. Raises
    :class:`ModelUnavailable` naming the places searched and how to provide a tokenizer.
    """
    pads = PAD_TOKENS[:count]
    folder = Path(store.models_root) / "tokenizers" / "clip" if store is not None else None
    if folder is not None and all((folder / n).is_file() for n in ("vocab.json", "merges.txt")):
        logger.info("CLIP tokenizer from %s", folder)
        vocab, merges = folder / "vocab.json", folder / "merges.txt"
        return [_tokenizer_from_files(vocab, merges, pad) for pad in pads]
    for path in _bpe_gz_candidates(store):
        if path.is_file():
            logger.info("CLIP tokenizer rebuilt from %s", path)
            return [tokenizer_from_bpe_gz(path, p) for p in pads]
    cached = _hf_cached_files()
    if cached is not None:
        logger.info("CLIP tokenizer from the Hugging Face cache: %s", cached[0].parent)
        return [_tokenizer_from_files(cached[0], cached[1], p) for p in pads]
    has_role = store is not None and BPE_ROLE in {spec.role for spec in store.specs()}
    raise ModelUnavailable(_missing_message(folder, has_role))


def _missing_message(folder: Optional[Path], has_role: bool) -> str:
    where = f"{folder}/ (vocab.json + merges.txt)" if folder else "a models folder"
    download = (f" When online, `easyphoto models download {BPE_ROLE}` fetches it."
                if has_role else "")
    return ("The CLIP tokenizer a single-file checkpoint needs was not found (it is not part of "
            "the .safetensors file). Provide it offline in one of these ways: copy vocab.json "
            f"and merges.txt from the tokenizer/ folder of any SD1.5 diffusers model to {where}; "
            f"or put {BPE_GZ} (published with OpenAI CLIP and open_clip) in the tokenizers/ "
            "folder of the models directory; or install open_clip_torch; or use a diffusers "
            "folder as the base model." + download)
