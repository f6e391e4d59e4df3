"""``python inference/chat.py --model DIR_OR_HUB_ID``: chat with a trained model (or a LoRA adapter dir).

python inference/chat.py --model training/ckpt/stage2_oa_dolly/final --greedy --verbose
python inference/chat.py --model sambanovasystems/BLOOMChat-176B-v1 --device auto --dtype bf16
"""

import argparse
import sys

from common.cli import guard

PROG = "python -m inference chat"


def parse(argv):
    ap = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    ap.add_argument(
        "--model",
        default="training/ckpt/stage2_oa_dolly/final",
        help="save_pretrained dir, hub id, or LoRA adapter dir",
    )
    ap.add_argument("--device", default="auto", help="auto (every GPU, else the CPU), cpu, cuda or cuda:N")
    ap.add_argument("--dtype", default="auto", choices=["auto", "bf16", "fp16", "fp32"])
    ap.add_argument("--quantize", choices=["8bit", "4bit"], help="load in 8 or 4 bits (bitsandbytes, CUDA)")
    ap.add_argument("--greedy", action="store_true", help="deterministic replies (no sampling)")
    for name, kind in (
        ("temperature", float),
        ("top-p", float),
        ("top-k", int),
        ("repetition-penalty", float),
        ("max-new-tokens", int),
        ("seed", int),
    ):
        ap.add_argument(f"--{name}", type=kind, default=None, help="default: the model's generation_config.json")
    ap.add_argument("--verbose", action="store_true", help="show time to first token and tokens/s per reply")
    ap.add_argument("--history-file", default=None, help="readline history (default under ~/.local/state; '' for none)")
    ap.add_argument("--message", default=None, help="send one message, print the reply, exit")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse(argv)
    from inference.generate import ChatSession
    from inference.loading import LoadError, load_for_chat
    from inference.repl import ChatApp, banner, default_history_file, setup_readline
    from inference.sampling import Sampling, SettingError

    given = {
        k: getattr(args, k)
        for k in ("temperature", "top_p", "top_k", "repetition_penalty", "max_new_tokens", "seed")
        if getattr(args, k) is not None
    }
    if args.greedy:
        given["do_sample"] = False
    try:
        loaded = load_for_chat(args.model, args.device, args.dtype, args.quantize)
        session = ChatSession(loaded.model, loaded.tokenizer, device=loaded.device)
        session.set_sampling(Sampling.from_model_dir(loaded.source).updated(**given))
    except (LoadError, SettingError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    app = ChatApp(session, verbose=args.verbose)
    if args.message is not None:
        app.reply(args.message)
        return 0
    save_history = setup_readline(default_history_file() if args.history_file is None else args.history_file)
    try:
        return app.loop(banner=banner(loaded, session))
    finally:
        save_history()


if __name__ == "__main__":
    sys.exit(guard(main))
