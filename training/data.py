"""Training data: the packed HDF5 splits of tokenization_prep (or generative_data_prep), checked on load.

Each row yields ``input_ids``, ``position_ids`` (restarting at every article), ``segment_ids`` (one per
article; an article ends at token type 3), ``real_tokens`` (non-padding count, for throughput) and per-token
loss ``weights`` for predicting the NEXT token:
completion and end-of-article targets 1, prompt targets ``prompt_loss_weight``, padding 0, and never a
target in another article. Example row (P prompt, C completion, S end-of-article, _ padding)::

    types     P  P  C  C  S  P  C  S  _  _
    segment   0  0  0  0  0  1  1  1  2  2
    position  0  1  2  3  4  0  1  2  0  1
    weight    w  1  1  1  0  1  1  0  0  -     (weight[i] is for predicting token i+1)
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import h5py
import numpy as np
import torch

from common.errors import ConfigError, DataError, first_line
from tokenization_prep.provenance import TokenGroups
from tokenization_prep.schema import (
    COMPLETION,
    PADDING,
    PROMPT,
    SEP,
    TokenizedDir,
    dir_tokenizer_sha256,
    load_tokenized_dir,
    tokenizer_fingerprint,
)
from training.config import StageConfig
from training.data_card import check_data_card


def load_data(data_dir: Path, full: bool = False, name: str = "data_dir") -> TokenizedDir:
    """The tokenized dir checked against tokenization_prep's schema (finished, unaltered, file counts, metadata),
    as one ConfigError line naming the file and the fix."""
    try:
        return load_tokenized_dir(data_dir, full)
    except DataError as exc:
        raise ConfigError(f"{name} {exc}") from None


def read_lineage(model_dir: Path) -> dict | None:
    """A trained model dir's ``lineage.json`` (None when it has none), any problem as one ConfigError line."""
    path = Path(model_dir) / "lineage.json"
    if not path.is_file():
        return None
    try:
        lineage = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: not readable JSON ({first_line(exc)}); re-run the stage that wrote it") from None
    if not isinstance(lineage, dict):
        raise ConfigError(f"{path}: not a JSON object; re-run the stage that wrote it")
    return lineage


def check_same_tokenizer(data: TokenizedDir, init: Path, name: str = "init_from") -> None:
    """Refuse data tokenized with another tokenizer than the one ``init``'s model was trained with (its lineage's
    record, else the tokenizer saved beside it); ``name``: the setting that names the model."""
    theirs = (read_lineage(init) or {}).get("tokenizer_sha256") or dir_tokenizer_sha256(init)
    if theirs and data.tokenizer_sha256 and theirs != data.tokenizer_sha256:
        raise ConfigError(
            f"data_dir {data.path} was tokenized with another tokenizer (sha256 "
            f"{data.tokenizer_sha256[:12]}) than {name} {init}'s model ({theirs[:12]}); re-tokenize "
            f"with --pretrained_tokenizer {init}"
        )


def check_inputs(cfg: StageConfig) -> tuple[TokenizedDir, Path | None]:
    """Everything about the data that can be wrong before training starts, as one ConfigError line: the data dir against
    tokenization_prep's schema (finished, unaltered, file counts), its tokenizer against ``init_from``'s."""
    data = load_data(cfg.resolve(cfg.data_dir), full=cfg.verify_data == "sha256")
    load_data_tokenizer(data)
    check_data_card(data)  # read again at save_final: a bad card fails now, not after training
    init = cfg.resolve(cfg.init_from)
    if init is not None and not (init / "config.json").is_file():
        raise ConfigError(f"init_from {init} is not a saved model (no config.json); run the earlier stage first")
    if init is not None:
        check_same_tokenizer(data, init)
    check_kind(cfg, data)
    ref = cfg.resolve(cfg.dpo.reference_model) if cfg.dpo else None
    if ref is not None:
        if not (ref / "config.json").is_file():
            raise ConfigError(f"dpo.reference_model {ref} is not a saved model (no config.json); give a final/ dir")
        check_same_tokenizer(data, ref, "dpo.reference_model")
    return data, init


def check_kind(cfg: StageConfig, data: TokenizedDir) -> None:
    """A preference dir trains only ``objective: dpo``, an SFT dir only ``objective: sft`` (metadata.yaml ``kind``)."""
    if data.meta.kind == "preference" and cfg.objective != "dpo":
        raise ConfigError(
            f"data_dir {data.path} holds preference pairs (metadata.yaml kind: preference) but the stage's objective "
            "is sft; set objective: dpo, or give an SFT tokenized dir"
        )
    if data.meta.kind != "preference" and cfg.objective == "dpo":
        raise ConfigError(
            f"data_dir {data.path} holds SFT rows (metadata.yaml kind: {data.meta.kind}) but the stage's objective "
            "is dpo; give a preference dir (python -m data_prep prepare_preferences, then tokenization_prep)"
        )


