"""The distributed discrete Gaussian: rotation, rounding bound, modular wrap, the ring's
noise, and its accounting against independent computations."""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from scipy import stats

from fedcollab.privacy import ddg
from fedcollab.privacy.ddg_accounting import (
    DDG_ORDERS,
    DdgLedger,
    ddg_epsilon,
    ddg_round,
    round_rdp,
    subsampled_rdp,
)
from fedcollab.privacy.errors import PrivacyError
from fedcollab.secure.encoding import FixedPointCodec

SHAPES = [(30, 20), (20,), (20, 10), (10,)]
DIM = sum(int(np.prod(s)) for s in SHAPES)


@given(hnp.arrays(np.float64, st.sampled_from([1, 2, 8, 64, 256]),
                  elements=st.floats(-1e3, 1e3)), st.integers(0, 2 ** 40))
@settings(max_examples=60, deadline=None)
def test_rotation_is_orthonormal_and_inverted(x: np.ndarray, seed: int) -> None:
    y = ddg.rotate(x, seed)
    assert np.linalg.norm(y) == pytest.approx(np.linalg.norm(x), rel=1e-9, abs=1e-9)
    np.testing.assert_allclose(ddg.unrotate(y, seed), x, atol=1e-9)


@given(hnp.arrays(np.float64, st.integers(1, 300), elements=st.floats(-1, 1)),
       st.floats(1.0, 50.0), st.sampled_from([0.0, ddg.DEFAULT_BETA, 0.01]),
       st.integers(0, 2 ** 32))
@settings(max_examples=80, deadline=None)
def test_conditional_rounding_is_within_the_papers_bound(x: np.ndarray, norm: float,
                                                         beta: float, seed: int) -> None:
    length = float(np.linalg.norm(x))
    if length > 0:
        x = x * (norm / length)
    bound = ddg.rounded_l2_bound(norm, x.size, beta)
    rounded = ddg.conditional_round(x, bound, np.random.default_rng(seed))
    assert rounded.dtype == np.int64
    assert math.sqrt(float(np.dot(rounded, rounded))) <= bound
    assert np.all(np.abs(rounded - x) < 1.0)  # a neighbouring integer


def test_randomized_rounding_is_unbiased() -> None:
    x = np.full(20_000, 0.3)
    rounded = ddg.conditional_round(x, 1e9, np.random.default_rng(1))
    assert abs(float(rounded.mean()) - 0.3) < 5 * math.sqrt(0.21 / x.size)


@given(st.lists(st.integers(-2 ** 62, 2 ** 62), min_size=1, max_size=50),
       st.integers(2, 40))
