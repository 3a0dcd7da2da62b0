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
