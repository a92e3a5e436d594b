"""The real LLaMA/Vicuna tokenizer, rebuilt offline from the npm package `llama-tokenizer-js`.

No model hub is reachable from the build machines, but the npm registry is, and
`llama-tokenizer-js` 1.2.2 embeds the LLaMA tokenizer's 32,000-token vocabulary and its
61,249 merges exactly as they are in the published `tokenizer.json` (its
`data-conversion.py`: the vocabulary as newline-separated UTF-8 in base64, in id order; the
merges, in priority order, as pairs of 16-bit little-endian vocabulary indices in base64).
`build_llama_tokenizer` turns them back into the published `tokenizers` pipeline (BPE with
byte fallback, `▁` prepended and spaces replaced by `▁`, `<s>` prepended), so LLaVA-1.5's
prompts get the ids Vicuna v1.5 was trained on; `fetch_llama_tokenizer` runs `npm pack`
once and caches the result.
"""

from __future__ import annotations

import base64
import hashlib
import re
import shutil
import struct
import subprocess
import tarfile
import tempfile
from pathlib import Path

from engine.backend import EngineError

PACKAGE = "llama-tokenizer-js@1.2.2"
TARBALL = "llama-tokenizer-js-1.2.2.tgz"
# The registry's integrity string for the tarball (`npm view llama-tokenizer-js@1.2.2 dist.integrity`).
TARBALL_INTEGRITY = "sha512-Wmth393dc3odWU3IzARJ3r2oIfWgw9GdJ5Gm+hGhfECNO18UHLRqEFSf511jn4E9KcQGzuuKw4Wl08pHAemLAw=="
VOCAB_SIZE = 32_000
SPECIAL_TOKENS = ("<unk>", "<s>", "</s>")  # ids 0, 1, 2, as in the published tokenizer
SPACE = "▁"  # sentencepiece's word boundary
NPM_TIMEOUT_S = 300


def read_vocabulary(package_dir: Path) -> tuple[list[str], list[tuple[str, str]]]:
    """The vocabulary (index = token id) and the merges (in priority order) embedded in `llama-tokenizer.js`."""
    source = package_dir / "llama-tokenizer.js"
    if not source.is_file():
        raise EngineError(f"{package_dir} is not the llama-tokenizer-js package: llama-tokenizer.js is missing")
    text = source.read_text(encoding="utf-8")
    names = ("llama_vocab_base64", "llama_merges_binary")
    found = {name: re.search(rf'const {name} = "([A-Za-z0-9+/=]*)"', text) for name in names}
    missing = [name for name, match in found.items() if match is None]
    if missing:
        raise EngineError(f"{source} does not embed {' and '.join(missing)}: not llama-tokenizer-js 1.2.x")
    vocab = base64.b64decode(found["llama_vocab_base64"].group(1)).decode("utf-8").split("\n")
    packed = base64.b64decode(found["llama_merges_binary"].group(1))
    ids = struct.unpack(f"<{len(packed) // 2}H", packed)
    if len(vocab) != VOCAB_SIZE or len(set(vocab)) != VOCAB_SIZE or tuple(vocab[:3]) != SPECIAL_TOKENS:
        raise EngineError(
            f"{source} holds {len(vocab)} tokens starting {vocab[:3]}; LLaMA's are {VOCAB_SIZE} starting {list(SPECIAL_TOKENS)}"
        )
    if max(ids, default=0) >= VOCAB_SIZE:
        raise EngineError(f"{source}: a merge refers to token {max(ids)}, outside the {VOCAB_SIZE}-token vocabulary")
    return vocab, [(vocab[left], vocab[right]) for left, right in zip(ids[::2], ids[1::2])]


