"""The registry's words: a model card for every registered version and a description of the registered model.

Pure functions (plain data in, Markdown out): the register step gathers the data and sets the text, so what a person
browsing the MLflow registry reads is the same whichever store or server holds it. Metrics live here and in the
pipeline's run; version tags stay few, for filtering. A card's first line is a plain one-line summary (what the
registry's versions table shows); the version's page renders the whole card.
"""

from __future__ import annotations

import re

from clipcite.evaluation.report import baseline_lines, per_class_lines, table
from clipcite.records import AlphaGrid, EvalReport, ModelMeta, Selection
from clipcite.train_params import REGISTRY

CARD_HEADING = "## Per-domain accuracy"  # a browser check looks for the table under it


def version_card(
    *,
    name: str,
    version: int,
    meta: ModelMeta,
    body: EvalReport,
    decision: dict,
    code_version: str,
    data_digest: str = "",
    selection: Selection | None = None,
) -> str:
    """The model card of ``name`` version ``version``.

    ``meta``: the model folder's ``clipcite.json`` (arch, base identity, method, alpha, seed, dataset, class names,
    resolved config); ``body``: the merged evaluation (per-domain metrics of ``zeroshot``/``finetuned``/``champion``);
    ``decision``: ``role`` (champion | challenger) and ``reason`` from the gate; ``data_digest``: the data snapshot's
    digest (the pipeline run's ``data.sources_digest``); ``selection``: the select step's ``selection.json`` when
    this method won among several candidates (one row each, and the rule)."""
    config = meta.config
    splits, model = config.get("splits", {}), config.get("model", {})
    classnames = list(meta.classnames)
    evaluated = body.champion_version
    role = decision.get("role", "challenger")
    models = [m for m in ("finetuned", "zeroshot", "champion") if m in body.models]
    names = {"finetuned": f"**v{version}** (this)", "zeroshot": "zero-shot", "champion": f"champion v{evaluated}"}
    eval_domains = list(body.domains)
    lines = [
        headline(meta, body),  # the registry's versions table shows this line alone, cut at 32 characters
        "",
        f"# {name} v{version}: {meta.method} on {meta.dataset or '?'}",
        "",
        f"CLIP fine-tuned few-shot ({splits.get('shots', '?')} shots per class, seed {meta.seed}). "
        f"Gate: **{role}**: {decision.get('reason', '')}.",
        "",
        "## Base model",
        "",
        "| | |",
        "|---|---|",
        f"| architecture | `{meta.arch}` |",
        f"| weights | `{model.get('pretrained') or '(random init)'}` |",
        f"| identity | `{meta.base_identity or '?'}` |",
        "",
        "## Method",
        "",
        "| setting | value |",
        "|---|---|",
        f"| method | {meta.method} |",
        *(f"| {label} | {value} |" for label, value in method_settings(meta)),
        f"| shots per class | {_value(splits.get('shots'))} |",
        f"| seed | {_value(meta.seed)} |",
        *(["", meta.note] if meta.note else []),  # the method's own word on what it changed (methods/)
        "",
        *(selection_section(selection) if selection else []),
        "## Data",
        "",
        "| | |",
        "|---|---|",
        f"| dataset | {meta.dataset or '?'} |",
        f"| data digest | `{data_digest or '?'}` |",
        f"| protocol | {splits.get('protocol', '?')} |",
        f"| classes | {len(classnames)}: {_names(classnames)} |",
        f"| trained on domain(s) | {', '.join(body.train_domains) or 'every train domain'} |",
        f"| evaluated on domain(s) | {', '.join(eval_domains) or '-'} |",
        "",
        CARD_HEADING,
        "",
        table(body, models, names).rstrip("\n"),
        "",
        *(f"- {line}" for line in baseline_lines(body)),
        "",
        *per_class_lines(body, [m for m in models if m != "champion"]),
        "## Gate",
        "",
        f"- decision: **{role}**",
        f"- reason: {decision.get('reason', '')}",
        f"- compared with: {f'champion v{evaluated}' if evaluated else 'no champion (none held the alias)'}",
        "",
        "## Code",
        "",
        f"clipcite `{code_version}`",
        "",
        "## Load and serve",
        "",
        "```",
        f'model = mlflow.pyfunc.load_model("models:/{name}/{version}")  # or models:/{name}@champion',
        'model.predict(pandas.DataFrame({"image": [png_bytes]}), params={"labels": ["cat", "dog"], "top_k": 2})',
        f"mlflow models serve -m models:/{name}/{version} --env-manager local -p 5001  # POST base64 images to "
        "/invocations",
        "```",
        "",
    ]
    return "\n".join(lines)


