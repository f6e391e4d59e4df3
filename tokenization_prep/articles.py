"""JSONL/text lines -> tokenized articles with token types, following generative_data_prep exactly.

Token types: 0 prompt, 1 completion, 2 padding, 3 end-of-article separator. Each prompt/completion
pair becomes ``encode(prompt)`` (type 0) + ``encode(completion)`` (type 1) + EOS (type 1); the last
token of an article becomes type 3. With the space separator (gdp's default) the prompt loses
trailing spaces and the completion gets exactly one leading space. A line may be one pair
``{"prompt", "completion"}`` or a list of pairs (one conversation). Encoding is batched through
the Rust ``tokenizers`` backend.

Example (one conversation line, packing and attention boundary ``jsonl``)::

    [{"prompt": "<human>: Hi\\n<bot>:", "completion": "Hello"}, {"prompt": "\\n<human>: Bye\\n<bot>:", ...}]
    tokens  <human>: Hi \\n<bot>:  | ␣Hello | EOS | \\n<human>: Bye\\n<bot>: | ␣See you | EOS
    types   0 ...              0   | 1      | 1   | 0 ...                0 | 1 ...    | 3
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np
import orjson

from common.errors import DataError
from tokenization_prep.schema import COMPLETION, PROMPT, SEP
from tokenization_prep.settings import ArticleSettings

PROMPT_PLACEHOLDER, COMPLETION_PLACEHOLDER = "<prompt_placeholder>", "<completion_placeholder>"
_PLACEHOLDERS = re.compile(f"({PROMPT_PLACEHOLDER}|{COMPLETION_PLACEHOLDER})")


class InputFormatError(DataError):
    """A line that is not in a format this stage reads (the message says why)."""


@dataclass
class Article:
    """One packing unit: token ids and types, plus where it came from (provenance of its line)."""

    ids: np.ndarray
    types: np.ndarray
    category: str | None = None
    source: str | None = None
    record_id: str | None = None
    file: str | None = None  # the input file as given to the pipeline
    line: int = 0  # 1-based line number in that file


@dataclass
class LineParts:
    """The strings of one line to encode: (prompt, completion, category) per kept pair."""

    pairs: list[tuple[str, str, str | None]] = field(default_factory=list)
    source: str | None = None
    record_id: str | None = None
    file: str | None = None
    line: int = 0
    skipped_empty_completions: int = 0
    tag: int = 0  # which output file of the split the line goes to


def parse_line(raw: bytes | str, s: ArticleSettings) -> LineParts:
    """Validate one input line and return its pairs after gdp's space-separator rule."""
    if s.is_text:  # gdp: the line with its end of line is the completion
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        return LineParts([("", text.rstrip("\r\n") + "\n", None)])
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InputFormatError(f"not JSON ({str(exc).split(':')[0]})") from None
    if isinstance(obj, dict):
        obj = [obj]
    if not isinstance(obj, list) or not obj:
        raise InputFormatError("a line must be a JSON object or a non-empty list of objects")
    if s.chat_render is not None:
        return chat_line(obj, s)
    parts = LineParts(source=_first(obj, "source"), record_id=_first(obj, "id"))
    for pair in obj:
        prompt, completion = pair_strings(pair, s)
        if not completion and not s.keep_prompt_only_sequences:
            parts.skipped_empty_completions += 1
            continue
        if not s.disable_space_separator:
            prompt = prompt.rstrip(" ") if prompt else prompt
            completion = " " + completion.lstrip(" ") if completion else completion
        if prompt:
            prompt = s.prompt_prefix + prompt + s.prompt_postfix
        category = pair.get("category")
        parts.pairs.append((prompt, completion, category if isinstance(category, str) else None))
    return parts


def _first(obj: list, key: str) -> str | None:
    """The first pair's value of a record-level key (``source``, ``id``): data_prep writes it on every pair."""
    for pair in obj:
        value = pair.get(key) if isinstance(pair, dict) else None
        if isinstance(value, (str, int)) and not isinstance(value, bool):
            return str(value)
    return None


def pair_strings(pair, s: ArticleSettings) -> tuple[str, str]:
    """(prompt, completion) of one pair object; the prompt may be missing (empty), the completion may not."""
    if not isinstance(pair, dict):
        raise InputFormatError("a list line must hold only JSON objects")
    if s.completion_keyword not in pair:
        raise InputFormatError(f"completion keyword '{s.completion_keyword}' not found")
    prompt, completion = pair.get(s.prompt_keyword, ""), pair[s.completion_keyword]
    if not isinstance(prompt, str) or not isinstance(completion, str):
        raise InputFormatError(f"'{s.prompt_keyword}' and '{s.completion_keyword}' must be strings")
    return prompt, completion


