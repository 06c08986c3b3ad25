"""compare(): near-ties of the reference are set aside from top-1 agreement, decisive flips are not."""

from __future__ import annotations

import numpy as np
import pytest

from edgeslim.exporters.config import Tolerance
from edgeslim.exporters.verify import compare

INT8 = Tolerance(0.98, 0.90)


def _reference(n: int, tied: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` logit rows over 10 classes; the first ``tied`` have their top two within 0.001."""
    ref = rng.normal(0.0, 1.0, (n, 10))
    ref[:, 0] = ref.max(1) + 2.0  # decisive: class 0 leads by 2
    ref[:tied, 1] = ref[:tied, 0] - 0.001  # near-tie: class 1 a hair behind
    return ref


def test_flipped_near_ties_are_not_counted() -> None:
    rng = np.random.default_rng(0)
    ref = _reference(200, 60, rng)
    art = ref + rng.normal(0.0, 0.01, ref.shape)  # int8-like noise, much larger than the ties' margin
    art[:60, 1] = art[:60, 0] + 0.005  # every near-tie flips
    rep = compare(art, ref, INT8)
    assert rep.top1_agreement == pytest.approx(140 / 200)  # raw agreement misses 90 %
    assert rep.decisive_samples == 140 and rep.decisive_top1_agreement == 1.0
    assert rep.passed
    assert "140 samples that are not near-ties" in str(rep)


def test_flipped_decisive_samples_fail() -> None:
    rng = np.random.default_rng(1)
    ref = _reference(200, 0, rng)
    art = ref + rng.normal(0.0, 0.01, ref.shape)
    art[:40, 3] = art[:40, 0] + 1.0  # 20 % of the clear decisions flip, with large errors on those rows
    rep = compare(art, ref, INT8)
    assert rep.decisive_samples >= 160
    assert rep.decisive_top1_agreement == pytest.approx(0.8, abs=0.01)
    assert not rep.passed


def test_a_few_decisive_samples_judge_the_top1() -> None:
    rng = np.random.default_rng(2)
    ref = _reference(100, 95, rng)  # a random network: nearly every sample is a near-tie
    art = ref.copy()
    art[:95, 1] = art[:95, 0] + 0.005
    rep = compare(art, ref, INT8)
    assert rep.decisive_samples == 5 and rep.decisive_top1_agreement == 1.0
    assert rep.top1_agreement == pytest.approx(0.05) and rep.passed
    art[95:, 4] = art[95:, 0] + 1.0  # the few clear decisions flip
    rep = compare(art, ref, INT8)
    assert rep.decisive_top1_agreement == 0.0 and not rep.passed


def test_no_decisive_sample_leaves_the_cosine_to_decide() -> None:
    ref = np.tile(np.linspace(0.0, 1.0, 10), (50, 1))
    ref[:, 8] = ref[:, 9]  # every sample an exact tie
    close = ref.copy()
    close[:, 9] += 0.01  # flips every tie (the reference picks the first of a tie), tiny error
    rep = compare(close, ref, INT8)
    assert rep.decisive_samples == 0 and rep.top1_agreement == 0.0 and rep.passed
    far = -ref  # same ties, wrong outputs
    assert not compare(far, ref, INT8).passed


def test_a_badly_wrong_artefact_cannot_call_every_sample_a_tie() -> None:
    rng = np.random.default_rng(4)
    ref = _reference(100, 0, rng)
    art = ref + rng.normal(0.0, 1.0, ref.shape)  # errors as large as the margins everywhere
    art[:, 5] = art[:, 0] + 0.5  # ... and every sample picks class 5
    rep = compare(art, ref, Tolerance(0.5, 0.9))
    assert rep.cosine > 0.5  # a lax cosine alone would pass it
    assert rep.decisive_samples == 100 and rep.decisive_top1_agreement == 0.0 and not rep.passed


def test_cosine_still_applies_to_every_sample() -> None:
    rng = np.random.default_rng(3)
    ref = _reference(100, 0, rng)
    art = ref.copy()
    art[:50] = -ref[:50]  # half the outputs are negated
    rep = compare(art, ref, INT8)
    assert rep.cosine < 0.5 and not rep.passed


def test_a_model_with_one_output_for_every_input_has_nothing_to_verify() -> None:
    """A zero-initialised head prints 0 for every input: any constant artefact would "pass"; verify() refuses."""
    import torch

    from edgeslim.exporters.errors import ExportVerificationError
    from edgeslim.exporters.verify import verify

    head = torch.nn.Linear(12, 10)
    torch.nn.init.zeros_(head.weight)
    torch.nn.init.zeros_(head.bias)
    model = torch.nn.Sequential(torch.nn.Flatten(), head).eval()
    inputs = [torch.randn(4, 3, 2, 2), torch.randn(3, 3, 2, 2)]
    with pytest.raises(ExportVerificationError, match=r"nothing to verify model\.onnx on: the PyTorch model gives "
                       r"the same output for all 7 verification inputs.*verify=False") as info:
        verify(lambda x: np.zeros((len(x), 10), np.float32), model, inputs, INT8, what="model.onnx")
    assert info.value.report.samples == 7 and info.value.report.cosine == 1.0
    with torch.no_grad():
        head.weight.normal_()
    art = verify(lambda x: model(torch.from_numpy(x)).numpy(), model, inputs, INT8)  # outputs differ: verified
    assert art.passed and art.samples == 7
