"""The samplers of helios_runtime.sampling against the oracle, diffusers 0.42.1's HeliosScheduler and
HeliosDMDScheduler, and against the spec's literal values (spec 5.2–5.9).

Schedules and tables must equal the reference bit for bit (same float64 arithmetic). The steppers run
side by side with the reference scheduler's `step` on a fixed fake model, each on its own trajectory,
and must agree to 1e-6 relative (they agree exactly). Whole chunks against the real pipelines are in
test_sampling_pipeline.py.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from helios_runtime.model.checkpoint import CheckpointError
from helios_runtime.sampling import (
    Guidance,
    SamplerSettings,
    SchedulerConfig,
    UniPCState,
    block_noise,
    block_noise_factor,
    cfg,
    cfg_zero_star,
    cfg_zero_star_scale,
    chunk_plan,
    chunk_schedules,
    denoise_chunk,
    dmd_plan,
    dmd_step,
    downsample_noise,
    euler_step,
    sampler_preset,
    shift_mu,
    single_stage_schedule,
    stage_mus,
    stage_schedule,
    stage_table,
    unipc_plan,
    unipc_step,
    upsample_nearest,
)
from helios_runtime.sampling.schedule import preset

pytest.importorskip("diffusers")
import diffusers
from diffusers import HeliosDMDScheduler, HeliosScheduler

diffusers.utils.logging.set_verbosity_error()  # the pipeline-only shift keys are "unexpected" to the class
# the reference calls np.linspace on 0-dim tensors
pytestmark = [
    pytest.mark.filterwarnings("ignore:__array_wrap__:DeprecationWarning"),
    pytest.mark.usefixtures("one_thread"),
]


FULL = (9, 48, 80)  # 384×640 chunk latent (T, H, W)
SMALL = (9, 8, 16)  # 64×128
MEDIUM = (9, 16, 32)  # 128×256
C = 16


def reference_scheduler(config: SchedulerConfig):
    cls = HeliosDMDScheduler if config.class_name == "HeliosDMDScheduler" else HeliosScheduler
    return cls.from_config(config.to_dict())


def rel_err(ours: torch.Tensor, ref: torch.Tensor) -> float:
    return ((ours.double() - ref.double()).abs().max() / ref.double().abs().max()).item()


class LinearModel:
    """A deterministic fake model v = A·x + b·t/1000 (A a seeded random channel map), in `dtype`."""

    def __init__(self, seed: int = 0, dtype: torch.dtype = torch.float32):
        g = torch.Generator().manual_seed(seed)
        self.A = torch.randn(C, C, generator=g) * 0.2 + torch.eye(C) * 0.5
        self.b = torch.randn(C, generator=g)
        self.dtype = dtype

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        v = torch.einsum("oc,bcthw->bothw", self.A, x.float())
        v = v + self.b.view(1, C, 1, 1, 1) * (torch.as_tensor(t).double() / 1000).float().reshape(
            -1, 1, 1, 1, 1
        )
        return v.to(self.dtype)


# ---------------------------------------------------------------------------------------------------
# (a) schedules and tables
# ---------------------------------------------------------------------------------------------------

TABLE_CONFIGS = {
    "mid": preset("mid"),
    "distilled": preset("distilled"),
    "static": preset("mid").replace(use_dynamic_shifting=False),
    "shifted": preset("mid").replace(use_dynamic_shifting=False, shift=3.0),
    "gamma": preset("distilled").replace(gamma=0.25, stage_range=(0.0, 0.25, 0.6, 1.0)),
    "two-stage": preset("mid").replace(stages=2, stage_range=(0.0, 0.5, 1.0)),
}


@pytest.mark.parametrize("name", sorted(TABLE_CONFIGS))
def test_stage_tables_equal_reference(name):
    config = TABLE_CONFIGS[name]
    ref = reference_scheduler(config)
    ours = stage_table(config)
    for s in range(config.stages):
        assert ours.ori_start_sigmas[s] == ref.ori_start_sigmas[s]
        assert ours.start_sigmas[s] == ref.start_sigmas[s]
        assert ours.end_sigmas[s] == ref.end_sigmas[s]
        assert ours.timestep_ratios[s] == ref.timestep_ratios[s]
        assert torch.equal(ours.stage_timesteps[s], ref.timesteps_per_stage[s])
        assert torch.equal(ours.stage_sigmas, ref.sigmas_per_stage[s])


PYRAMID_CASES = [
    ("mid", (20, 20, 20), False),
    ("mid", (2, 2, 2), True),  # UniPC ignores the amplify flag
    ("distilled", (2, 2, 2), False),
    ("distilled", (2, 2, 2), True),
    ("distilled", (4, 4, 4), True),
    ("static", (5, 3, 2), False),
    ("gamma", (3, 3, 3), True),
]


@pytest.mark.parametrize("size", [FULL, SMALL, MEDIUM], ids=["384x640", "64x128", "128x256"])
@pytest.mark.parametrize(("name", "steps", "amplify"), PYRAMID_CASES)
def test_stage_schedules_equal_reference(name, steps, amplify, size):
    config = TABLE_CONFIGS[name]
    ref = reference_scheduler(config)
    mus = stage_mus(config, size)
    ours = chunk_schedules(config, steps, size, amplify=amplify)
    for s, n in enumerate(steps):
        ref.set_timesteps(n, s, mu=mus[s], is_amplify_first_chunk=amplify)
        assert torch.equal(ours[s].sigmas, ref.sigmas)
        assert torch.equal(ours[s].timesteps, ref.timesteps)
        # what the pyramid pipeline hands the model: t.expand(B).to(int64)
        assert torch.equal(ours[s].model_timesteps, ref.timesteps.to(torch.int64))
        expected = (2 * n + 1 if amplify else n + 1) - 1 if config.scheduler_type == "dmd" else n
        assert ours[s].steps == expected


@pytest.mark.parametrize("size", [FULL, SMALL, MEDIUM])
@pytest.mark.parametrize("steps", [50, 7, 1])
def test_base_schedule_equals_reference(steps, size):
    config = preset("base")
    ref = reference_scheduler(config)
    mu = shift_mu(config, size)
    # the Base pipeline's own levels and call
    ref.set_timesteps(steps, device="cpu", sigmas=np.linspace(0.999, 0.0, steps + 1)[:-1], mu=mu)
    ours = single_stage_schedule(config, steps, mu)
    assert torch.equal(ours.sigmas, ref.sigmas)
    assert torch.equal(ours.timesteps, ref.timesteps)
    assert ours.model_timesteps.dtype == torch.float64  # Base passes float timesteps (pitfall 6)


def test_mu_follows_the_pipeline():
    """The pyramid pipeline computes μ before the upsample: stage s > 0 uses stage s − 1's size."""
    config = preset("mid")
    own = stage_mus(config, FULL, mu_from_stage_input=False)
    assert stage_mus(config, FULL) == (own[0], own[0], own[1])


