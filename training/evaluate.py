"""Evaluate trained models on a tokenized dir's dev split, per source: did the model learn to stop, and how well
does it predict the dev replies. Several models side by side (an untrained one, stage 1, stage 2).

    python -m training evaluate --model training/ckpt/stage1_oig/final --model training/ckpt/stage2_oa_dolly/final \\
        --untrained training/configs/demo/stage1_oig.yaml --data tokenization_prep/oasst1_dolly_out \\
        --output_path eval.json

For each model and source (the articles' provenance): greedy replies to the first ``--prompts`` dev prompts (each
conversation up to its last bot turn) and the share that stops at EOS (``stop_eos``), at a ``<human>:`` tag
(``stop_tag``, where the chat would cut) or at ``--max_new_tokens`` (``stop_length``); ``forged_tags``, the share
whose reply writes a role tag; the mean reply length in tokens; and the token-weighted dev loss of the whole dev
split (``dev_loss``; ``--dev_rows N``: its first N rows, for quick looks), with the prompt_loss_weight the model's
stage trained with: the number the trainer's final evaluation prints. JSON under ``models.<label>.sources`` plus a
markdown table.

``--preference_data DIR`` (a ``kind: preference`` tokenized dir, stage 3's data) adds, per model and source, over
its dev pairs: ``reward_accuracy`` (share of pairs whose chosen reply gains more log-prob over the reference
model than the rejected one: beta*(logp - ref_logp) compared, the DPO reward), ``reward_margin`` (the mean reward
difference, at ``--beta``) and the reference-free ``logp_accuracy`` (share with logp(chosen) > logp(rejected),
summed over the reply's tokens). The reference is ``--reference DIR``, by default the first model given (whose own
rewards are then 0: accuracy 0). JSON under ``models.<label>.preference`` plus a second table; so stage 2 and
stage 3 stand side by side on the same pairs.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import h5py
import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from common.chat_format import BOT_TAG, HUMAN_TAG
from common.cli import guard
from common.errors import ConfigError
from common.files import atomic_write
from common.settings import command_parser, parse_settings
from tokenization_prep.provenance import has_provenance, name_tables, row_pieces
from tokenization_prep.schema import TokenizedDir
from training.config import ModelConfig, load_config
from training.data import (
    COMPLETION,
    PROMPT,
    SEP,
    PackedDataset,
    check_same_tokenizer,
    collate,
    load_data,
    read_lineage,
)
from training.dev_loss import GroupedLoss
from training.modeling import build_model, packed_token_losses

KINDS = {"gpt_neox": "pythia", "bloom": "bloom"}
STOPS = ("stop_eos", "stop_tag", "stop_length")


def dev_prompts(dev: PackedDataset, per_source: int) -> dict[str, list[np.ndarray]]:
    """Per source, up to ``per_source`` prompts in dev order: whole articles cut before their last completion."""
    out: dict[str, list[np.ndarray]] = {}
    for path in dev.files:
        with h5py.File(path, "r") as f:
            ids, types = f["input_ids"], f["token_type_ids"]
            tables = name_tables(f) if has_provenance(f) else None
            for r in range(len(ids)):
                row_ids, row_types = ids[r], types[r]
                if tables is not None:
                    spans = [
                        (p.source or "-", p.row_position, p.row_position + p.token_end - p.token_start)
                        for p in row_pieces(f, r, tables)
                        if not p.truncated and p.token_start == 0 and p.token_end == p.article_tokens
                    ]
                else:  # gdp's files: articles end at token type 3 (a row's first may be the tail of one: skipped
                    ends = np.flatnonzero(row_types == SEP) + 1  # unless it starts with a prompt)
                    starts = np.concatenate([[0], ends[:-1]])
                    spans = [("-", lo, hi) for lo, hi in zip(starts, ends) if row_types[lo] == PROMPT]
                for source, lo, hi in spans:
                    bucket = out.setdefault(source, [])
                    prompt_at = np.flatnonzero(row_types[lo:hi] == PROMPT)
                    if (
                        len(bucket) >= per_source
                        or not len(prompt_at)
                        or not (row_types[lo + prompt_at[-1] + 1 : hi] == COMPLETION).any()
                    ):
                        continue
                    bucket.append(np.asarray(row_ids[lo : lo + prompt_at[-1] + 1], dtype=np.int64))
    return out


def classify(reply_ids: list[int], tokenizer, eos: int) -> tuple[str, bool, int]:
    """(how the reply stopped, whether it wrote a role tag, its length in tokens up to the stop)."""
    end = reply_ids.index(eos) if eos in reply_ids else len(reply_ids)
    text = tokenizer.decode(reply_ids[:end])
    forged = HUMAN_TAG in text or BOT_TAG in text
    if HUMAN_TAG in text:
        cut = text.index(HUMAN_TAG)
        return "stop_tag", forged, len(tokenizer(text[:cut], add_special_tokens=False)["input_ids"])
    return ("stop_eos" if end < len(reply_ids) else "stop_length"), forged, end


def generate_stats(model, tokenizer, prompts: list[np.ndarray], max_new: int, batch: int, device) -> dict:
    """Greedy replies in left-padded batches; shares of each stop reason, of forged tags, mean reply tokens."""
    from transformers import GenerationConfig

    eos = tokenizer.eos_token_id
    gen = GenerationConfig(
        max_new_tokens=max_new,
        do_sample=False,
        num_beams=1,
        eos_token_id=eos,
        pad_token_id=eos,
        stop_strings=[HUMAN_TAG],
        temperature=None,
        top_p=None,
        top_k=None,
    )
    counts = {k: 0 for k in STOPS}
    forged, lengths = 0, []
    for lo in range(0, len(prompts), batch):
        part = prompts[lo : lo + batch]
        width = max(len(p) for p in part)
        ids = torch.full((len(part), width), eos, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for j, p in enumerate(part):
            ids[j, width - len(p) :] = torch.from_numpy(p)
            mask[j, width - len(p) :] = 1
        with torch.no_grad():
            out = model.generate(
                input_ids=ids.to(device), attention_mask=mask.to(device), generation_config=gen, tokenizer=tokenizer
            )
        for row in out[:, width:].tolist():
            how, tag, n = classify(row, tokenizer, eos)
            counts[how] += 1
            forged += tag
            lengths.append(n)
    n = max(1, len(prompts))
    return {
        **{k: v / n for k, v in counts.items()},
        "forged_tags": forged / n,
        "mean_reply_tokens": float(np.mean(lengths)) if lengths else 0.0,
        "prompts": len(prompts),
    }


def dev_loss(model, dev: PackedDataset, batch: int, device, rows: int = 0) -> dict:
    """Token-weighted dev loss of the dev split (its first ``rows`` rows when given), in all and per source (as
    the trainer computes it)."""
    acc = GroupedLoss(dev.groups.names, device)
    n = min(len(dev), rows) if rows else len(dev)
    with torch.no_grad():
        for lo in range(0, n, batch):
            b = {k: v.to(device) for k, v in collate(dev.__getitems__(list(range(lo, min(n, lo + batch))))).items()}
            acc.add(b, packed_token_losses(model, b))
    return acc.result([float(x) for x in acc.sums()])


def model_to_evaluate(spec: str, data: TokenizedDir, seed_config: Path | None = None):
    """(model, tokenizer dir, prompt_loss_weight) of a save_pretrained dir (checked to share the data's tokenizer;
    the weight its stage trained with, from its lineage), or of ``seed_config``'s untrained initialization."""
    rows, seq = data.embedding_rows, data.meta.max_seq_length
    if seed_config is not None:
        cfg = load_config(seed_config)
        return build_model(cfg.model, rows, seq, None, cfg.seed)[0], None, cfg.prompt_loss_weight
    path = Path(spec)
    config = path / "config.json"
    if not config.is_file():
        raise ConfigError(f"--model {spec}: not a model dir (no config.json); give a stage's final/ dir")
    try:
        kind = KINDS.get(json.loads(config.read_text()).get("model_type"))
    except (ValueError, AttributeError):
        raise ConfigError(f"--model {spec}: config.json is not valid JSON") from None
    if kind is None:
        raise ConfigError(f"--model {spec}: model type not supported here (Pythia/GPT-NeoX and BLOOM are)")
    if not any(path.glob("*.safetensors")):
        raise ConfigError(f"--model {spec}: no safetensors weights (this project loads no pickle)")
    check_same_tokenizer(data, path)
    plw = ((read_lineage(path) or {}).get("config") or {}).get("prompt_loss_weight", 0.0)
    return build_model(ModelConfig(kind=kind, name_or_path=str(path)), rows, seq, None)[0], path, plw


