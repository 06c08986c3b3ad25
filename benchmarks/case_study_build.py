"""Builds the case study's variants of one model: sources (cached), artefacts, top-1 in the runtime."""

from __future__ import annotations

import argparse
import copy
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

import edgeslim
from case_study_peers import nncf_quantize, ort_quantize_static, torch_pruning_uniform
from edgeslim.data import calibration_subset, fashion_mnist_loader
from edgeslim.exporters import export
from edgeslim.plugin.pruning.finetune import finetune
from edgeslim.plugin.pruning.metrics import measure
from pruning import plain_sgd  # the pruning benchmark's plain-SGD peer loop


def _resize(loader: Any, size: int, n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    out, seen = [], 0
    for xb, yb in loader:
        out.append((nn.functional.interpolate(xb, size=(size, size), mode="bilinear"), yb))
        seen += len(xb)
        if seen >= n:
            break
    return out


class Builder:
    """One model's variants; ``rows()`` yields one finished row per variant (built or resumed)."""

    NOTES: ClassVar[list[str]] = [
        "Every pruned variant (edgeslim and peers) gets the same fine-tune budget; `torch-pruning-uniform-edgeslim-ft` is "
        "the peer's pruned model with edgeslim's fine-tune recipe (one-cycle SGD, label smoothing, distillation from the "
        "fp32 model), so the table separates what the pruning choice gives from what the recipe gives.",
        "All quantized variants use the same calibration images; ORT `quantize_static` and NNCF run with their defaults "
        "on the fp32 ONNX file (what a user of those libraries gets out of the box).",
        "Latency of PT2E-quantized graphs (static H/W) is measured on a twin quantized at the latency size with 32 "
        "calibration images (latency does not depend on the weight values); top-1 always comes from the 32x32 artefact.",
        "LiteRT 16x8 (int16 activations) has no XNNPACK kernels: its top-1 is on the first 2,000 images and its latency "
        "uses a tenth of the repetitions.",
    ]

    def __init__(self, model: str, args: argparse.Namespace, log: Callable[[str], None]) -> None:
        self.name, self.args, self.log = model, args, log
        self.dir = args.work / model
        self.dir.mkdir(parents=True, exist_ok=True)
        self.base = edgeslim.load_model(model).eval()
        self.x = torch.randn(1, 3, 32, 32)
        self.xl = torch.randn(1, 3, args.latency_size, args.latency_size)
        self.calib = calibration_subset("train", args.calibration)
        self.test = fashion_mnist_loader("test", batch_size=250, limit=args.eval_images)
        self.labels = np.concatenate([y.numpy() for _, y in self.test])
        self.full_params = measure(self.base, self.x).params
        self._twins: dict[str, Any] = {}
        self.sources: dict[str, str] = {}
        from case_study import joint_budget

        self.joint_budget = joint_budget(args, model)

    # ---- sources -------------------------------------------------------------------------------------------------
    def _cached(self, key: str, build: Callable[[], nn.Module]) -> nn.Module:
        path = self.dir / f"src_{key}.pt"
        if path.is_file():
            if key not in self.sources:
                when = time.strftime("%Y-%m-%d %H:%M", time.localtime(path.stat().st_mtime))
                self.sources[key] = f"loaded from the cache (file written {when}; the commit of that build is in `runs`)"
            return edgeslim.load(path, base=copy.deepcopy(self.base)).eval()
        torch.manual_seed(0)
        t0 = time.perf_counter()
        model = build().eval()
        edgeslim.save(model, path)
        self.sources[key] = f"built in this run ({time.perf_counter() - t0:.0f} s)"
        self.log(f"{self.name}: built {key} in {time.perf_counter() - t0:.0f} s")
        return model

    def _train(self) -> Any:
        return fashion_mnist_loader("train", batch_size=128, augment=True)

    def tp_pruned(self) -> nn.Module:
        goal = int(self.full_params * 0.487)  # int8 file of 50 %-pruned ResNet-18 <= 5.6 MB needs ~48.7 % params
        return self._cached("tp", lambda: torch_pruning_uniform(self.base, self.x, goal)[0])

    def tp_sgd(self) -> nn.Module:
        return self._cached("tp_sgd", lambda: self._ft(copy.deepcopy(self.tp_pruned()), plain=True))

    def tp_es(self) -> nn.Module:
        return self._cached("tp_es", lambda: self._ft(copy.deepcopy(self.tp_pruned()), plain=False))

    def _ft(self, model: nn.Module, *, plain: bool) -> nn.Module:
        if plain:
            plain_sgd(model, self._train(), self.args.epochs)
        else:
            finetune(model, self._train(), epochs=self.args.epochs, teacher=self.base)
        return model.eval()

    def _search(self, budget: Any, tag: str) -> dict[str, Any]:
        from edgeslim.data import evaluate
        from edgeslim.pipelines.joint import joint_search

        data = fashion_mnist_loader("train", batch_size=128, seed=1)
        held = calibration_subset("train", 1000, batch_size=250, seed=7)  # selection on training images, never test
        size = self.args.latency_size
        res = joint_search(self.base, self.x, data=data, budget=budget, device="local", runtime="onnxruntime",
                           threads=2, input_size=(size, size), quant="int8", cache_dir=str(self.args.work / "latency"),
                           eval_fn=lambda m: evaluate(m, held))
        summary = res.to_dict()
        (self.dir / f"search_{tag}.json").write_text(json.dumps(summary, indent=1, default=str))
        return {"result": res, "summary": summary}

    def es50(self) -> nn.Module:
        def build() -> nn.Module:
            from edgeslim.pipelines.joint import Budget
            from edgeslim.pipelines.latency import measure_model

            tp = self.tp_pruned()
            size = self.args.latency_size
            tp_ms = measure_model(tp, self.x, device="local", runtime="onnxruntime", threads=2, quant="int8",
                                  input_size=(size, size))
            params = measure(tp, self.x).params
            self.log(f"{self.name}: torch-pruning uniform int8 {tp_ms:.2f} ms at {params:,} params; searching below both")
            found = self._search(Budget(bytes=float(params), latency_ms=0.93 * tp_ms), "pruned50")
            model = found["result"].apply(self.base, self.x).model
            return self._ft(model, plain=False)

        return self._cached("es50", build)

    def joint(self) -> nn.Module:
        def build() -> nn.Module:
            from edgeslim.pipelines.joint import Budget

            speedup, nbytes = self.joint_budget
            found = self._search(Budget(speedup=speedup, bytes=float(nbytes)), "joint")
            model = found["result"].apply(self.base, self.x).model
            return self._ft(model, plain=False)

        return self._cached("joint", build)

    def ptq(self, model: nn.Module, x: torch.Tensor | None = None, calib: Any = None) -> Any:
        return edgeslim.quantize(model, (self.x if x is None else x,), "int8", calibration=calib or self.calib)

    # ---- artefacts -----------------------------------------------------------------------------------------------
    def _top1(self, fmt: str, path: Path, limit: int) -> float:
        from case_study import open_runner

        runner = open_runner(fmt, path)
        preds, seen = [], 0
        for xb, _ in self.test:
            if seen >= limit:
                break
            batch = xb[: limit - seen]
            preds.append(np.asarray(runner(batch.numpy())).argmax(1))
            seen += len(batch)
        return float((np.concatenate(preds) == self.labels[:limit]).mean())

    def artefacts(self, variant: str, src: Any, quant: str, formats: tuple[str, ...], float_src: nn.Module,
                  how: str) -> dict[str, Any]:
        """Export ``src`` to each format at 32x32 (top-1 in the runtime) and a latency twin at the latency size."""
        row: dict[str, Any] = {"model": self.name, "variant": variant, "how": how, "quant": quant}
        st = measure(float_src, self.x)
        row.update(params=st.params, macs_32=st.macs, macs_latency=measure(float_src, self.xl).macs)
        t_all = time.perf_counter()
        stem = variant.replace("+", "_")
        for fmt in formats:
            path = self.dir / f"{stem}.{fmt}"
            res = export(src, fmt, path, self.x, quant=None if not isinstance(src, nn.Module) else quant,
                         calibration=self.calib, overwrite=True, verify_samples=64)
            slow = fmt == "tflite" and quant == "w8a16"
            limit = min(2000, self.args.eval_images) if slow else self.args.eval_images
            row[f"{fmt}_file"], row[f"bytes_{fmt}"] = str(path), res.bytes
            row["top1_" + ("onnx" if fmt == "onnx" else "litert")] = self._top1(fmt, path, limit)
            row[f"{fmt}_images"], row["slow_" + fmt] = limit, slow
            row[f"{fmt}_latency_file"] = str(self._twin(fmt, path, res, src, quant, float_src, stem))
            self.log(f"{self.name} {variant} {fmt}: {res.bytes / 1e6:.2f} MB, top-1 "
                     f"{row['top1_' + ('onnx' if fmt == 'onnx' else 'litert')]:.4f}")
        row["bytes"] = row.get("bytes_onnx")
        row["top1"] = row.get("top1_onnx", row.get("top1_litert"))
        row["seconds"] = round(time.perf_counter() - t_all, 1)
        return row

    def _twin(self, fmt: str, path: Path, res: Any, src: Any, quant: str, float_src: nn.Module, stem: str) -> Path:
        size = self.args.latency_size
        if fmt == "onnx" and isinstance(src, nn.Module) and res.metadata.get("dynamic_axes", "").endswith("width"):
            return path
        twin = self.dir / f"{stem}_{size}.{fmt}"
        tsrc: Any = src
        if not isinstance(src, nn.Module):  # a PT2E graph: static H/W, re-quantize the float source at the size
            if stem not in self._twins:
                cal = _resize(calibration_subset("train", 32, batch_size=16), size, 32)
                self._twins[stem] = self.ptq(float_src, self.xl, cal)
            tsrc = self._twins[stem]
        export(tsrc, fmt, twin, self.xl, quant=quant if isinstance(src, nn.Module) else None, overwrite=True,
               verify=False, calibration_size=32)
        return twin

    def peer_onnx(self, variant: str, fp32_onnx: Path, latency_onnx: Path, fn: Callable[..., dict[str, Any]],
                  float_src: nn.Module, how: str) -> dict[str, Any]:
        row: dict[str, Any] = {"model": self.name, "variant": variant, "how": how, "quant": "int8"}
        st = measure(float_src, self.x)
        row.update(params=st.params, macs_32=st.macs, macs_latency=measure(float_src, self.xl).macs)
        out = self.dir / f"{variant}.onnx"
        row["peer"] = fn(fp32_onnx, out, self.calib)
        row["onnx_file"], row["bytes_onnx"], row["bytes"] = str(out), out.stat().st_size, out.stat().st_size
        row["top1"] = row["top1_onnx"] = self._top1("onnx", out, self.args.eval_images)
        row["onnx_images"] = self.args.eval_images
        if latency_onnx == fp32_onnx:
            row["onnx_latency_file"] = str(out)
        else:
            lat = self.dir / f"{variant}_{self.args.latency_size}.onnx"
            fn(latency_onnx, lat, _resize(calibration_subset("train", 32, batch_size=16), self.args.latency_size, 32))
            row["onnx_latency_file"] = str(lat)
        row["bytes_tflite"] = row["top1_litert"] = row["litert_ms"] = None
        self.log(f"{self.name} {variant}: {row['bytes'] / 1e6:.2f} MB, top-1 {row['top1']:.4f}")
        return row

    # ---- the variants --------------------------------------------------------------------------------------------
    def rows(self) -> Iterator[dict[str, Any]]:
        both = ("onnx", "tflite")
        ep = f"{self.args.epochs:g} epoch"
        only = set(self.args.only or [])

        def want(v: str) -> bool:
            return not only or v in only

        rows: dict[str, dict[str, Any]] = {}
        plan: list[tuple[str, Callable[[], dict[str, Any]]]] = [
            ("fp32", lambda: self.artefacts("fp32", self.base, "fp32", both, self.base, "the reference model")),
            ("int8", lambda: self.artefacts("int8", self.ptq(self.base), "int8", both, self.base,
                                            "edgeslim.quantize int8 (PT2E, mse calibrator), shipped as it is")),
            ("torch-pruning-uniform-sgd", lambda: self.artefacts(
                "torch-pruning-uniform-sgd", self.tp_sgd(), "fp32", both, self.tp_sgd(),
                f"torch-pruning BasePruner, L2 group magnitude, uniform ratio bisected to 48.7 % params, 5 steps; plain SGD {ep}")),
            ("torch-pruning-uniform-edgeslim-ft", lambda: self.artefacts(
                "torch-pruning-uniform-edgeslim-ft", self.tp_es(), "fp32", both, self.tp_es(),
                f"the same torch-pruning model, fine-tuned with edgeslim's recipe {ep}")),
            ("pruned", lambda: self.artefacts(
                "pruned", self.es50(), "fp32", both, self.es50(),
                "edgeslim joint search (latency measured in ONNX Runtime int8 at the latency size) under the torch-pruning "
                f"peer's parameter count and 0.93x its int8 latency; edgeslim fine-tune {ep}")),
            ("pruned+int8", lambda: self.artefacts("pruned+int8", self.ptq(self.es50()), "int8", both, self.es50(),
                                                      "pruned, then edgeslim.quantize int8")),
            ("pruned+w8a16", lambda: self.artefacts(
                "pruned+w8a16", self.es50(), "w8a16", both, self.es50(),
                "the seed's recipe: pruned (fine-tuned) + int8 weights / int16 activations (exporter's w8a16)")),
            ("edgeslim-joint+int8", lambda: self.artefacts(
                "edgeslim-joint+int8", self.ptq(self.joint()), "int8", both, self.joint(),
                f"edgeslim joint search: >= {self.joint_budget[0]}x fp32 in ONNX Runtime (int8, measured) and <= "
                f"{self.joint_budget[1] / 1e6:.1f} MB int8 weights; edgeslim fine-tune {ep}; int8 PTQ")),
            ("ort-quantize_static", lambda: self.peer_onnx(
                "ort-quantize_static", Path(rows["fp32"]["onnx_file"]), Path(rows["fp32"]["onnx_latency_file"]),
                ort_quantize_static, self.base, "onnxruntime.quantization.quantize_static, defaults, fp32 ONNX")),
            ("ort-quantize_static+torch-pruning", lambda: self.peer_onnx(
                "ort-quantize_static+torch-pruning", Path(rows["torch-pruning-uniform-sgd"]["onnx_file"]),
                Path(rows["torch-pruning-uniform-sgd"]["onnx_latency_file"]), ort_quantize_static, self.tp_sgd(),
                "torch-pruning-uniform-sgd, then quantize_static (defaults)")),
            ("nncf-quantize", lambda: self.peer_onnx(
                "nncf-quantize", Path(rows["fp32"]["onnx_file"]), Path(rows["fp32"]["onnx_latency_file"]),
                nncf_quantize, self.base, "nncf.quantize (ONNX backend, default preset) on the fp32 ONNX file")),
        ]
        existing = {r["variant"]: r for r in getattr(self.args, "existing_rows", []) if r.get("model") == self.name}
        for variant, build in plan:
            old = existing.get(variant)
            if old and "error" not in old and not want(variant) and all(Path(old[k]).is_file() for k in old if k.endswith("_file") and old[k]):
                rows[variant] = old
                continue
            if not want(variant) and old is None and only:
                continue
            self.log(f"{self.name}: {variant}")
            try:
                row = build()
            except Exception as exc:  # a failed variant is recorded, the others still run
                self.log(f"{self.name} {variant} FAILED: {type(exc).__name__}: {exc}")
                row = {"model": self.name, "variant": variant, "error": f"{type(exc).__name__}: {exc}"[:2000],
                       "bytes": None, "top1": None, "ort_ms": None, "litert_ms": None}
            rows[variant] = row
            yield row
