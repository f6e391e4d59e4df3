"""``python -m training.merge_lora --adapter DIR --output DIR [--base DIR_OR_HUB_ID]``: fold a LoRA adapter in.

The base defaults to the one recorded in the adapter's config. The output is a plain save_pretrained
model (safetensors) that transformers loads alone; the tokenizer is copied from the base or the adapter dir.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def merge(adapter: str, output: str, base: str | None = None) -> Path:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg_path = Path(adapter) / "adapter_config.json"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{adapter}: no adapter_config.json; give a LoRA adapter directory")
    base = base or json.loads(cfg_path.read_text()).get("base_model_name_or_path")
    if not base:
        raise ValueError("the adapter records no base model; pass --base")
    model = AutoModelForCausalLM.from_pretrained(base, use_safetensors=True, trust_remote_code=False)
    merged = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    merged.save_pretrained(output, safe_serialization=True)
    for src in (adapter, base):
        try:
            AutoTokenizer.from_pretrained(src).save_pretrained(output)
            break
        except Exception:
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
    except (FileNotFoundError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"merged model written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
