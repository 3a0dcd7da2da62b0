"""The vendor's policy check: ``check(policy, state, frame) -> Allow | Refuse | Pending``.

Pure: no I/O, no clock, no randomness. The gateway calls it on every frame that
comes in and on every update before it goes out, persists ``Allow.state`` before
acting, and logs the decision to its audit chain. Anything the function does not
recognise is refused: the check fails closed.

Rules (docs/cross-silo.md has the reference):

* ``share_only``: an update may carry only listed layers, and inbound global weights
  for an unlisted layer are refused (an unlisted layer neither leaves nor is
  overwritten from outside).
* ``egress: masked_only``: an update leaves masked in the secure-aggregation ring or
  not at all.
* ``min_group``: counted over distinct identities whose certificate chains to a CA
  the policy lists; identities the coordinator simulates count zero. Checked at key
  sharing (the roster) and again before any unmask reveal (the survivors).
* One contribution per global-model hash (across jobs: the coordinator names job
  ids), round ids strictly increasing per
  job (the state is persisted by the caller, so this survives restarts).
* A local DP floor (noise multiplier at least, clip norm at most) and an epsilon
  budget the vendor accounts itself over everything it ever contributed, at
  sampling rate 1 (the coordinator always knows who took part).
* Fixed-point bounds: the offered ring cannot overflow for the offered group size,
  the scale is no finer than the policy allows, and the update fits the clip.
* Updates leave only inside secure aggregation: an offer with any other protocol
  (a request for plaintext updates) is refused, as is a threshold at or below half
  the group (a minority could then reconstruct both of a participant's seeds).
* A job contributes at most the offer's ``rounds`` times, and the budget reserves
  what every accepted offer may still spend, so a second job cannot take the first's.
* A model whose architecture hash is not approved waits (Pending, which carries the
  state with the offer recorded as pending) until ``fedcollab silo approve JOB``
  approves that exact offer (its :func:`~fedcollab.silo.frames.offer_sha256`).
  Approval never overrides a refusal: the hard rules are checked first.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass, replace
from typing import Optional, Union

from fedcollab.silo.frames import (
    MASKED,
    ROUND_STAGES,
    SECURE_PROTOCOLS,
    SETUP_STAGES,
    Egress,
    GroupSetup,
    Offer,
    Roster,
    RoundStart,
    Stage,
    UnmaskRequest,
    offer_sha256,
    secure_job_id,
)
from fedcollab.silo.limits import MAX_PENDING
from fedcollab.silo.policy import Policy, is_sha256
from fedcollab.silo.state import JobState, SiloState

__all__ = ["Allow", "Refuse", "Pending", "Decision", "check", "trusted_count",
           "epsilon_spent"]


@dataclass(frozen=True)
class Allow:
    """Go ahead; ``state`` is what the caller persists before acting."""

    state: SiloState


@dataclass(frozen=True)
class Refuse:
    """Do not act; ``rule`` names the policy rule, ``reason`` is one line."""

    rule: str
    reason: str


@dataclass(frozen=True)
class Pending:
    """Wait for a human (``fedcollab silo approve JOB``); ``state`` (when set) is the
    state with the offer recorded as pending, which the caller persists."""

    reason: str
    state: Optional[SiloState] = None


Decision = Union[Allow, Refuse, Pending]


def trusted_count(policy: Policy, roster: Roster) -> int:
    """Distinct, non-simulated parties in `roster` whose certificate chains to a CA
    the policy trusts: the only ones min_group counts."""
    return len({m.party for m in roster.members
                if not m.simulated and m.ca_sha256 in policy.trusted_cas})


@functools.lru_cache(maxsize=4096)
def _epsilon(spent: tuple[tuple[float, int], ...], delta: float) -> float:
    import dp_accounting

    if not spent:
        return 0.0
    if any(z <= 0 for z, _ in spent):
        return math.inf
    accountant = dp_accounting.rdp.RdpAccountant()
    accountant.compose(dp_accounting.ComposedDpEvent([
        dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(z), n)
        for z, n in spent]))
    return float(accountant.get_epsilon(delta))


def epsilon_spent(policy: Policy, state: SiloState) -> float:
    """The vendor's epsilon over every contribution so far (sampling rate 1)."""
    return _epsilon(state.spent, policy.dp.delta)


def _with(spent: tuple[tuple[float, int], ...], z: float, n: int) -> tuple[tuple[float, int], ...]:
    counts = dict(spent)
    counts[z] = counts.get(z, 0) + n
    return tuple(sorted(counts.items()))


