"""The continuous-batching engine: batched replies equal one-by-one ``model.generate`` replies (rotary GPT-NeoX and
ALiBi BLOOM), seeded samples do not depend on batch mates, and stops, cancel, logprobs, max_batch and failures."""

import asyncio
import threading
import time
from types import SimpleNamespace

import pytest
import torch
from transformers import (
    BloomConfig,
    BloomForCausalLM,
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
    RepetitionPenaltyLogitsProcessor,
)

from inference.batch_sampling import repetition_penalty
from inference.engine import Engine, EngineError, GenRequest
from inference.sampling import Sampling
from tests.conftest import PYTHIA_TOKENIZER
from tokenization_prep.tokenizer_io import load_tokenizer

CONTEXT = 256
TEXTS = [
    "Hello there",
    "What is the capital of France? Tell me in a sentence or two, please.",
    "a",
    "One two three four five six seven eight nine ten eleven twelve",
    "x y",
    "The quick brown fox jumps over the lazy dog",
    "Why?",
    "Once upon a time in a land far away there lived a king who",
]


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(str(PYTHIA_TOKENIZER))


def tiny(kind: str, vocab: int):
    torch.manual_seed(0)
    if kind == "neox":
        cfg = GPTNeoXConfig(
            vocab_size=vocab,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=64,
            max_position_embeddings=CONTEXT,
            rotary_pct=1.0,
            bos_token_id=0,
            eos_token_id=0,
        )
        return GPTNeoXForCausalLM(cfg).eval()
    cfg = BloomConfig(
        vocab_size=vocab, hidden_size=32, n_layer=2, n_head=4, initializer_range=0.5
    )  # attention that matters
    return BloomForCausalLM(cfg).eval()


@pytest.fixture(scope="module", params=["neox", "bloom"])
def model(request, tok):
    return tiny(request.param, len(tok))


@pytest.fixture
def engine(model, tok):
    eng = Engine(model, tok, "cpu", CONTEXT, max_batch=8)
    eng.start()
    yield eng
    eng.shutdown(5)


def alone(model, tok, ids: list[int], s: Sampling) -> list[int]:
    """The new tokens ``model.generate`` makes for one prompt, as the CLI runs it."""
    if s.seed is not None:
        torch.manual_seed(s.seed)
    with torch.no_grad():
        out = model.generate(
            input_ids=torch.tensor([ids]),
            attention_mask=torch.ones(1, len(ids), dtype=torch.long),
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.eos_token_id,
            **s.generate_kwargs(),
        )
    return out[0, len(ids) :].tolist()


def idle(engine, wait: float = 5) -> bool:
    """The engine has no rows and no queue (rows leave the batch just after their reply is sent)."""
    deadline = time.time() + wait
    while (engine.running or engine.waiting) and time.time() < deadline:
        time.sleep(0.01)
    return engine.running == 0 and engine.waiting == 0


def ids_of(tok, text):
    return tok(text)["input_ids"]


def test_greedy_batched_replies_equal_one_by_one_generate(model, tok, engine):
    s = Sampling(temperature=0, max_new_tokens=24)
    prompts = [ids_of(tok, t) for t in TEXTS]
    expected = [tok.decode(alone(model, tok, p, s), skip_special_tokens=True) for p in prompts]
    handles = []
    for i, p in enumerate(prompts):  # arriving at different steps, of different lengths
        handles.append(engine.submit(GenRequest(p, s, trim=False, logprobs=0)))
        time.sleep(0.004 * i)
    replies = [h.result(60) for h in handles]
    assert [r.text for r in replies] == expected
    for p, h in zip(prompts, handles):  # each row's logits in the batch are those of its sequence alone
        lps = [lp for e in h.events() for lp in e.logprobs]
        with torch.no_grad():
            ref = torch.log_softmax(model(torch.tensor([p + [lp.id for lp in lps]])).logits[0].float(), -1)
        got = torch.tensor([lp.logprob for lp in lps])
        assert torch.allclose(
            got, ref[len(p) - 1 : -1].gather(1, torch.tensor([[lp.id] for lp in lps]))[:, 0], atol=2e-5
        )
    assert all(r.new_tokens == 24 and r.stop == "length" for r in replies)
    assert [r.prompt_tokens for r in replies] == [len(p) for p in prompts]
    streamed = [h for h in handles]  # events concatenate to the reply
    assert ["".join(e.text for e in h.events()) for h in streamed] == expected
    assert idle(engine)


