"""``odernn`` — trainable recurrent cells generated from Butcher tableaux (n–t ODERNN).

The cells arrive with the next piece of work (issue: generate trainable recurrent cells from any
Butcher tableau); this package is installed now so that the layout and the dependency direction
``butcher ← odernn ← textlm`` are fixed from the start.
"""

__all__: list[str] = []
