"""The doubling KV cache gives the same logits as transformers' DynamicCache, appends without copying the
history, and crops to a prefix by moving its end."""

import torch
from transformers import DynamicCache, GPTNeoXConfig, GPTNeoXForCausalLM

from inference.kv_cache import MIN_ROOM, growing_cache


def tiny_model():
    torch.manual_seed(0)
    cfg = GPTNeoXConfig(
        vocab_size=128,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=1024,
        attn_implementation="sdpa",
    )
    return GPTNeoXForCausalLM(cfg).eval()


def test_same_logits_as_dynamic_cache_through_appends_and_crops():
    model = tiny_model()
    ids = torch.randint(0, 128, (1, 700))
    ref, ours = DynamicCache(config=model.config), growing_cache(model, 1024)
    pos = 0
    with torch.no_grad():
        for step, n in enumerate([300, 1, 1, 40, 1, 200]):  # a prompt, decoding, a new turn, ...
            if step == 4:  # the next prompt shares only part of the cache: both crop 25 positions
                ref.crop(-25)
                ours.crop(-25)
                pos -= 25
            chunk = ids[:, pos : pos + n]
            a = model(chunk, past_key_values=ref).logits
            b = model(chunk, past_key_values=ours).logits
            assert torch.allclose(a, b, atol=1e-5), step
            pos += n
            assert ours.get_seq_length() == ref.get_seq_length() == pos


def test_appends_reuse_the_buffer_and_stop_at_the_context():
    model = tiny_model()
    cache = growing_cache(model, 1024)
    with torch.no_grad():
        model(torch.randint(0, 128, (1, 10)), past_key_values=cache)
        layer = cache.layers[0]
        buf = layer._k.data_ptr()
        assert layer._k.shape[-2] == MIN_ROOM
        for _ in range(20):  # decoding inside the room: no new buffer, no copy of the history
            model(torch.randint(0, 128, (1, 1)), past_key_values=cache)
        assert layer._k.data_ptr() == buf and cache.get_seq_length() == 30
        model(torch.randint(0, 128, (1, 700)), past_key_values=cache)  # past the room: at least what is needed
        assert layer._k.shape[-2] == 730 and layer.keys.shape[-2] == 730
        model(torch.randint(0, 128, (1, 1)), past_key_values=cache)  # doubled, capped at the context
        assert layer._k.shape[-2] == 1024 and layer.keys.shape[-2] == 731
