"""Constants of the numerical contract (DESIGN.md §2), defined once."""

from __future__ import annotations

import torch

#: Dtypes that are computed in float32 inside and returned in their own dtype.
LOW_PRECISION = (torch.float16, torch.bfloat16)
#: Dtypes the fast kernels compute in float32 (float32 itself and the half types).
FLOAT32_MATH = (torch.float32, torch.float16, torch.bfloat16)
#: Every floating dtype the kernels may take.
FLOATING = (*FLOAT32_MATH, torch.float64)
#: The value of an excluded (masked) logit.
NEG_INF = float("-inf")
