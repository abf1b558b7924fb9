"""Forward processes q(x_t | x0) = N(alpha(t) x0, sigma(t)^2 I) and their SDEs.

| class        | process                               | t range              | prior        |
|--------------|---------------------------------------|----------------------|--------------|
| `DiscreteVP` | DDPM, linear / cosine / any betas     | [1/T, 1]             | N(0, I)      |
| `LinearVP`   | VP SDE (continuous DDPM)              | [t_min=1e-5, 1]      | N(0, I)      |
| `SubVP`      | sub-VP SDE                            | [t_min=1e-5, 1]      | N(0, I)      |
| `VE`         | NCSN / SMLD, geometric sigmas         | [t_min=1e-5, 1]      | N(0, s_max^2)|
| `EDM`        | sigma(t) = t                          | [sigma_min, sigma_max]| N(0, s_max^2)|
| `FlowMatching` | rectified flow, alpha = 1 - t, sigma = t | [1e-5, 1 - 1e-3]  | N(0, I)      |

Every schedule also accepts t = 0 exactly, meaning clean data (alpha = 1, sigma = 0).
"""

from rediff.schedules.base import Schedule
from rediff.schedules.flow import FlowMatching
from rediff.schedules.ve import EDM, VE
from rediff.schedules.vp import DiscreteVP, LinearVP, SubVP

__all__ = ["EDM", "VE", "DiscreteVP", "FlowMatching", "LinearVP", "Schedule", "SubVP"]
