"""``python -m training.merge_lora --adapter DIR --output DIR [--base DIR_OR_HUB_ID]``: fold a LoRA adapter in.

The base defaults to the one recorded in the adapter's config. The output is a plain save_pretrained
model (safetensors) that transformers loads alone; the tokenizer is copied from the base or the adapter dir.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from training.config import ConfigError, first_line
from training.export import merged_model, read_adapter_config


def merge(adapter: str, output: str, base: str | None = None) -> Path:
    from transformers import AutoTokenizer

    base = base or read_adapter_config(adapter)["base_model_name_or_path"]
    try:
        merged = merged_model(adapter, base)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"--adapter {adapter}: cannot merge onto {base} ({first_line(exc)})") from None
    merged.save_pretrained(output, safe_serialization=True)
    for src in (adapter, base):
        try:
            AutoTokenizer.from_pretrained(src, trust_remote_code=False).save_pretrained(output)
            break
        except (OSError, ValueError):
            continue
    return Path(output)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m training.merge_lora", description=__doc__.splitlines()[0])
    ap.add_argument("--adapter", required=True)
    ap.add_argument("--output", required=True)
    ap.add_argument("--base", default=None)
    args = ap.parse_args(argv)
    try:
        out = merge(args.adapter, args.output, args.base)
    except (ConfigError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"merged model written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