LOSS_TERMS = {  # a CITE-family term: its weight's setting and what the card calls it
    "dva": ("w_dva", "w_dva (weight of L_DVA)"),
    "scl": ("lam", "lambda (weight of L_SCL)"),
    "vld": ("eta", "eta (weight of L_VLD)"),
    "clip": ("w_clip", "w_clip (weight of FLYP's contrastive loss)"),
}


def method_settings(meta: ModelMeta) -> list[tuple[str, str]]:
    """The settings the saved model's method trained with, and only those: CITE's family its loss weights, alpha and
    recipe; LoRA its rank, scaling, targets and own optimiser; the linear probe its anchor and optimiser; zero-shot
    none. Rows of (label, value)."""
    train = meta.config.get("train", {})
    alpha = f"{_value(meta.alpha)}{_alpha_grid(meta.alpha_grid)}"
    recipe = ("epochs, learning rate, batch size", f"{_value(train.get('epochs'))}, {_value(train.get('lr'))}, "
              f"{_value(train.get('batch_size'))}")  # fmt: skip
    if meta.method == "zeroshot":
        return [("training", "none: the pre-trained weights")]
    if meta.method == "linear_probe":
        probe = train.get("probe", {})
        epochs = probe.get("epochs") or train.get("epochs")
        return [
            ("anchor penalty (CLAP's weight of the zero-shot anchor)", _value(probe.get("penalty"))),
            (
                "probe epochs, learning rate, batch size",
                f"{_value(epochs)}, {_value(probe.get('lr'))}, {_value(train.get('batch_size'))}",
            ),
        ]
    if meta.method == "lora":
        lora = train.get("lora", {})
        return [
            (
                "LoRA rank, alpha, dropout",
                f"{_value(lora.get('rank'))}, {_value(lora.get('alpha'))}, {_value(lora.get('dropout'))}",
            ),
            ("LoRA targets", "q, k, v of both encoders"),
            (
                "LoRA learning rate, iterations per shot",
                f"{_value(lora.get('lr'))}, {_value(lora.get('iters_per_shot'))}",
            ),
            ("alpha (weight-space ensemble with the zero-shot weights)", alpha),
            ("batch size", _value(train.get("batch_size"))),
        ]
    method = REGISTRY.get(meta.method)
    terms = method.cite_terms if method else ()
    rows = [(LOSS_TERMS[term][1], _value(train.get(LOSS_TERMS[term][0]))) for term in terms if term in LOSS_TERMS]
    return [*rows, ("alpha (weight-space ensemble with the zero-shot weights)", alpha), recipe]


SELECTION_HEADING = "## Selection among candidates"


def selection_section(selection: Selection) -> list[str]:
    """The card's lines on how this method was chosen: every candidate's validation score and costs, the rule, and
    (where evaluate scored the candidates beside the selected one) each one's test number, which the choice never
    saw."""
    tested = bool(selection.test_metric)
    balanced = any(r.metric == "balanced_accuracy" for r in selection.candidates)  # selection.metric
    test_head = f" test {selection.test_metric} |" if tested else ""
    lines = [
        SELECTION_HEADING,
        "",
        "| method | validation top-1 |"
        + (" validation balanced accuracy |" if balanced else "")
        + " validation images | trainable parameters | training time (s) | artefact bytes |"
        + test_head,
        "|---|---|---|---|---|---|" + ("---|" if balanced else "") + ("---|" if tested else ""),
    ]
    for row in selection.candidates:
        method = f"**{row.method}** (selected)" if row.selected else row.method
        test = (f" {row.test:.2f} |" if row.test is not None else " - |") if tested else ""
        extra = f" {row.val_balanced_accuracy:.2f} |" if balanced else ""
        lines.append(
            f"| {method} | {row.val_top1:.2f} |{extra} {row.val_images} | {row.trainable_parameters:,} | "
            f"{row.seconds:.1f} | {row.artefact_bytes:,} |{test}"
        )
    after = (
        "every candidate was then scored on the eval sets for this record (the test column); the choice did not see "
        "those numbers"
        if tested
        else "the selected method alone was then evaluated on the eval sets (below)"
    )
    lines += ["", f"Rule: {selection.rule}. Scored on the validation split only; {after}.", ""]
    return lines


