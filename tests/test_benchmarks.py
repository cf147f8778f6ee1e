import json

import pytest


def test_attack_benchmark_times_both_implementations_of_both_attacks(tmp_path, capsys):
    pytest.importorskip("cleverhans", reason="cleverhans is a dev dependency: pip install .[dev]")
    from benchmarks.attacks import main

    path = tmp_path / "attacks.json"
    main(["--dataset", "mnist", "--batch-size", "4", "--repeats", "1", "--steps", "2",
          "--json", str(path)])

    records = json.loads(path.read_text())
    assert {(r["attack"], r["implementation"]) for r in records} == {
        (attack, name) for attack in ("pgd", "fgsm") for name in ("ours", "cleverhans")}
    for record in records:
        assert record["images_per_s"] > 0
        assert record["in_ball"] and record["in_range"]
    assert "| ours / CleverHans |" in capsys.readouterr().out