def test_spec_5_3_mu_table():
    config = preset("mid")
    for size, seq, mu, exp_mu in [
        ((9, 12, 20), 540, 0.548073, 1.729916),
        ((9, 24, 40), 2160, 0.822292, 2.275709),
        ((9, 48, 80), 8640, 1.919167, 6.815277),
    ]:
        assert (size[0] * size[1] * size[2]) // 4 == seq
        assert shift_mu(config, size) == pytest.approx(mu, abs=1e-6)
        assert math.exp(shift_mu(config, size)) == pytest.approx(exp_mu, abs=1e-6)
    assert stage_mus(config, FULL, mu_from_stage_input=False) == pytest.approx(
        (0.548073, 0.822292, 1.919167), abs=1e-6
    )


def test_spec_5_4_base_values():
    config = preset("base")
    schedule = single_stage_schedule(config, 50, shift_mu(config, FULL))
    t = schedule.timesteps
    assert t[:4].tolist() == pytest.approx([999.853, 996.866, 993.772, 990.568], abs=1e-3)
    assert t[-3:].tolist() == pytest.approx([302.920, 220.986, 121.995], abs=1e-3)
    assert schedule.sigmas[-1] == 0 and schedule.steps == 50


def test_spec_5_5_stage_table():
    table = stage_table(preset("mid"))
    assert table.sigmas[:2].tolist() == pytest.approx([0.999, 0.998001], abs=1e-12)
    assert table.sigmas[-1].item() == pytest.approx(0.000999, abs=1e-12)
    assert table.ori_start_sigmas == pytest.approx((0.999, 0.666333, 0.333666), abs=1e-6)
    assert table.start_sigmas == pytest.approx((0.999, 0.799760, 0.500374), abs=1e-6)
    lengths = [a - b for a, b in zip(table.start_sigmas, table.end_sigmas, strict=True)]
    assert lengths == pytest.approx([0.332667, 0.466094, 0.500374], abs=1e-6)
    ratios = [r for pair in table.timestep_ratios for r in pair]
    assert ratios == pytest.approx([0, 0.256068, 0.256068, 0.614840, 0.614840, 1.0], abs=1e-6)
    first_last = [(row[0].item(), row[-1].item()) for row in table.stage_timesteps]
    assert first_last == [
        pytest.approx((999.000, 743.5117), abs=1e-4),
        pytest.approx((743.256, 385.9716), abs=1e-4),
        pytest.approx((385.614, 1.3836), abs=1e-4),
    ]
    assert table.renoise_coefficients(1, 1 / 3) == pytest.approx((0.600120, 0.692612), abs=1e-6)
    assert table.renoise_coefficients(2, 1 / 3) == pytest.approx((0.749813, 0.433337), abs=1e-6)