@settings(max_examples=100, deadline=None)
def test_wrap_is_the_signed_residue(values: list[int], bits: int) -> None:
    m = 1 << bits
    got = ddg.wrap(np.array(values, dtype=np.int64), bits).tolist()
    want = [((v + m // 2) % m) - m // 2 for v in values]
    assert got == want


@given(st.lists(st.integers(-2 ** 22, 2 ** 22 - 1), min_size=3, max_size=3),
       st.lists(st.integers(-2 ** 22, 2 ** 22 - 1), min_size=3, max_size=3))
@settings(max_examples=100, deadline=None)
def test_ring_sum_reduces_to_the_sum_modulo_m(a: list[int], b: list[int]) -> None:
    # through the fixed-point codec the secure ring actually uses: Z_(2^32)
    codec = FixedPointCodec(clip=4.0, scale_bits=20, group_size=2)
    bits = codec.integer_bits
    assert bits == 23
    enc = [codec.encode(np.array(v, dtype=np.float64) / 2.0 ** 20) for v in (a, b)]
    np.testing.assert_array_equal(enc[0].view(np.int32), np.array(a))  # passed unchanged
    total = enc[0] + enc[1]  # uint32: addition modulo 2**32
    assert ddg.wrap(total, bits).tolist() == ddg.wrap(np.array(a) + np.array(b), bits).tolist()


def _plan(members: int = 5, z: float = 1.0) -> ddg.DdgPlan:
    return ddg.plan(noise_multiplier=z, clip_norm=1.0, members=members, dim=DIM,
                    modulus_bits=23)


def test_plan_splits_at_least_the_continuous_noise() -> None:
    p = _plan(members=7, z=0.8)
    assert p.members * p.sigma2 >= (0.8 * p.clip_norm / p.gamma) ** 2
    assert p.sum_std >= 0.8 * p.clip_norm
    assert p.padded == 1024 and p.l2_bound > p.clip_norm / p.gamma


def test_plan_refuses_a_modulus_too_small() -> None:
    with pytest.raises(PrivacyError, match="modulus"):
        ddg.plan(noise_multiplier=1.0, clip_norm=1.0, members=50, dim=DIM, modulus_bits=12)


def test_ring_noise_over_many_rounds_has_the_mechanisms_variance() -> None:
    """Members with zero updates: what the server decodes is the noise alone, through
    the real codec and the 32-bit ring; its variance is m * sigma2 * gamma^2."""
    members, rounds = 3, 10
    p = _plan(members=members, z=1.0)
    codec = FixedPointCodec(clip=4.0, scale_bits=20, group_size=members)
    zeros = [np.zeros(s, dtype=np.float32) for s in SHAPES]
    noise = []
    for r in range(rounds):
        total = np.zeros(p.padded, dtype=codec.dtype)
        for _ in range(members):
            share = ddg.encode(zeros, SHAPES, p, seed=r, rng=np.random.default_rng())
            total += codec.encode(share.astype(np.float64) / 2.0 ** 20)
        noise.append(ddg.decode_sum(total, p, seed=r))
    values = np.concatenate(noise)
    n = values.size
    want = members * p.sigma2 * p.gamma ** 2
    var = float(np.var(values, ddof=1))
    lo = (n - 1) * want / stats.chi2.ppf(1 - 5e-5, n - 1)
    hi = (n - 1) * want / stats.chi2.ppf(5e-5, n - 1)
    # the rotation of the padding coordinates mixes a little rounding noise in: tiny
    assert lo < var < hi * 1.001


def test_encode_decode_recovers_the_clipped_sum() -> None:
    rng = np.random.default_rng(3)
    updates = [[rng.normal(size=s) * 0.05 for s in SHAPES] for _ in range(5)]
    p = _plan(members=5, z=1e-3)
    total = sum(ddg.encode(u, SHAPES, p, seed=9, rng=rng) for u in updates)
    got = ddg.decode_sum(np.asarray(total), p, seed=9)
    clipped = []
    for u in updates:
        flat = np.concatenate([a.ravel() for a in u])
        clipped.append(flat * min(1.0, 1.0 / np.linalg.norm(flat)))
    want = np.sum(clipped, axis=0)
    assert np.max(np.abs(got - want)) < 6 * p.sum_std + 5 * p.gamma


# ----------------------------------------------------------------------------- accounting

def test_unsampled_epsilon_is_dp_accountings_zcdp_event() -> None:
    """Proposition 14 without sampling is (xi, rho)-zCDP: compose the same event with
    dp_accounting's RDP accountant and get the same epsilon."""
    import dp_accounting
    from dp_accounting import rdp

    p = _plan(members=3)
    l2, tau, dim = ddg_round(p, 3)
    acc = rdp.RdpAccountant(orders=[float(o) for o in DDG_ORDERS])
    acc.compose(dp_accounting.ZCDpEvent(rho=l2 ** 2 / 2, xi=tau * dim), 20)
    ours = ddg_epsilon(noise_multiplier=1.0, clip_norm=1.0, members=3, rounds=20,
                       sampling_rate=1.0, delta=1e-5, dim=DIM)
    assert ours == pytest.approx(acc.get_epsilon(1e-5), rel=1e-9)


@given(z=st.floats(0.5, 4.0), members=st.integers(1, 50), rounds=st.integers(1, 200))
@settings(max_examples=20, deadline=None)
def test_ddg_costs_at_least_the_continuous_gaussian(z: float, members: int,
                                                    rounds: int) -> None:
    """Rounding inflates the sensitivity: never below the Gaussian of multiplier z at
    the same orders, and within 1% of it (sigma^2 rounded up, tau ~ 0)."""
    import dp_accounting
    from dp_accounting import rdp

    acc = rdp.RdpAccountant(orders=[float(o) for o in DDG_ORDERS])
    acc.compose(dp_accounting.GaussianDpEvent(z), rounds)
    gauss = acc.get_epsilon(1e-5)
    ours = ddg_epsilon(noise_multiplier=z, clip_norm=1.0, members=members, rounds=rounds,
                       sampling_rate=1.0, delta=1e-5, dim=DIM, modulus_bits=64)
    assert ours >= gauss * (1 - 1e-4)  # sigma^2 rounded up can only lower it by ~1e-5
    assert ours == pytest.approx(gauss, rel=0.01)


def _zhu_wang_reference(eps: list[float], q: float, alpha: int) -> float:
    """Theorem 5 of Zhu and Wang (2019), summed term by term in exact-ish Python floats
    (no log-space tricks), for small alpha: an independent recomputation."""
    total = (1 - q) ** (alpha - 1) * (alpha * q - q + 1)
    total += math.comb(alpha, 2) * q ** 2 * (1 - q) ** (alpha - 2) * math.exp(eps[2])
    for j in range(3, alpha + 1):
        total += 3 * math.comb(alpha, j) * (1 - q) ** (alpha - j) * q ** j \
            * math.exp((j - 1) * eps[j])
    return min(math.log(total) / (alpha - 1), eps[alpha])


@given(l2=st.floats(0.05, 1.0), q=st.floats(0.001, 0.9))
@settings(max_examples=40, deadline=None)
def test_subsampled_rdp_is_zhu_wangs_theorem_5(l2: float, q: float) -> None:
    orders = list(range(2, 17))
    base = round_rdp(l2, 0.0, 1, orders)
    ours = subsampled_rdp(base, q, orders)
    eps = {o: float(v) for o, v in zip(orders, base)}
    for alpha, got in zip(orders, ours):
        assert got == pytest.approx(_zhu_wang_reference(eps, q, alpha), rel=1e-9)


def test_sampled_epsilon_lies_between_the_tight_gaussian_and_no_amplification() -> None:
    from fedcollab.privacy import epsilon

    kwargs = dict(noise_multiplier=1.0, clip_norm=1.0, members=10, rounds=50, delta=1e-5,
                  dim=DIM)
    sampled = ddg_epsilon(sampling_rate=0.1, **kwargs)  # type: ignore[arg-type]
    unsampled = ddg_epsilon(sampling_rate=1.0, **kwargs)  # type: ignore[arg-type]
    tight = epsilon(noise_multiplier=1.0, sampling_rate=0.1, rounds=50, delta=1e-5)
    assert tight <= sampled < unsampled


def test_ledger_round_trips_and_composes_rounds() -> None:
    p = _plan(members=4)
    ledger = DdgLedger().record(*ddg_round(p, 4), sampling_rate=1.0, rounds=3)
    ledger = ledger.record(*ddg_round(p, 2), sampling_rate=1.0)  # two dropped
    assert ledger.rounds == 4 and len(ledger.entries) == 2
    again = DdgLedger.from_dict(ledger.to_dict())
    assert again == ledger
    fewer = DdgLedger().record(*ddg_round(p, 4), sampling_rate=1.0, rounds=4)
    assert ledger.epsilon(delta=1e-5) > fewer.epsilon(delta=1e-5)
