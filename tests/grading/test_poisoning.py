from __future__ import annotations

import numpy as np

from fedcollab.grading.poisoning import (
    Simulation,
    apply_trigger,
    backdoor_experiment,
    byzantine_experiment,
)
from tests.grading._fixtures import digits, mlp_trainer


def _simulation(n: int = 10) -> Simulation:
    data = digits()
    _, trainer = mlp_trainer(batch_size=16, learning_rate=0.1)
    parts = [(x, y) for x, y in zip(np.array_split(data.x_train[:800], n),
                                    np.array_split(data.y_train[:800], n))]
    return Simulation(trainer, trainer.get_weights(), parts, data.x_test, data.y_test, seed=0)


def test_apply_trigger_sets_bottom_right_patch_only() -> None:
    x = np.zeros((2, 64), np.float32)
    img = apply_trigger(x).reshape(2, 8, 8)
    assert np.all(img[:, 6:, 6:] == 1.0) and img.sum() == 2 * 4
    assert np.all(x == 0)


def test_backdoor_model_replacement_fedavg_succeeds_defences_lower() -> None:
    result = backdoor_experiment(_simulation(), pretrain_rounds=5, target=0, seed=0)
    for name, row in result.items():
        print(f"backdoor {name}: success {row['success_rate']:.3f}, "
              f"main accuracy {row['main_accuracy']:.3f}")
    assert result["fedavg"]["success_rate"] > 0.8
    assert result["clean"]["success_rate"] < 0.3
    assert result["norm_bounding"]["success_rate"] < result["fedavg"]["success_rate"] - 0.3
    assert result["dp"]["success_rate"] < result["fedavg"]["success_rate"] - 0.3


def test_byzantine_sign_flip_hurts_fedavg_more_than_median() -> None:
    result = byzantine_experiment(_simulation(), rounds=4, fraction=0.3,
                                  defences=["fedavg", "median"], seed=0)
    print({k: {a: round(v, 3) for a, v in row.items()} for k, row in result.items()})
    assert result["fedavg"]["sign_flip"] < result["fedavg"]["baseline"] - 0.2
    assert result["median"]["accuracy"] > result["fedavg"]["accuracy"]
