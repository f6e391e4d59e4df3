"""``python -m tokenization_prep COMMAND [flags]``: a drop-in for generative_data_prep (gdp's flag names and
meanings), plus ``verify`` and ``decode``.

    python -m tokenization_prep pipeline --config tokenization_prep/configs/bloomchat_oa_dolly.yaml \\
        --pretrained_tokenizer data/tokenizers/gpt-neox-20b
    python -m tokenization_prep verify tokenization_prep/oasst1_dolly_out
    python -m tokenization_prep decode tokenization_prep/oasst1_dolly_out/train_1_of_8.hdf5 --index 0
"""

import sys

from common.cli import dispatch

COMMANDS = {
    "pipeline": ("tokenization_prep.pipeline", "shuffle, split and tokenize into train/dev HDF5 files (gdp's)"),
    "data_prep": ("tokenization_prep.single_file", "one input file -> one HDF5 file (gdp's)"),
    "verify": ("tokenization_prep.verify", "check an output: metadata, checksums, file counts, HDF5 shapes"),
    "decode": ("tokenization_prep.decode", "print rows of an HDF5 file with token types (and origins) marked"),
}

if __name__ == "__main__":
    sys.exit(dispatch("tokenization_prep", COMMANDS))
