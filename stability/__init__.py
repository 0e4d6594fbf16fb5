"""``stability`` — will training a generated cell be stable? The eigenvalues of the field's
Jacobian at sampled states, scaled by the step, against the tableau's stability region.

>>> import odernn, stability
>>> cell = odernn.cell("gru-ode:rk4", input_size=3, hidden_size=8)
>>> report = stability.check(cell)
>>> report.stable, report.margin > 0
(True, True)
"""

from ._check import VERDICTS, Condition, StabilityReport, check, max_stable_dt, unit_disc_limit, verdict_of
from ._enforce import constrain, constraints, largest_admissible_norm
from ._regularise import jacobian_penalty
from ._probe import Probe, ProbeResult, StabilityWarning, top_eigenvalues
from ._simulate import Simulation, simulate

__all__ = ["VERDICTS", "Condition", "Probe", "ProbeResult", "StabilityReport", "StabilityWarning", "check", "constrain",
           "constraints", "jacobian_penalty", "largest_admissible_norm", "max_stable_dt", "Simulation", "simulate", "top_eigenvalues", "unit_disc_limit",
           "verdict_of"]
