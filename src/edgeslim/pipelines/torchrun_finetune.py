"""``python -m edgeslim.pipelines.torchrun_finetune SPEC.json``: the entry every torchrun worker of a recipe runs.

``SPEC.json`` (written by :mod:`edgeslim.pipelines.launcher`) names the model, the data, the
training settings and the output folder. Every rank runs
:func:`~edgeslim.pipelines.finetune_job.finetune_job`; rank 0 saves ``OUT/model.pt`` (the
fine-tuned module, or the ``QuantResult`` of QAT) and prints the run's JSON summary as its only
stdout line. Log lines (``[rank R/W] ...``) go to stderr.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

#: The keys of SPEC.json (all required except ``weights``, ``teacher``, ``teacher_weights``, ``qat``, ``mean``, ``std``).
SPEC_KEYS = ("model", "weights", "data", "mean", "std", "input_size", "epochs", "lr", "batch_size", "teacher",
             "teacher_weights", "qat", "eval_limit", "seed", "device", "out")
#: The file rank 0 writes into ``out``.
MODEL_FILE = "model.pt"


def load_model(name: str, weights: str | None) -> Any:
    """A float model: an edgeslim-saved file, else a reference / torchvision name or ``FILE.py:factory``."""
    from edgeslim import io as es_io
    from edgeslim import models

    if name in models.REFERENCES or not Path(name).is_file():
        return models.load(name, weights=weights or None).eval()
    return es_io.load(name).eval()


def run(spec: dict[str, Any]) -> dict[str, Any] | None:
    """This rank's share of the job ``spec``; rank 0 saves the model and returns the summary (None elsewhere).

    Raises:
        edgeslim.errors.ConfigError: ``spec`` lacks a key or names an unknown one.
    """
    import torch

    from edgeslim import distributed
    from edgeslim import io as es_io
    from edgeslim.data import DataOptions, open_data
    from edgeslim.errors import ConfigError
    from edgeslim.pipelines.finetune_job import finetune_job

    if set(spec) != set(SPEC_KEYS):
        raise ConfigError(f"torchrun_finetune: the spec has keys {sorted(spec)}, expected {sorted(SPEC_KEYS)}")
    torch.manual_seed(int(spec["seed"]))
    size = int(spec["input_size"])
    options = DataOptions(input_size=size, mean=tuple(spec["mean"]) if spec["mean"] else None,
                          std=tuple(spec["std"]) if spec["std"] else None)
    source = open_data(spec["data"], options)
    model = load_model(spec["model"], spec["weights"])
    teacher = load_model(spec["teacher"], spec["teacher_weights"]) if spec["teacher"] else None
    qat = None
    if spec["qat"]:
        from edgeslim.plugin.quantization import QuantConfig

        qat = QuantConfig.from_spec(spec["qat"])
    example = torch.zeros(2, int(source.channels()), size, size)
    job = finetune_job(model, source, example, epochs=float(spec["epochs"]), lr=float(spec["lr"]),
                       batch_size=int(spec["batch_size"]), teacher=teacher, qat=qat,
                       eval_limit=int(spec["eval_limit"]), seed=int(spec["seed"]), device=spec["device"],
                       name=spec["model"])
    if not distributed.is_rank0():
        return None
    summary = {**job.summary(), "mode": "qat" if qat is not None else "float", "scheme": spec["qat"]}
    out = Path(spec["out"])
    out.mkdir(parents=True, exist_ok=True)
    path = es_io.save(job.final, out / MODEL_FILE, meta=summary)
    return {**summary, "model_path": str(path)}


def main(argv: list[str] | None = None) -> int:
    """Run ``SPEC.json`` on this rank (joining torchrun's process group); rank 0 prints the JSON summary."""
    from edgeslim import distributed
    from edgeslim.errors import EdgeslimError

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m edgeslim.pipelines.torchrun_finetune SPEC.json", file=sys.stderr)
        return 2
    spec = json.loads(Path(args[0]).read_text())
    distributed.init_from_env()
    try:
        summary = run(spec)
        distributed.barrier()
    except EdgeslimError as exc:
        print(f"[rank {distributed.rank()}/{distributed.world_size()}] error: {type(exc).__name__}: {exc}",
              file=sys.stderr, flush=True)
        return 1
    finally:
        distributed.destroy()
    if summary is not None:
        print(json.dumps(summary, default=str), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
