"""Stage 2 of 4: chat JSONL -> packed, checksummed HDF5 files for training, as a drop-in for generative_data_prep.

Settings (``settings.py``) -> inputs indexed (``inputs.py``) and lines assigned to splits (``splits.py``) -> one
``SplitJob`` per split (``split_job.py``: articles, packing, HDF5) -> metadata and checksums (``metadata.py``);
``schema.py`` is the contract training reads, checked by ``load_tokenized_dir``.
"""