def chat_line(obj: list, s: ArticleSettings) -> LineParts:
    """gdp's ``--apply_chat_template``: render user/assistant placeholders with the template, then cut the text
    into prompt/completion pairs where a completion is followed by the text the template puts before the first
    prompt. Templates whose turns do not repeat that text (a BOS or system block first) give one pair for the
    whole conversation, as in gdp. No space separator; empty completions are kept; no category."""
    prompts, completions = [], []
    for pair in obj:
        prompt, completion = pair_strings(pair, s)
        prompts.append(prompt)
        completions.append(completion)
    messages = [
        m
        for _ in prompts
        for m in (
            {"role": "user", "content": PROMPT_PLACEHOLDER},
            {"role": "assistant", "content": COMPLETION_PLACEHOLDER},
        )
    ]
    pieces = _PLACEHOLDERS.split(s.chat_render(messages))
    prefix = ""
    for piece in pieces:
        if piece == PROMPT_PLACEHOLDER:
            break
        prefix += piece
    parts = LineParts(source=_first(obj, "source"), record_id=_first(obj, "id"))
    state, cur_p, cur_c, pi, ci = "prompt", "", "", 0, 0
    for piece in pieces:
        if piece == PROMPT_PLACEHOLDER:
            cur_p += prompts[pi]
            pi += 1
        elif piece == COMPLETION_PLACEHOLDER:
            cur_c += completions[ci]
            ci += 1
            state = "completion"
        elif state == "prompt":
            cur_p += piece
        elif piece.endswith(prefix):
            if not prefix:
                raise InputFormatError(
                    "the chat template puts no text before the first user message, so turns "
                    "cannot be found (gdp fails the same way)"
                )
            cur_c += piece.split(prefix)[0]
            parts.pairs.append((_wrap(cur_p, s), cur_c, None))
            state, cur_p, cur_c = "prompt", prefix, ""
        else:
            cur_c += piece
    if cur_p or cur_c:
        parts.pairs.append((_wrap(cur_p, s), cur_c, None))
    return parts


def _wrap(prompt: str, s: ArticleSettings) -> str:
    return s.prompt_prefix + prompt + s.prompt_postfix if prompt else prompt


def build_articles(
    parts: LineParts, encoded: list[list[int]], eos: int, s: ArticleSettings, bos: int | None = None
) -> list[Article]:
    """Assemble the articles of one line from its encoded strings (prompt, completion per pair, in order).

    As gdp: a prompt loses a trailing EOS (and, with a chat template, a leading BOS); a completion loses a
    leading BOS when there is a prompt, and a trailing EOS; then one EOS closes the pair."""
    articles: list[Article] = []
    ids: list[int] = []
    types: list[int] = []
    category = None
    it = iter(encoded)
    last = len(parts.pairs) - 1
    for i, (prompt, completion, cat) in enumerate(parts.pairs):
        p_ids = next(it) if prompt else []
        c_ids = next(it) if completion else []
        if p_ids and p_ids[-1] == eos:
            p_ids = p_ids[:-1]
        if p_ids and s.chat_render is not None and bos is not None and p_ids[0] == bos:
            p_ids = p_ids[1:]
        if c_ids and prompt and bos is not None and c_ids[0] == bos:
            c_ids = c_ids[1:]
        if c_ids and c_ids[-1] == eos:
            c_ids = c_ids[:-1]
        if p_ids or c_ids:
            ids += p_ids + c_ids + [eos]
            types += [PROMPT] * len(p_ids) + [COMPLETION] * (len(c_ids) + 1)
        category = category or cat
        if s.attention_boundary == "prompt_completion_pair" and types:
            types[-1] = SEP
        if s.packing_boundary == "prompt_completion_pair" and i != last:
            articles.append(_article(ids, types, category, parts))
            ids, types = [], []
    if types:
        types[-1] = SEP
    articles.append(_article(ids, types, category, parts))
    return articles


def _article(ids: list[int], types: list[int], category, parts: LineParts) -> Article:
    return Article(
        np.asarray(ids, dtype=np.int32),
        np.asarray(types, dtype=np.int8),
        category,
        parts.source,
        parts.record_id,
        parts.file,
        parts.line,
    )


def strings_to_encode(parts: LineParts) -> list[str]:
    """The non-empty prompt and completion strings of a line, in encoding order."""
    out = []
    for prompt, completion, _ in parts.pairs:
        if prompt:
            out.append(prompt)
        if completion:
            out.append(completion)
    return out


class ArticleTokenizer:
    """Turns batches of parsed lines into articles: ``encode`` (Rust, releases the GIL) then ``assemble``.

    ``encode_batch_fast`` (no character offsets, same ids) is used where the tokenizers version has it.
    """

    def __init__(self, tokenizer, settings: ArticleSettings):
        self.backend = tokenizer.backend_tokenizer
        self.eos = tokenizer.eos_token_id
        self.bos = tokenizer.bos_token_id
        self.settings = settings
        self._encode = getattr(self.backend, "encode_batch_fast", self.backend.encode_batch)

    def encode(self, parts_list: list[LineParts]) -> list[list[int]]:
        texts = [t for parts in parts_list for t in strings_to_encode(parts)]
        return [e.ids for e in self._encode(texts, add_special_tokens=True)] if texts else []

    def assemble(self, parts_list: list[LineParts], encoded: list[list[int]]) -> list[list[Article]]:
        out, pos = [], 0
        for parts in parts_list:
            n = sum(bool(p) + bool(c) for p, c, _ in parts.pairs)
            out.append(build_articles(parts, encoded[pos : pos + n], self.eos, self.settings, self.bos))
            pos += n
        return out