def test_spec_5_6_mid_values():
    """Spec 5.6's values assume each stage's own μ (mu_from_stage_input=False)."""
    schedules = chunk_schedules(preset("mid"), (20, 20, 20), FULL, mu_from_stage_input=False)
    expected = [
        ([0.99942, 0.96834, 0.93582], [0.08911, 0.00173], [998.85, 990.91, 982.60], 743.95),
        ([0.99956], [0.00227], [743.10], 386.78),
        ([0.99985], [0.00677], [385.56], 3.98),
    ]
    for schedule, (head, tail, t_head, t_last) in zip(schedules, expected, strict=True):
        sigmas = schedule.sigmas.tolist()
        assert sigmas[: len(head)] == pytest.approx(head, abs=1e-5)
        assert sigmas[-1 - len(tail) : -1] == pytest.approx(tail, abs=1e-5)
        assert sigmas[-1] == 0
        assert schedule.timesteps[: len(t_head)].tolist() == pytest.approx(t_head, abs=1e-2)
        assert schedule.timesteps[-1].item() == pytest.approx(t_last, abs=1e-2)


@pytest.mark.parametrize(
    ("amplify", "expected"),
    [
        (
            False,
            [
                ([0.99818, 0.35404, 0], [998, 833], [998.534, 833.964]),
                ([0.99878, 0.45124, 0], [742, 547], [742.822, 547.193]),
                ([0.99948, 0.65744, 0], [385, 253], [385.414, 253.991]),
            ],
        ),
        (
            True,
            [
                ([0.99818, 0.62119, 0.35404, 0.15482, 0], [998, 902, 833, 783], None),
                ([0.99878, 0.71101, 0.45124, 0.21558, 0], [742, 640, 547, 462], None),
                ([0.99948, 0.85168, 0.65744, 0.39077, 0], [385, 328, 253, 151], None),
            ],
        ),
    ],
)
def test_spec_5_7_distilled_values(amplify, expected):
    schedules = chunk_schedules(
        preset("distilled"), (2, 2, 2), FULL, amplify=amplify, mu_from_stage_input=False
    )
    for schedule, (sigmas, ints, floats) in zip(schedules, expected, strict=True):
        assert schedule.sigmas.tolist() == pytest.approx(sigmas, abs=1e-5)
        assert schedule.model_timesteps.tolist() == ints
        if floats is not None:
            assert schedule.timesteps.tolist() == pytest.approx(floats, abs=1e-3)


