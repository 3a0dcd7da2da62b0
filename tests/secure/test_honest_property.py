"""An honest server is never refused: with every check of issue 11 in place, rounds
under random membership, dropouts and key rotation still sum exactly (or abort only
when too few shares could exist, as before)."""
from __future__ import annotations

import numpy as np
from hypothesis import event, given, settings
from hypothesis import strategies as st

from fedcollab.secure import RoundAbortedError, SecAggParams, run_secure_round
from fedcollab.secure.errors import UnmaskRefusedError
from tests.secure._helpers import (
    FAST_PARAMS,
    encoded_sum,
    feasible,
    make_group,
    make_vectors,
)


@settings(max_examples=30, deadline=None)
@given(protocol=st.sampled_from(["secagg", "secaggplus"]),
       model=st.sampled_from(["honest_but_curious", "malicious"]),
       amortise=st.booleans(), window=st.one_of(st.none(), st.integers(1, 3)),
       n=st.integers(4, 24), seed=st.integers(0, 2**31), data=st.data())
def test_honest_server_rounds_sum_exactly_under_random_dropouts(
        protocol: str, model: str, amortise: bool, window: int | None, n: int, seed: int,
        data: st.DataObject) -> None:
    params = SecAggParams(protocol=protocol, server=model, amortise_keys=amortise,
                          key_rotation_rounds=window, expected_dropout=0.0, neighbours=6,
                          **FAST_PARAMS)
    participants, server = make_group(n, params, rng_seed=seed)
    codec = server.codec
    for round_id in range(4):
        # at least the round floor (min_round_fraction 0.5 of the pinned group), or
        # every participant refuses the round
        members = sorted(data.draw(st.sets(st.sampled_from(range(n)),
                                           min_size=params.floor(n)), label="members"))
        early = data.draw(st.sets(st.sampled_from(members), max_size=len(members) // 4),
                          label="dropped before masked input")
        late = data.draw(st.sets(st.sampled_from(sorted(set(members) - early)),
                                 max_size=len(members) // 5), label="dropped after input")
        vectors = make_vectors(members, 7, seed=seed + round_id)
        alive = set(members) - early
        try:
            result = run_secure_round({p: participants[p] for p in members}, vectors, params,
                                      round_id, {"share_keys": early, "masked_input": late},
                                      server=server)
        except UnmaskRefusedError as exc:  # a refusal is only ever a lie, or infeasible
            assert not feasible(server, alive, alive - late), str(exc)
            event("refused (infeasible)")
            continue
        except RoundAbortedError:
            event("aborted")
            continue
        event("summed")
        assert not any("refused" in why for why in result.rejected.values())
        assert result.survivors == tuple(sorted(alive))
        assert np.array_equal(result.integer_sum,
                              encoded_sum(codec, vectors, result.survivors))
