"""What every stage shares, and nothing stage-specific: the error types (one ``UserError`` base), atomic files and
checksums, plots, the chat format, settings-to-CLI generation and the ``python -m STAGE COMMAND`` dispatcher.

The stages (data_prep -> tokenization_prep -> training -> inference) import this package; it imports none of them.
"""
