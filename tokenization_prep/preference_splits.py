"""Which preference pairs go to dev: whole conversation trees, never a tree in both splits.

Two rules (``--dev_trees_from`` or ``--dev_ratio``):

- ``--dev_trees_from STAGE2_DIR``: the trees stage 2 held out. STAGE2_DIR is a tokenized dir with row provenance;
  the record ids of its dev rows are conversation tree ids (data_prep writes an OASST conversation with its root
  message id, which is the tree id), so dev = exactly the pairs whose ``tree_id`` is among them. Stage 3's dev
  pairs were then never trained on in stage 2, and stage 3 trains on no tree stage 2 evaluated on.
- otherwise a seeded hash of the tree id: dev when ``blake2b(f"{seed}:{tree_id}")``, read as a fraction of
  2**64, is below ``--dev_ratio`` (no ratio: no dev split). The same tree lands in the same split whatever else
  the input holds.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from common.errors import ConfigError, DataError
from tokenization_prep.provenance import GROUP, has_provenance
from tokenization_prep.schema import load_tokenized_dir


def seeded_dev(tree_id: str, seed: int, ratio: float) -> bool:
    """The seeded tree rule.

    >>> [seeded_dev(t, 42, 0.5) for t in ("a", "b", "c")] == [seeded_dev(t, 42, 0.5) for t in ("a", "b", "c")]
    True
    >>> seeded_dev("a", 42, 0.0)
    False
    """
    digest = hashlib.blake2b(f"{seed}:{tree_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 < ratio


def stage2_dev_trees(spec: str) -> set[str]:
    """The record ids of every dev row of a tokenized dir (one ``DataError`` line when it cannot say)."""
    import h5py

    tdir = load_tokenized_dir(Path(spec))
    if not tdir.splits.get("dev"):
        raise DataError(
            f"--dev_trees_from {spec}: the dir has no dev split; give the stage-2 dir tokenized with "
            "--num_dev_splits/--dev_ratio, or leave out --dev_trees_from and use --dev_ratio"
        )
    ids: set[str] = set()
    for path in tdir.splits["dev"]:
        with h5py.File(path, "r") as f:
            if not tdir.meta.provenance or not has_provenance(f):
                raise DataError(
                    f"--dev_trees_from {spec}: {path.name} has no row provenance (gdp's or an older output); "
                    "re-tokenize stage 2 with this tokenization_prep, or leave out --dev_trees_from and use --dev_ratio"
                )
            ids.update(x.decode() if isinstance(x, bytes) else x for x in f[GROUP]["record_id"][:])
    ids.discard("")
    return ids


def dev_rule(dev_trees_from: str | None, dev_ratio: float | None, seed: int):
    """(tree id -> in dev?, the rule in words for the report)."""
    if dev_trees_from:
        if dev_ratio:
            raise ConfigError(
                "--dev_trees_from and --dev_ratio both given: the stage-2 dir decides the dev trees; drop one"
            )
        trees = stage2_dev_trees(dev_trees_from)
        return trees.__contains__, f"the trees of {dev_trees_from}'s dev rows ({len(trees):,} record ids)"
    ratio = dev_ratio or 0.0
    return (lambda t: seeded_dev(t, seed, ratio)), f"blake2b('{seed}:' + tree_id) < {ratio}"