def preference_dev(spec: str):
    """``--preference_data``: the checked tokenized dir (kind preference, with a dev split) and its dev pairs."""
    from training.dpo import PreferenceDataset

    data = load_data(Path(spec), name="--preference_data")
    if data.meta.kind != "preference":
        raise ConfigError(
            f"--preference_data {spec}: holds SFT rows (metadata.yaml kind: {data.meta.kind}); give a preference "
            "tokenized dir (python -m data_prep prepare_preferences, then tokenization_prep)"
        )
    if not data.splits["dev"]:
        raise ConfigError(f"--preference_data {spec}: no dev split; tokenize with --dev_ratio or --dev_trees_from")
    return data, PreferenceDataset(data, "dev")


def pair_logps(model, dev, batch: int, device, limit: int = 0) -> tuple[torch.Tensor, list[int]]:
    """(pairs, 2) chosen / rejected summed log-probs of every dev pair (the first ``limit``; 0: all), and each
    pair's source code."""
    from training.preference import preference_batch, sequence_logps

    out, sources = [], []
    n_pairs = min(len(dev), limit) if limit else len(dev)
    for lo in range(0, n_pairs, batch):
        b = preference_batch(dev.__getitems__(list(range(lo, min(n_pairs, lo + batch)))))
        logps, _ = sequence_logps(model, {k: v.to(device) for k, v in b.items()})
        n = len(b["pair_index"])
        out.append(torch.stack([logps[:n], logps[n:]], dim=1).cpu())
        sources += b["source_ids"].tolist()
    return torch.cat(out), sources


