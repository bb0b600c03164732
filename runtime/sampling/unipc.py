"""Flow-matching UniPC multistep sampler (data-prediction form, B(h) variants), as pure functions
(spec 5.8).

The reference (diffusers 0.42.1 `HeliosScheduler.step_unipc`) keeps a scheduler object with hidden
state and recomputes its coefficients from the levels on every step. Here everything that depends
only on the schedule — the orders, whether the corrector runs, every scalar coefficient — is
precomputed once per schedule (`unipc_plan`), with the reference's float64 arithmetic, into tensors
on the device; a step (`unipc_step`) only indexes them and combines latent-sized tensors. The state
between steps is `UniPCState`: the last two data predictions and the sample before the last
predictor.

Per step i (levels σ_0 … σ_n, σ_n = 0), with m = x − σ_i·v the data (x0) prediction:
  1. corrector (i > 0): x_i ← UniC(x_{i−1}, m_{i−1}, m_{i−2}, m_i), with the previous step's order;
  2. predictor:        x_{i+1} = UniP(x_i, m_i, m_{i−1}), order min(solver_order, i + 1, n − i).
Coefficients per predictor (σ_s → σ_t, λ = ln α − ln s, h = λ_t − λ_s, H = e^(−h) − 1):
  x_t = (s_t/s_s)·x − α_t·H·m0 − α_t·B(h)·Σρ·D,   D1 = (m_prev − m0)/r1,  r1 = (λ_prev − λ_s)/h.
The scalars are multiplied in the same grouping as the reference so float32 results match it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .schedule import SchedulerConfig


@dataclass(frozen=True)
class UniPCPlan:
    """Everything of a UniPC run that depends only on the schedule; n = steps.

    The float64 tables live on the sampling device; the orders are Python ints because they depend
    only on the step index.
    """

    sigmas: torch.Tensor  # (n,) float64 σ_i, for m_i = x_i − σ_i·v_i
    # predictor i: x_{i+1} = p_x[i]·x − p_m[i]·m_i − p_d[i]·(½·(m_{i−1} − m_i)/p_r[i])
    p_x: torch.Tensor  # (n,) float64 s_t / s_s
    p_m: torch.Tensor  # (n,) float64 α_t·H
    p_d: torch.Tensor  # (n,) float64 α_t·B(h)
    p_r: torch.Tensor  # (n,) float64 r1 (1 where the predictor is first order)
    p_order: tuple[int, ...]  # (n,) 1 or 2
    # corrector at step i (entry 0 unused): x_i = c_x[i]·x_{i−1} − c_m[i]·m_{i−1}
    #   − c_d[i]·(c_rho[i,0]·(m_{i−2} − m_{i−1})/c_r[i] + c_rho[i,1]·(m_i − m_{i−1}))
    c_x: torch.Tensor  # (n,) float64
    c_m: torch.Tensor  # (n,) float64
    c_d: torch.Tensor  # (n,) float64
    c_r: torch.Tensor  # (n,) float64
    c_rho: torch.Tensor  # (n, 2) float32 (ρ1, ρ_t), cast to the sample dtype as the reference does
    c_order: tuple[int, ...]  # (n,) 0 = no corrector at this step, else its order

    @property
    def steps(self) -> int:
        return len(self.p_order)


@dataclass(frozen=True)
class UniPCState:
    """What a UniPC step leaves for the next: predictions m_{i−1}, m_{i−2} and x_i before its predictor."""

    m_prev: torch.Tensor | None = None
    m_prev2: torch.Tensor | None = None
    last_sample: torch.Tensor | None = None


# ---------------------------------------------------------------------------------------------------
# Coefficients (host side, once per schedule)
# ---------------------------------------------------------------------------------------------------


def _alpha_sigma_lambda(sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Flow form: α = 1 − σ, s = max(σ, 1e-8), λ = ln α − ln s (0-dim float64 tensors)."""
    alpha = 1 - sigma
    s = torch.clamp(sigma, min=1e-8)
    return alpha, s, torch.log(alpha) - torch.log(s)


