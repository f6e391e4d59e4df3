"""Loading the tokenizer (hub id or local dir) and saving it beside the data with our chat template.

Local dirs may hold a full ``save_pretrained`` tokenizer, a bare ``tokenizer.json`` (the bundled
Pythia one) or GPT-2 style ``vocab.json`` + ``merges.txt``. No remote code is ever run.
"""

from __future__ import annotations

import os
from pathlib import Path

from common.chat_format import CHAT_TEMPLATE
from common.errors import DataError, first_line
from common.files import looks_like_hub_id

EOS = "<|endoftext|>"


def _bpe_from_files(path: Path):
    """GPT-2 style byte-level BPE from ``vocab.json`` + ``merges.txt`` (no prefix space, as GPT-2)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    tok = Tokenizer(models.BPE.from_file(str(path / "vocab.json"), str(path / "merges.txt")))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    if EOS in tok.get_vocab():
        tok.add_special_tokens([EOS])
    return tok


def load_tokenizer(spec: str):
    """A ``PreTrainedTokenizerFast`` with an EOS token and the BLOOMChat chat template."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    path = Path(spec).expanduser()
    try:
        if path.is_dir() and (path / "tokenizer_config.json").is_file():
            tok = AutoTokenizer.from_pretrained(str(path), trust_remote_code=False)
        elif path.is_dir() and (path / "tokenizer.json").is_file():
            tok = PreTrainedTokenizerFast(tokenizer_file=str(path / "tokenizer.json"))
        elif path.is_dir() and (path / "vocab.json").is_file() and (path / "merges.txt").is_file():
            tok = PreTrainedTokenizerFast(tokenizer_object=_bpe_from_files(path), eos_token=EOS)
        elif path.is_file() and path.name.endswith(".json"):
            tok = PreTrainedTokenizerFast(tokenizer_file=str(path))
        elif looks_like_hub_id(spec) or (not path.exists() and "/" not in spec):
            tok = AutoTokenizer.from_pretrained(spec, trust_remote_code=False)
        else:
            raise DataError(
                f"{spec}: no tokenizer here (expected tokenizer.json, tokenizer_config.json, "
                "or vocab.json + merges.txt)"
            )
    except DataError:
        raise
    except Exception as exc:
        first = first_line(exc)
        raise DataError(
            f"--pretrained_tokenizer {spec}: could not load ({first}); pass a local tokenizer "
            "directory or a hub id you can reach"
        ) from None
    vocab = tok.get_vocab()
    if tok.eos_token is None:
        if EOS not in vocab:
            raise DataError(f"--pretrained_tokenizer {spec}: tokenizer has no EOS token and no {EOS}")
        tok.eos_token = EOS
    if tok.bos_token is None and EOS in vocab:
        tok.bos_token = EOS
    if tok.unk_token is None and EOS in vocab:
        tok.unk_token = EOS
    tok.own_chat_template = tok.chat_template  # what --apply_chat_template uses (None: the files have none)
    tok.chat_template = CHAT_TEMPLATE
    return tok


def chat_renderer(tok, spec: str):
    """gdp's ``--apply_chat_template`` renderer: the tokenizer's own template, messages -> text (no tokens)."""
    template = getattr(tok, "own_chat_template", None)
    if not template:
        raise DataError(
            f"--apply_chat_template: the tokenizer {spec} has no chat template; use one that has "
            "(a tokenizer/ dir written by tokenization_prep carries the BLOOMChat one) or drop the flag"
        )

    def render(messages: list[dict]) -> str:
        return tok.apply_chat_template(messages, tokenize=False, chat_template=template)

    return render


def pad_id(tok) -> int:
    """gdp's padding token: the tokenizer's pad token when it has one, else EOS."""
    return tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id


def tokenizer_model_type(tok, spec: str) -> tuple[str, str | None]:
    """gdp's ``tokenizer_model_type``, ``str(type(AutoConfig.from_pretrained(spec)))``, and why it is unknown.

    ``spec`` is a model dir with ``config.json`` or a hub id. Without a readable model config (a bare tokenizer
    dir, a hub id offline; gdp itself fails there) the value says "unknown" and the reason comes back."""
    path = Path(spec).expanduser()
    if (path / "config.json").is_file() or (not path.exists() and looks_like_hub_id(spec)):
        from transformers import AutoConfig

        try:
            return str(type(AutoConfig.from_pretrained(spec, trust_remote_code=False))), None
        except Exception as exc:  # any loading failure: recorded, not fatal
            why = f"cannot read the model config of {spec}: " + first_line(exc)
    else:
        why = f"no config.json in {spec}"
    return f"unknown ({why})", why


def add_special_tokens(tok, spec: str | None) -> None:
    """gdp's ``--special_tokens_dict``: a JSON (or Python-quoted) dict passed to ``tokenizer.add_special_tokens``."""
    if not spec:
        return
    import json

    try:
        tokens = json.loads(spec.replace("'", '"'))
    except json.JSONDecodeError as exc:
        raise DataError(
            f'--special_tokens_dict {spec!r}: not a JSON dict ({exc.msg}); e.g. \'{{"sep_token": "[SEP]"}}\''
        ) from None
    if not isinstance(tokens, dict) or not all(isinstance(k, str) for k in tokens):
        raise DataError(f'--special_tokens_dict {spec!r}: must be a dict such as \'{{"pad_token": "<pad>"}}\'')
    try:
        tok.add_special_tokens(tokens)
    except (ValueError, TypeError, AttributeError) as exc:
        raise DataError(f"--special_tokens_dict {spec!r}: {exc}") from None


def tokenizer_for_data(spec: str, special_tokens_dict: str | None = None, apply_chat_template: bool = False):
    """(tokenizer with gdp's ``--special_tokens_dict`` added, the ``--apply_chat_template`` renderer or None)."""
    tok = load_tokenizer(spec)
    add_special_tokens(tok, special_tokens_dict)
    return tok, (chat_renderer(tok, spec) if apply_chat_template else None)


def cpu_threads(num_workers: int | None) -> None:
    """Cap the tokenizers thread pool at ``--num_workers`` (must run before the first encode; output is identical)."""
    if num_workers:
        os.environ["RAYON_NUM_THREADS"] = str(num_workers)
