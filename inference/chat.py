"""``python -m inference chat --model DIR_OR_HUB_ID``: chat with a trained model (or a LoRA adapter dir).

python -m inference chat --model training/ckpt/stage2_oa_dolly/final --greedy --verbose
python -m inference chat --model sambanovasystems/BLOOMChat-176B-v1 --device auto --dtype bf16
"""

import signal
import sys

from common.cli import guard
from inference.sampling import Sampling
from inference.settings import ChatSettings, parse_command


def main(argv=None) -> int:
    settings = parse_command("chat", __doc__, ChatSettings, argv)
    # torch and transformers load here, after the flags are checked (--help and a bad flag stay fast)
    from inference.generate import ChatSession
    from inference.loading import configured_context, load_for_chat, resolve_source
    from inference.repl import ChatApp, banner, default_history_file, setup_readline

    # the path, the model's generation_config.json and the settings against its context: all checked before loading
    source, adapter = resolve_source(settings.model)
    base = adapter["base_model_name_or_path"] if adapter else source
    sampling = Sampling.from_model_dir(base).updated(**settings.sampling_overrides())
    context = configured_context(base)
    if context:
        sampling.check_context(context)
    loaded = load_for_chat(settings.model, settings.device, settings.dtype, settings.quantize)
    session = ChatSession(loaded.model, loaded.tokenizer, device=loaded.device)
    session.set_sampling(sampling)
    app = ChatApp(session, verbose=settings.verbose)
    if settings.message is not None:
        app.reply(settings.message)
        return 0
    # Ctrl-C stops a reply even when the chat was started with SIGINT ignored (nohup, a background job of a script:
    # Python then installs no KeyboardInterrupt handler of its own, and the interrupt would be lost)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    history = default_history_file() if settings.history_file is None else settings.history_file
    save_history = setup_readline(history)
    try:
        return app.loop(banner=banner(loaded, session))
    finally:
        save_history()


if __name__ == "__main__":
    sys.exit(guard(main))
