from __future__ import annotations

import numpy as np

from fedcollab.grading.differencing import across_rounds, vendor_by_differencing


def _updates(n: int, dim: int = 50) -> dict[int, np.ndarray]:
    rng = np.random.default_rng(0)
    return {pid: rng.normal(size=dim) for pid in range(n)}


def test_differencing_vendor_only_secure_is_exact() -> None:
    ups = _updates(11)
    vendor = frozenset({8, 9, 10})
    open_ = {p: u for p, u in ups.items() if p not in vendor}
    secure = [(vendor, sum(ups[p] for p in vendor))]
    truth = sum(ups[p] for p in vendor)
    result = vendor_by_differencing(open_, secure, truth, vendor)
    assert result.relative_error < 1e-6 and result.exact
    assert result.min_group_seen == 3


def test_differencing_everyone_secure_is_not_exact() -> None:
    ups = _updates(11)
    vendor = frozenset({8, 9, 10})
    everyone = frozenset(ups)
    result = vendor_by_differencing({}, [(everyone, sum(ups.values()))],
                                    sum(ups[p] for p in vendor), vendor)
    assert not result.exact and result.relative_error > 0.5
    assert result.min_group_seen == 11


def test_differencing_across_rounds_changing_membership_isolates_one() -> None:
    ups = _updates(5)
    a, b = frozenset({0, 1, 2, 3}), frozenset({0, 1, 2, 3, 4})
    result = across_rounds([(a, sum(ups[p] for p in a)), (b, sum(ups[p] for p in b))], ups)
    assert result.exact and result.min_group_seen == 1


def test_differencing_across_rounds_fixed_membership_isolates_nothing() -> None:
    ups = _updates(5)
    a = frozenset(ups)
    result = across_rounds([(a, sum(ups.values())), (a, sum(ups.values()))], ups)
    assert not result.exact and result.min_group_seen == 5
