"""gdp's split rules: how many train/dev/test files, which input line goes to which (split assignment), and HDF5
balancing.

Followed exactly so that ``--shuffle False`` gives gdp's files: the default number of training splits grows
with the input size; ratios add dev/test files on top of the training count with gdp's integer arithmetic;
line k goes to split ``k % splits`` (test splits come right after the training ones, dev splits last); after
packing each file on its own, rows move from the tails of over-full files to under-full ones.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from common.errors import DataError


@dataclass
class SplitCounts:
    """Files per split kind, and warnings about flags that had no effect."""

    train: int
    dev: int
    test: int
    warnings: list[str]

    @property
    def total(self) -> int:
        return self.train + self.dev + self.test


def default_training_splits(input_bytes: int) -> int:
    """gdp's default: 32 splits under 10 GiB of input, 128 under 100 GiB, else 256."""
    gib = input_bytes / 1024**3
    return 32 if gib < 10 else 128 if gib < 100 else 256


def split_counts(
    input_bytes: int,
    num_training_splits: int | None,
    num_dev_splits: int | None,
    num_test_splits: int | None,
    dev_ratio: float | None,
    test_ratio: float | None,
) -> SplitCounts:
    """gdp's ``get_split_counts``, with its errors as one-line messages and a warning for a ratio that gave 0."""
    for flag, value in (
        ("--num_training_splits", num_training_splits),
        ("--num_dev_splits", num_dev_splits),
        ("--num_test_splits", num_test_splits),
    ):
        if value is not None and value < 0:
            raise DataError(f"{flag} {value}: must be 0 or more")
    if num_training_splits is not None and num_training_splits < 1:
        raise DataError(f"--num_training_splits {num_training_splits}: must be at least 1")
    counts = (num_training_splits, num_dev_splits, num_test_splits)
    if None not in counts:
        if test_ratio is not None or dev_ratio is not None:
            flag = "--test_ratio" if test_ratio is not None else "--dev_ratio"
            raise DataError(
                f"{flag} cannot be combined with --num_training_splits, --num_dev_splits and "
                "--num_test_splits all given (gdp's rule): drop the ratio or one of the counts"
            )
        return SplitCounts(*counts, [])
    if num_dev_splits is not None or num_test_splits is not None:
        raise DataError(
            "--num_dev_splits and --num_test_splits need all three of --num_training_splits, "
            "--num_dev_splits and --num_test_splits (gdp's rule), or use --dev_ratio/--test_ratio"
        )
    dev_r, test_r = dev_ratio or 0.0, test_ratio or 0.0
    if not (0 <= dev_r < 1 and 0 <= test_r < 1 and dev_r + test_r < 1):
        raise DataError("--dev_ratio and --test_ratio must be in [0, 1) and sum to less than 1")
    train = num_training_splits if num_training_splits is not None else default_training_splits(input_bytes)
    total = int(train / (1 - dev_r - test_r))
    test = int(total * test_r)
    dev = total - test - train
    given = (("--dev_ratio", dev_ratio, dev), ("--test_ratio", test_ratio, test))
    ignored = [f"{flag} {ratio}" for flag, ratio, n in given if ratio and n == 0]
    warnings = (
        [
            f"warning: {' and '.join(ignored)} ignored: with {train} training splits gdp's rule gives "
            f"int({train} / (1 - {dev_r} - {test_r})) = {total} files in all, so 0 for "
            f"{'them' if len(ignored) > 1 else 'it'} (gdp does the same). Pass --num_training_splits, "
            "--num_dev_splits and --num_test_splits to choose the counts"
        ]
        if ignored
        else []
    )
    return SplitCounts(train, dev, test, warnings)


def split_names(c: SplitCounts) -> list[tuple[str, int]]:
    """(kind, 1-based file number) of split index 0, 1, ...: train files, then test, then dev (gdp's order)."""
    return (
        [("train", i + 1) for i in range(c.train)]
        + [("test", i + 1) for i in range(c.test)]
        + [("dev", i + 1) for i in range(c.dev)]
    )


def chunks(n: int, parts: int) -> list[tuple[int, int]]:
    """``parts`` contiguous ranges over n items whose sizes differ by at most one (gdp: ``array_split``).

    >>> chunks(7, 3)
    [(0, 3), (3, 5), (5, 7)]
    """
    base, extra = divmod(n, parts)
    out, lo = [], 0
    for i in range(parts):
        hi = lo + base + (i < extra)
        out.append((lo, hi))
        lo = hi
    return out


def assign_lines(line_numbers: np.ndarray, counts: SplitCounts, shuffle: str, seed: int) -> list[np.ndarray]:
    """Per split index (train files, then test, then dev): positions into the line index, in file order.

    ``line_numbers``: each indexed line's number among all input lines (blank ones too, files in order).
    ``--shuffle False``: line k goes to split ``k % splits``, as gdp does. Shuffled: a seeded permutation of the
    lines cut into contiguous, near-equal chunks.

    >>> [p.tolist() for p in assign_lines(np.array([0, 1, 3, 4]), SplitCounts(2, 0, 0, []), "False", 0)]
    [[0, 3], [1, 2]]
    """
    n_splits = counts.total
    if shuffle == "False":
        which = line_numbers % n_splits
        return [np.flatnonzero(which == j) for j in range(n_splits)]
    order = np.random.default_rng(seed).permutation(len(line_numbers))
    return [order[lo:hi] for lo, hi in chunks(len(order), n_splits)]


def balance(rows: list[list[int]]) -> list[list[int]]:
    """gdp's ``balance_hdf5_files`` on row lists: equal counts within one, the first ``total % n`` files larger.

    Over-full files give their last rows (in file order) to a pool; under-full files, in order, append rows
    from the front of the pool. Nothing is dropped."""
    n = len(rows)
    if n == 0:
        return rows
    rows = [list(r) for r in rows]
    total = sum(len(r) for r in rows)
    avg, rem = total // n, total % n
    pool: list[int] = []
    need: list[tuple[int, int]] = []
    for f, r in enumerate(rows):
        c = len(r)
        if c > avg:
            k = c - avg
            if rem > 0:
                rem -= 1
                k -= 1
                if k == 0:
                    continue
            pool += r[c - k :]
            rows[f] = r[: c - k]
        elif c < avg:
            k = avg - c + (1 if rem > 0 else 0)
            rem -= 1 if rem > 0 else 0
            need.append((f, k))
        elif rem > 0:
            rem -= 1
            need.append((f, 1))
    for f, k in need:
        rows[f] += pool[:k]
        pool = pool[k:]
    return rows
