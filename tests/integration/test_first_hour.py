"""A new user's first steps through the commands: a missing table, an evaluate before finetune and a wrong domain
each end in an error that says what to do. (The single-module first mistakes, a misspelt --param, a wrong override,
`clipcite champion` without a store, are tested beside their modules in tests/unit/.)"""

from clipcite.cli import main as clipcite


def test_a_missing_table_an_early_evaluate_and_a_wrong_domain_say_what_to_do(table, tmp_path, capsys):
    missing = tmp_path / "no-such-table"
    assert clipcite(["sample-splits", "--table", str(missing), "--out", str(tmp_path / "s")]) != 0
    assert f"{missing}: does not exist" in capsys.readouterr().err

    splits = tmp_path / "splits"
    tiny = ["--set", "model.arch=clipcite-tiny", "--set", "model.pretrained=", "--set", "splits.shots=2"]
    assert clipcite(["sample-splits", "--table", str(table), "--out", str(splits), *tiny]) == 0
    assert clipcite(["evaluate", "--model", str(tmp_path / "model"), "--splits", str(splits), "--out", "x", *tiny])
    assert "run `clipcite finetune --out" in capsys.readouterr().err

    wrong = ["--set", "splits.train_domains=[painting]"]
    assert clipcite(["sample-splits", "--table", str(table), "--out", str(tmp_path / "s2"), *tiny, *wrong])
    err = capsys.readouterr().err
    assert "in domains ['painting']" in err and "domains ['photo', 'sketch']" in err
    assert "--set splits.train_domains=[...]" in err
