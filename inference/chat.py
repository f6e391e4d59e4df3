"""``python inference/chat.py --model DIR_OR_HUB_ID``: chat with a trained model (or a LoRA adapter dir).

    python inference/chat.py --model training/ckpt/stage2_oa_dolly/final --greedy --verbose
"""

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="training/ckpt/stage2_oa_dolly/final",
                    help="save_pretrained dir, hub id, or LoRA adapter dir")
    ap.add_argument("--greedy", action="store_true", help="deterministic replies (no sampling)")
    ap.add_argument("--verbose", action="store_true", help="show time to first token and tokens/s per reply")
    ap.add_argument("--max-new-tokens", type=int, default=None)
    ap.add_argument("--message", default=None, help="send one message, print the reply, exit")
    args = ap.parse_args(argv)

    from inference.generate import ChatSession, load_model_tokenizer_for_generate
    from inference.repl import ChatApp, default_params

    try:
        model, tokenizer = load_model_tokenizer_for_generate(args.model)
    except (OSError, ValueError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        print(f"error: --model {args.model}: cannot load ({first})", file=sys.stderr)
        return 2
    params = default_params(args.greedy)
    if args.max_new_tokens:
        params["max_new_tokens"] = args.max_new_tokens
    app = ChatApp(ChatSession(model, tokenizer, params=params), verbose=args.verbose)
    if args.message is not None:
        app.reply(args.message)
        return 0
    return app.loop()


if __name__ == "__main__":
    sys.exit(main())