def load_data_tokenizer(data: TokenizedDir):
    """The tokenizer saved beside the data (the final model gets it), checked against the fingerprint in
    metadata.yaml and against the embedding size, before training."""
    from transformers import AutoTokenizer

    path = data.path / "tokenizer"
    try:
        tok = AutoTokenizer.from_pretrained(str(path), trust_remote_code=False)
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"data_dir {path}: no readable tokenizer ({first_line(exc)}); re-run tokenization_prep"
        ) from None
    if data.meta.tokenizer_sha256 and tokenizer_fingerprint(tok) != data.meta.tokenizer_sha256:
        raise ConfigError(
            f"data_dir {path}: not the tokenizer metadata.yaml records (tokenizer_sha256 differs); "
            "re-run tokenization_prep"
        )
    if len(tok) > data.embedding_rows:
        raise ConfigError(
            f"data_dir {path}: {len(tok)} tokens but metadata.yaml sizes the embedding for "
            f"{data.embedding_rows}; re-run tokenization_prep"
        )
    return tok


class SplitRows(torch.utils.data.Dataset):
    """Rows ``index[k] = (file, row)`` of a split's HDF5 ``files``, read through per-process handles; subclasses set
    ``files``, ``index``, ``_handles``, ``_pid`` and read micro-batches in ``__getitems__``."""

    def __len__(self) -> int:
        return len(self.index)

    def _file(self, i: int) -> h5py.File:
        if self._pid != os.getpid():  # a DataLoader worker: never share the parent's HDF5 handles across fork
            self._handles, self._pid = {}, os.getpid()
        if i not in self._handles:
            self._handles[i] = h5py.File(self.files[i], "r")
        return self._handles[i]

    def __getitem__(self, k: int) -> dict:
        return self.__getitems__([k])[0]


