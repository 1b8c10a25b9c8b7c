"""Loss values against hand computations (method.md "Loss terms")."""

import math

import pytest
import torch
import torch.nn.functional as F

from clipcite.training.losses import cite_loss, clip_loss, dva_loss, scl_loss, similarity_logits, vld_loss


def unit(*rows):
    t = torch.tensor(rows, dtype=torch.float64)
    return t / t.norm(dim=1, keepdim=True)


def ce(logits_row, target):
    return -logits_row[target] + math.log(sum(math.exp(v) for v in logits_row))


def test_dva_matches_hand_computation_and_normalises_inputs():
    img = torch.tensor([[3.0, 0.0], [0.0, 0.5]], dtype=torch.float64)  # not unit length on purpose
    w = torch.tensor([[2.0, 0.0], [1.0, 1.0]], dtype=torch.float64)
    labels = torch.tensor([0, 1])
    s = 10.0
    cos = [[1.0, 1 / math.sqrt(2)], [0.0, 1 / math.sqrt(2)]]
    expected = (ce([s * c for c in cos[0]], 0) + ce([s * c for c in cos[1]], 1)) / 2
    assert dva_loss(img, w, labels, logit_scale=s).item() == pytest.approx(expected, rel=1e-9)


def test_scl_equals_flyp_when_no_class_repeats():
    torch.manual_seed(0)
    img, txt = torch.randn(5, 8, dtype=torch.float64), torch.randn(5, 8, dtype=torch.float64)
    labels = torch.arange(5)
    logits = similarity_logits(img, txt, 100.0)
    target = torch.arange(5)
    both = F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)
    assert scl_loss(img, txt, labels).item() == pytest.approx(both.item(), rel=1e-9)
    # Directions are added (decision), so SCL is twice the (averaged) CLIP loss FLYP uses.
    assert scl_loss(img, txt, labels).item() == pytest.approx(2 * clip_loss(img, txt).item(), rel=1e-9)


def test_scl_masks_other_same_class_pairs():
    img = unit([1.0, 0.0], [0.8, 0.6], [0.0, 1.0])
    txt = unit([0.6, 0.8], [1.0, 0.0], [0.6, -0.8])
    labels = torch.tensor([0, 0, 1])  # samples 0 and 1 share a class
    s = 5.0
    S = (s * img @ txt.T).tolist()
    # image->text rows: row i keeps column i and columns of other classes
    i2t = [ce([S[0][0], S[0][2]], 0), ce([S[1][1], S[1][2]], 0), ce([S[2][0], S[2][1], S[2][2]], 2)]
    # text->image: column j of S, same rule
    col = [[S[r][c] for r in range(3)] for c in range(3)]
    t2i = [ce([col[0][0], col[0][2]], 0), ce([col[1][1], col[1][2]], 0), ce(col[2], 2)]
    expected = sum(i2t) / 3 + sum(t2i) / 3
    assert scl_loss(img, txt, labels, logit_scale=s).item() == pytest.approx(expected, rel=1e-9)
    # Without the mask (FLYP) the value differs: the mask matters when classes repeat.
    assert not math.isclose(2 * clip_loss(img, txt, s).item(), expected, rel_tol=1e-6)


def kl(p, q):
    return sum(a * math.log(a / b) for a, b in zip(p, q, strict=True))


def softmax(row):
    e = [math.exp(v) for v in row]
    return [v / sum(e) for v in e]


def test_vld_both_directions_and_zero_when_equal():
    student = torch.tensor([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]], dtype=torch.float64)
    teacher = torch.tensor([[2.0, 0.0, 0.0], [1.0, 1.0, 1.0]], dtype=torch.float64)
    P = [softmax(r) for r in student.tolist()]
    Q = [softmax(r) for r in teacher.tolist()]
    standard = (kl(Q[0], P[0]) + kl(Q[1], P[1])) / 2
    literal = (kl(P[0], Q[0]) + kl(P[1], Q[1])) / 2
    assert vld_loss(student, teacher).item() == pytest.approx(standard, rel=1e-9)
    assert vld_loss(student, teacher, "student_teacher").item() == pytest.approx(literal, rel=1e-9)
    assert standard != pytest.approx(literal)
    assert vld_loss(student, student.clone()).item() == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="direction"):
        vld_loss(student, teacher, "sideways")


