"""The scorecard files: JSON contract, Markdown, and the HTML opened in a real
headless Chromium (Debian's chromium + chromium-driver, driven by selenium)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from fedcollab.grading.grades import pareto_front, privacy_score, recommend
from fedcollab.grading.report import Scorecard, write_scorecard
from tests.contracts import scorecard_problems
from tests.grading.test_grades import _mix


def _card() -> Scorecard:
    mixes = [_mix("open", 0.93, None, True), _mix("secure-all", 0.93, None, False),
             _mix("secure-vendor-dp", 0.80, 0.9, False)]
    for m in mixes:
        m["policy"] = {"description": m["name"], "overrides": {}}
        m["utility"].update({"loss": 0.3, "vendor_accuracy": None, "public_accuracy": None})
        m["attacks"]["lying_server"].update({"relative_error": None, "server": "malicious"})
        m["parties"] = _parties(m)
    front = pareto_front({m["name"]: (privacy_score(m["grades"]) or 0.0,
                                      m["utility"]["accuracy"]) for m in mixes})
    curves = {"accuracy": {m["name"]: [0.5, 0.7, m["utility"]["accuracy"]] for m in mixes},
              "roc": {m["name"]: ([0.0, 0.01, 0.5, 1.0], [0.0, 0.02, 0.55, 1.0]) for m in mixes}}
    return Scorecard("demo", "balanced", "fast", tuple(mixes), tuple(front),
                     recommend(mixes, front, "balanced", scenario="demo"), {"private-layers":
                     "spec: participants: the secure group has 2 member(s)"}, 12.0,
                     {"runs": 10.0}, curves)


def _parties(mix: dict[str, Any]) -> dict[str, Any]:
    from fedcollab.grading.grades import grade_parties

    membership = dict(mix["attacks"]["membership"], auc_ci=[0.45, 0.6],
                      tpr_at_1pct_fpr_ci=[0.0, 0.03], n_members=360, n_nonmembers=360)
    exact = {"psnr_db": 200.0, "baseline_psnr_db": 13.0, "gain_db": 187.0, "exact": True,
             "relative_error": 0.0, "target": "secure sum"}
    parties = {
        "community": {"participants": 8, "utility": {"accuracy": 0.9, "worst_participant": 0.8},
                      "attacks": {"membership": membership,
                                  "inversion": dict(mix["attacks"]["inversion"]),
                                  "differencing": {"relative_error": 0.0, "exact": True,
                                                   "min_group_seen": 1, "cosine": 1.0}}},
        "vendor": {"participants": 3,
                   "utility": {"accuracy": 0.93, "worst_participant": 0.9,
                               "vendor_accuracy": 0.873, "public_accuracy": 0.933},
                   "attacks": {"membership": membership, "inversion": exact,
                               "differencing": dict(mix["attacks"]["differencing"], observers={
                                   "server_with_community": {"relative_error": 0.0,
                                                             "exact": True, "min_group_seen": 3,
                                                             "cosine": 1.0}})}}}
    mix = dict(mix, parties=parties)
    for party, grades in grade_parties(mix, non_members=360).items():
        parties[party]["grades"] = grades
    return parties


def test_per_party_rows_grade_the_vendors_exactly_inverted_sum_f_and_show_its_accuracy(
        tmp_path: Path) -> None:
    card = _card()
    assert card.mixes[0]["parties"]["vendor"]["grades"]["inversion"] == "F"
    assert card.mixes[1]["parties"]["vendor"]["grades"][
        "differencing:server_with_community"] == "F"
    text = write_scorecard(card, tmp_path)["md"].read_text()
    assert "## Per party" in text and "own model 0.873 vs release 0.933" in text
    assert "exact recovery, gain 187.0 dB over the mean image" in text
    # every cell says what its grade is about: no bare placeholder beside a grade
    assert "– (" not in text and "- (" not in text


def test_write_scorecard_json_matches_contract(tmp_path: Path) -> None:
    paths = write_scorecard(_card(), tmp_path)
    data = json.loads(paths["json"].read_text())
    assert [m["name"] for m in data["mixes"]] == ["open", "secure-all", "secure-vendor-dp"]
    assert data["recommendation"]["mix"] in data["pareto_front"]
    assert scorecard_problems(paths["json"]) == []


def test_write_scorecard_markdown_lists_every_mix_and_skipped(tmp_path: Path) -> None:
    text = write_scorecard(_card(), tmp_path)["md"].read_text()
    for name in ("open", "secure-all", "secure-vendor-dp", "private-layers"):
        assert name in text


def test_write_scorecard_html_is_self_contained(tmp_path: Path) -> None:
    html = write_scorecard(_card(), tmp_path)["html"].read_text()
    assert "http://" not in html and "https://" not in html
    assert html.count('src="data:image/png;base64,') == 3


def _chromium() -> tuple[str, str]:
    browser = shutil.which("chromium")
    driver = shutil.which("chromedriver")
    if not (browser and driver) and os.geteuid() == 0 and shutil.which("apt-get"):
        subprocess.run("apt-get update -qq && apt-get install -y -qq chromium chromium-driver",
                       shell=True, capture_output=True, timeout=900)
        browser, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (browser and driver):
        pytest.skip("Debian chromium/chromium-driver not installed and cannot be installed "
                    "here (needs root and apt-get)")
    return browser, driver


@pytest.mark.slow
def test_scorecard_html_in_headless_chromium_plots_load_mixes_listed_no_errors(
        tmp_path: Path) -> None:
    selenium = pytest.importorskip("selenium", reason="pip install selenium (test extra)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser, driver_path = _chromium()
    card = _card()
    page = write_scorecard(card, tmp_path)["html"]
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1300,2400"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        driver.get(page.as_uri())
        sizes: list[Any] = driver.execute_script(
            "return Array.from(document.images).map(i => [i.complete, i.naturalWidth, "
            "i.naturalHeight, i.getBoundingClientRect().width])")
        table = driver.execute_script(
            "return document.getElementById('mixes').innerText")
        parties = driver.execute_script(
            "return document.getElementById('parties').innerText")
        observers = driver.execute_script(
            "return document.getElementById('observers').innerText")
        errors = [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
        driver.save_screenshot(str(tmp_path / "scorecard.png"))
        shot = os.environ.get("FEDCOLLAB_SCREENSHOT")
        if shot:
            shutil.copy(tmp_path / "scorecard.png", shot)
    finally:
        driver.quit()
    assert len(sizes) == 3
    assert all(done and w > 0 and h > 0 and shown > 0 for done, w, h, shown in sizes), sizes
    for m in card.mixes:
        assert m["name"] in table
    assert "vendor (3)" in parties and "community (8)" in parties
    assert "release reader" in observers and "outputs reader" in observers
    assert errors == [], errors
    assert selenium is not None


def test_report_shows_the_malicious_model_row_and_the_dp_repeats(tmp_path: Path) -> None:
    """#29: the per-party table has the malicious server's inversion beside the passive
    one, and a DP mix run several times shows its spread."""
    from fedcollab.grading.grades import grade_parties

    card = _card()
    mix = card.mixes[0]
    mix["parties"]["vendor"]["attacks"]["malicious_model"] = {
        "psnr_db": 200.0, "relative_error": 0.0, "exact": True, "recovered": 4,
        "exact_count": 3, "examples": 120, "baseline_psnr_db": 13.0, "gain_db": 187.0,
        "target": "secure sum, only one member sent the imprint", "party": "vendor"}
    for party, grades in grade_parties(mix, non_members=360).items():
        mix["parties"][party]["grades"] = grades
    card.mixes[2]["repeats"] = {"runs": 3, **{k: {"values": [0.5, 0.6, 0.7], "mean": 0.6,
                                                  "std": 0.1, "min": 0.5, "max": 0.7}
                                              for k in ("accuracy", "membership_auc",
                                                        "membership_tpr_at_1pct_fpr",
                                                        "empirical_epsilon")}}
    assert mix["parties"]["vendor"]["grades"]["inversion:malicious_model"] == "F"
    files = write_scorecard(card, tmp_path)
    text = files["md"].read_text()
    assert "inversion (malicious model)" in text
    assert "4 of 120 examples within 10% (3 exact) from the secure sum, only one member" in text
    assert "| secure-vendor-dp | 3 | 0.600 ± 0.100 [0.500, 0.700] |" in text
    assert 'id="repeats"' in files["html"].read_text()


def test_report_puts_the_canary_audit_beside_the_accountant_per_observer(
        tmp_path: Path) -> None:
    """#29: per mix and observer, the accountant's epsilon and the in-run canary audit's
    (with its interval, canaries and run time) side by side, in Markdown and HTML."""
    card = _card()
    dp = card.mixes[2]
    dp["privacy"]["by_observer"] = {"server": 30.1, "outputs_reader": 30.1,
                                    "release_reader": 30.1}
    dp["privacy"]["empirical_epsilon"] = {
        "value": 7.6, "ci": [6.2, 14.2], "canaries": 100, "held_out": 1000,
        "sharing": "secure", "seconds": 15.7, "run_seconds": 14.1,
        "by_observer": {"release_reader": {"value": 7.6, "ci": [6.2, 14.2], "mu": 1.45},
                        "outputs_reader": {"value": 4.5, "ci": [2.6, 8.5], "mu": 0.7}}}
    files = write_scorecard(card, tmp_path)
    text = files["md"].read_text()
    assert ("| secure-vendor-dp | release reader | 30.10 | 7.60 [6.20, 14.20], mu 1.45 | "
            "100 in (secure) / 1000 held out | 15.7 s (run 14.1 s) |") in text
    assert "| secure-vendor-dp | outputs reader | 30.10 | 4.50 [2.60, 8.50], mu 0.70 |" in text
    assert "| open | release reader | ∞ |" in text
    assert 'id="observers"' in files["html"].read_text()


def test_report_states_both_membership_counts_and_why_fewer_than_1000(tmp_path: Path) -> None:
    import dataclasses

    from fedcollab.grading.membership import sample_note

    note = sample_note(members=1437, non_members=360, members_available=1437,
                       non_members_available=360, cap=5000, train_rows=1437, test_rows=360)
    card = dataclasses.replace(_card(), settings={"membership_sample": {
        "members": 1437, "non_members": 360, "note": note}})
    files = write_scorecard(card, tmp_path)
    assert f"Membership attacked on {note}." in files["md"].read_text()
    html = files["html"].read_text()
    assert 'id="membership-sample"' in html and "(the test split: 360 rows)" in html
