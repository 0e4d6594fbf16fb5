"""``stability`` — spectral analysis of a cell against its tableau's stability region.

Filled by the stability issue; imports ``butcher`` and ``odernn`` only.
"""

__all__: list[str] = []