def test_pipeline_mu_distilled_timesteps():
    """With the pipeline's μ the later stages see smaller timesteps than spec 5.7's tables."""
    schedules = chunk_schedules(preset("distilled"), (2, 2, 2), FULL)
    assert [s.model_timesteps.tolist() for s in schedules] == [[998, 833], [742, 512], [385, 174]]


# ---------------------------------------------------------------------------------------------------
# (b) UniPC, (c) DMD and Euler: side by side with the reference scheduler's step
# ---------------------------------------------------------------------------------------------------


def run_unipc_side_by_side(config, schedules, model, x0, ref_setup):
    """Run ours and the reference on their own trajectories over each stage; return the worst error."""
    ref = reference_scheduler(config)
    worst = 0.0
    for s, schedule in enumerate(schedules):
        ref_setup(ref, s)
        plan = unipc_plan(config, schedule.sigmas)
        ours, theirs, state = x0.clone(), x0.clone(), UniPCState()
        for i in range(schedule.steps):
            t = schedule.model_timesteps[i].expand(x0.shape[0])
            ours, state = unipc_step(plan, i, model(ours, t), ours, state)
            theirs = ref.step(model(theirs, t), ref.timesteps[i], theirs, return_dict=False)[0]
            assert ours.dtype == theirs.dtype
            worst = max(worst, rel_err(ours, theirs))
    return worst


UNIPC_CONFIGS = {
    "default": preset("mid"),
    "no-lower-order-final": preset("mid").replace(lower_order_final=False),
    "disable-corrector": preset("mid").replace(disable_corrector=(0, 2)),
    "order-1": preset("mid").replace(solver_order=1),
    "bh1": preset("mid").replace(solver_type="bh1"),
}


@pytest.mark.parametrize("name", sorted(UNIPC_CONFIGS))
@pytest.mark.parametrize("steps", [(20, 20, 20), (1, 2, 3)])
def test_unipc_matches_reference_pyramid(name, steps):
    config = UNIPC_CONFIGS[name]
    size = MEDIUM
    schedules = chunk_schedules(config, steps, size)
    mus = stage_mus(config, size)
    x0 = torch.randn(2, C, *SMALL, generator=torch.Generator().manual_seed(1))

    def setup(ref, s):
        ref.set_timesteps(steps[s], s, mu=mus[s])

    assert run_unipc_side_by_side(config, schedules, LinearModel(), x0, setup) <= 1e-6


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_unipc_matches_reference_base(dtype):
    config = preset("base")
    steps = 50
    mu = shift_mu(config, FULL)
    schedule = single_stage_schedule(config, steps, mu)
    x0 = torch.randn(1, C, *SMALL, generator=torch.Generator().manual_seed(2))

    def setup(ref, s):
        ref.set_timesteps(steps, device="cpu", sigmas=np.linspace(0.999, 0.0, steps + 1)[:-1], mu=mu)

    worst = run_unipc_side_by_side(config, [schedule], LinearModel(dtype=dtype), x0, setup)
    assert worst <= 1e-6


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("steps", "amplify"), [((2, 2, 2), False), ((2, 2, 2), True), ((4, 3, 1), True)])
def test_dmd_matches_reference(steps, amplify, dtype):
    config = preset("distilled")
    ref = reference_scheduler(config)
    schedules = chunk_schedules(config, steps, FULL, amplify=amplify)
    mus = stage_mus(config, FULL)
    model = LinearModel(dtype=dtype)
    g = torch.Generator().manual_seed(3)
    for s, schedule in enumerate(schedules):
        ref.set_timesteps(steps[s], s, mu=mus[s], is_amplify_first_chunk=amplify)
        plan = dmd_plan(schedule)
        start = torch.randn(1, C, *SMALL, generator=g)
        ours = theirs = start
        for k in range(schedule.steps):
            t = schedule.model_timesteps[k].expand(1)
            ours = dmd_step(plan, k, model(ours, t), ours, start)
            theirs = ref.step(
                model(theirs, t),
                ref.timesteps[k],
                theirs,
                return_dict=False,
                cur_sampling_step=k,
                dmd_noisy_tensor=start,
                dmd_sigmas=ref.sigmas,
                dmd_timesteps=ref.timesteps,
                all_timesteps=ref.timesteps,
            )[0]
            assert ours.dtype == theirs.dtype
            assert rel_err(ours, theirs) <= 1e-6
        assert ours.dtype == dtype  # the last step returns x0 in the model's dtype


