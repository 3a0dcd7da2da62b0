"""What leaves a participant: the simulated attacks by name, and the open/secure split."""
from __future__ import annotations

import numpy as np
import pytest

from fedcollab.worker.messages import RoundConfig
from fedcollab.worker.outgoing import ATTACKS, BEHAVIOURS, UnknownAttackError, attack, outgoing

UPDATE = [np.array([[1.0, -2.0]], np.float32), np.array([0.5], np.float32)]


@pytest.mark.parametrize("kind", sorted(ATTACKS))
def test_attack_keeps_the_update_a_list_of_arrays_and_leaves_the_input_alone(kind: str) -> None:
    before = [a.copy() for a in UPDATE]
    sent = attack(kind, list(UPDATE), 3.0)
    assert len(sent) == len(UPDATE) and all(isinstance(a, np.ndarray) for a in sent)
    for a, b in zip(UPDATE, before):
        np.testing.assert_array_equal(a, b)


def test_attack_sign_flip_and_scale_multiply_by_the_scale() -> None:
    np.testing.assert_array_equal(attack("sign_flip", UPDATE, 2.0)[0], [[-2.0, 4.0]])
    np.testing.assert_array_equal(attack("scale", UPDATE, 2.0)[1], [1.0])
    assert attack("wrong_shape", UPDATE, 1.0)[0].shape == (3,)
    assert np.isnan(attack("nan", UPDATE, 1.0)[1]).all()


def test_attack_unknown_behaviour_names_every_allowed_one() -> None:
    with pytest.raises(UnknownAttackError, match="'honest'") as err:
        attack("nope", UPDATE, 1.0)
    assert all(repr(b) in str(err.value) for b in BEHAVIOURS)


@pytest.mark.parametrize("sharing", ["open", "secure"])
def test_outgoing_sends_open_updates_in_the_clear_and_secure_ones_as_a_vector(
        sharing: str) -> None:
    sent = outgoing(UPDATE, pid=3, shared=[0, 1], shapes=[(1, 2), (1,)], num_samples=10,
                    loss=0.5, sharing=sharing, behaviour="honest", attack_scale=1.0,
                    config=RoundConfig(weight_scale=10.0), rng=np.random.default_rng(0))
    if sharing == "open":
        assert sent.secure_vector is None and sent.update is not None
        assert sent.update.pid == 3 and sent.update.num_samples == 10
    else:  # weight 10/10 = 1: the update, then one weight per array
        assert sent.update is None and sent.secure_vector is not None
        np.testing.assert_allclose(sent.secure_vector, [1.0, -2.0, 0.5, 1.0, 1.0])


# ----------------------------------------------------------------------------- probes

SHAPES = [(40, 25), (25,)]


def test_canary_direction_is_a_fixed_unit_vector_per_canary_and_held_out_ones_differ() -> None:
    from fedcollab.worker.outgoing import canary_direction

    a = canary_direction(7, 3, SHAPES)
    assert [x.shape for x in a] == SHAPES
    flat = np.concatenate([x.ravel() for x in a]).astype(np.float64)
    assert np.linalg.norm(flat) == pytest.approx(1.0, abs=1e-6)
    again = np.concatenate([x.ravel() for x in canary_direction(7, 3, SHAPES)])
    np.testing.assert_array_equal(flat.astype(np.float32), again)
    others = [canary_direction(7, 4, SHAPES), canary_direction(8, 3, SHAPES),
              canary_direction(7, 3, SHAPES, held_out=True)]
    for other in others:  # independent directions: nearly orthogonal in 1025 dimensions
        cos = float(flat @ np.concatenate([x.ravel() for x in other]))
        assert abs(cos) < 0.2


def _canary_sent(config: RoundConfig, sharing: str = "open",
                 raw: list[np.ndarray] | None = None) -> object:
    raw = raw if raw is not None else [np.full(s, 5.0, np.float32) for s in SHAPES]
    return outgoing(raw, pid=9, shared=[0, 1], shapes=SHAPES, num_samples=10, loss=0.0,
                    sharing=sharing, behaviour="canary", attack_scale=10.0, config=config,
                    rng=np.random.default_rng(1), seed=7)


def test_a_canary_sends_its_direction_at_the_clip_norm_whatever_it_trained() -> None:
    from fedcollab.worker.outgoing import canary_direction

    sent = _canary_sent(RoundConfig(clip_norm=2.0))
    assert "canary" in BEHAVIOURS
    want = canary_direction(7, 9, SHAPES)
    for got, d in zip(sent.update.delta, want):  # type: ignore[attr-defined]
        np.testing.assert_allclose(got, 2.0 * d, rtol=1e-6)
    assert sent.update.norm == pytest.approx(2.0)  # type: ignore[attr-defined]
    other = _canary_sent(RoundConfig(clip_norm=2.0), raw=[np.zeros(s, np.float32)
                                                          for s in SHAPES])
    np.testing.assert_array_equal(other.update.delta[0],  # type: ignore[attr-defined]
                                  sent.update.delta[0])  # type: ignore[attr-defined]


def test_a_canary_under_dp_is_noised_like_an_honest_participant() -> None:
    """Its update goes the honest way: local noise of std z*C on each coordinate (an open
    participant under distributed DP adds the full noise), around its direction."""
    from fedcollab.worker.outgoing import canary_direction

    sent = _canary_sent(RoundConfig(dp_mode="distributed", clip_norm=1.0,
                                    noise_multiplier=0.5))
    got = np.concatenate([d.ravel() for d in sent.update.delta])  # type: ignore[attr-defined]
    want = np.concatenate([d.ravel() for d in canary_direction(7, 9, SHAPES)])
    noise = got - want
    assert np.std(noise) == pytest.approx(0.5, rel=0.1)
    assert sent.update.loss == 0.0 and sent.update.norm == 0.0  # type: ignore[attr-defined]


def test_a_secure_canary_masks_its_direction_into_the_sum() -> None:
    from fedcollab.worker.outgoing import canary_direction

    sent = _canary_sent(RoundConfig(clip_norm=1.0, weight_scale=10.0), sharing="secure")
    want = np.concatenate([d.ravel() for d in canary_direction(7, 9, SHAPES)])
    vector = sent.secure_vector  # type: ignore[attr-defined]
    np.testing.assert_allclose(vector[:want.size], want, rtol=1e-6)  # weight 10 / 10
