"""Tests for fedcollab.spec through the real CLI: bad specs exit 2 with one clear line.

Every bad spec a user can write is run as ``python -m fedcollab.cli validate``
in a subprocess, so the test sees exactly what the user sees: the exit code,
stderr, and no traceback. The positive tests check that every shipped example
validates and that ``--set`` overrides and JSON specs work.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, Sequence

import pytest
import yaml

from fedcollab.spec import load_spec, spec_from_dict, spec_to_dict

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))
MISSING = object()  # a case whose spec file is never written


def _cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fedcollab.cli", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


def _spec(**top: Any) -> dict[str, Any]:
    """A small valid digits spec with top-level fields replaced by `top`."""
    data: dict[str, Any] = {"name": "t", "task": {"dataset": "digits", "model": "mlp"},
                            "rounds": 2,
                            "participants": [{"name": "community", "count": 4}]}
    data.update(top)
    return data


def _group(**fields: Any) -> dict[str, Any]:
    return {"name": "community", "count": 4, **fields}


# Each case: (id, spec data or raw text or MISSING, file suffix, --set overrides, regex on the
# message after "fedcollab: error: "). The regex names the field and what is allowed.
BAD_SPECS: list[Any] = [
    ("unknown-top-level-key", _spec(roundz=3), ".yaml", [],
     r"^spec: roundz: unknown key; allowed: .*\brounds\b"),
    ("unknown-nested-key", _spec(local={"epochz": 2}), ".yaml", [],
     r"^spec: local\.epochz: unknown key; allowed: epochs, batch_size"),
    ("unknown-group-key", _spec(participants=[_group(counts=3)]), ".yaml", [],
     r"^spec: participants\.0\.counts: unknown key; allowed: name, role, count"),
    ("rounds-wrong-type", _spec(rounds="ten"), ".yaml", [],
     r"^spec: rounds: got 'ten', expected an integer$"),
    ("rounds-bool-is-not-int", _spec(rounds=True), ".yaml", [],
     r"^spec: rounds: got True, expected an integer$"),
    ("rounds-zero", _spec(rounds=0), ".yaml", [],
     r"^spec: rounds: got 0, expected an integer > 0$"),
    ("rounds-negative", _spec(rounds=-3), ".yaml", [],
     r"^spec: rounds: got -3, expected an integer > 0$"),
    ("alpha-zero", _spec(participants=[_group(partition={"kind": "dirichlet", "alpha": 0})]),
     ".yaml", [], r"^spec: participants\.0\.partition\.alpha: got 0\.0, expected a number > 0$"),
    ("alpha-negative",
     _spec(participants=[_group(partition={"kind": "dirichlet", "alpha": -0.5})]),
     ".yaml", [], r"^spec: participants\.0\.partition\.alpha: got -0\.5, expected a number > 0$"),
    ("fraction-zero", _spec(fraction=0), ".yaml", [],
     r"^spec: fraction: got 0\.0, expected a fraction in \(0, 1\]$"),
    ("fraction-above-one", _spec(fraction=1.5), ".yaml", [],
     r"^spec: fraction: got 1\.5, expected a fraction in \(0, 1\]$"),
    ("more-participants-than-samples", _spec(participants=[_group(count=5000)]), ".yaml", [],
     r"^spec: participants: 5000 participants but only 1437 training samples; "
     r"expected at most one per sample$"),
    ("unknown-dataset", _spec(task={"dataset": "mnist"}), ".yaml", [],
     r"^spec: task\.dataset: got 'mnist', expected one of 'digits', 'regression', 'file', "
     r"'synthetic'$"),
    ("unknown-model", _spec(task={"dataset": "digits", "model": "resnet"}), ".yaml", [],
     r"^spec: task\.model: got 'resnet', expected one of mlp, cnn, regression or "
     r"'package\.module:function'$"),
    ("unknown-aggregation-rule", _spec(aggregation={"rule": "mean"}), ".yaml", [],
     r"^spec: aggregation\.rule: got 'mean', expected one of 'fedavg', 'median', "
     r"'trimmed_mean'"),
    ("unknown-partition-kind", _spec(participants=[_group(partition={"kind": "zipf"})]),
     ".yaml", [], r"^spec: participants\.0\.partition\.kind: got 'zipf', expected one of "
     r"'iid', 'dirichlet', 'shards'$"),
    ("missing-data-file", _spec(task={"dataset": "file", "path": "no-such-data.npz"}),
     ".yaml", [], r"^spec: task\.path: no-such-data\.npz: no such file$"),
    ("data-file-wrong-suffix", _spec(task={"dataset": "file", "path": "data.txt"}),
     ".yaml", [], r"^spec: task\.path: got 'data\.txt', expected a \.npz or \.csv file$"),
    ("csv-without-label-column", _spec(task={"dataset": "file", "path": "data.csv"}),
     ".yaml", [], r"^spec: task\.label_column: a \.csv dataset needs label_column$"),
    ("spec-file-missing", MISSING, ".yaml", [], r"^spec: .*spec\.yaml: no such file$"),
    ("invalid-yaml", "name: t\nparticipants: [{name: a\nrounds: 3\n", ".yaml", [],
     r"^spec: .*spec\.yaml: invalid YAML at line \d+: "),
    ("invalid-json", '{"name": "t",', ".json", [],
     r"^spec: .*spec\.json: invalid JSON at line \d+: "),
    ("top-level-list", "- name: t\n- rounds: 3\n", ".yaml", [],
     r"^spec: .*spec\.yaml: expected a mapping at the top level$"),
    ("missing-required-name", {"participants": [_group()]}, ".yaml", [],
     r"^spec: name: missing; this field is required$"),
    ("participants-not-a-list", _spec(participants={"name": "community"}), ".yaml", [],
     r"^spec: participants: got \{.*\}, expected a list$"),
    ("duplicate-group-names", _spec(participants=[_group(), _group()]), ".yaml", [],
     r"^spec: participants\.1\.name: got 'community' twice; group names must differ$"),
    ("secure-group-below-min-group",
     _spec(participants=[_group(), _group(name="vendor", role="vendor", count=2,
                                          sharing="secure")]),
     ".yaml", [], r"^spec: participants: the secure group has 2 member\(s\), expected at least "
     r"secure\.min_group=3: a sum of one or two updates is no secret"),
    ("min-group-below-three", _spec(secure={"min_group": 2}), ".yaml", [],
     r"^spec: secure\.min_group: got 2, expected an integer >= 3: a sum of one or two "
     r"updates is no secret$"),
    ("secure-threshold-below-half", _spec(secure={"threshold": 0.4}), ".yaml", [],
     r"^spec: secure\.threshold: got 0\.4, expected a fraction in \(0\.5, 1\]"),
    ("secure-threshold-exactly-half", _spec(secure={"threshold": 0.5}), ".yaml", [],
     r"^spec: secure\.threshold: got 0\.5, expected a fraction in \(0\.5, 1\]"),
    ("secure-expected-dropout-beyond-threshold", _spec(secure={"expected_dropout": 0.4}),
     ".yaml", [], r"^spec: secure\.expected_dropout: got 0\.4, expected a rate in "
     r"\[0, 1 - threshold\) = \[0, 0\.33\)"),
    ("secure-neighbours-below-two", _spec(secure={"neighbours": 1}), ".yaml", [],
     r"^spec: secure\.neighbours: got 1, expected an integer >= 2"),
    ("private-layers-on-community", _spec(participants=[_group(private_layers=["head"])]),
     ".yaml", [], r"^spec: participants\.0\.private_layers: only a vendor group keeps "
     r"private layers \(role: vendor\)$"),
    ("data-fraction-sum-above-one",
     _spec(participants=[_group(data_fraction=0.6),
                         _group(name="vendor", role="vendor", count=2, data_fraction=0.6)]),
     ".yaml", [], r"^spec: participants: data_fraction adds up to 1\.2, expected <= 1$"),
    ("robust-rule-all-secure",
     _spec(participants=[_group(name="vendor", role="vendor", count=3, sharing="secure")],
           aggregation={"rule": "median"}),
     ".yaml", [], r"^spec: aggregation\.rule: 'median' must see individual updates, but every "
     r"group is secure; use fedavg"),
    ("robust-rule-secure-group-without-norm-bound",
     _spec(participants=[_group(), _group(name="vendor", role="vendor", count=3,
                                          sharing="secure")], aggregation={"rule": "median"}),
     ".yaml", [], r"^spec: aggregation\.norm_bound: rule 'median' cannot see a secure member's "
     r"update, so each member clips its update to a norm bound before masking; set "),
    ("bulyan-f-too-large-for-the-open-groups", _spec(participants=[_group(count=10)]), ".yaml",
     ["aggregation.rule=bulyan", "aggregation.krum_f=2"],
     r"^spec: aggregation\.krum_f: rule 'bulyan' with krum_f=2 needs at least 4f \+ 3 = 11 "
     r"open updates \(El Mhamdi et al\. 2018\), but the open groups send at most 10; "),
    ("krum-f-too-large-for-the-open-groups", _spec(), ".yaml", ["aggregation.rule=krum"],
     r"^spec: aggregation\.krum_f: rule 'krum' with krum_f=1 needs more than 2f \+ 2 = 4 open "
     r"updates .*, but the open groups send at most 4; lower krum_f or add open participants$"),
    ("distributed-dp-without-secure",
     _spec(privacy={"dp": {"mode": "distributed", "noise_multiplier": 1.0}}), ".yaml", [],
     r"^spec: privacy\.dp\.mode: 'distributed' noise .* needs a group with sharing: secure$"),
    ("dp-noise-and-target-both",
     _spec(privacy={"dp": {"mode": "central", "noise_multiplier": 1.0, "target_epsilon": 3.0}}),
     ".yaml", [], r"^spec: privacy\.dp: give noise_multiplier or target_epsilon, not both$"),
    ("dp-mode-without-noise", _spec(privacy={"dp": {"mode": "local"}}), ".yaml", [],
     r"^spec: privacy\.dp: mode 'local' needs noise_multiplier or target_epsilon$"),
    ("dp-unknown-mode", _spec(privacy={"dp": {"mode": "global"}}), ".yaml", [],
     r"^spec: privacy\.dp\.mode: got 'global', expected one of"),
    ("dp-delta-one", _spec(), ".yaml", ["privacy.dp.delta=1"],
     r"^spec: privacy\.dp\.delta: got 1(\.0)?, expected a number in \(0, 1\)$"),
    ("dp-quantile-above-one", _spec(), ".yaml", ["privacy.dp.target_quantile=1.2"],
     r"^spec: privacy\.dp\.target_quantile: got 1\.2"),
    ("set-without-equals", _spec(), ".yaml", ["rounds"],
     r"^--set 'rounds': expected path\.to\.field=value$"),
    ("set-index-out-of-range", _spec(), ".yaml", ["participants.3.count=2"],
     r"^--set participants\.3: '3' is not an index of a list of 1$"),
    ("set-wrong-type", _spec(), ".yaml", ["rounds=ten"],
     r"^spec: rounds: got 'ten', expected an integer$"),
]


def _write(tmp_path: Path, content: Any, suffix: str) -> Path:
    path = tmp_path / f"spec{suffix}"
    if content is MISSING:
        return path
    if isinstance(content, str):
        path.write_text(content)
    elif suffix == ".json":
        path.write_text(json.dumps(content))
    else:
        path.write_text(yaml.safe_dump(content))
    return path


def _error_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    prefix = "fedcollab: error: "
    assert lines[0].startswith(prefix), lines[0]
    return lines[0][len(prefix):]


@pytest.mark.parametrize(("content", "suffix", "overrides", "pattern"),
                         [pytest.param(*case[1:], id=case[0]) for case in BAD_SPECS])
def test_cli_validate_bad_spec_exits_2_with_one_line_naming_the_field(
        tmp_path: Path, content: Any, suffix: str, overrides: Sequence[str],
        pattern: str) -> None:
    # Arrange
    path = _write(tmp_path, content, suffix)
    args = ["validate", str(path)] + [a for o in overrides for a in ("--set", o)]

    # Act
    result = _cli(*args)

    # Assert
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
    assert re.search(pattern, _error_line(result)), _error_line(result)


def test_cli_validate_negative_seed_on_regression_exits_2_naming_seed(tmp_path: Path) -> None:
    path = _write(tmp_path, _spec(task={"dataset": "regression", "model": "regression"}),
                  ".yaml")

    result = _cli("validate", str(path), "--set", "seed=-1")

    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert re.search(r"^spec: seed: got -1, expected", _error_line(result))


def test_cli_validate_negative_seed_on_digits_names_seed_not_test_fraction(
        tmp_path: Path) -> None:
    path = _write(tmp_path, _spec(), ".yaml")

    result = _cli("validate", str(path), "--seed", "-1")

    assert result.returncode == 2
    assert re.search(r"^spec: seed: got -1, expected", _error_line(result))


# --------------------------------------------------------------------------- positive

@pytest.mark.parametrize("example", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_cli_validate_shipped_example_exits_0(example: Path) -> None:
    result = _cli("validate", str(example))

    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok: ")
    assert result.stderr == ""


def test_cli_validate_robust_rule_with_secure_group_warns_what_the_rule_cannot_see() -> None:
    """README: validate warns when a robust rule meets a secure group (it said "ok" only)."""
    result = _cli("validate", "examples/community-vendor.yaml", "--set", "aggregation.rule=median",
                  "--set", "aggregation.norm_bound=5")

    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok: ")
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("fedcollab: warning: aggregation.rule: 'median'")
    assert "cannot see a secure member's update in the clear" in lines[0]


def test_cli_validate_set_participant_count_applies_to_the_list_item() -> None:
    result = _cli("validate", "examples/community-vendor.yaml", "--json",
                  "--set", "participants.0.count=20", "--set", "rounds=3")

    assert result.returncode == 0, result.stderr
    resolved = json.loads(result.stdout)
    assert resolved["participants"][0]["count"] == 20
    assert resolved["participants"][1]["count"] == 3  # the other group is untouched
    assert resolved["rounds"] == 3


def test_cli_validate_json_spec_file_loads(tmp_path: Path) -> None:
    path = _write(tmp_path, _spec(rounds=7), ".json")

    result = _cli("validate", str(path), "--json")

    assert result.returncode == 0, result.stderr
    resolved = json.loads(result.stdout)
    assert resolved["rounds"] == 7
    assert resolved["local"]["batch_size"] == 16  # defaults filled in


@pytest.mark.parametrize("example", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_spec_to_dict_resolved_spec_round_trips_through_json(example: Path) -> None:
    spec = load_spec(example)

    again = spec_from_dict(json.loads(json.dumps(spec_to_dict(spec))))

    assert again == spec


def test_load_spec_overrides_apply_and_keep_other_fields() -> None:
    spec = load_spec(REPO / "examples" / "community-vendor.yaml",
                     ["participants.0.count=20", "rounds=3", "aggregation.rule=median",
                      "aggregation.norm_bound=5"])

    assert spec.participants[0].count == 20
    assert spec.rounds == 3
    assert spec.aggregation.rule == "median"
    assert spec.participants[1].private_layers == ("head",)


@pytest.mark.parametrize("argv", [["--help"], ["validate", "--help"], ["run", "--help"],
                                  ["verify", "--help"]],
                         ids=["top", "validate", "run", "verify"])
def test_cli_help_exits_0_with_an_example(argv: list[str]) -> None:
    result = _cli(*argv)

    assert result.returncode == 0, result.stderr
    assert "example" in result.stdout


@pytest.mark.parametrize("extra,rc,says", [
    ([], 0, ""),
    # a package.module:function model is found without importing it
    (["--set", "task.model=tests.user_models:nothing_here"], 2,
     "'tests.user_models' has no function 'nothing_here'"),
])
def test_cli_validate_imports_neither_tensorflow_nor_ray(extra: list[str], rc: int,
                                                         says: str) -> None:
    argv = ["validate", "examples/community-vendor.yaml", *extra]
    code = ("import sys, fedcollab.cli\n"
            f"rc = fedcollab.cli.main({argv!r})\n"
            f"assert rc == {rc}, rc\n"
            "heavy = [m for m in ('tensorflow', 'keras', 'ray') if m in sys.modules]\n"
            "assert not heavy, heavy\n")

    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                            text=True, timeout=60)

    assert result.returncode == 0, result.stderr
    assert says in result.stderr


def test_cli_no_command_prints_help_and_exits_2() -> None:
    result = _cli()

    assert result.returncode == 2
    assert "usage:" in result.stdout


def test_spec_krum_f_is_checked_against_every_set_of_open_sharers() -> None:
    """An open vendor keeping its head private sends it to nobody, so the head is
    aggregated over the community alone: krum_f must fit that smaller set too."""
    from fedcollab.spec import SpecError

    groups = [_group(count=5), _group(name="vendor", role="vendor", count=3,
                                      private_layers=["head"])]
    spec_from_dict(_spec(participants=groups, aggregation={"rule": "krum", "krum_f": 1}))
    with pytest.raises(SpecError, match=r"krum_f=2 needs more than 2f \+ 2 = 6 open updates "
                                        r".*, but the open groups send at most 5;"):
        spec_from_dict(_spec(participants=groups, aggregation={"rule": "krum", "krum_f": 2}))
    with pytest.raises(SpecError, match=r"multi_krum_m: got 6, but the open groups send at most 5"):
        spec_from_dict(_spec(participants=groups, aggregation={
            "rule": "multi_krum", "krum_f": 1, "multi_krum_m": 6}))


def test_spec_canary_group_may_be_secure_but_holds_no_data_fraction() -> None:
    """Canary clients (the grader's probes) go through the secure sum like anyone; they
    hold no data, so a data_fraction is refused, and a real attack stays open-only."""
    from fedcollab.spec import SpecError

    vendor = _group(name="vendor", role="vendor", count=3, sharing="secure")
    ok = spec_from_dict(_spec(participants=[_group(), vendor, _group(
        name="canaries", count=20, sharing="secure", behaviour="canary")]))
    assert ok.participants[-1].behaviour == "canary"
    with pytest.raises(SpecError, match=r"participants\.1\.data_fraction: .*holds no"):
        spec_from_dict(_spec(participants=[_group(), _group(
            name="canaries", behaviour="canary", data_fraction=0.1)]))
    with pytest.raises(SpecError, match=r"participants\.1\.behaviour: attacks are simulated"):
        spec_from_dict(_spec(participants=[_group(), dict(vendor, behaviour="sign_flip")]))
    # the other groups may claim all the data: the canaries need none
    whole = spec_from_dict(_spec(participants=[_group(data_fraction=1.0), _group(
        name="canaries", behaviour="canary")]))
    assert whole.total_participants == 8  # 4 + 4 canaries