def _reserved(state: SiloState) -> tuple[tuple[float, int], ...]:
    """What was spent plus what every accepted offer may still spend."""
    total = state.spent
    for job in state.jobs.values():
        if job.offer is not None:
            left = job.offer.rounds - len(job.contributed)
            if left > 0:
                total = _with(total, job.offer.dp.noise_multiplier, left)
    return total


def _fixed_point(policy: Policy, offer: Offer) -> str:
    sa = offer.secagg
    if sa.ring_bits not in (32, 64):
        return f"ring_bits={sa.ring_bits}: only 32 or 64"
    if not 0 <= sa.scale_bits <= policy.fixed_point.max_scale_bits:
        return (f"scale_bits={sa.scale_bits}: the policy allows at most "
                f"{policy.fixed_point.max_scale_bits}")
    if not (math.isfinite(sa.clip) and sa.clip > 0) or sa.max_group < 1:
        return f"clip={sa.clip}, max_group={sa.max_group}: need a finite clip > 0 and a group"
    largest = math.ceil(sa.clip * 2 ** sa.scale_bits)
    if sa.max_group * largest > 2 ** (sa.ring_bits - 1) - 1:
        return (f"a sum of {sa.max_group} values of magnitude {sa.clip} at scale "
                f"2^{sa.scale_bits} overflows the {sa.ring_bits}-bit ring")
    return ""


def _dp_floor(policy: Policy, noise_multiplier: float, clip_norm: float) -> Optional[Refuse]:
    """The policy's local DP floor (minimum noise, maximum clip), for offers and updates
    alike; ``None`` when both hold (NaN never does)."""
    if not noise_multiplier >= policy.dp.min_noise_multiplier:
        return Refuse("dp_floor", f"noise multiplier {noise_multiplier} is below the "
                      f"policy's floor {policy.dp.min_noise_multiplier}")
    if not 0 < clip_norm <= policy.dp.max_clip_norm:
        return Refuse("dp_floor", f"clip norm {clip_norm} is above the policy's maximum "
                      f"{policy.dp.max_clip_norm}")
    return None


def _offer(policy: Policy, state: SiloState, frame: Offer) -> Decision:
    job = state.job(frame.job_id)
    if job.offer is not None:
        if job.offer == frame:
            return Allow(state)  # the same offer again, e.g. after a rejoin
        return Refuse("offer", f"job {frame.job_id}: an offer was already accepted and this "
                      "one differs; changed terms need a new job id")
    if not is_sha256(frame.model_sha256):
        return Refuse("offer", "model_sha256 is not a lowercase hex sha256")
    if frame.rounds < 1:
        return Refuse("offer", f"rounds={frame.rounds}: must be >= 1")
    if frame.secagg.protocol not in SECURE_PROTOCOLS:
        return Refuse("egress", f"secagg.protocol={frame.secagg.protocol!r}: updates leave "
                      f"only masked, inside {' or '.join(sorted(SECURE_PROTOCOLS))}")
    if not 0.5 < frame.secagg.threshold <= 1:
        return Refuse("secagg", f"secagg.threshold={frame.secagg.threshold}: must be above "
                      "0.5 and at most 1 (a minority must never be able to unmask)")
    if not set(frame.layers) & policy.share_only:
        return Refuse("share_only", "no layer of the offered model is in share_only: "
                      "nothing could be shared")
    dp = frame.dp
    below = _dp_floor(policy, dp.noise_multiplier, dp.clip_norm)
    if below is not None:
        return below
    problem = _fixed_point(policy, frame)
    if problem:
        return Refuse("fixed_point", problem)
    after = _epsilon(_with(_reserved(state), dp.noise_multiplier, frame.rounds),
                     policy.dp.delta)
    if not after <= policy.dp.epsilon_budget:
        return Refuse("budget", f"{frame.rounds} rounds at noise {dp.noise_multiplier} would "
                      f"bring epsilon to {after:.3g}, over the budget "
                      f"{policy.dp.epsilon_budget:g} (spent {epsilon_spent(policy, state):.3g}, "
                      "the rest reserved by accepted offers)")
    if (frame.model_sha256 not in policy.approved_models | state.approved_models
            and offer_sha256(frame) not in state.approved_offers):
        if frame.job_id not in state.pending and len(state.pending) >= MAX_PENDING:
            return Refuse("offer", f"{len(state.pending)} offers already wait for approval "
                          f"(at most {MAX_PENDING}); approve or let them go first")
        return Pending(f"model {frame.model_name} ({frame.model_sha256[:12]}) is not "
                       f"approved: `fedcollab silo approve {frame.job_id}`",
                       state=state.with_pending(frame))
    return Allow(state.with_job(frame.job_id, replace(job, offer=frame))
                 .without_pending(frame.job_id))