def test_dmd_renoises_with_the_stage_start():
    """Pitfall 5: x_{k+1} = (1 − σ')·x0 + σ'·S with S the stage start, not fresh noise."""
    schedule = chunk_schedules(preset("distilled"), (2, 2, 2), FULL)[0]
    plan = dmd_plan(schedule)
    x, v, start = (torch.randn(1, C, 2, 4, 4, generator=torch.Generator().manual_seed(i)) for i in range(3))
    sigma, sigma_next = schedule.sigmas[0].item(), schedule.sigmas[1].item()
    expected = (1 - sigma_next) * (x.double() - sigma * v.double()) + sigma_next * start.double()
    assert torch.allclose(dmd_step(plan, 0, v, x, start).double(), expected, atol=1e-6)
    assert torch.allclose(
        dmd_step(plan, 1, v, x, start).double(), x.double() - sigma_next * v.double(), atol=1e-6
    )


def test_euler_matches_reference():
    config = preset("mid").replace(scheduler_type="euler")
    ref = reference_scheduler(config)
    mus = stage_mus(config, FULL)
    schedule = chunk_schedules(config, (6, 6, 6), FULL)[1]
    ref.set_timesteps(6, 1, mu=mus[1])
    model = LinearModel()
    ours = theirs = torch.randn(1, C, *SMALL, generator=torch.Generator().manual_seed(4))
    for i in range(schedule.steps):
        t = schedule.model_timesteps[i].expand(1)
        ours = euler_step(schedule.sigmas, i, model(ours, t), ours)
        theirs = ref.step(model(theirs, t), ref.timesteps[i], theirs, return_dict=False)[0]
        assert rel_err(ours, theirs) <= 1e-6


# ---------------------------------------------------------------------------------------------------
# (e) guidance
# ---------------------------------------------------------------------------------------------------


def test_cfg_and_cfg_zero_star_formulas():
    g = torch.Generator().manual_seed(5)
    v_c = torch.randn(3, C, 2, 4, 6, generator=g)
    v_u = 0.7 * v_c + 0.3 * torch.randn(3, C, 2, 4, 6, generator=g)
    assert torch.allclose(cfg(v_c, v_u, 5.0), v_u + 5.0 * (v_c - v_u))
    c, u = v_c.double().flatten(1), v_u.double().flatten(1)
    s = (c * u).sum(1) / ((u * u).sum(1) + 1e-8)  # per sample
    assert torch.allclose(cfg_zero_star_scale(v_c, v_u).double().squeeze(1), s, rtol=1e-5)
    expected = s.view(3, 1, 1, 1, 1) * v_u.double() + 5.0 * (
        v_c.double() - s.view(3, 1, 1, 1, 1) * v_u.double()
    )
    assert torch.allclose(cfg_zero_star(v_c, v_u, 5.0).double(), expected, rtol=1e-5, atol=1e-5)
    # s* is the least-squares projection of v_c on v_u: w = 1 gives v_c back
    assert torch.allclose(cfg_zero_star(v_c, v_u, 1.0), v_c, atol=1e-5)