def test_vld_gives_no_gradient_to_the_teacher():
    student = torch.randn(3, 4, requires_grad=True)
    teacher = torch.randn(3, 4, requires_grad=True)
    vld_loss(student, teacher).backward()
    assert student.grad is not None and teacher.grad is None


def test_cite_total_is_the_weighted_sum_and_weights_are_arguments():
    torch.manual_seed(1)
    img, txt, w = torch.randn(6, 8), torch.randn(6, 8), torch.randn(3, 8)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    teacher = similarity_logits(torch.randn(6, 8), txt)
    terms = cite_loss(img, labels, class_weights=w, text_features=txt, teacher_vld_logits=teacher)
    assert set(terms) == {"dva", "scl", "vld", "total"}
    expected = terms["dva"] + 0.7 * terms["scl"] + 0.1 * terms["vld"]
    assert terms["total"].item() == pytest.approx(expected.item(), rel=1e-6)
    assert terms["dva"].item() == pytest.approx(dva_loss(img, w, labels).item(), rel=1e-6)
    assert terms["vld"].item() == pytest.approx(vld_loss(similarity_logits(img, txt), teacher).item(), rel=1e-6)
    custom = cite_loss(img, labels, class_weights=w, text_features=txt, teacher_vld_logits=teacher, lam=0.0, eta=1.0)
    assert custom["total"].item() == pytest.approx((terms["dva"] + terms["vld"]).item(), rel=1e-6)


def test_cite_refuses_a_weighted_term_without_inputs():
    img, labels = torch.randn(2, 4), torch.tensor([0, 1])
    with pytest.raises(ValueError, match="vld"):
        cite_loss(img, labels, class_weights=torch.randn(2, 4), text_features=torch.randn(2, 4))
    only_dva = cite_loss(img, labels, class_weights=torch.randn(2, 4), lam=0.0, eta=0.0)
    assert set(only_dva) == {"dva", "total"}


def test_flyp_is_a_weighted_term_like_the_others():
    """FLYP's CLIP loss is the term ``clip`` with weight ``w_clip`` (no special branch whose weights are all 0)."""
    from clipcite.model.clip import load_model
    from clipcite.train_params import FitParams
    from clipcite.training.methods.cite import batch_losses

    torch.manual_seed(0)
    tiny = load_model("clipcite-tiny", "", init_seed=0)
    prompts = [f"a photo of a {c}." for c in ("cat", "dog", "car")]
    tokens, images, labels = tiny.tokenizer(prompts), torch.randn(6, 3, 32, 32), torch.tensor([0, 1, 2, 0, 1, 2])
    text = torch.randn(3, tiny.model.text_projection.shape[1])
    teacher_image = torch.randn(6, text.shape[1])

    def losses(**params):
        return batch_losses(tiny.model, images, labels, tokens, text, text, teacher_image, FitParams(**params), 10.0)

    flyp, half = losses(method="flyp"), losses(method="flyp", w_clip=0.5)
    assert set(flyp) == {"clip", "total"} and torch.equal(flyp["total"], flyp["clip"])
    assert torch.allclose(half["total"], 0.5 * flyp["clip"]) and torch.equal(half["clip"], flyp["clip"])
    assert FitParams(method="flyp").uses_text() and not FitParams(method="ce").uses_text()
    assert FitParams(method="cite").needs_teacher() and not FitParams(method="cite", eta=0).needs_teacher()
    cite = losses(method="cite")
    assert "clip" not in cite