def _contributed_by(state: SiloState, model_sha256: str) -> Optional[str]:
    """The job (any job: the coordinator names job ids, so a fresh id must not buy a
    second contribution to one global model) whose update for ``model_sha256`` left,
    or None. Two sums over one model that differ in who took part give away a site's
    update; only the vendor's own persisted state can refuse the second."""
    for job_id in sorted(state.jobs):
        if model_sha256 in state.jobs[job_id].contributed:
            return job_id
    return None


def _round_start(policy: Policy, state: SiloState, frame: RoundStart) -> Decision:
    job = state.job(frame.job_id)
    if job.offer is None:
        return Refuse("sequence", f"job {frame.job_id}: no accepted offer")
    if frame.round_id <= job.last_round:
        return Refuse("round_order", f"round {frame.round_id} does not exceed the last "
                      f"round {job.last_round} of job {frame.job_id}")
    other = _contributed_by(state, frame.global_model_sha256)
    if other is not None:
        return Refuse("replay", f"the vendor already contributed to global model "
                      f"{frame.global_model_sha256[:12]} (job {other})")
    if len(job.contributed) >= job.offer.rounds:
        return Refuse("budget", f"job {frame.job_id}: all {job.offer.rounds} offered rounds "
                      "were contributed; more rounds need a new offer")
    if not is_sha256(frame.global_model_sha256):
        return Refuse("sequence", "global_model_sha256 is not a lowercase hex sha256")
    unlisted = sorted(set(frame.layers) - (policy.share_only & set(job.offer.layers)))
    if unlisted:
        return Refuse("share_only", f"inbound weights for layer {unlisted[0]!r}, which is "
                      "not shared (share_only and the offer's layers)")
    return Allow(state.with_job(frame.job_id, replace(
        job, last_round=frame.round_id, round_model=frame.global_model_sha256, roster=(),
        trusted=(), revealed=False)))


def _current(job: JobState, job_id: str, round_id: int) -> str:
    if job.offer is None or job.last_round == 0:
        return f"job {job_id}: no round started"
    if round_id != job.last_round:
        return f"round {round_id} is not the current round {job.last_round} of job {job_id}"
    return ""


def _roster(policy: Policy, state: SiloState, frame: Roster) -> Decision:
    job = state.job(frame.job_id)
    problem = _current(job, frame.job_id, frame.round_id)
    if problem:
        return Refuse("sequence", problem)
    parties = tuple(sorted({m.party for m in frame.members}))
    if len(parties) != len(frame.members):
        return Refuse("min_group", "the roster names a party twice")
    if job.roster:
        if job.roster == parties:
            return Allow(state)
        return Refuse("sequence", f"a second, different roster for round {frame.round_id}")
    trusted = trusted_count(policy, frame)
    if trusted < policy.min_group:
        return Refuse("min_group", f"the roster has {trusted} trusted identities, the policy "
                      f"needs {policy.min_group} (simulated and untrusted ones count zero)")
    trusted_parties = tuple(sorted(m.party for m in frame.members if not m.simulated
                                   and m.ca_sha256 in policy.trusted_cas))
    return Allow(state.with_job(frame.job_id, replace(job, roster=parties,
                                                      trusted=trusted_parties)))


def _unmask(policy: Policy, state: SiloState, frame: UnmaskRequest) -> Decision:
    job = state.job(frame.job_id)
    problem = _current(job, frame.job_id, frame.round_id)
    if problem or not job.roster:
        return Refuse("sequence", problem or "unmask before key sharing")
    if job.revealed:
        return Refuse("sequence", f"a second unmask request for round {frame.round_id}")
    survivors, dropped = set(frame.survivors), set(frame.dropped)
    if (survivors & dropped or survivors | dropped != set(job.roster)
            or len(survivors) != len(frame.survivors) or len(dropped) != len(frame.dropped)):
        return Refuse("unmask", "inconsistent unmask request: survivors and dropped must "
                      "partition the round's roster")
    trusted = len(survivors & set(job.trusted))
    if trusted < policy.min_group:
        return Refuse("min_group", f"{trusted} trusted survivors, the policy needs "
                      f"{policy.min_group} before any reveal")
    return Allow(state.with_job(frame.job_id, replace(job, revealed=True)))