def test_zero_init_skips_the_first_two_stage0_steps():
    """Pitfall 9: zero_steps = 1 zeroes steps 0 and 1 of stage 0 only (their forwards are skipped)."""
    calls = []

    def record(tag):
        def fn(x, t):
            calls.append((tag, tuple(x.shape[-2:]), int(t[0])))
            return torch.ones_like(x) * (1.0 if tag == "pos" else 0.5)

        return fn

    settings = sampler_preset("mid").replace(steps=(4, 3, 2))
    noise = torch.randn(1, C, 9, 8, 16, generator=torch.Generator().manual_seed(6))
    denoise_chunk(Guidance(record("pos"), record("neg")), noise, settings, torch.Generator().manual_seed(0))
    per_stage = [sum(1 for c in calls if c[1] == hw) for hw in [(2, 4), (4, 8), (8, 16)]]
    assert per_stage == [2 * (4 - 2), 2 * 3, 2 * 2]
    schedules = chunk_schedules(settings.scheduler, settings.steps, (9, 8, 16))
    assert [c[2] for c in calls if c[0] == "pos"][:2] == schedules[0].model_timesteps[2:].tolist()
    no_zero = settings.replace(use_zero_init=False)
    assert chunk_plan(no_zero, (9, 8, 16), torch.device("cpu"), False).stages[0].zero_init == 0
    assert chunk_plan(settings, (9, 8, 16), torch.device("cpu"), False).stages[0].zero_init == 2


# ---------------------------------------------------------------------------------------------------
# (f) pyramid: block noise, resampling
# ---------------------------------------------------------------------------------------------------


def test_block_noise_factor_is_the_spec_matrix():
    L = block_noise_factor(1 / 3)
    third, r2, r23 = 1 / 3, math.sqrt(2) / 3, math.sqrt(2 / 3)
    spec = torch.tensor(
        [
            [1, 0, 0, 0],
            [-third, math.sqrt(8) / 3, 0, 0],
            [-third, -r2, r23, 0],
            [-third, -r2, -r23, 0],
        ],
        dtype=torch.float64,
    )
    assert L.dtype == torch.float32
    assert torch.allclose(L.double(), spec, atol=1e-7)
    sigma = (4 / 3) * torch.eye(4, dtype=torch.float64) - third
    assert torch.allclose(L.double() @ L.double().T, sigma, atol=1e-6)
    # any γ in (0, 1/3]: still an exact factor of (1+γ)I − γ11ᵀ
    L4 = block_noise_factor(0.25).double()
    assert torch.allclose(L4 @ L4.T, 1.25 * torch.eye(4, dtype=torch.float64) - 0.25, atol=1e-6)


def test_block_noise_statistics():
    shape = (2, C, 3, 32, 32)
    n = block_noise(shape, block_noise_factor(1 / 3), torch.Generator().manual_seed(7), "cpu")
    assert n.shape == shape and n.dtype == torch.float32
    blocks = n.view(2, C, 3, 16, 2, 16, 2).permute(0, 1, 2, 3, 5, 4, 6).reshape(-1, 4).double()
    assert blocks.sum(1).abs().max() < 1e-5  # each 2×2 block sums to zero: Σ is singular
    cov = blocks.T @ blocks / blocks.shape[0]
    expected = (4 / 3) * torch.eye(4, dtype=torch.float64) - 1 / 3
    assert (cov - expected).abs().max() < 0.02  # 49k blocks: sampling error ~0.006