def test_penalties_match_generate_with_the_same_processors(model, tok, engine):
    """Greedy with repetition, presence and frequency penalties: the same replies as ``model.generate``."""
    prompts = [ids_of(tok, t) for t in TEXTS[:4]]
    plain = alone(model, tok, prompts[1], Sampling(temperature=0, max_new_tokens=20, repetition_penalty=1))
    changed = []
    for sign in (1, -1):  # a random model may never repeat itself, or only repeat itself
        s = Sampling(
            temperature=0, max_new_tokens=20, repetition_penalty=1.3, presence_penalty=2 * sign, frequency_penalty=sign
        )
        handles = [engine.submit(GenRequest(p, s, trim=False)) for p in prompts]
        assert [h.result(60).text for h in handles] == [
            tok.decode(alone(model, tok, p, s), skip_special_tokens=True) for p in prompts
        ]
        changed.append(alone(model, tok, prompts[1], s) != plain)
    assert any(changed)  # the penalties change a reply, so the equality above means something


def test_batched_repetition_penalty_equals_transformers_row_by_row():
    torch.manual_seed(0)
    logits = torch.randn(3, 50)
    seqs = [torch.tensor([1, 2, 2, 7]), torch.tensor([3]), torch.tensor([4, 5, 6, 7, 8, 9])]
    penalties = [1.3, 1.0, 0.7]
    rows = [SimpleNamespace(penalty=p, token_ids=lambda s=s: s[None]) for p, s in zip(penalties, seqs)]
    got = repetition_penalty(logits, rows)
    for i, (p, ids) in enumerate(zip(penalties, seqs)):
        assert torch.equal(got[i : i + 1], RepetitionPenaltyLogitsProcessor(p)(ids[None], logits[i : i + 1]))
    assert not torch.equal(got, logits)


def test_seeded_sampling_does_not_depend_on_batch_mates(model, tok, engine):
    s = Sampling(temperature=1.0, top_p=0.9, top_k=50, min_p=0.01, seed=1234, max_new_tokens=24)
    p = ids_of(tok, TEXTS[1])
    first = engine.submit(GenRequest(p, s, trim=False)).result(60).text
    mates = [engine.submit(GenRequest(ids_of(tok, t), s.updated(seed=i), trim=False)) for i, t in enumerate(TEXTS)]
    again = engine.submit(GenRequest(p, s, trim=False))
    assert again.result(60).text == first
    [m.result(60) for m in mates]
    # the CLI (model.generate after torch.manual_seed) draws the same reply from the same seed
    assert first == tok.decode(alone(model, tok, p, s), skip_special_tokens=True)
    other = engine.submit(GenRequest(p, s.updated(seed=99), trim=False)).result(60).text
    assert other != first


def test_cancel_frees_the_row_and_ends_the_reply_interrupted(tok, engine):
    long = Sampling(temperature=0, max_new_tokens=200)
    h = engine.submit(GenRequest(ids_of(tok, TEXTS[0]), long))
    events = h.events()
    next(iter(events), None)
    h.cancel()
    reply = h.result(30)
    assert reply.stop == "interrupted" and reply.new_tokens < 200
    assert idle(engine)
    # a request cancelled while it still waits never runs
    blocker = [engine.submit(GenRequest(ids_of(tok, t), long)) for t in TEXTS]
    queued = engine.submit(GenRequest(ids_of(tok, "late"), long))
    queued.cancel()
    assert queued.result(30).stop == "interrupted" and queued.result().new_tokens == 0
    for b in blocker:
        b.cancel()