def build_llama_tokenizer(package_dir: Path):
    """The published LLaMA `tokenizers` pipeline (what `tokenizer.json` of Llama 2 / Vicuna v1.5 holds)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, processors

    vocab, merges = read_vocabulary(package_dir)
    ids = {token: i for i, token in enumerate(vocab)}
    tokenizer = Tokenizer(models.BPE(vocab=ids, merges=merges, unk_token="<unk>", fuse_unk=True, byte_fallback=True))
    tokenizer.add_special_tokens([AddedToken(token, normalized=False, special=True) for token in SPECIAL_TOKENS])
    tokenizer.normalizer = normalizers.Sequence([normalizers.Prepend(SPACE), normalizers.Replace(" ", SPACE)])
    tokenizer.decoder = decoders.Sequence(
        [decoders.Replace(SPACE, " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", SPECIAL_TOKENS.index("<s>"))]
    )
    return tokenizer


def save_llama_tokenizer(package_dir: Path, out_dir: Path) -> Path:
    """Write `tokenizer.json` and the configuration `LlamaTokenizerFast.from_pretrained(out_dir)` reads.

    `legacy: true` is written because transformers 5 rebuilds a `LlamaTokenizer`'s pipeline
    from that flag: false prepends `▁` only at the very start of a text, true before every
    stretch after a special token, as sentencepiece did on each chunk the original LLaVA
    tokenized (`<image>\\n` is then `<image> ▁ <0x0A>`, as LLaVA-1.5 was trained).
    """
    from transformers import LlamaTokenizerFast

    tokenizer = LlamaTokenizerFast(tokenizer_object=build_llama_tokenizer(package_dir), legacy=True)
    tokenizer.init_kwargs["legacy"] = True  # LlamaTokenizer consumes the flag without keeping it for saving
    tokenizer.save_pretrained(out_dir)
    return out_dir


def _npm_pack(destination: Path) -> Path:
    """Download the package's tarball from the npm registry into `destination` (one-line `EngineError` when that fails)."""
    try:
        done = subprocess.run(
            ["npm", "pack", "--loglevel=error", "--pack-destination", str(destination), PACKAGE],
            capture_output=True, text=True, timeout=NPM_TIMEOUT_S, check=False,
        )  # fmt: skip
    except FileNotFoundError:
        raise EngineError(f"npm is not installed: it is needed once to fetch {PACKAGE} (the LLaMA tokenizer)") from None
    except subprocess.TimeoutExpired:
        raise EngineError(f"npm pack {PACKAGE} did not finish in {NPM_TIMEOUT_S} s: is the npm registry reachable?") from None
    tarball = destination / TARBALL
    if done.returncode != 0 or not tarball.is_file():
        raise EngineError(f"npm pack {PACKAGE} failed (is the npm registry reachable?): {_npm_reason(done)}")
    return tarball


def _npm_reason(done: subprocess.CompletedProcess) -> str:
    """The line of npm's error report that says what went wrong (its first after the code/errno/syscall lines)."""
    for line in done.stderr.splitlines():
        message = line.removeprefix("npm error").removeprefix("npm ERR!").strip()
        if message and not message.startswith(("code ", "errno ", "syscall ")):
            return message
    return f"exit status {done.returncode}"


def fetch_llama_tokenizer(cache: Path) -> Path:
    """The LLaMA tokenizer directory under `cache`, built on first use from `npm pack` of the package.

    The tarball is checked against the registry's digest before anything is read from it.
    Returns `cache/tokenizer` (`tokenizer.json` + `tokenizer_config.json`).
    """
    out = cache / "tokenizer"
    if (out / "tokenizer.json").is_file():
        return out
    cache.mkdir(parents=True, exist_ok=True)
    tarball = cache / TARBALL
    if not tarball.is_file():
        tarball = _npm_pack(cache)
    integrity = "sha512-" + base64.b64encode(hashlib.sha512(tarball.read_bytes()).digest()).decode()
    if integrity != TARBALL_INTEGRITY:
        raise EngineError(f"{tarball} is not the published {PACKAGE} ({integrity[:20]}…): delete it and fetch again")
    with tempfile.TemporaryDirectory(dir=cache) as work:
        with tarfile.open(tarball) as archive:
            archive.extractall(work, filter="data")
        staged = save_llama_tokenizer(Path(work) / "package", Path(work) / "tokenizer")
        shutil.rmtree(out, ignore_errors=True)
        staged.rename(out)
    return out