def headline(meta: ModelMeta, body: EvalReport) -> str:
    """The card's first line, plain text, what tells versions apart first: ``cite on toyworld: HM 76.18`` (the
    mean over the summary's domains of HM, or top-1 without a base/new split). The MLflow registry's versions
    table shows a description's first line, cut at 32 characters, as raw text: no Markdown here."""
    what = f"{meta.method} on {meta.dataset or '?'}"
    mean = body.mean.get("finetuned") or {}
    for key, label in (("hm", "HM"), ("top1", "top-1")):
        if key in mean:
            return f"{what}: {label} {float(mean[key]):.2f}"
    return what


def promoted_by_hand(card: str, *, reason: str, previous: int | None) -> str:
    """``card`` once its version took the ``champion`` alias by hand (``clipcite champion NAME --promote N``): the
    summary line and the Gate section say so, with the reason, and keep what the gate had decided, so a card never
    says "challenger" on the version that holds the alias. A card in another shape gets a section at the end."""
    replaced = f", replacing v{previous}" if previous is not None else ""
    now = f"**champion** by manual promotion{replaced}: {reason}"
    replaced_lines = 0
    for pattern, text in (
        (r"Gate: \*\*(\w+)\*\*: (.*)\.$", lambda m: f"Now {now} (the gate had said **{m[1]}**: {m[2]})."),  # summary
        (r"^- decision: \*\*(\w+)\*\*$", lambda m: f"- decision: {now} (the gate had said **{m[1]}**)"),  # Gate
    ):
        card, found = re.subn(pattern, text, card, count=1, flags=re.M)
        replaced_lines += found
    if replaced_lines < 2:
        card = card.rstrip("\n") + f"\n\n## Manual promotion\n\n- decision: {now}\n"
    return card


def family_description(name: str, gate: dict) -> str:
    """What the registered model ``name`` is and how a version becomes ``champion`` (``gate``: GateConfig fields)."""
    metric = gate.get("metric", "auto")
    metric = "HM of base and new accuracy (top-1 without a base/new split)" if metric == "auto" else metric
    where = f"on domain {gate['domain']}" if gate.get("domain") else "averaged over the evaluated domains"
    kept = ", ".join(gate.get("kept_domains") or ()) or "every evaluated domain"
    return "\n".join(
        [
            f"# {name}",
            "",
            "CLIP image classifiers fine-tuned from a few labelled images per class with CLIP-CITE (clipcite's "
            "Kubeflow pipeline). Each version is one pipeline run; its description is its model card (base model, "
            "method settings, data, per-domain accuracy, the gate's decision). Serve it as an MLflow pyfunc: base64 "
            "images in, labels out, any label list at call time (`labels`, `top_k`).",
            "",
            "## How versions are promoted",
            "",
            "The `champion` alias marks the version to serve. A new version is evaluated beside the current champion "
            f"on the same eval sets and takes the alias when its {metric} {where} gains (a tie never promotes; at "
            f"least {float(gate.get('min_improvement', 0.0)):.2f} points) and no kept domain ({kept}) loses more than "
            f"{float(gate.get('max_domain_drop', 1.0)):.2f} points; otherwise it stays a `challenger` and its tag "
            "`gate.reason` says why. The first version takes the alias. Roll back with "
            f"`clipcite champion {name} --promote N --reason ...`.",
            "",
            "Version tags for filtering: `method`, `dataset`, `shots`, `protocol`, `seed`, `base_model`, "
            "`gate.decision`.",
            "",
        ]
    )


def _value(value) -> str:
    return "-" if value is None or value == "" else str(value)


def _names(classnames: list[str], shown: int = 12) -> str:
    listed = ", ".join(classnames[:shown])
    return listed + (f", ... ({len(classnames) - shown} more)" if len(classnames) > shown else "")


def _alpha_grid(grid: AlphaGrid | None) -> str:
    """``train.alpha_grid``'s choice in the alpha row: every alpha's validation top-1."""
    if not grid:
        return ""
    scores = ", ".join(f"{a:g}: {v:.1f}" for a, v in zip(grid.alphas, grid.val_top1, strict=True))
    return f", chosen on validation (top-1 {scores}; {grid.val_images} images)"