def _egress(policy: Policy, state: SiloState, frame: Egress) -> Decision:
    if frame.encoding != MASKED:
        return Refuse("egress", f"egress is masked_only; refused a {frame.encoding!r} update")
    job = state.job(frame.job_id)
    unlisted = sorted(set(frame.layers) - policy.share_only)
    if unlisted:
        return Refuse("share_only", f"layer {unlisted[0]!r} is not in share_only: it never "
                      "leaves")
    problem = _current(job, frame.job_id, frame.round_id)
    if problem or not job.roster or job.offer is None:
        return Refuse("sequence", problem or "an update before key sharing")
    if frame.global_model_sha256 != job.round_model:
        return Refuse("replay", "the update is not for this round's global model")
    other = _contributed_by(state, frame.global_model_sha256)
    if other is not None:
        return Refuse("replay", f"one contribution per global model: already contributed to "
                      f"{frame.global_model_sha256[:12]} (job {other})")
    if len(job.contributed) >= job.offer.rounds:
        return Refuse("budget", f"job {frame.job_id}: all {job.offer.rounds} offered rounds "
                      "were contributed")
    if not set(frame.layers) <= set(job.offer.layers) or not frame.layers:
        return Refuse("share_only", "the update's layers are not the offer's")
    below = _dp_floor(policy, frame.noise_multiplier, frame.clip_norm)
    if below is not None:
        return below
    if not 0 <= frame.max_abs <= job.offer.secagg.clip:
        return Refuse("fixed_point", f"a coordinate of magnitude {frame.max_abs} is outside "
                      f"the encoding's clip {job.offer.secagg.clip}")
    after = _epsilon(_with(state.spent, frame.noise_multiplier, 1), policy.dp.delta)
    if not after <= policy.dp.epsilon_budget:
        return Refuse("budget", f"this round would bring epsilon to {after:.3g}, over the "
                      f"budget {policy.dp.epsilon_budget:g}")
    updated = replace(job, contributed=job.contributed | {frame.global_model_sha256})
    return Allow(state.with_job(frame.job_id, updated).spend(frame.noise_multiplier))


def _stage(policy: Policy, state: SiloState, frame: Stage) -> Decision:
    """A stage runs only inside what the vendor agreed to: setup after an accepted
    offer; a round's stages in the current round after its roster passed min_group;
    the unmask stage only after an UnmaskRequest passed (survivors checked)."""
    job = state.job(frame.job_id)
    if job.offer is None:
        return Refuse("sequence", f"job {frame.job_id}: no accepted offer")
    if frame.stage in SETUP_STAGES:
        return Allow(state)
    if frame.stage not in ROUND_STAGES:
        return Refuse("unknown", f"unknown stage {frame.stage!r}: refused")
    problem = _current(job, frame.job_id, frame.round_id)
    if problem or not job.roster:
        return Refuse("sequence", problem or f"stage {frame.stage} before key sharing")
    if frame.stage == "unmask" and not job.revealed:
        return Refuse("sequence", "an unmask stage without an allowed unmask request")
    return Allow(state)


def _setup(policy: Policy, state: SiloState, frame: GroupSetup) -> Decision:
    job = state.job(frame.job_id)
    if job.offer is None:
        return Refuse("sequence", f"job {frame.job_id}: no accepted offer")
    if frame.secure_job_id != secure_job_id(frame.job_id):
        return Refuse("setup", "the group's job id is not this job's: signed key adverts "
                      "must be bound to it")
    return Allow(state)


def check(policy: Policy, state: SiloState, frame: object) -> Decision:
    """Decide one frame against the vendor's policy, given what it agreed to so far.

    Args:
        policy: the vendor's parsed policy.
        state: the persisted state (see :mod:`fedcollab.silo.state`).
        frame: an inbound frame (Offer, RoundStart, Roster, UnmaskRequest, Stage,
            GroupSetup) or an Egress about to leave; anything else is refused.

    Returns:
        Allow with the next state, Refuse with the rule and a reason, or Pending.
    """
    if isinstance(frame, Offer):
        return _offer(policy, state, frame)
    if isinstance(frame, RoundStart):
        return _round_start(policy, state, frame)
    if isinstance(frame, Roster):
        return _roster(policy, state, frame)
    if isinstance(frame, UnmaskRequest):
        return _unmask(policy, state, frame)
    if isinstance(frame, Egress):
        return _egress(policy, state, frame)
    if isinstance(frame, Stage):
        return _stage(policy, state, frame)
    if isinstance(frame, GroupSetup):
        return _setup(policy, state, frame)
    return Refuse("unknown", f"unknown frame {type(frame).__name__}: refused")
