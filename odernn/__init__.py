"""``odernn`` — trainable recurrent cells generated from Butcher tableaux (n–t ODERNN).

A cell maps ``(x_k, state_k)`` to ``state_{k+1}`` by Runge–Kutta steps of a tableau on a vector
field over an interval Δ. ``n`` is the tableau's number of stages, ``t`` the number of state blocks
(the order of the ODE in time).

>>> import torch, odernn
>>> cell = odernn.cell("gru-ode:rk4:steps=2", input_size=3, hidden_size=5)
>>> cell.n, cell.t, cell.nfe_per_token
(4, 1, 8)
>>> cell(torch.randn(2, 3)).shape
torch.Size([2, 5])
"""

from . import limits
from ._adjoint import AdjointMethod, adjoint
from ._cell import ODECell
from ._fields import AntisymmetricField, GRUODEField, HigherOrderField, LSTMField, ModuleField, TanhRNNField, VectorField
from ._published import CoRNNField, LEMField, LipschitzField, UnICORNNField, URNNField, modrelu
from ._interop import TokenODE, torchdiffeq_method
from ._checks import InputError
from ._layer import GRAD_MODES, ODERNN, from_torch
from ._spec import CellSpecError, cell, constraints, field_table, fields, parse_spec, tableau_file
from ._stepping import (AdaptiveScheme, ExplicitScheme, ImplicitScheme, ImplicitSolveError, StepSizeUnderflow,
                        reference_step)

__all__ = [
    "GRAD_MODES", "InputError", "ODERNN", "limits", "AdjointMethod", "adjoint", "AdaptiveScheme", "AntisymmetricField", "CellSpecError", "StepSizeUnderflow", "ImplicitScheme", "ImplicitSolveError", "CoRNNField", "HigherOrderField", "LEMField", "LipschitzField", "UnICORNNField", "URNNField", "modrelu", "ExplicitScheme", "GRUODEField", "LSTMField",
    "ModuleField", "ODECell", "TanhRNNField", "VectorField", "cell", "constraints", "field_table", "fields", "from_torch", "parse_spec", "tableau_file",
    "reference_step", "TokenODE", "torchdiffeq_method",
]
