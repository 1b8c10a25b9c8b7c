"""The model card and the registered model's description, rendered from plain data (no MLflow)."""

import dataclasses
import re

import pytest

from clipcite.config import GateConfig
from clipcite.records import Selection
from clipcite.tracking.model_card import CARD_HEADING, family_description, headline, version_card
from clipcite.train_params import METHODS
from tests.support import records as fake

META = fake.meta(
    arch="toyclip",
    base_identity="sha256:6e8d8c23",
    method="cite",
    alpha=0.5,
    seed=2,
    dataset="toyworld",
    classnames=[f"class {i}" for i in range(20)],
    config={
        "splits": {"shots": 4, "protocol": "base2new"},
        "train": {"lam": 0.7, "eta": 0.1, "epochs": 3, "lr": 1e-4, "batch_size": 32},
        "model": {"arch": "toyclip", "pretrained": "clipcite:toyworld/toyclip.safetensors"},
    },
)


BODY = fake.SAMPLE_REPORT


def _card(**changes) -> str:
    args = {
        "name": "pets",
        "version": 4,
        "meta": META,
        "body": BODY,
        "decision": {"role": "champion", "reason": "hm mean over sketch 48.04 vs champion v3 46.32 (+1.72)"},
        "code_version": "0.1.0+abc123",
        "data_digest": "d1g3st",
    }
    return version_card(**{**args, **changes})


def _table_rows(card: str) -> dict:
    """(domain, model) -> [Base, New, HM] from the card's per-domain table."""
    section = card.split(CARD_HEADING, 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ") and not line.startswith("| domain")]
    cells = [[c.strip() for c in row.strip("|").split("|")] for row in rows]
    return {(c[0], c[1]): [float(x) for x in c[2:]] for c in cells}


def test_the_card_names_base_model_method_settings_data_and_code():
    card = _card()
    assert card.startswith("cite on toyworld: HM 48.04\n\n# pets v4: cite on toyworld")  # mean over sketch
    for expected in (
        "| architecture | `toyclip` |",
        "| weights | `clipcite:toyworld/toyclip.safetensors` |",
        "| identity | `sha256:6e8d8c23` |",
        "| alpha (weight-space ensemble with the zero-shot weights) | 0.5 |",
        "| lambda (weight of L_SCL) | 0.7 |",
        "| eta (weight of L_VLD) | 0.1 |",
        "| shots per class | 4 |",
        "| seed | 2 |",
        "| data digest | `d1g3st` |",
        "| protocol | base2new |",
        "| trained on domain(s) | photo |",
        "| evaluated on domain(s) | photo, sketch |",
        "clipcite `0.1.0+abc123`",
    ):
        assert expected in card, expected
    assert re.search(r"\| classes \| 20: class 0, .*class 11, \.\.\. \(8 more\) \|", card)


def test_the_table_has_every_domain_for_the_new_the_zero_shot_and_the_compared_champion():
    rows = _table_rows(_card())
    assert rows[("photo (trained on)", "**v4** (this)")] == [90.0, 62.0, round(2 * 90 * 62 / 152, 2)]
    assert rows[("sketch", "zero-shot")] == [50.0, 40.0, round(2 * 50 * 40 / 90, 2)]
    assert rows[("sketch", "champion v3")] == [55.0, 40.0, round(2 * 55 * 40 / 95, 2)]
    assert rows[("mean of sketch", "**v4** (this)")][0] == 58.0
    assert len(rows) == 9  # 2 domains + the mean, 3 models each


def test_the_gate_decision_and_how_to_load_and_serve():
    card = _card(decision={"role": "challenger", "reason": "hm gain -1.00, needs > 0"})
    assert "- decision: **challenger**" in card and "- reason: hm gain -1.00, needs > 0" in card
    assert "- compared with: champion v3" in card
    usage = card.split("## Load and serve", 1)[1].split("```")[1].strip().splitlines()
    assert len(usage) == 3
    assert 'mlflow.pyfunc.load_model("models:/pets/4")' in usage[0] and "top_k" in usage[1]
    assert usage[2].startswith("mlflow models serve -m models:/pets/4 --env-manager local")


def test_the_first_version_has_no_champion_to_compare_with():
    body = dataclasses.replace(BODY, models=("zeroshot", "finetuned"), champion_version=None)
    card = _card(body=body, decision={"role": "champion", "reason": "no champion yet"})
    assert "- compared with: no champion (none held the alias)" in card
    assert not any(model.startswith("champion") for _, model in _table_rows(card))


def test_a_top1_protocol_shows_top1_and_missing_settings_show_a_dash():
    meta = dataclasses.replace(META, config={"splits": {"shots": 1, "protocol": "fewshot"}, "train": {}})
    body = fake.report(
        models=["finetuned"],
        domains={"photo": {"finetuned": {"top1": 81.234}}},
        mean={"finetuned": {"top1": 81.234}},
    )
    card = _card(meta=meta, body=body, decision={"role": "champion", "reason": "no champion yet"})
    assert "| domain | model | Top-1 |" in card and "| photo | **v4** (this) | 81.23 |" in card
    assert "| lambda (weight of L_SCL) | - |" in card


def test_the_family_description_says_what_the_model_is_and_how_versions_are_promoted():
    text = family_description("pets", {**GateConfig().__dict__, "max_domain_drop": 2.0, "kept_domains": ("photo",)})
    assert text.startswith("# pets\n") and "CLIP-CITE" in text
    assert "`champion` alias" in text and "HM of base and new accuracy" in text
    assert "no kept domain (photo) loses more than 2.00 points" in text
    assert "clipcite champion pets --promote N" in text


def test_the_first_line_is_a_plain_summary_the_versions_table_can_show():
    """The registry's versions table shows a description's first line, cut at 32 characters, unrendered."""
    assert _card().split("\n", 1)[0] == "cite on toyworld: HM 48.04"
    fewshot = fake.report(mean={"finetuned": {"top1": 81.234}})
    assert headline(META, fewshot) == "cite on toyworld: top-1 81.23"
    assert headline(fake.meta(method="flyp"), fake.report()) == "flyp on ?"


def test_a_manual_promotion_leaves_one_champion_in_the_list_and_says_so_on_the_card(tmp_path, monkeypatch, capsys):
    """What the tracking store holds after `clipcite champion NAME --promote 2 --reason ...`: v2 holds the alias, its
    card says it holds it by manual promotion (with the reason), and the list shows one champion."""
    from mlflow import MlflowClient

    from clipcite.cli import main

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri, registry_uri=uri)
    client.create_registered_model("pets")
    gate = {1: ("champion", "no champion yet"), 2: ("challenger", "HM mean -0.38 vs champion v1")}
    for number, (role, reason) in gate.items():
        client.create_model_version("pets", f"file://{tmp_path}/m{number}", tags={"gate.decision": role})
        client.set_model_version_tag("pets", str(number), "gate.reason", reason)
        card = version_card(
            name="pets", version=number, meta=META, body=BODY, decision={"role": role, "reason": reason},
            code_version="0.1.0",
        )  # fmt: skip
        client.update_model_version("pets", str(number), description=card)
    client.set_registered_model_alias("pets", "champion", "1")

    assert (
        main(["champion", "pets", "--promote", "2", "--reason", "v1 fails on night images", "--tracking-uri", uri]) == 0
    )
    listing = capsys.readouterr().out.splitlines()
    assert [line.split()[:3] for line in listing] == [["*", "v2", "champion"], ["v1", "was", "champion"]], listing
    assert str(client.get_model_version_by_alias("pets", "champion").version) == "2"
    card = client.get_model_version("pets", "2").description
    assert "Gate: **challenger**" not in card and "- decision: **challenger**" not in card
    assert "Now **champion** by manual promotion, replacing v1: v1 fails on night images" in card
    assert "- decision: **champion** by manual promotion, replacing v1: v1 fails on night images" in card
    assert "the gate had said **challenger**: HM mean -0.38 vs champion v1" in card
    assert client.get_model_version("pets", "2").tags["gate.reason"] == "manual: v1 fails on night images"