def test_block_noise_matches_reference_draw(monkeypatch):
    """Same generator → the reference's block noise up to its runtime-Cholesky ε in each 4th entry.

    The reference factorises Σ + 1e-8·I built in float32, where the jitter is lost (an eigenvalue of
    −3e-8): its runtime Cholesky depends on the host's LAPACK (ε = 4.2e-4 with one, LinAlgError under
    MKL on AMD EPYC). Here it gets the factor it means, built and factorised in float64 (ε = 2e-4)."""
    from diffusers import HeliosPyramidPipeline

    class Holder:
        scheduler = reference_scheduler(preset("mid"))

    eye = torch.eye(4, dtype=torch.float64)
    factor = torch.linalg.cholesky(eye * (4 / 3) - 1 / 3 + 1e-8 * eye).float()
    monkeypatch.setattr(torch.linalg, "cholesky", lambda cov: factor)
    shape = (1, C, 9, 8, 16)
    ref = HeliosPyramidPipeline.sample_block_noise(
        Holder(), *shape, (1, 2, 2), "cpu", torch.Generator().manual_seed(8)
    )
    ours = block_noise(shape, block_noise_factor(1 / 3), torch.Generator().manual_seed(8), "cpu")
    diff = (ours - ref).view(1, C, 9, 4, 2, 8, 2)
    assert diff[..., 0, :, 0].abs().max() < 1e-6 and diff[..., 0, :, 1].abs().max() < 1e-6
    assert diff[..., 1, :, 0].abs().max() < 1e-6  # only the block's last value carries ε·z₄
    g = torch.Generator().manual_seed(8)
    z4 = torch.randn(1 * C * 9 * 4 * 8, 4, generator=g)[:, 3].view(1, C, 9, 4, 8)
    eps = factor[3, 3]
    assert 0 < eps < 1e-3
    assert torch.allclose(-diff[..., 1, :, 1], eps * z4, atol=1e-6)


def test_downsample_and_upsample():
    noise = torch.randn(2, C, 3, 16, 32, generator=torch.Generator().manual_seed(9))
    # the pipeline's way: frames into the batch, bilinear to half size, ×2, twice
    ref = noise.permute(0, 2, 1, 3, 4).reshape(6, C, 16, 32)
    for h, w in [(8, 16), (4, 8)]:
        ref = torch.nn.functional.interpolate(ref, size=(h, w), mode="bilinear") * 2
    ref = ref.reshape(2, 3, C, 4, 8).permute(0, 2, 1, 3, 4)
    ours = downsample_noise(noise, 2)
    assert torch.equal(ours, ref)
    block_mean = noise.view(2, C, 3, 4, 4, 8, 4).mean(dim=(4, 6)) * 4  # two halvings: mean ×2 ×2
    assert torch.allclose(ours, block_mean, atol=1e-5)
    up = upsample_nearest(ours)
    assert up.shape == (2, C, 3, 8, 16)
    assert torch.equal(up[..., ::2, ::2], ours) and torch.equal(up[..., 1::2, 1::2], ours)


# ---------------------------------------------------------------------------------------------------
# (g) configs and errors
# ---------------------------------------------------------------------------------------------------


def write_config(folder, data):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "scheduler_config.json").write_text(json.dumps(data))
    return folder


