"""``textlm`` — corpora, the shared language model, the trainer and the ``odernn`` command line.

The language model and trainer arrive with the textlm issue; the command line (``textlm.cli``)
already carries the ``odernn tableau`` commands.
"""

__all__: list[str] = []