class PackedDataset(SplitRows):
    """All rows of a split's HDF5 files; each file checked against metadata.yaml's sequence length. With ``groups``
    each row also carries ``source_ids`` / ``category_ids`` per token, from the files' provenance (-1: none)."""

    def __init__(self, data: TokenizedDir | Path, split: str, prompt_loss_weight: float, groups: bool = False):
        self.data = data = data if isinstance(data, TokenizedDir) else load_data(Path(data))
        self.seq_len = data.meta.max_seq_length
        self.files = data.splits[split]
        self.plw = prompt_loss_weight
        self.index: list[tuple[int, int]] = []
        for i, path in enumerate(self.files):
            with h5py.File(path, "r") as f:
                if "input_ids" not in f or "token_type_ids" not in f:
                    raise ConfigError(f"{path}: needs datasets input_ids and token_type_ids")
                shape = f["input_ids"].shape
                if len(shape) != 2 or shape[1] != self.seq_len or f["token_type_ids"].shape != shape:
                    raise ConfigError(
                        f"{path}: rows of length {shape[1:]} but metadata.yaml says max_seq_length "
                        f"{self.seq_len}; re-run tokenization_prep"
                    )
                self.index += [(i, r) for r in range(shape[0])]
        self.groups = None
        if groups:
            handles = [h5py.File(p, "r") for p in self.files]
            try:
                self.groups = TokenGroups(handles)
            finally:
                for f in handles:
                    f.close()
        self._handles: dict[int, h5py.File] = {}
        self._pid = os.getpid()

    def __getitems__(self, ks: list[int]) -> list[dict]:
        """A micro-batch of rows, read with one sorted selection per file (what the DataLoader calls)."""
        out: list[dict | None] = [None] * len(ks)
        by_file: dict[int, list[tuple[int, int]]] = {}
        for j, k in enumerate(ks):
            i, r = self.index[k]
            by_file.setdefault(i, []).append((r, j))
        for i, pairs in by_file.items():
            rows, inverse = np.unique([r for r, _ in pairs], return_inverse=True)
            f = self._file(i)
            ids, types = f["input_ids"][rows], f["token_type_ids"][rows]
            for (r, j), u in zip(pairs, inverse, strict=True):
                out[j] = row_features(ids[u], types[u], self.plw)
                if self.groups is not None:
                    for table, codes in self.groups.row(i, r, self.seq_len).items():
                        out[j][f"{table}_ids"] = torch.from_numpy(codes)
        return out


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The global row order of an epoch (the same on every run and every rank)."""
    return np.random.default_rng([seed, epoch]).permutation(n)


class StepSampler(torch.utils.data.Sampler):
    """This rank's micro-batches of row indices for optimizer steps ``start`` .. ``stop`` - 1.

    Step s of epoch e trains rows ``perm_e[s*R:(s+1)*R]`` (R = micro x accumulation x ranks), split by rank, then
    by micro-batch: a pure function of (seed, step), so a resumed run continues the same sequence and any
    topology with the same global batch trains the same rows. The permutation is computed once per epoch.
    """

    def __init__(
        self,
        n_rows: int,
        seed: int,
        micro: int,
        accumulation: int,
        world: int,
        rank: int,
        steps_per_epoch: int,
        start: int,
        stop: int,
    ):
        self.n, self.seed, self.mb, self.gas = n_rows, seed, micro, accumulation
        self.world, self.rank, self.spe, self.start, self.stop = world, rank, steps_per_epoch, start, stop

    def __len__(self) -> int:
        return max(0, self.stop - self.start) * self.gas

    def __iter__(self):
        per_rank, perm, perm_epoch = self.mb * self.gas, None, None
        for step in range(self.start, self.stop):
            epoch, s = divmod(step, self.spe)
            if epoch != perm_epoch:
                perm, perm_epoch = epoch_order(self.n, self.seed, epoch), epoch
            rows = perm[s * per_rank * self.world : (s + 1) * per_rank * self.world]
            mine = rows[self.rank * per_rank : (self.rank + 1) * per_rank]
            for m in range(self.gas):
                yield mine[m * self.mb : (m + 1) * self.mb].tolist()


def dev_shard(n_rows: int, rank: int, world: int, micro: int) -> list[list[int | None]]:
    """This rank's share of the dev rows in micro-batches: rows ``rank``, ``rank + world``, ..., then fill rows
    (None: a row read but weighted 0) so that every rank runs the same number of same-shape forwards.

    >>> [dev_shard(5, r, 2, 2) for r in (0, 1)]
    [[[0, 2], [4, None]], [[1, 3], [None, None]]]
    """
    mine: list[int | None] = list(range(rank, n_rows, world))
    per_rank = math.ceil(n_rows / world)
    mine += [None] * (per_rank - len(mine) + (-per_rank) % micro)
    return [mine[lo : lo + micro] for lo in range(0, len(mine), micro)]


def collate(rows: list[dict]) -> dict:
    return {k: torch.stack([r[k] for r in rows]) for k in rows[0]}


def step_loader(dataset, sampler: StepSampler, workers: int, prefetch: int, pin: bool, collate_fn=None):
    """Micro-batches in ``sampler``'s order, read and collated by ``workers`` processes (0: this one), ``prefetch``
    batches ahead per worker, in pinned memory for asynchronous copies to the GPU. The loader draws its worker seed
    from a generator of its own: from the global one it would shift the RNG stream (dropout) of a resumed run."""
    return torch.utils.data.DataLoader(
        dataset,
        batch_sampler=sampler,
        collate_fn=collate_fn or collate,
        num_workers=workers,
        prefetch_factor=prefetch if workers else None,
        pin_memory=pin,
        generator=torch.Generator().manual_seed(0),
    )


def row_features(ids: np.ndarray, types: np.ndarray, plw: float) -> dict:
    """Position ids, segment ids and next-token loss weights of one packed row."""
    ids = np.asarray(ids, dtype=np.int64)
    types = np.asarray(types)
    n = len(ids)
    ends = types == SEP
    segment = np.concatenate([[0], np.cumsum(ends)[:-1]])
    pad = types == PADDING
    # padding is its own segment (also after a truncated article that lost its end token)
    segment[pad] = (segment[~pad].max() if (~pad).any() else -1) + 1
    starts = np.flatnonzero(np.concatenate([[True], segment[1:] != segment[:-1]]))
    seg_start = starts[np.searchsorted(starts, np.arange(n), side="right") - 1]
    position = np.arange(n) - seg_start
    target_w = np.select([types == COMPLETION, types == SEP, types == PROMPT], [1.0, 1.0, plw], 0.0)
    weights = np.zeros(n, dtype=np.float32)
    same = segment[1:] == segment[:-1]
    weights[:-1] = np.where(same, target_w[1:], 0.0)
    return {
        "input_ids": torch.from_numpy(ids),
        "position_ids": torch.from_numpy(position),
        "segment_ids": torch.from_numpy(segment.astype(np.int64)),
        "weights": torch.from_numpy(weights),
        "real_tokens": torch.tensor(int((~pad).sum())),
    }


def dynamic_batch(examples: list[dict], pad_id: int) -> dict:
    """Dolly-style batch for the benchmark: one article per row, right-padded to the batch's longest."""
    width = max(len(e["input_ids"]) for e in examples)
    out = {k: [] for k in examples[0]}
    out["real_tokens"] = [e["real_tokens"] for e in examples]
    for e in examples:
        n = width - len(e["input_ids"])
        out["input_ids"].append(torch.nn.functional.pad(e["input_ids"], (0, n), value=pad_id))
        out["position_ids"].append(torch.nn.functional.pad(e["position_ids"], (0, n)))
        out["segment_ids"].append(torch.nn.functional.pad(e["segment_ids"], (0, n), value=1))
        out["weights"].append(torch.nn.functional.pad(e["weights"], (0, n)))
    return {k: torch.stack(v) for k, v in out.items()}
