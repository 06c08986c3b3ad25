"""``finetune_job`` from Python (one process): prune + fine-tune and QAT, the numbers it reports checked."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from edgeslim.data import DataOptions, open_data
from edgeslim.errors import ConfigError
from edgeslim.io import state_sha256
from edgeslim.models import load
from edgeslim.pipelines.finetune_job import finetune_job
from edgeslim.pipelines.torchrun_finetune import SPEC_KEYS, run
from edgeslim.plugin.pruning import PruneConfig, Target
from edgeslim.plugin.quantization import QuantConfig
from edgeslim.train import sharded_top1
from tests.cli.test_finetune import NET_PY


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, object]:
    root = tmp_path_factory.mktemp("job")
    (root / "net.py").write_text(NET_PY)
    rng = np.random.default_rng(0)
    y, yv = rng.integers(0, 2, 128), rng.integers(0, 2, 64)
    np.savez(root / "d.npz", x=(rng.random((128, 16, 16, 3)) * 120 + y[:, None, None, None] * 120).astype(np.uint8),
             y=y, x_val=(rng.random((64, 16, 16, 3)) * 120 + yv[:, None, None, None] * 120).astype(np.uint8), y_val=yv)
    return f"{root}/net.py:build", open_data(f"npz:{root}/d.npz", DataOptions(input_size=16))


def test_prune_and_fine_tune_on_one_process(setup: tuple[str, object]) -> None:
    spec, source = setup
    model, logs = load(spec), []
    run_ = finetune_job(model, source, torch.zeros(2, 3, 16, 16), epochs=2, lr=0.2, batch_size=16,  # type: ignore[arg-type]
                        prune=PruneConfig(criterion="l1", target=Target.parse("ratio=0.5")), device="cpu",
                        log=logs.append)
    assert run_.world_size == 1 and run_.backend is None and run_.device == "cpu"
    assert run_.steps == 16 and run_.eval_images == 64  # 128 images / 16 per batch * 2 epochs
    assert run_.params_after_prune == 450 == sum(p.numel() for p in run_.trained.parameters())
    assert run_.weights_sha256 == state_sha256(run_.trained.state_dict())
    assert run_.weights_sha256 != run_.pruned_sha256  # it trained (accuracy on 64 images is too coarse here)
    assert run_.top1_after == pytest.approx(sharded_top1(run_.trained, source.eval_loader(250))[0])  # type: ignore[attr-defined]
    assert sum(p.numel() for p in model.parameters()) == 1474  # pruning worked on a copy
    assert logs[1].startswith("pruned to ratio=0.5 (l1): 450 parameters, sha256 ")
    assert logs[-2] == f"final weights sha256 {run_.weights_sha256[:16]}"


@pytest.mark.slow
def test_qat_returns_a_quantized_result(setup: tuple[str, object]) -> None:
    spec, source = setup
    run_ = finetune_job(load(spec), source, torch.zeros(2, 3, 16, 16), epochs=0.5, lr=0.01, batch_size=16,  # type: ignore[arg-type]
                        qat=QuantConfig.from_spec("int8"), teacher=load(spec), log=lambda _m: None)
    assert run_.steps == 4 and run_.final.model is run_.trained
    assert run_.final.config.name == "int8"
    assert {p.device.type for p in run_.trained.parameters()} <= {"cpu"}


def test_entry_spec_must_have_every_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        run({"model": "x"})
    assert str(info.value) == (f"torchrun_finetune: the spec has keys ['model'], expected {sorted(SPEC_KEYS)}")
