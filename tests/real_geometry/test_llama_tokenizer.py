"""The LLaMA tokenizer rebuilt from llama-tokenizer-js gives the published ids, and fetching it fails in one clear line."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.backend import EngineError
from engine.llama_tokenizer import TARBALL, fetch_llama_tokenizer, read_vocabulary

from .conftest import TOKENIZER_CACHE


@pytest.fixture(scope="module")
def llama(llama_tokenizer_dir: Path):
    from transformers import LlamaTokenizerFast

    return LlamaTokenizerFast.from_pretrained(llama_tokenizer_dir)


@pytest.mark.parametrize(
    "text, ids",
    [
        ("Hello", [1, 15043]),
        ("ASSISTANT:", [1, 319, 1799, 9047, 13566, 29901]),
        ("Hello world!", [1, 15043, 3186, 29991]),  # llama-tokenizer-js's own README example
        ("\n", [1, 29871, 13]),  # "▁" then the byte token <0x0A>
    ],
)
def test_known_texts_get_the_published_ids(llama, text, ids):
    assert llama(text).input_ids == ids


def test_the_vocabulary_is_llamas(llama):
    assert len(llama) == 32_000
    assert [llama.unk_token_id, llama.bos_token_id, llama.eos_token_id] == [0, 1, 2]
    assert llama.convert_tokens_to_ids(["<unk>", "<s>", "</s>", "<0x0A>", "▁"]) == [0, 1, 2, 13, 29871]
    text = 'USER: {"naïve": "日本", "n": 3}\n\tend ☃'
    assert llama.decode(llama(text).input_ids, skip_special_tokens=True) == text


def test_text_after_a_special_token_starts_a_new_word_as_in_the_original(llama_tokenizer_dir):
    """The original LLaVA tokenizes around `<image>` chunk by chunk, each with sentencepiece's leading `▁`.

    transformers 5 rebuilds a LlamaTokenizer from its `legacy` flag; the saved configuration keeps
    `legacy: true`, so `<image>\\n` stays `<image> ▁ <0x0A>` (false would drop the `▁`).
    """
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(llama_tokenizer_dir)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]})
    image = tokenizer.convert_tokens_to_ids("<image>")
    assert tokenizer("USER: <image>\nWhat").input_ids == [1, 3148, 1001, 29901, 29871, image, 29871, 13, 5618]


def test_a_built_tokenizer_is_reused_without_npm(llama_tokenizer_dir, monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # no npm on it
    assert fetch_llama_tokenizer(TOKENIZER_CACHE) == llama_tokenizer_dir


def test_missing_npm_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(EngineError, match=r"^npm is not installed: it is needed once to fetch llama-tokenizer-js@1\.2\.2"):
        fetch_llama_tokenizer(tmp_path / "cache")


def test_an_unreachable_registry_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("npm_config_registry", "http://127.0.0.1:9/")
    monkeypatch.setenv("npm_config_fetch_retries", "0")
    monkeypatch.setenv("npm_config_cache", str(tmp_path / "npm-cache"))
    with pytest.raises(EngineError) as error:
        fetch_llama_tokenizer(tmp_path / "cache")
    message = str(error.value)
    assert message.startswith("npm pack llama-tokenizer-js@1.2.2 failed (is the npm registry reachable?): ")
    assert "127.0.0.1:9" in message and "\n" not in message


def test_a_tarball_that_is_not_the_published_one_is_refused(llama_tokenizer_dir, tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    tampered = bytearray((TOKENIZER_CACHE / TARBALL).read_bytes())
    tampered[-1] ^= 1
    (cache / TARBALL).write_bytes(tampered)
    with pytest.raises(EngineError, match="is not the published llama-tokenizer-js@1.2.2"):
        fetch_llama_tokenizer(cache)


def test_a_directory_that_is_not_the_package_is_named(tmp_path):
    with pytest.raises(EngineError, match="is not the llama-tokenizer-js package: llama-tokenizer.js is missing"):
        read_vocabulary(tmp_path)
    (tmp_path / "llama-tokenizer.js").write_text('const llama_vocab_base64 = "PHVuaz4="\n')
    with pytest.raises(EngineError, match="does not embed llama_merges_binary: not llama-tokenizer-js 1.2.x"):
        read_vocabulary(tmp_path)