def test_a_selected_method_shows_every_candidate_and_the_rule_a_single_one_none():
    from clipcite.evaluation.selection import Candidate, pick, rule, table

    candidates = [
        Candidate("cite", 80.0, 48, 150_000_000, 61.5, 598_000_000),
        Candidate("lora", 79.95, 48, 184_320, 40.2, 737_280),
        Candidate("linear_probe", 75.0, 48, 12_288, 1.3, 49_152),
    ]
    selection = Selection(rule(), 0.1, "lora", table(candidates, pick(candidates)))
    card = version_card(
        name="clipcite",
        version=4,
        meta=dataclasses.replace(META, method="lora"),
        body=BODY,
        decision={},
        code_version="abc",
        selection=selection,
    )
    section = card.split("## Selection among candidates")[1].split("## Data")[0]
    assert "| **lora** (selected) | 79.95 | 48 | 184,320 | 40.2 | 737,280 |" in section
    assert "| cite | 80.00 | 48 | 150,000,000 | 61.5 | 598,000,000 |" in section
    assert "| linear_probe | 75.00 |" in section and "within 0.1 points" in section
    single = version_card(name="clipcite", version=4, meta=META, body=BODY, decision={}, code_version="abc")
    assert "Selection among candidates" not in single


def test_each_candidate_keeps_its_own_checkpoints():
    from clipcite.steps.finetune import checkpoint_uri, step_name

    assert checkpoint_uri("s3://b/ckpt", "0b1c") == "s3://b/ckpt/0b1c/finetune"  # one method: no method suffix
    assert checkpoint_uri("s3://b/ckpt", "0b1c", "lora") == "s3://b/ckpt/0b1c/finetune-lora"
    assert step_name("linear_probe") == "finetune-linear_probe"