def preference_figures(logps: torch.Tensor, ref: torch.Tensor, sources: list[int], names: list[str], beta: float):
    """Per source: pairs, reward_accuracy, reward_margin (relative to ``ref``), logp_accuracy."""
    rewards = beta * (logps - ref)
    margin = rewards[:, 0] - rewards[:, 1]
    codes = torch.tensor(sources)
    out = {}
    for code in sorted(set(sources)):
        m = codes == code
        out[names[code] if code >= 0 else "-"] = {
            "pairs": int(m.sum()),
            "reward_accuracy": float((margin[m] > 0).double().mean()),
            "reward_margin": float(margin[m].mean()),
            "logp_accuracy": float((logps[m, 0] > logps[m, 1]).double().mean()),
        }
    return out


def evaluate(
    models: list[tuple[str, str, Path | None]],
    data_dir: Path,
    per_source: int,
    max_new: int,
    batch: int,
    dev_rows: int = 0,
    preference: str | None = None,
    reference: str | None = None,
    beta: float = 0.1,
    dev_pairs: int = 0,
) -> dict:
    """The evaluation of every (label, model dir, untrained config) on ``data_dir``'s dev split (and, with
    ``preference``, on that preference dir's dev pairs relative to ``reference`` or the first model)."""
    from transformers import AutoTokenizer

    data = load_data(data_dir, name="--data")
    if not data.splits["dev"]:
        raise ConfigError(f"--data {data_dir}: no dev split; tokenize with --num_dev_splits or --dev_ratio")
    prompts = dev_prompts(PackedDataset(data, "dev", 0.0, groups=True), per_source)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    result = {
        "data": str(data_dir),
        "max_new_tokens": max_new,
        "prompts_per_source": per_source,
        "dev_rows": dev_rows or None,  # None: the whole dev split
        "dev_pairs": dev_pairs or None,  # None: every dev pair of --preference_data
        "models": {},
    }
    pref, ref_logps = None, None
    if preference:
        pref_data, pref = preference_dev(preference)
        ref_spec, ref_config = (reference, None) if reference else models[0][1:]
        ref_model = model_to_evaluate(ref_spec, pref_data, ref_config)[0].to(device).eval()
        ref_logps = pair_logps(ref_model, pref, batch, device, dev_pairs)[0]
        del ref_model
        result.update(preference_data=preference, reference=ref_spec, beta=beta)
    for label, spec, seed_config in models:
        model, tok_dir, plw = model_to_evaluate(spec, data, seed_config)
        model.to(device).eval()
        if pref is not None:
            if seed_config is None:
                check_same_tokenizer(pref_data, Path(spec))
            logps, sources = pair_logps(model, pref, batch, device, dev_pairs)
            figures = preference_figures(logps, ref_logps, sources, pref.sources, beta)
        tokenizer = AutoTokenizer.from_pretrained(str(tok_dir or data_dir / "tokenizer"))
        if tokenizer.eos_token_id is None:
            raise ConfigError(f"{tok_dir or data_dir / 'tokenizer'}: the tokenizer has no EOS token")
        losses = dev_loss(model, PackedDataset(data, "dev", plw, groups=True), batch, device, dev_rows)
        sources = {}
        for source in sorted(set(prompts) | set(losses["by_source"])):
            stats = generate_stats(model, tokenizer, prompts.get(source, []), max_new, batch, device)
            sources[source] = {
                **stats,
                "dev_loss": losses["by_source"].get(source),
                "dev_tokens": losses["tokens_by_source"].get(source, 0),
            }
        result["models"][label] = {"path": spec, "dev_loss": losses["loss"], "sources": sources}
        if pref is not None:
            result["models"][label]["preference"] = figures
        del model
    return result


