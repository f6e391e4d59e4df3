"""``python -m tokenization_prep pipeline``: gdp's pipeline, input lines -> tokenized train/dev HDF5 files.

Lines go to train/dev/test splits (gdp's round robin, or our seeded shuffle), each split is tokenized and packed
into balanced HDF5 files, then metadata and checksums are written.

    python -m tokenization_prep pipeline --input_path data_prep/oasst1_dolly.jsonl \\
        --output_path tokenization_prep/oasst1_dolly_out --pretrained_tokenizer data/tokenizers/gpt-neox-20b \\
        --max_seq_length 2048 --input_packing_config greedy::drop --shuffle on_RAM --num_training_splits 8
    python -m tokenization_prep pipeline --config tokenization_prep/configs/bloomchat_oa_dolly.yaml \\
        --pretrained_tokenizer data/tokenizers/gpt-neox-20b   # a recipe; flags given override it

The orchestration only: the inputs are indexed (``inputs.py``), lines assigned to splits (``splits.py``), each
split is a ``SplitJob`` (``split_job.py``). Every file is written under a temp name and renamed;
``manifest.sha256`` is written last, so an output without it is incomplete and a rerun replaces it with identical
bytes.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import orjson
import yaml

from common.cli import guard
from common.errors import ConfigError, DataError
from common.files import atomic_write
from common.settings import command_parser, parse_settings
from tokenization_prep.data_card import read_output_card, report_summary, write_output_card
from tokenization_prep.engine import make_engine
from tokenization_prep.inputs import LineIndex, check_log_path, input_files, read_categories
from tokenization_prep.leakage import remove_leaks
from tokenization_prep.metadata import dataset_metadata, write_manifest
from tokenization_prep.preference import input_kind
from tokenization_prep.preference_run import run_preference
from tokenization_prep.report import write_report
from tokenization_prep.schema import MANIFEST, MARKER
from tokenization_prep.settings import PipelineConfig
from tokenization_prep.shards import TokenizerSpec, run_tokenizer, shard_tasks, write_file
from tokenization_prep.split_job import SplitJob, tokenize_splits
from tokenization_prep.splits import assign_lines, split_counts, split_names
from tokenization_prep.tokenizer_io import pad_id, tokenizer_model_type


def prepare_output_dir(out: Path, overwrite: bool) -> None:
    """Refuse to clobber a finished output or a foreign directory; clear our own incomplete one."""
    if out.exists() and not out.is_dir():
        raise DataError(f"--output_path {out} is a file; give a directory")
    if out.is_dir() and any(out.iterdir()):
        ours = (out / MARKER).exists()
        if not ours:
            raise DataError(
                f"--output_path {out} is not empty and was not written by tokenization_prep; "
                "choose an empty or new directory"
            )
        if (out / MANIFEST).exists() and not overwrite:
            raise DataError(f"--output_path {out} already holds a finished output; pass --overwrite_output_path")
        shutil.rmtree(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / MARKER).write_text("written by tokenization_prep; manifest.sha256 marks a finished output\n")
    except OSError as exc:
        raise DataError(f"--output_path {out}: cannot write ({exc.strerror})") from None


def settings_lines(cfg: PipelineConfig) -> list[str]:
    """The settings as logs.log records them: ``name: value``, the run's fields, then the article fields."""
    return [f"{k}: {v}" for k, v in cfg.model_dump(exclude={"article"}, by_alias=True).items()] + [
        f"{k}: {v}" for k, v in cfg.article.model_dump().items()
    ]