def _update_coefficients(
    config: SchedulerConfig, sigmas: torch.Tensor, target: int, source: int, previous: int, order: int
) -> tuple[float, float, float, float, torch.Tensor]:
    """Scalars of one UniP / UniC update from σ_source to σ_target; `previous` is the older point.

    Returns (s_t/s_s, α_t·H, α_t·B(h), r1, [ρ1, ρ_t]) with the ρ from the order-`order` UniC system
    (for UniP only r1 is used: its order-2 weight is ½, its order-1 has no D term).
    """
    alpha_t, s_t, lambda_t = _alpha_sigma_lambda(sigmas[target])
    _, s_s, lambda_s = _alpha_sigma_lambda(sigmas[source])
    h = lambda_t - lambda_s
    hh = -h  # data prediction
    h_phi_1 = torch.expm1(hh)
    b_h = hh if config.solver_type == "bh1" else torch.expm1(hh)
    r1 = torch.ones((), dtype=torch.float64)
    if order == 2:
        _, _, lambda_prev = _alpha_sigma_lambda(sigmas[previous])
        r1 = (lambda_prev - lambda_s) / h
        # UniC order 2: solve [[1, 1], [r1, 1]]·ρ = [φ1/B, 2·φ2/B], φ1 = H/(−h) − 1, φ2 = φ1/(−h) − ½.
        phi_1 = h_phi_1 / hh - 1
        phi_2 = phi_1 / hh - 1 / 2
        R = torch.stack(
            [torch.ones(2, dtype=torch.float64), torch.stack([r1, torch.ones((), dtype=torch.float64)])]
        )
        b = torch.stack([phi_1 / b_h, phi_2 * 2 / b_h])
        rho = torch.linalg.solve(R, b).to(torch.float32)
    else:
        rho = torch.tensor([0.0, 0.5], dtype=torch.float32)
    return (s_t / s_s), (alpha_t * h_phi_1), (alpha_t * b_h), r1, rho


def unipc_plan(
    config: SchedulerConfig, sigmas: torch.Tensor, device: torch.device | str = "cpu"
) -> UniPCPlan:
    """Precompute a UniPC run over the float64 levels `sigmas` (n+1,) (a Schedule's)."""
    sigmas = sigmas.to("cpu", torch.float64)
    n = sigmas.shape[0] - 1
    order_cap = config.solver_order
    p_order = []
    for i in range(n):
        order = min(order_cap, n - i) if config.lower_order_final else order_cap
        p_order.append(min(order, min(i, order_cap) + 1))  # warm-up: one more order per step taken
    c_order = [0] + [p_order[i - 1] if (i - 1) not in config.disable_corrector else 0 for i in range(1, n)]

    zero = torch.zeros((), dtype=torch.float64)
    rows_p, rows_c = [], []
    for i in range(n):
        rows_p.append(_update_coefficients(config, sigmas, i + 1, i, i - 1, p_order[i]))
        if c_order[i]:
            rows_c.append(_update_coefficients(config, sigmas, i, i - 1, i - 2, c_order[i]))
        else:
            rows_c.append((zero, zero, zero, zero, torch.zeros(2, dtype=torch.float32)))

    def column(rows: list, k: int) -> torch.Tensor:
        return torch.stack([torch.as_tensor(row[k], dtype=torch.float64) for row in rows]).to(device)

    return UniPCPlan(
        sigmas=sigmas[:n].to(device),
        p_x=column(rows_p, 0),
        p_m=column(rows_p, 1),
        p_d=column(rows_p, 2),
        p_r=column(rows_p, 3),
        p_order=tuple(p_order),
        c_x=column(rows_c, 0),
        c_m=column(rows_c, 1),
        c_d=column(rows_c, 2),
        c_r=column(rows_c, 3),
        c_rho=torch.stack([row[4] for row in rows_c]).to(device),
        c_order=tuple(c_order),
    )


# ---------------------------------------------------------------------------------------------------
# The step (hot path: tensor ops only; branches depend on the step index alone)
# ---------------------------------------------------------------------------------------------------


def unipc_step(
    plan: UniPCPlan, i: int, velocity: torch.Tensor, sample: torch.Tensor, state: UniPCState
) -> tuple[torch.Tensor, UniPCState]:
    """One UniPC step i: corrector on `sample` (from step 1 on), then the predictor to level i+1.

    velocity: the model's (guided) output at (sample, t_i), any float dtype; sample: float32
    (B, C, T, H, W). Returns the next sample (sample's dtype) and the state for step i+1.
    """
    m = sample - plan.sigmas[i] * velocity  # data prediction x0
    c_order = plan.c_order[i]
    if c_order:
        m0 = state.m_prev
        last = state.last_sample
        rho = plan.c_rho[i]
        correction = rho[1] * (m - m0)
        if c_order == 2:
            correction = rho[0] * ((state.m_prev2 - m0) / plan.c_r[i]) + correction
        sample = (plan.c_x[i] * last - plan.c_m[i] * m0 - plan.c_d[i] * correction).to(last.dtype)

    prediction = plan.p_x[i] * sample - plan.p_m[i] * m
    if plan.p_order[i] == 2:
        prediction = prediction - plan.p_d[i] * (0.5 * ((state.m_prev - m) / plan.p_r[i]))
    return prediction.to(sample.dtype), UniPCState(m_prev=m, m_prev2=state.m_prev, last_sample=sample)
