"""Measurements of one graded task: the task's data, trainer and shadow models,
shared by every mix, and the per-mix figures taken from a finished run.

Pure attacks live in their own modules; this module feeds them what a run produced
(final weights, logged metrics) and the replayed server view. No Ray here.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from fedcollab.grading.canaries import no_audit
from fedcollab.grading.grades import GRADED_DIFFERENCING
from fedcollab.spec.roster import Role
from fedcollab.types import GRADE_BUDGETS

__all__ = ["Budget", "BUDGETS", "Progress", "Timer", "TaskMeasurer", "defence_of",
           "SERVER_ATTACKS", "ServerAttack", "DIFFERENCING_ATTACKS", "DifferencingAttack",
           "GRADED_DIFFERENCING"]


@dataclass(frozen=True)
class Budget:
    shadows: int                # LiRA shadow models
    shadow_epochs: int          # cap on the shadows' epochs (the target saw rounds x epochs)
    mia_samples: int            # cap on the members (and on the non-members) attacked
    backdoor_pretrain: int      # honest rounds before the model-replacement round
    byzantine_rounds: int
    inversion_open_targets: int
    gradient_matching: bool
    # latest secure rounds replayed for cross-round differencing (0: the whole run; a
    # window misses an isolation that happened earlier, a false all-clear)
    cross_round_window: int = 0
    frontier: bool = False        # the privacy-utility sweep (mixes.frontier_mixes) too
    backdoor_durability: int = 3  # honest rounds after the backdoor, its success after each
    backdoor_attack_rounds: int = 3  # rounds the constrain-and-scale attacker attacks
    dp_repeats: int = 3           # runs of each DP mix (its noise drawn afresh): the spread
    # canary clients in each mix's audit run (canaries.py): enough to estimate their
    # statistic's spread (its standard error ~ 1/sqrt(2k), 7% at 100), few against the
    # model's dimension (cross-talk between canaries ~ k/d of the spread)
    canaries: int = 100


BUDGETS = {
    "fast": Budget(shadows=4, shadow_epochs=20, mia_samples=5000, backdoor_pretrain=3,
                   byzantine_rounds=3, inversion_open_targets=3, gradient_matching=False,
                   cross_round_window=0),
    "standard": Budget(shadows=4, shadow_epochs=20, mia_samples=5000, backdoor_pretrain=3,
                       byzantine_rounds=3, inversion_open_targets=3, gradient_matching=False,
                       cross_round_window=0, frontier=True),
    "full": Budget(shadows=16, shadow_epochs=60, mia_samples=20000, backdoor_pretrain=10,
                   byzantine_rounds=10, inversion_open_targets=100, gradient_matching=True,
                   cross_round_window=0, frontier=True, backdoor_durability=5,
                   backdoor_attack_rounds=5, dp_repeats=5),
}

assert tuple(BUDGETS) == GRADE_BUDGETS  # the names the CLI and the service accept

Progress = Callable[[str, str], None]  # (kind: "mix" | "attack", name)


class Timer:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def add(self, name: str, t0: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0


def defence_of(spec: Any) -> str:
    if spec.privacy.dp.mode != "none":
        return "dp"
    return {"norm_bounded": "norm_bounding", "multi_krum": "krum"}.get(
        spec.aggregation.rule, spec.aggregation.rule)


class TaskMeasurer:
    """Task-wide state shared by every mix: data, a trainer, shadow models.

    Not thread-safe: one thread (the grading driver's) uses it, while the mixes run in
    others. Everything here draws from explicit seeded generators, never from a
    global RNG, and every Keras model it needs is built in the constructor: building
    one seeds Keras' global RNG (``keras.utils.set_random_seed``), which a run
    building its own model in another thread must not see change under it.
    """

    def __init__(self, spec: Any, budget: Budget, timer: Timer) -> None:
        from fedcollab.data import load_dataset, participant_indices
        from fedcollab.worker.models import build_model
        from fedcollab.worker.training import LocalTrainer, configure_tensorflow

        configure_tensorflow(threads=1, deterministic=True)
        self.spec, self.budget, self.timer = spec, budget, timer
        self.data = load_dataset(spec.task, seed=spec.seed)
        self.classification = self.data.num_classes > 0
        self.index = participant_indices(spec, self.data.y_train)
        self.parts = [(self.data.x_train[i], self.data.y_train[i]) for i in self.index]
        self.model = build_model(spec.task.model, input_shape=self.data.input_shape,
                                 num_classes=self.data.num_classes, seed=spec.seed)
        local = spec.local
        self.trainer = LocalTrainer(self.model, classification=self.classification,
                                    optimizer=local.optimizer, learning_rate=local.learning_rate,
                                    batch_size=local.batch_size, epochs=local.epochs,
                                    proximal_mu=local.proximal_mu)
        self.w0 = self.trainer.get_weights()
        self.scale = float(max(len(i) for i in self.index))  # the secure sum's n_i scale
        self.shapes = [w.shape for w in self.w0]
        self._shadows: Any = None
        # the gradient-matching attack's own model (its variables are overwritten)
        self._matching_model = build_model(
            spec.task.model, input_shape=self.data.input_shape,
            num_classes=self.data.num_classes, seed=spec.seed) \
            if budget.gradient_matching else None
        # every member and non-member the data allow (up to the budget's cap): the low-FPR
        # figures need >= 1 / FPR non-members to resolve, and their intervals narrow with both
        rng = np.random.default_rng([spec.seed, 31])
        members = np.unique(np.concatenate(self.index))
        self.members_available = int(len(members))
        self.member_idx = rng.choice(members, size=min(budget.mia_samples, len(members)),
                                     replace=False)
        n_test = min(budget.mia_samples, len(self.data.x_test))
        self.test_idx = rng.choice(len(self.data.x_test), size=n_test, replace=False)
        self.non_members = n_test
        self.poisoning_start = ""  # where the backdoor/Byzantine simulations started

    def settings(self) -> dict[str, Any]:
        """What the figures on the card depend on besides the spec: the budget's sizes,
        the seeds the grader drew from, the intervals' confidence and the graded attacks."""
        from dataclasses import asdict

        from fedcollab.grading.membership import CONFIDENCE, GRADED_ATTACK

        return {"membership_sample": self.membership_sample(),
                "budget": asdict(self.budget), "seed": int(self.spec.seed),
                "seeds": {"membership_pool": [int(self.spec.seed), 31],
                          "shadows": [int(self.spec.seed), 41],
                          "participant_training": "[seed, round, participant]"},
                "confidence": CONFIDENCE, "membership_attack": GRADED_ATTACK,
                "members_available": self.members_available,
                "poisoning_start": self.poisoning_start,
                "non_members_available": int(len(self.data.x_test))}

    def membership_sample(self) -> dict[str, Any]:
        """How many members and non-members the membership attacks use, of how many the
        data allow, and why fewer than 1000 where so (the card states it)."""
        from fedcollab.grading.membership import sample_note

        counts = {"members": int(len(self.member_idx)), "non_members": int(self.non_members),
                  "members_available": self.members_available,
                  "non_members_available": int(len(self.data.x_test))}
        return dict(counts, note=sample_note(
            **counts, cap=self.budget.mia_samples, train_rows=int(len(self.data.x_train)),
            test_rows=int(len(self.data.x_test))))

    # ---------------------------------------------------------------- shared experiments
    def simulations(self, report: Progress, *, start: Any = None,
                    origin: str = "") -> dict[str, Any]:
        """The backdoor and Byzantine experiments, shared by every mix.

        Args:
            start: the global weights the attacks start from: a finished run's final
                checkpoint (``origin`` names it), so they hit a model near convergence;
                ``None`` pretrains ``budget.backdoor_pretrain`` FedAvg rounds from the
                initial weights instead (when no run without DP finished).
        """
        from fedcollab.grading.poisoning import (
            Simulation,
            backdoor_experiment,
            byzantine_experiment,
        )

        if not self.classification:
            return {"backdoor": {}, "byzantine": {}}
        sim = Simulation(self.trainer, self.w0, self.parts, self.data.x_test, self.data.y_test,
                         seed=self.spec.seed)
        weights = None if start is None else [np.asarray(w) for w in start]
        self.poisoning_start = (
            f"final checkpoint of the '{origin}' run ({self.spec.rounds} rounds)"
            if weights is not None else
            f"{self.budget.backdoor_pretrain} FedAvg rounds from the initial weights")
        attacker = next((i for i, g in enumerate(self._roster()) if g.role == Role.COMMUNITY), 0)
        t0 = time.perf_counter()
        backdoor = backdoor_experiment(
            sim, pretrain_rounds=0 if weights is not None else self.budget.backdoor_pretrain,
            start=weights, attacker=attacker, seed=self.spec.seed,
            durability_rounds=self.budget.backdoor_durability,
            attack_rounds=self.budget.backdoor_attack_rounds)
        self.timer.add("backdoor", t0)
        report("attack", "backdoor")
        t0 = time.perf_counter()
        byz = byzantine_experiment(sim, rounds=self.budget.byzantine_rounds, fraction=0.2,
                                   start=weights, seed=self.spec.seed)
        self.timer.add("byzantine", t0)
        report("attack", "byzantine")
        return {"backdoor": backdoor, "byzantine": byz}

    def prepare(self) -> None:
        """Train the LiRA shadow models now (shared by every mix), e.g. while the runs
        are under way."""
        if self.classification:
            t0 = time.perf_counter()
            self._shadow_models()
            self.timer.add("shadow_models", t0)

    def _roster(self) -> list[Any]:
        from fedcollab.spec.roster import roster

        return list(roster(self.spec))

    def _shadow_models(self) -> tuple[np.ndarray, np.ndarray]:
        from fedcollab.grading.membership import train_shadows, trainer_shadows

        if self._shadows is None:
            x, y = self._mia_pool()
            epochs = min(self.spec.rounds * self.spec.local.epochs, self.budget.shadow_epochs)
            self._shadows = train_shadows(trainer_shadows(self.trainer, self.w0, epochs=epochs),
                                          x, y, shadows=self.budget.shadows,
                                          rng=np.random.default_rng([self.spec.seed, 41]))
        return self._shadows

    def _mia_pool(self) -> tuple[np.ndarray, np.ndarray]:
        d = self.data
        return (np.concatenate([d.x_train[self.member_idx], d.x_test[self.test_idx]]),
                np.concatenate([d.y_train[self.member_idx], d.y_test[self.test_idx]]))

    # ---------------------------------------------------------------- one mix
    def measure(self, mix: Any, mspec: Any, result: Any, sims: dict[str, Any],
                report: Progress) -> tuple[dict[str, Any], tuple[list[float], list[float]]]:
        summary = result.summary
        weights = [np.asarray(w) for w in result.weights]
        t0 = time.perf_counter()
        own = self._own_models(mspec, result, weights)
        membership, roc = self._membership(weights)
        if own:
            membership["vendor_model"] = self._vendor_membership(own)
        self.timer.add("membership", t0)
        report("attack", f"{mix.name}: membership")
        t0 = time.perf_counter()
        view, check = self._replay(mspec, result)
        if view is None:
            raise RuntimeError(f"{mix.name}: round 1 cannot be replayed: {check.note}")
        inversion = self._inversion(view)
        inversion["final_round"] = self._final_round_inversion(mspec, result)
        self.timer.add("inversion", t0)
        report("attack", f"{mix.name}: inversion")
        server_attacks: dict[str, Any] = {}
        for name, attack in SERVER_ATTACKS.items():  # one function plus one entry each
            t0 = time.perf_counter()
            server_attacks[name] = attack(self, mspec, result, view)
            self.timer.add(name, t0)
            report("attack", f"{mix.name}: {name}")
        t0 = time.perf_counter()
        from fedcollab.grading.replay import differencing_on_view, observed_secure_sum

        observed = observed_secure_sum(mspec, view, self.w0, self._checkpoint(result, 1))
        differencing: dict[str, Any] = dict(
            differencing_on_view(view, self.shapes, observed=observed).to_json(),
            secure_sum="read off the run's checkpoint" if observed is not None else
            "the replay's (the run's step is not a plain FedAvg mean)") \
            if view.vendor_pids \
            else {"relative_error": None, "exact": False, "min_group_seen": 0,
                  "note": "no vendor group"}
        for name, diff in DIFFERENCING_ATTACKS.items():  # one function plus one entry each
            differencing[name] = diff(self, mspec, result, view, observed)
        self.timer.add("differencing", t0)
        report("attack", f"{mix.name}: differencing")
        t0 = time.perf_counter()
        utility = self._utility(mspec, result, weights, own)
        self.timer.add("federated_evaluation", t0)
        # the canary audit comes from this mix's audit run (runner: canary_audit)
        audit = no_audit("the audit run has not finished")
        t0 = time.perf_counter()
        parties = self._party_rows(mspec, weights, view, observed, utility, membership,
                                   inversion, differencing, own)
        for name, found in server_attacks.items():  # a row per party, where it has them
            for party, worst in (found.get("parties") or {}).items():
                if party in parties:
                    parties[party]["attacks"][name] = worst
        self.timer.add("parties", t0)
        people = max(summary["participants"]["total"], 1)
        rounds = max(summary["rounds_completed"], 1)
        per_round = people * max(mspec.fraction, 1e-9) if mspec.fraction < 1 else people
        row = {
            "name": mix.name, "policy": mix.policy(), "defence": defence_of(mspec),
            "private_layers": any(g.private_layers for g in mspec.participants),
            "utility": utility,
            "attacks": {"membership": membership, "inversion": inversion,
                        "differencing": differencing, **server_attacks,
                        "backdoor": sims["backdoor"], "byzantine": sims["byzantine"]},
            "privacy": {"epsilon": summary["privacy"].get("epsilon"),
                        "delta": summary["privacy"].get("delta"),
                        "noise_multiplier": summary["privacy"].get("noise_multiplier"),
                        "adjacency": summary["privacy"].get("adjacency"),
                        "by_observer": self._by_observer(summary["privacy"]),
                        "organisation": summary["privacy"].get("organisation_epsilon"),
                        "empirical_epsilon": audit},
            "cost": {"seconds_per_round": summary.get("seconds_per_round"),
                     "bytes_up_per_participant_round":
                         int(summary["bytes_up"] / (per_round * rounds)),
                     "bytes_down_per_participant_round":
                         int(summary["bytes_down"] / (per_round * rounds))},
            "parties": parties,
            "replay_verified": check.verified,
            "replay": dict(check.to_json(), round=1),
        }
        return row, roc

    def repeat_figures(self, mspec: Any, result: Any) -> dict[str, Any]:
        """What a repeat of a DP mix is compared on: its accuracy and the graded membership
        attack on its release (the noise is the only difference); its canary audit's
        epsilon is filled in from its own audit run (runner)."""
        weights = [np.asarray(w) for w in result.weights]
        membership, _ = self._membership(weights)
        return {"accuracy": result.summary.get("final_accuracy"),
                "membership_auc": membership.get("auc"),
                "membership_tpr_at_1pct_fpr": membership.get("tpr_at_1pct_fpr"),
                "empirical_epsilon": None}

    def canary_audit(self, cspec: Any, result: Any, *, graded: Any,
                     sharing: str) -> dict[str, Any]:
        """The empirical epsilon of a mix's audit run (canary clients in the run:
        :mod:`~fedcollab.grading.canaries`), per observer beside the graded run's
        accountant (``graded``: its summary)."""
        from fedcollab.grading.canaries import audit_run

        t0 = time.perf_counter()
        privacy = graded.get("privacy") or {}
        accountant = self._by_observer(privacy)
        delta = float(privacy.get("delta") or 1e-5)
        out = audit_run(cspec, result, initial=self.w0, delta=delta, accountant=accountant,
                        sharing=sharing, seed=self.spec.seed)
        self.timer.add("canary_audit", t0)
        return out

    @staticmethod
    def _by_observer(privacy: dict[str, Any]) -> dict[str, Any]:
        """Epsilon per observer as the run's accountant composed it
        (:mod:`fedcollab.privacy.observers`; null: that observer sees data without noise,
        or the run has no DP)."""
        by = privacy.get("epsilon_by_observer")
        if isinstance(by, dict):
            return dict(by)
        return {"server": None, "outputs_reader": None, "release_reader": None,
                "note": "the run has no DP: every observer's epsilon is unbounded"}

    def _party_rows(self, mspec: Any, weights: list[np.ndarray], view: Any, observed: Any,
                    utility: dict[str, Any], membership: dict[str, Any],
                    inversion: dict[str, Any], differencing: dict[str, Any],
                    own: dict[int, list[np.ndarray]]) -> dict[str, Any]:
        """One row per party: its utility, and what each observer learns of it.

        Membership: the graded attack on the released model, this party's training
        examples against every non-member (and, for a vendor keeping private layers, its
        sites' own models). Inversion: the worst reconstruction of one of its examples.
        Differencing: for the vendor, the server's recovery of its aggregate, the same
        with every community participant colluding (they take their own contributions out
        of the secure sum), and what the other participants can subtract (they see each
        round's global model, so the rest of the round's sum, never fewer than all but
        themselves); for the community, whether its updates reach the server alone.
        """
        from fedcollab.grading.replay import differencing_on_view

        parties = self._parties(mspec)
        rows: dict[str, Any] = {}
        groups = utility.get("per_group", {})
        names = {g.name: str(Role(g.role).value) for g in mspec.participants}
        inv = inversion.get("parties", {})
        for party, pids in parties.items():
            mine = [v for g, v in groups.items() if names.get(g) == party]
            party_utility: dict[str, Any] = {
                "accuracy": float(np.mean([v["mean"] for v in mine])) if mine else None,
                "worst_participant": float(min(v["min"] for v in mine)) if mine else None}
            if party == Role.VENDOR.value:
                party_utility.update(vendor_accuracy=utility.get("vendor_accuracy"),
                                     public_accuracy=utility.get("public_accuracy"))
            attacks: dict[str, Any] = {
                "membership": self._party_membership(weights, pids),
                "inversion": inv.get(party, {"psnr_db": None, "relative_error": None,
                                             "exact": False, "target": "none"}),
            }
            if party == Role.VENDOR.value and own:
                attacks["membership"]["vendor_model"] = membership.get("vendor_model")
            secure = set(view.secure_pids)
            if party == Role.VENDOR.value:
                colluders = [p for p in parties.get(Role.COMMUNITY.value, [])]
                server = {k: differencing.get(k) for k in
                          ("relative_error", "exact", "min_group_seen", "cosine",
                           "baseline_cosine", "across_rounds")}
                colluding = differencing_on_view(view, self.shapes, observed=observed,
                                                 colluders=colluders).to_json() \
                    if view.vendor_pids else dict(server)
                # c = 1: a single community member in the vendor's sum (secure-all) takes
                # out its own share; c = all is the vendor's worst case
                one = colluders[:1]
                colluding_one = differencing_on_view(view, self.shapes, observed=observed,
                                                     colluders=one).to_json() \
                    if view.vendor_pids and one else dict(server)
                others = max(len(view.deltas) - 1, 0)
                attacks["differencing"] = dict(
                    server, observers={"server": server,
                               "server_with_community": dict(colluding,
                                                             colluders=len(colluders)),
                               "server_with_one_community": dict(colluding_one,
                                                                 colluders=len(one)),
                               "other_participants": {"min_group_seen": others,
                                                      "note": "each round's global model "
                                                      "gives the sum of everyone else's "
                                                      "updates"},
                               "release_readers": {"note": "the final model only: see "
                                                   "membership"}})
            else:
                alone = [p for p in pids if p in view.open_pids]
                attacks["differencing"] = {
                    "relative_error": 0.0 if alone else None, "exact": bool(alone),
                    "min_group_seen": 1 if alone else len(secure),
                    "cosine": 1.0 if alone else None,
                    "note": "open updates reach the server alone" if alone else
                    "only inside the secure sum"}
            rows[party] = {"participants": len(pids), "utility": party_utility,
                           "attacks": attacks}
        return rows

    def _party_membership(self, weights: list[np.ndarray], pids: list[int]) -> dict[str, Any]:
        """The graded membership attack on the release, one party's members only."""
        from fedcollab.grading.membership import (
            GRADED_ATTACK,
            MEMBERSHIP_ATTACKS,
            attack_metrics,
            predictor,
        )

        if not self.classification:
            return {"auc": None, "tpr_at_1pct_fpr": None, "tpr_at_0_1pct_fpr": None}
        theirs = np.concatenate([self.index[p] for p in pids]) if pids else np.array([], int)
        members = np.intersect1d(self.member_idx, theirs)
        d = self.data
        x = np.concatenate([d.x_train[members], d.x_test[self.test_idx]])
        y = np.concatenate([d.y_train[members], d.y_test[self.test_idx]])
        is_member = np.arange(len(x)) < len(members)
        if not len(members):
            return {"auc": None, "tpr_at_1pct_fpr": None, "tpr_at_0_1pct_fpr": None,
                    "note": "no training example"}
        probs = predictor(self.trainer, weights)(x)
        # the graded attack (no shadows of these examples: it needs none)
        scores = MEMBERSHIP_ATTACKS[GRADED_ATTACK](probs, y, None)
        out = attack_metrics(scores, is_member).to_json()
        out.update(attack=GRADED_ATTACK, target="released model")
        return out

    def _membership(self, weights: list[np.ndarray]) -> tuple[dict[str, Any], Any]:
        from fedcollab.grading.membership import GRADED_ATTACK, predictor, run_attacks

        if not self.classification:
            return ({"auc": None, "tpr_at_1pct_fpr": None, "tpr_at_0_1pct_fpr": None,
                     "note": "regression task: no class probabilities"}, ([], []))
        x, y = self._mia_pool()
        member = np.arange(len(x)) < len(self.member_idx)
        probs = predictor(self.trainer, weights)(x)
        phi, inside = self._shadow_models()
        # every registered attack (MEMBERSHIP_ATTACKS), graded on the pre-registered one
        results = run_attacks(probs, y, member, shadows=(phi, inside))
        graded = results[GRADED_ATTACK]
        out: dict[str, Any] = dict(graded.to_json())
        out.update({name: r.to_json() for name, r in results.items()})
        out.update({"attack": GRADED_ATTACK, "pre_registered": True,
                    "attacks": sorted(results),
                    "shadows": int(phi.shape[0]), "members": int(member.sum()),
                    "non_members": int((~member).sum()),
                    "members_available": self.members_available,
                    "sample_note": self.membership_sample()["note"],
                    "target": "released model"})
        return out, (graded.fpr, graded.tpr)

    def _replay(self, mspec: Any, result: Any, round_id: int = 1) -> tuple[Any, Any]:
        """Round ``round_id`` as the server saw it (who it heard from, the round's own
        config, DP noise included), and its check against the run's checkpoint."""
        from fedcollab.grading.replay import (
            Verification,
            heard_from,
            replay_round,
            round_config,
            verify_replay,
        )

        line = next((m for m in result.metrics if int(m.get("round", 0)) == round_id), None)
        start = self._round_start(result, round_id)
        if line is None or start is None or "aborted" in line or "skipped" in line:
            return None, Verification(None, "none", note=f"round {round_id} not replayable "
                                      "(no log line, no starting checkpoint, or it aborted)")
        z = float(line.get("noise_multiplier")
                  or result.summary["privacy"].get("noise_multiplier") or 0.0)
        config = round_config(mspec, line, weight_scale=self.scale, noise_multiplier=z)
        pids = heard_from(mspec, line, dp=config.dp_on, seed=self.spec.seed)
        view = replay_round(mspec, self.trainer, start, self.parts, self._private_index(mspec),
                            pids=pids, config=config, round_id=round_id,
                            logged=line.get("update_sha256"))
        check = verify_replay(mspec, view, start, self._checkpoint(result, round_id),
                              weight_scale=self.scale)
        view.verified = check.verified
        return view, check

    def _across_rounds(self, mspec: Any, result: Any) -> dict[str, Any]:
        """Secure sums of rounds whose membership changed, subtracted (pure part in
        :func:`~fedcollab.grading.differencing.across_changing_rounds`).

        The members of each round's sum come from the run's log (``secure.survivors``:
        what the server knows); the sums and the truth behind them from a replay of
        those rounds from the run's own checkpoints (the global model each round
        started from). Every secure round of the run is used (or the latest
        ``cross_round_window``, if the budget sets one), and only replayed when their
        memberships isolate something smaller than a sum.
        """
        from fedcollab.grading.differencing import (
            SumSeen,
            across_changing_rounds,
            identifiable_sets,
        )
        from fedcollab.grading.replay import replay_round, round_config
        from fedcollab.spec.roster import roster

        people = roster(mspec)
        vendor = frozenset(p.pid for p in people if p.role == Role.VENDOR)
        seen = [(int(m["round"]), frozenset(int(p) for p in m["secure"].get("survivors", ())))
                for m in result.metrics
                if m.get("secure") and "aborted" not in m and "skipped" not in m]
        seen = [(r, s) for r, s in seen if s]
        if self.budget.cross_round_window:
            seen = seen[-self.budget.cross_round_window:]
        in_sums = frozenset().union(*(s for _, s in seen)) if seen else frozenset()
        targets = vendor & in_sums or None

        def empty(note: str, target: str) -> dict[str, Any]:
            return {"sums": len(seen), "identifiable": 0, "isolated": 0, "relative_error": None,
                    "exact": False, "rounds": [], "members": [], "target": target,
                    "note": note}

        if len(seen) < 2:
            return empty("fewer than two secure sums" if seen else "no secure sum",
                         "any participant")
        memberships = [s for _, s in seen]
        unchanged = ("the secure sums' membership never changed in a way that isolates "
                     "fewer participants than a sum")
        if not identifiable_sets(memberships):
            out = empty(unchanged, "any participant")
            if targets:
                out["vendor"] = empty(unchanged, "vendor sites")
            return out
        z = float(result.summary["privacy"].get("noise_multiplier") or 0.0)
        private = self._private_index(mspec)
        lines = {int(m["round"]): m for m in result.metrics}
        sums = []
        for r, members in seen:
            start = self._round_start(result, r)
            if start is None:
                return empty(f"no checkpoint of the global model before round {r}",
                             "any participant")
            config = round_config(mspec, lines[r], weight_scale=self.scale,
                                  noise_multiplier=float(lines[r].get("noise_multiplier") or z))
            view = replay_round(mspec, self.trainer, start, self.parts, private, round_id=r,
                                pids=sorted(members), config=config)
            parts = {p: view.vector(p, self.shapes, clean=True) for p in members}
            total = np.sum([view.vector(p, self.shapes) for p in members], axis=0)
            sums.append(SumSeen(r, members, total, parts))
        out = dict(across_changing_rounds(sums).to_json(), target="any participant")
        if targets:  # what it gives away of the vendor's sites (graded)
            vendor_row = across_changing_rounds(sums, targets=targets)
            out["vendor"] = dict(vendor_row.to_json(), target="vendor sites") \
                if vendor_row.isolated else empty(unchanged, "vendor sites")
        return out

    def _across_rounds_attack(self, mspec: Any, result: Any, view: Any,
                              observed: Any) -> dict[str, Any]:
        """:meth:`_across_rounds` as a :data:`DIFFERENCING_ATTACKS` entry (it replays the
        rounds it needs itself, so it uses neither the round-1 view nor its sum)."""
        return self._across_rounds(mspec, result)

    def _round_start(self, result: Any, round_id: int) -> Any:
        """The global weights round `round_id` started from (its predecessor's checkpoint)."""
        return self.w0 if round_id == 1 else self._checkpoint(result, round_id - 1)

    def _checkpoint(self, result: Any, round_id: int) -> Any:
        """The global weights round `round_id` produced (None when not kept)."""
        from fedcollab.io import load_npz

        path = Path(result.out_dir) / "checkpoints" / f"round-{round_id:05d}.npz"
        if not path.exists():
            return None
        arrays, _ = load_npz(path)
        return [np.asarray(arrays[f"w{i}"]) for i in range(len(self.w0))]

    def _private_index(self, mspec: Any) -> list[int]:
        from fedcollab.worker.models import private_weight_indices

        private_layers = next((g.private_layers for g in mspec.participants if g.private_layers),
                              ())
        return private_weight_indices(self.model, private_layers) if private_layers else []

    def _inversion(self, view: Any) -> dict[str, Any]:
        from fedcollab.grading.inversion import first_dense_indices
        from fedcollab.grading.replay import inversion_on_view

        dense = first_dense_indices(self.model)
        if dense is None:
            return {"psnr_db": None, "relative_error": None, "exact": False, "target": "none",
                    "note": "the model has no dense layer on its input; analytic inversion "
                            "does not apply"}
        x = self.data.x_train
        flat = x.reshape(len(x), -1)
        span = float(flat.max() - flat.min()) or 1.0
        if flat.min() < 0 or flat.max() > 1:
            return {"psnr_db": None, "relative_error": None, "exact": False, "target": "none",
                    "note": f"inputs outside [0, 1] (range {span:.3g}); PSNR needs a data range"}
        parts = [(p[0].reshape(len(p[0]), -1), p[1]) for p in self.parts]
        row = inversion_on_view(view, dense, parts, flat.mean(axis=0),
                                max_open=self.budget.inversion_open_targets,
                                parties=self._parties(self.spec))
        if self.budget.gradient_matching:
            row["gradient_matching"] = self._gradient_matching(view)
        for r in [row, *row.get("parties", {}).values(), *row.get("by_attack", {}).values()]:
            for key in ("psnr_db", "gain_db"):
                if r.get(key) is not None and not math.isfinite(r[key]):
                    r[key] = 200.0  # exact: report a finite ceiling (strict JSON)
        return row

    def _final_round_inversion(self, mspec: Any, result: Any) -> dict[str, Any]:
        """The same passive inversion on the run's last round, near convergence (its own
        replay, checked against that round's checkpoint). Reported beside round 1's,
        which the grade is taken on (early updates are the larger ones)."""
        last = int(result.summary.get("rounds_completed") or 0)
        if last <= 1:
            return {"note": "the run has one round"}
        view, check = self._replay(mspec, result, round_id=last)
        if view is None:
            return {"round": last, "note": check.note}
        row = self._inversion(view)
        row.pop("gradient_matching", None)
        row.update(round=last, replay_verified=check.verified)
        return row

    def _lying_server(self, mspec: Any, result: Any, view: Any) -> dict[str, Any]:
        """The lying server's key substitution against the real participant code
        (:mod:`~fedcollab.grading.lying_server`), on a secure member's replayed input."""
        from fedcollab.grading.lying_server import lying_server

        secure_pid = view.secure_pids[0] if view.secure_pids else None
        return lying_server(mspec, None if secure_pid is None else np.append(
            view.vector(secure_pid, self.shapes, clean=True) / self.scale, 1.0))

    def _malicious_model(self, mspec: Any, result: Any, view: Any) -> dict[str, Any]:
        """Round 1 replayed with a malicious server's model (imprint; model inconsistency
        against one secure member): :mod:`~fedcollab.grading.malicious_server`."""
        from fedcollab.grading.inversion import first_dense_indices
        from fedcollab.grading.malicious_server import malicious_model_rows

        flat = self.data.x_train.reshape(len(self.data.x_train), -1)
        if flat.min() < 0 or flat.max() > 1:
            return {"note": "inputs outside [0, 1]: PSNR needs a data range"}
        start = self._round_start(result, 1)
        if start is None:
            return {"note": "no checkpoint of round 1's global model"}
        parts = [(p[0].reshape(len(p[0]), -1), p[1]) for p in self.parts]
        return malicious_model_rows(
            mspec, self.trainer, start, parts, self._private_index(mspec), view,
            dense=first_dense_indices(self.model),
            reference=self.data.x_test.reshape(len(self.data.x_test), -1),
            parties=self._parties(mspec), seed=self.spec.seed)

    def _parties(self, mspec: Any) -> dict[str, list[int]]:
        """Each party (a role: community, vendor) and its participants."""
        from fedcollab.spec.roster import roster

        out: dict[str, list[int]] = {}
        for p in roster(mspec):
            out.setdefault(str(Role(p.role).value), []).append(p.pid)
        return out

    def _gradient_matching(self, view: Any) -> dict[str, Any]:
        """Zhu et al. 2019 on the first open update, when it comes from a small batch
        (one local step on at most 8 examples: the regime the attack is known for)."""
        from fedcollab.grading.inversion import gradient_matching, score_reconstructions

        small = [p for p in view.open_pids if len(self.parts[p][0]) <= 8
                 and len(self.parts[p][0]) <= self.spec.local.batch_size
                 and self.spec.local.epochs == 1 and self.spec.local.optimizer == "sgd"
                 and not view.dp]
        if not small:
            return {"applied": False, "note": "no open update from one step on <= 8 examples"}
        pid = small[0]
        x = self.parts[pid][0]
        lr = self.spec.local.learning_rate
        observed = [np.zeros_like(w) if d is None else -np.asarray(d) / lr
                    for d, w in zip(view.clean[pid], self.w0)]
        model = self._matching_model
        recon = gradient_matching(model, self.w0, observed, batch=len(x),
                                  num_classes=self.data.num_classes, steps=300,
                                  learning_rate=0.05, seed=self.spec.seed)
        res = score_reconstructions(recon, x.reshape(len(x), -1))
        return {"applied": True, "psnr_db": min(res.psnr_db, 200.0),
                "relative_error": res.relative_error, "participant": pid}

    def _own_models(self, mspec: Any, result: Any, weights: list[np.ndarray]
                    ) -> dict[int, list[np.ndarray]]:
        """Each vendor site's own model: the release with its private layers put back
        (from the private checkpoints the run wrote on the vendor's side)."""
        from fedcollab.io import load_npz
        from fedcollab.spec.roster import roster

        own: dict[int, list[np.ndarray]] = {}
        folder = Path(result.out_dir) / "checkpoints" / "private"
        for p in roster(mspec):
            # the latest private checkpoint of this participant (one file per round kept)
            found = sorted(folder.glob(f"participant-{p.pid:05d}*.npz"))
            if p.private_layers and found:
                arrays, _ = load_npz(found[-1])
                mine = list(weights)
                for key, value in arrays.items():
                    mine[int(key[1:])] = value
                own[p.pid] = mine
        return own

    def _vendor_membership(self, own: dict[int, list[np.ndarray]]) -> dict[str, Any]:
        """Loss-threshold attack on each vendor site's own model, its training examples
        against as many test examples; the site most exposed is reported."""
        from fedcollab.grading.membership import (
            GRADED_ATTACK,
            MEMBERSHIP_ATTACKS,
            attack_metrics,
            predictor,
        )

        best: dict[str, Any] = {}
        for pid, mine in own.items():
            x_in, y_in = self.parts[pid]
            n = min(len(x_in), len(self.data.x_test))
            x = np.concatenate([x_in[:n], self.data.x_test[self.test_idx][:n]])
            y = np.concatenate([y_in[:n], self.data.y_test[self.test_idx][:n]])
            member = np.arange(len(x)) < n
            probs = predictor(self.trainer, mine)(x)
            result = attack_metrics(MEMBERSHIP_ATTACKS[GRADED_ATTACK](probs, y, None), member)
            if not best or result.auc > best["auc"]:
                best = dict(result.to_json(), participant=pid, attack=GRADED_ATTACK)
        return best

    def _utility(self, mspec: Any, result: Any, weights: list[np.ndarray],
                 own: dict[int, list[np.ndarray]]) -> dict[str, Any]:
        from fedcollab.grading.replay import federated_evaluation

        s = result.summary
        out: dict[str, Any] = {"accuracy": s.get("final_accuracy"), "loss": s.get("final_loss"),
                               "vendor_accuracy": None, "public_accuracy": None, "per_group": {}}
        if self.classification:
            groups, vendor = federated_evaluation(mspec, self.trainer, weights, self.parts,
                                                  self.data.x_test, self.data.y_test, own=own)
            out["per_group"] = groups
            out.update(vendor)
        return out


#: Attacks by a server that deviates from the protocol, on the replayed round: name ->
#: ``f(measurer, mix spec, run result, round view) -> row`` (a row with ``"parties"``
#: also gives each party its own row under the same name). One function plus one entry.
ServerAttack = Callable[[TaskMeasurer, Any, Any, Any], dict[str, Any]]
SERVER_ATTACKS: dict[str, ServerAttack] = {
    "lying_server": TaskMeasurer._lying_server,
    "malicious_model": TaskMeasurer._malicious_model,
}


#: Differencing attacks beyond the within-round one (the vendor's aggregate from round
#: 1's open updates and secure sum, at the top of ``attacks.differencing``): name ->
#: ``f(measurer, mix spec, run result, round-1 view, the secure sum read off the run
#: (flat, or None)) -> row``, each row under ``attacks.differencing[name]``. One function
#: plus one entry. The confidentiality grade is taken on the within-round figure and
#: on ``across_rounds`` (pre-registered: the worse of the two); other entries are reported
#: beside them, not graded.
DifferencingAttack = Callable[[TaskMeasurer, Any, Any, Any, Any], dict[str, Any]]
DIFFERENCING_ATTACKS: dict[str, DifferencingAttack] = {
    "across_rounds": TaskMeasurer._across_rounds_attack,
}