def run_pipeline(cfg: PipelineConfig, log=print) -> dict:
    """Run everything; return a summary dict (also the report lines under 'report'). ``log`` gets warnings."""
    logged = settings_lines(cfg)

    def warn(line: str) -> None:
        logged.append(line)
        log(line)

    files = input_files(cfg.input_path)
    if input_kind(files) == "preference":  # pairs: one padded row each (preference_run.py)
        return run_preference(cfg, files, logged, warn, prepare_output_dir)
    if cfg.dev_trees_from:
        raise ConfigError(
            f"--dev_trees_from {cfg.dev_trees_from}: for preference input only ({files[0]} holds SFT records); "
            "leave it out"
        )
    counts = split_counts(
        sum(p.stat().st_size for p in files),
        cfg.num_training_splits,
        cfg.num_dev_splits,
        cfg.num_test_splits,
        cfg.dev_ratio,
        cfg.test_ratio,
    )
    for w in counts.warnings:
        warn(w)
    local = Path(cfg.pretrained_tokenizer).expanduser()  # a local dir by its full path: workers may run elsewhere
    where = str(local.resolve()) if local.exists() else cfg.pretrained_tokenizer
    spec = TokenizerSpec(where, cfg.special_tokens_dict, cfg.apply_chat_template)
    engine = make_engine(cfg.engine, cfg.num_workers, cfg.ray_address)
    output = Output(Path(cfg.output_path))
    try:
        with run_tokenizer(spec) as (tok, render):
            result = _run(cfg, files, counts, spec, tok, render, engine, output, logged, warn, log)
    except BaseException:
        output.discard()
        raise
    finally:
        engine.close()
    result["timing"]["main_peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    log("timing: " + orjson.dumps(result["timing"]).decode())
    return result


def _run(cfg, files, counts, spec, tok, render, engine, output, logged, warn, log) -> dict:
    """An SFT run: index and split (here), tokenize (the engine's workers), plan (here), write (the workers), and
    the rest while they write; the summary with the wall time of each phase."""
    clock = Clock()
    is_text = cfg.article.is_text or files[0].suffix == ".txt"
    article = cfg.article.model_copy(update={"is_text": is_text, "chat_render": render or cfg.article.chat_render})
    model_type, why = tokenizer_model_type(tok, cfg.model_config_path or cfg.pretrained_tokenizer)
    categories = read_categories(cfg.categories_path)
    out = Path(cfg.output_path)
    log_path = check_log_path(cfg.log_file_path) or out / "logs.log"
    lines = LineIndex(files)
    if lines.total < counts.total + 2:
        raise DataError(
            f"{lines.total} input lines cannot fill {counts.train} training, {counts.dev} dev and {counts.test} "
            f"test splits (gdp needs at least splits + 2 lines); lower --num_training_splits or the ratios"
        )
    output.prepare(cfg.overwrite_output_path)
    names = split_names(counts)
    parts = assign_lines(lines.global_numbers, counts, cfg.shuffle, cfg.seed)
    parts, leakage = check_leakage(lines, parts, names, cfg.dev_leakage, article, logged, log, engine)
    by_split = {split: [p for p, (s, _) in zip(parts, names) if s == split] for split in ("train", "test", "dev")}
    write_line_files(out, lines, parts, names, counts, cfg.keep_split_jsonls, ".txt" if is_text else ".jsonl")
    clock.lap("index")
    workers = engine.workers
    shards = {
        split: shard_tasks(
            split, by_split[split], lines, spec, article, cfg.ignore_input_format_error, out / ".shards", workers
        )
        for split in ("train", "dev")
        if by_split[split]
    }
    tokenized = tokenize_splits(engine, shards, [str(p) for p in files])
    clock.lap("tokenize")
    splits, sizes, tasks = {}, {}, []
    for split, tokens in tokenized.items():
        job = SplitJob(
            split, len(by_split[split]), cfg, out, categories, article.keep_prompt_only_sequences, pad_id(tok)
        )
        split_tasks, sizes[split] = job.plan(tokens, warn)
        splits[split] = tokens.metrics
        tasks += split_tasks
    clock.lap("plan")
    with ThreadPoolExecutor(1) as background:  # the workers write the HDF5 files while this process does the rest
        writing = background.submit(lambda: max(engine.map(write_file, tasks), default=0.0))
        metadata, report = _finish(
            cfg, files, counts, tok, model_type, out, tokenized, leakage, splits, sizes, categories
        )
        worker_mb = max(writing.result(), *(t.worker_mb for t in tokenized.values()))
    clock.lap("write")
    if why:  # said once the run succeeded, so that an error stays one line
        warn(
            f"warning: metadata.yaml's tokenizer_model_type is unknown ({why}); gdp's validator compares it with "
            "the model's config type: pass --model_config with the model's dir or hub id"
        )
    shutil.rmtree(out / ".shards", ignore_errors=True)
    with atomic_write(log_path, "w") as fh:
        fh.write("\n".join(logged + report) + "\n")
    write_manifest(out)  # last: an output without it is incomplete
    clock.lap("finish")
    timing = clock.summary(engine.name, workers, parallel=("tokenize", "write"))
    timing["worker_own_mb"] = round(worker_mb, 1)  # the most a worker held of its own (USS) after a task
    return {
        "output": str(out),
        "metadata": metadata,
        "report": report,
        "splits": splits,
        "counts": counts,
        "timing": timing,
    }


def _finish(cfg, files, counts, tok, model_type, out, tokenized, leakage, splits, sizes, categories):
    """Every output file but the HDF5 files, the log and the manifest; returns (metadata, report lines)."""
    skipped = [x for tokens in tokenized.values() for x in tokens.skipped]
    if skipped:
        with atomic_write(out / "skipped_lines.jsonl") as fh:
            fh.write(b"\n".join(skipped) + b"\n")
    if categories is not None:
        with atomic_write(out / "category_to_id.json") as fh:
            fh.write(orjson.dumps({c: i for i, c in enumerate(categories)}))
    if cfg.apply_chat_template:  # the template the data was rendered with goes with it
        tok.chat_template = tok.own_chat_template
    tok.save_pretrained(str(out / "tokenizer"))
    data_licenses = write_output_card(out, files)  # the inputs' data cards, combined (tokenization_prep/data_card.py)
    metadata = dataset_metadata(cfg, tok, model_type, counts, sizes, splits, pad_id(tok), data_licenses=data_licenses)
    with atomic_write(out / "metadata.yaml", "w") as fh:
        yaml.safe_dump(metadata, fh, sort_keys=True)
    extra = {"metadata": metadata} | ({"leakage": leakage.as_dict()} if cfg.dev_leakage != "off" else {})
    if data_licenses is not None:
        extra["data_card"] = report_summary(read_output_card(out))
    report = write_report(splits, cfg.max_seq_length, out, extra)
    return metadata, report


class Clock:
    """Wall time per phase of a run, for the ``timing:`` line: which part is serial, which spread over workers."""

    def __init__(self):
        self.start = self.last = time.perf_counter()
        self.phases: dict[str, float] = {}

    def lap(self, phase: str) -> None:
        now = time.perf_counter()
        self.phases[phase] = round(now - self.last, 3)
        self.last = now

    def summary(self, engine: str, workers: int, parallel: tuple[str, ...]) -> dict:
        total = time.perf_counter() - self.start
        serial = total - sum(self.phases.get(p, 0.0) for p in parallel)
        return {
            "total_s": round(total, 3),
            "serial_s": round(serial, 3),
            "phases": self.phases,
            "workers": workers,
            "engine": engine,
        }


class Output:
    """The run's output directory: made ready (``prepare_output_dir``), and, when the run stops after that, removed
    (emptied, when the user gave it), so nothing half-written stays."""

    def __init__(self, path: Path):
        self.path, self.created, self.prepared = path, not path.exists(), False

    def prepare(self, overwrite: bool) -> None:
        prepare_output_dir(self.path, overwrite)
        self.prepared = True

    def discard(self) -> None:
        if not self.prepared or not self.path.is_dir():
            return
        if self.created:
            shutil.rmtree(self.path, ignore_errors=True)
            return
        for p in self.path.iterdir():
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)