def test_config_reading_and_class_defaults(tmp_path):
    distilled = {
        "_class_name": "HeliosDMDScheduler",
        "_diffusers_version": "0.42.1",
        "gamma": 1 / 3,
        "num_train_timesteps": 1000,
        "prediction_type": "flow_prediction",
        "shift": 1.0,
        "stage_range": [0, 1 / 3, 2 / 3, 1],
        "stages": 3,
        "use_dynamic_shifting": True,
        "use_flow_sigmas": True,
    }
    write_config(tmp_path / "distilled" / "scheduler", distilled)
    from_root = SchedulerConfig.from_pretrained(tmp_path / "distilled")
    from_folder = SchedulerConfig.from_pretrained(tmp_path / "distilled" / "scheduler")
    assert from_root == from_folder == preset("distilled")
    assert from_root.time_shift_type == "linear" and from_root.scheduler_type == "dmd"  # DMD class default

    unipc = {
        "_class_name": "HeliosScheduler",
        "stages": 1,
        "stage_range": [0, 1],
        "use_dynamic_shifting": True,
    }
    config = SchedulerConfig.from_pretrained(write_config(tmp_path / "base", unipc))
    assert config == preset("base") and config.time_shift_type == "exponential"  # HeliosScheduler default

    # stages = 1 with the class's default four borders is a valid Base config
    assert SchedulerConfig.from_dict({**unipc, "stage_range": [0, 1 / 3, 2 / 3, 1]}).stages == 1
    official = {"_class_name": "HeliosScheduler", "scheduler_type": "dmd", "time_shift_type": "linear"}
    assert SchedulerConfig.from_dict(official).scheduler_type == "dmd"
    assert (
        SchedulerConfig.from_dict({"_class_name": "HeliosScheduler", "solver_type": "midpoint"}).solver_type
        == "bh2"
    )
    for name in ("base", "mid", "distilled"):  # round trip through our dict and diffusers' config
        config = preset(name)
        assert SchedulerConfig.from_dict(config.to_dict()) == config
        assert SchedulerConfig.from_dict(dict(reference_scheduler(config).config)) == config


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"_class_name": "HeliosScheduler", "scheduler_type": "ddim"}, "scheduler_type must be one of"),
        ({"_class_name": "FlowMatchEulerDiscreteScheduler"}, "_class_name must be"),
        ({"stages": 3}, "_class_name must be"),
        ({"_class_name": "HeliosScheduler", "time_shift_type": "cosine"}, "time_shift_type"),
        ({"_class_name": "HeliosScheduler", "stages": 4}, "stage_range needs"),
        ({"_class_name": "HeliosScheduler", "use_dynamic_shifting": True, "shift": 3.0}, "needs shift = 1.0"),
        ({"_class_name": "HeliosScheduler", "prediction_type": "epsilon"}, "prediction_type"),
        ({"_class_name": "HeliosScheduler", "solver_order": 3}, "solver_order"),
        ({"_class_name": "HeliosScheduler", "gamma": 0.5}, "gamma"),
        ({"_class_name": "HeliosScheduler", "predict_x0": False}, "predict_x0"),
        ({"_class_name": "HeliosScheduler", "solver_type": "dpm"}, "solver_type"),
    ],
)
def test_bad_configs(tmp_path, data, message):
    with pytest.raises(ValueError, match=message):
        SchedulerConfig.from_dict(data)
    with pytest.raises(CheckpointError, match=message):
        SchedulerConfig.from_pretrained(write_config(tmp_path / "s", data))


def test_config_file_errors(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        SchedulerConfig.from_pretrained(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match=r"no scheduler_config\.json"):
        SchedulerConfig.from_pretrained(tmp_path / "empty")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "scheduler_config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        SchedulerConfig.from_pretrained(tmp_path / "broken")


def test_schedule_and_settings_errors():
    with pytest.raises(ValueError, match="stages > 1"):
        stage_schedule(preset("base"), 2, 0, 0.5)
    with pytest.raises(ValueError, match="1 stage"):
        SamplerSettings(preset("base"), steps=(2, 2, 2))  # pyramid steps with a Base (stages=1) config
    with pytest.raises(ValueError, match="3 pyramid stages"):
        chunk_schedules(preset("mid"), (50,), FULL)
    with pytest.raises(ValueError, match="stages = 1"):
        single_stage_schedule(preset("mid"), 50, 1.0)
    with pytest.raises(ValueError, match="divisible by 4"):
        chunk_schedules(preset("mid"), (2, 2, 2), (9, 50, 80))  # pitfall 15
    with pytest.raises(ValueError, match="no negative forward"):
        denoise_chunk(LinearModel(), torch.zeros(1, C, 9, 8, 16), sampler_preset("mid"))
    with pytest.raises(ValueError, match="unknown sampler preset"):
        sampler_preset("turbo")


def test_plan_is_cached_and_on_device():
    settings = sampler_preset("distilled")
    a = chunk_plan(settings, FULL, torch.device("cpu"), True)
    assert chunk_plan(settings, FULL, torch.device("cpu"), True) is a
    assert [s.steps for s in a.stages] == [4, 4, 4]
    assert [s.steps for s in chunk_plan(settings, FULL, torch.device("cpu"), False).stages] == [2, 2, 2]
    assert a.stages[0].dmd is not None and a.stages[0].unipc is None and a.stages[0].renoise is None
    assert a.stages[1].renoise == pytest.approx((0.600120, 0.692612), abs=1e-6)
    assert sampler_preset("base").forwards_per_chunk == 100
    assert sampler_preset("mid").forwards_per_chunk == 120
    assert sampler_preset("distilled").forwards_per_chunk == 6
