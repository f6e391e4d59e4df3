"""gdp's split arithmetic and balancing rule, on small cases worked by hand from gdp's code."""

import pytest

from common.errors import DataError
from tokenization_prep.splits import balance, default_training_splits, split_counts


def test_split_counts_follow_gdps_arithmetic():
    c = split_counts(1000, 4, None, None, 0.1, 0.05)  # the run: int(4 / 0.85) = 4 files, so no dev/test
    assert (c.train, c.dev, c.test) == (4, 0, 0) and len(c.warnings) == 1
    assert "--dev_ratio 0.1 and --test_ratio 0.05 ignored" in c.warnings[0]
    c = split_counts(1000, None, None, None, 0.2, 0.1)  # int(32 / 0.7) = 45: 4 test, 9 dev on top of 32
    assert (c.train, c.dev, c.test, c.warnings) == (32, 9, 4, [])
    assert (split_counts(1000, 3, 2, 1, None, None).total, default_training_splits(11 * 1024**3)) == (6, 128)
    for args, needle in [
        ((3, 2, 1, 0.1, None), "--dev_ratio cannot be combined"),
        ((3, 2, None, None, None), "need all three"),
        ((None, None, None, 0.6, 0.5), "sum to less than 1"),
        ((0, None, None, None, None), "at least 1"),
    ]:
        with pytest.raises(DataError, match=needle):
            split_counts(1000, *args)


def test_balance_moves_tail_rows_in_file_order():
    # 10 rows in 3 files: avg 3, remainder 1 -> file 1 keeps one extra; tails [4] then [9] fill file 2
    assert balance([[0, 1, 2, 3, 4], [5], [6, 7, 8, 9]]) == [[0, 1, 2, 3], [5, 4, 9], [6, 7, 8]]
    assert balance([[0, 1], [2, 3]]) == [[0, 1], [2, 3]]
    # 5 rows: avg 1, remainder 2 -> files 1 and 2 get the extra row; file 3 gives its last three
    assert balance([[0], [], [1, 2, 3, 4]]) == [[0, 2], [3, 4], [1]]