def table(result: dict) -> list[str]:
    out = [
        "| model | source | dev loss | stop: EOS | stop: <human>: | stop: length | forged tags | reply tokens |"
        " prompts |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for label, m in result["models"].items():
        for source, s in m["sources"].items():
            loss = "-" if s["dev_loss"] is None else f"{s['dev_loss']:.3f}"
            out.append(
                f"| {label} | {source} | {loss} | {100 * s['stop_eos']:.0f}% | {100 * s['stop_tag']:.0f}% | "
                f"{100 * s['stop_length']:.0f}% | {100 * s['forged_tags']:.0f}% | "
                f"{s['mean_reply_tokens']:.1f} | {s['prompts']} |"
            )
    if "reference" in result:
        out += [
            "",
            f"dev pairs of {result['preference_data']}, rewards relative to {result['reference']} (beta "
            f"{result['beta']}):",
            "| model | source | pairs | reward accuracy | reward margin | logp accuracy |",
            "|---|---|---:|---:|---:|---:|",
        ]
        for label, m in result["models"].items():
            for source, p in m["preference"].items():
                out.append(
                    f"| {label} | {source} | {p['pairs']} | {100 * p['reward_accuracy']:.0f}% | "
                    f"{p['reward_margin']:.4f} | {100 * p['logp_accuracy']:.0f}% |"
                )
    return out


class EvaluateSettings(BaseModel):
    """The evaluate command's settings (``--model`` and ``--untrained`` may be given several times)."""

    model_config = ConfigDict(extra="forbid")
    model: list[str] = Field([], description="a save_pretrained dir (repeat for several)")
    untrained: list[str] = Field(
        [], description="a stage config: its model as initialized, before training (repeatable)"
    )
    data: str = Field(description="a tokenization_prep output dir with a dev split")
    output_path: str | None = Field(None, description="write the results as JSON here")
    prompts: int = Field(32, ge=1, description="dev prompts per source to reply to")
    max_new_tokens: int = Field(256, ge=1, description="longest reply, in tokens")
    batch_size: int = Field(8, ge=1, description="prompts (and dev rows) per forward pass")
    dev_rows: int = Field(0, ge=0, description="dev loss over the first N dev rows only (0: all; quick looks)")
    preference_data: str | None = Field(
        None, description="a preference tokenized dir: also score its dev pairs (reward and logp accuracy)"
    )
    reference: str | None = Field(
        None, description="the reference model of the pair rewards (default: the first model given)"
    )
    beta: float = Field(0.1, gt=0, description="the reward scale of the pair rewards (stage 3's dpo.beta)")
    dev_pairs: int = Field(0, ge=0, description="score the first N dev pairs only (0: all; quick looks)")


def make_parser() -> argparse.ArgumentParser:
    """Each --model adds to the list: --model A --model B (or --model A B)."""
    return command_parser("python -m training evaluate", __doc__, EvaluateSettings)


def main(argv=None) -> int:
    args = parse_settings(make_parser(), EvaluateSettings, argv)
    if not args.model and not args.untrained:
        raise ConfigError("give at least one --model DIR (or --untrained STAGE_CONFIG)")
    models = [(f"untrained ({Path(c).stem})", c, Path(c)) for c in args.untrained] + [(m, m, None) for m in args.model]
    result = evaluate(
        models,
        Path(args.data),
        args.prompts,
        args.max_new_tokens,
        args.batch_size,
        args.dev_rows,
        args.preference_data,
        args.reference,
        args.beta,
        args.dev_pairs,
    )
    print("\n".join(table(result)))
    if args.output_path:
        with atomic_write(Path(args.output_path), "w") as fh:
            json.dump(result, fh, indent=2)
        print(f"wrote {args.output_path}")
    return 0


if __name__ == "__main__":
    sys.exit(guard(main))