def test_stop_strings_end_the_reply_and_are_never_sent(model, tok, engine):
    s = Sampling(temperature=0, max_new_tokens=30)
    p = ids_of(tok, TEXTS[3])
    full = tok.decode(alone(model, tok, p, s), skip_special_tokens=True)
    stop = full[len(full) // 2 :][1:5]
    cut = full.find(stop)
    assert stop.strip() and cut > 0, full
    h = engine.submit(GenRequest(p, s, stops=("never", stop), trim=False))
    reply = h.result(60)
    assert reply.stop == "stop-string" and reply.text == full[:cut]
    assert "".join(e.text for e in h.events()) == full[:cut]


def test_logprobs_are_log_softmax_of_a_plain_forward(model, tok, engine):
    s = Sampling(temperature=0, max_new_tokens=6)
    p = ids_of(tok, TEXTS[5])
    mates = [engine.submit(GenRequest(ids_of(tok, t), s)) for t in TEXTS[:3]]
    h = engine.submit(GenRequest(p, s, logprobs=3, prompt_logprobs=2, trim=False))
    reply = h.result(60)
    lps = [lp for e in h.events() for lp in e.logprobs]
    assert len(lps) == reply.new_tokens == 6
    gen = [lp.id for lp in lps]
    with torch.no_grad():
        ref = torch.log_softmax(model(torch.tensor([p + gen])).logits[0].float(), -1)
    for j, lp in enumerate(lps):
        row = ref[len(p) - 1 + j]
        assert lp.logprob == pytest.approx(float(row[lp.id]), abs=1e-4)
        assert [t[0] for t in lp.top] == row.topk(3).indices.tolist()
        assert lp.token == tok.decode([lp.id]) and lp.id == int(row.argmax())
    prompt = h.prompt_logprobs
    assert prompt[0] is None and len(prompt) == len(p)
    for j in range(1, len(p)):
        assert prompt[j].id == p[j] and prompt[j].logprob == pytest.approx(float(ref[j - 1, p[j]]), abs=1e-4)
        assert len(prompt[j].top) == 2
    [m.result(60) for m in mates]


def test_max_batch_is_respected(model, tok):
    eng = Engine(model, tok, "cpu", CONTEXT, max_batch=3)
    rows = []  # the batch size of each decode forward
    forward = model.forward

    def counting(*args, input_ids=None, **kwargs):
        if input_ids.shape[1] == 1:
            rows.append(input_ids.shape[0])
        return forward(*args, input_ids=input_ids, **kwargs)

    model.forward = counting
    try:
        handles = [eng.submit(GenRequest(ids_of(tok, t), Sampling(temperature=0, max_new_tokens=8))) for t in TEXTS]
        assert eng.waiting == len(TEXTS)
        eng.start()
        assert all(h.result(60).new_tokens == 8 for h in handles)
    finally:
        del model.forward
        eng.shutdown(5)
    assert max(rows) == 3


def test_a_failing_forward_fails_only_its_steps_requests(model, tok, engine):
    s = Sampling(temperature=0, max_new_tokens=40)
    first = engine.submit(GenRequest(ids_of(tok, TEXTS[1]), s, trim=False))
    next(iter(first.events()))  # running
    forward, fail = model.forward, threading.Event()
    fail.set()

    def broken(*args, input_ids=None, **kwargs):
        if fail.is_set() and input_ids.shape[1] > 1:  # the next prefill
            fail.clear()
            raise RuntimeError("boom\nsecond line")
        return forward(*args, input_ids=input_ids, **kwargs)

    model.forward = broken
    try:
        bad = engine.submit(GenRequest(ids_of(tok, TEXTS[3]), s))
        with pytest.raises(EngineError, match="^generation failed: boom$"):
            bad.result(60)
        with pytest.raises(EngineError, match="boom"):
            list(bad.events())
        ok = engine.submit(GenRequest(ids_of(tok, TEXTS[1]), s, trim=False))
        assert ok.result(60).text == first.result(60).text and first.reply.new_tokens == 40
    finally:
        del model.forward


def test_async_events_shutdown_and_bad_requests(tok):
    model = tiny("neox", len(tok))
    eng = Engine(model, tok, "cpu", CONTEXT, max_batch=4)
    eng.start()
    s = Sampling(temperature=0, max_new_tokens=10)
    with pytest.raises(ValueError, match="exceed the model's 256-token context"):
        eng.submit(GenRequest(ids_of(tok, "hi"), s.updated(max_new_tokens=256)))
    with pytest.raises(ValueError, match="logprobs must be between 0 and 20"):
        eng.submit(GenRequest(ids_of(tok, "hi"), s, logprobs=21))

    async def collect():
        h = eng.submit(GenRequest(ids_of(tok, TEXTS[1]), s, trim=False))
        return h, "".join([e.text async for e in h.aevents()])

    h, text = asyncio.run(collect())
    assert text == h.reply.text and h.reply.new_tokens == 10
    long = [eng.submit(GenRequest(ids_of(tok, t), s.updated(max_new_tokens=200))) for t in TEXTS[:6]]
    finished, cancelled = eng.shutdown(0.05)
    assert (finished, cancelled) == (0, 6)
    assert all(x.result(5).stop == "interrupted" for x in long)
    with pytest.raises(EngineError, match="shutting down"):
        eng.submit(GenRequest(ids_of(tok, "hi"), s))


def test_requests_arriving_during_a_prefill_are_prefilled_before_the_next_decode(model, tok):
    """A request that arrives while others are prefilled waits for that prefill only, not for a decode step too."""
    eng = Engine(model, tok, "cpu", CONTEXT, max_batch=8)
    forwards = []  # ("prefill" | "decode", rows) of each forward
    forward, late = model.forward, []
    s = Sampling(temperature=0, max_new_tokens=4)

    def recording(*args, input_ids=None, **kwargs):
        forwards.append(("prefill" if input_ids.shape[1] > 1 else "decode", input_ids.shape[0]))
        if len(forwards) == 1:  # three requests arrive during the first prefill
            late.extend(eng.submit(GenRequest(ids_of(tok, t), s)) for t in TEXTS[1:4])
        return forward(*args, input_ids=input_ids, **kwargs)

    model.forward = recording
    try:
        eng.start()
        first = eng.submit(GenRequest(ids_of(tok, TEXTS[0]), s))
        assert all(h.result(60).new_tokens == 4 for h in [first, *late])
    finally:
        del model.forward
        eng.shutdown(5)
    assert forwards[:3] == [("prefill", 1), ("prefill", 3), ("decode", 4)]