def check_leakage(lines: LineIndex, parts, names, mode: str, article, logged: list[str], log, engine=None):
    """``--dev_leakage``: dev/test lines that nearly copy a training line moved or dropped (``leakage.py``); the
    summary and every leak go to logs.log, and when any was found, the summary and the check's time to ``log``."""
    if mode == "off":
        return parts, None
    start = time.perf_counter()
    parts, leakage = remove_leaks(lines, parts, names, mode, article, engine)
    logged += leakage.log_lines()
    if leakage.leaks:
        log(f"{leakage.summary()} ({time.perf_counter() - start:.2f} s)")
    return parts, leakage


def write_line_files(out: Path, lines: LineIndex, parts, names, counts, keep_split_jsonls: bool, ext: str) -> None:
    """gdp's line files: every test split to ``test_files/`` and, with ``--keep_split_jsonls``, the others to
    ``splits/``."""
    if keep_split_jsonls:
        (out / "splits").mkdir(exist_ok=True)
    for part, (split, i) in zip(parts, names):
        n = getattr(counts, split)
        if split == "test":
            (out / "test_files").mkdir(exist_ok=True)
            lines.write(out / "test_files" / f"test_{i}_of_{n}{ext}", part)
        elif keep_split_jsonls:
            lines.write(out / "splits" / f"{split}_{i}_of_{n}{ext}", part)


def make_parser() -> argparse.ArgumentParser:
    return command_parser("python -m tokenization_prep pipeline", __doc__, PipelineConfig, config=True)


def main(argv: list[str] | None = None) -> int:
    cfg = parse_settings(make_parser(), PipelineConfig, argv)
    os.environ["RAYON_NUM_THREADS"] = "1"  # a worker is one core; with one worker, this process is it
    result = run_pipeline(cfg, log=lambda line: print(line, file=sys.stderr))
    print("\n".join(result["report"]))
    c = result["counts"]
    print(
        f"output: {result['output']} ({c.train} train, {c.dev} dev, {c.test} test files; metadata.yaml, "
        "sha256/files_metadata.json, data_report.md, PNG histograms, logs.log, manifest.sha256)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(guard(main))