def test_every_candidates_test_number_joins_the_selection_after_the_choice(tmp_path):
    """evaluate scores the losers as candidate-<method>; register keeps them through the merge of the domains'
    reports and puts each one's gate metric beside its validation score on the card."""
    from clipcite.config import GateConfig
    from clipcite.evaluation.selection import Candidate, pick, rule, table
    from clipcite.steps.register import merge_reports, with_test_numbers

    candidates = [Candidate("cite", 80.0, 48, 150_000_000, 61.5, 598_000_000), Candidate("lora", 79.0, 48, 9, 4, 7)]
    selection = Selection(rule(), 0.1, "cite", table(candidates, pick(candidates)))
    scored = {"finetuned": {"top1": 58.0}, "zeroshot": {"top1": 50.0}, "candidate-lora": {"top1": 61.0}}
    reports = []
    for domain in ("photo", "sketch"):
        report = tmp_path / domain
        report.mkdir()
        entry = {"domain": domain, "subset": "all", "template": "", **scored}
        fake.report(sets={domain: entry}, train_domains=["photo"], method="cite").write(report)
        reports.append(str(report))
    body = merge_reports(reports)
    assert body.models == ("zeroshot", "finetuned", "candidate-lora")
    joined = with_test_numbers(selection, body, GateConfig())
    assert [(r.method, r.test) for r in joined.candidates] == [("cite", 58.0), ("lora", 61.0)]
    assert joined.test_metric == "top1 (mean of sketch)" and joined.test_key == "test_top1"
    on_photo = with_test_numbers(selection, body, GateConfig(domain="photo"))  # where the gate reads its metric
    assert on_photo.test_metric == "top1 (photo)" and on_photo.candidates[1].test == 61.0
    without = dataclasses.replace(body, mean={k: v for k, v in body.mean.items() if k != "candidate-lora"})
    assert with_test_numbers(selection, without, GateConfig()) == selection  # no other candidate scored: no column
    card = version_card(name="m", version=1, meta=META, body=body, decision={}, code_version="x", selection=joined)
    section = card.split("## Selection among candidates")[1].split("## Data")[0]
    assert "| test top1 (mean of sketch) |" in section
    assert "| **cite** (selected) | 80.00 | 48 | 150,000,000 | 61.5 | 598,000,000 | 58.00 |" in section
    assert "| lora | 79.00 | 48 | 9 | 4.0 | 7 | 61.00 |" in section and "did not see those numbers" in section
    assert "candidate-lora" not in card.split(CARD_HEADING)[1].split("## Gate")[0]  # the per-domain table: this model
    from clipcite.evaluation.report import plot_selection

    plot_selection(joined, tmp_path / "selection.png")  # validation and test bars side by side
    assert (tmp_path / "selection.png").stat().st_size > 0


ALPHA_ROW = "alpha (weight-space ensemble with the zero-shot weights)"
RECIPE_ROW = "epochs, learning rate, batch size"
METHOD_ROWS = {  # what each method's card shows under "## Method", besides its name, the shots and the seed
    "zeroshot": ["training"],
    "ce": ["w_dva (weight of L_DVA)", ALPHA_ROW, RECIPE_ROW],
    "flyp": ["w_clip (weight of FLYP's contrastive loss)", ALPHA_ROW, RECIPE_ROW],
    "cite": ["w_dva (weight of L_DVA)", "lambda (weight of L_SCL)", "eta (weight of L_VLD)", ALPHA_ROW, RECIPE_ROW],
    "lora": [
        "LoRA rank, alpha, dropout",
        "LoRA targets",
        "LoRA learning rate, iterations per shot",
        ALPHA_ROW,
        "batch size",
    ],
    "linear_probe": [
        "anchor penalty (CLAP's weight of the zero-shot anchor)",
        "probe epochs, learning rate, batch size",
    ],
}


@pytest.mark.parametrize("method", METHODS)
def test_the_method_table_lists_that_methods_own_settings_and_nothing_else(method):
    from clipcite.config import load_config, to_dict

    config = to_dict(load_config("default", [f"train.method={method}"]))
    card = _card(meta=dataclasses.replace(META, method=method, config=config))
    section = card.split("## Method\n", 1)[1].split("\n## ", 1)[0]
    rows = [line.strip("|").split(" | ")[0].strip() for line in section.splitlines() if line.startswith("| ")]
    assert rows[1:] == ["method", *METHOD_ROWS[method], "shots per class", "seed"], rows
    if method == "linear_probe":
        assert "| anchor penalty (CLAP's weight of the zero-shot anchor) | 1.0 |" in section
    if method == "lora":
        assert "| LoRA rank, alpha, dropout | 2, 1.0, 0.25 |" in section
    assert set(METHOD_ROWS) == set(METHODS)  # a new method gets its row here
