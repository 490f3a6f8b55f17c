"""What ``result.json`` says about a run's numbers: metrics of the final and best weights,
the loss and gradient-norm summaries, peak memory.

Pure functions of the trained module, the data and the run's ``best.ckpt``; the job calls
them at every ending (a failed run is evaluated too, where its weights are finite).
"""

from __future__ import annotations

import io
import math
import resource
from pathlib import Path

import numpy as np
import torch

from ptychostab.evaluation.metrics import match_gauge

__all__ = ["EVAL_KEYS", "evaluate_predictions", "evaluate_run", "grad_norm_summary",
           "loss_metrics", "peak_memory", "predict_test"]

EVAL_KEYS = ("amp_ssim", "phase_ssim", "amp_mae", "phase_mae", "amp_psnr", "phase_psnr")


def evaluate_predictions(pred: np.ndarray, data) -> tuple[dict, np.ndarray, np.ndarray]:
    """Metrics of test image 0 and the stitched (pred, truth) images."""
    from ptychostab.evaluation.metrics import phase_is_constant
    from ptychostab.evaluation.reconstruction import (
        evaluate_patches,
        stitch_test_image,
        truth_image,
    )

    metrics = dict(evaluate_patches(pred, data, image=0))
    truth = truth_image(data, 0)
    metrics["phase_truth_constant"] = bool(phase_is_constant(truth))
    return metrics, stitch_test_image(pred, data, 0), truth


@torch.no_grad()
def predict_test(module, device: torch.device) -> np.ndarray:
    """The generator's output on the validation (test) patterns, in eval mode."""
    module.generator.eval()
    out = [module.forward_fn(x.to(device)).cpu()
           for x in module.val_data.split(module.settings.eval_batch_size)]
    return torch.cat(out).numpy()


def loss_metrics(module, loss_kind: str) -> dict:
    """Best/final losses from the module's history (``module`` None: nothing was built)."""
    rows = [r for r in (module.history if module else []) if r.get("val_loss") is not None]
    best = module.best if module else {"val_loss": math.inf, "epoch": None}
    return {
        "val_loss_name": module.loss_names["val"] if module else f"{loss_kind}_val_loss",
        "best_val_loss": best["val_loss"] if math.isfinite(best["val_loss"]) else None,
        "best_epoch": best["epoch"],
        "final_val_loss": rows[-1]["val_loss"] if rows else None,
        "final_train_loss": rows[-1]["train_loss"] if rows else None,
        "amp_rel_std": rows[-1].get("amp_rel_std") if rows else None,
    }


def evaluate_run(module, data, device: torch.device, loss_kind: str,
                 best_path: Path) -> tuple[dict, dict | None, bytes | None]:
    """``(metrics, metrics_best, recon_npz_bytes)``: the final weights' metrics (None where
    they are not finite), then the best checkpoint's (the final weights are replaced)."""
    metrics, metrics_best, recon = loss_metrics(module, loss_kind), None, None
    gen = module.generator
    if all(bool(torch.isfinite(p).all()) for p in gen.parameters()):
        scores, pred_img, truth_img = evaluate_predictions(predict_test(module, device), data)
        metrics.update(scores)
        buf = io.BytesIO()
        np.savez(buf, pred=match_gauge(pred_img, truth_img), pred_raw=pred_img, truth=truth_img)
        recon = buf.getvalue()
    else:
        metrics.update({k: None for k in EVAL_KEYS}, nonfinite_weights=True)
    if best_path.exists():
        best = torch.load(best_path, map_location=device, weights_only=True)
        gen.load_state_dict(best["generator"])
        metrics_best, _, _ = evaluate_predictions(predict_test(module, device), data)
        metrics_best.update(val_loss=best["val_loss"], epoch=best["epoch"])
    return metrics, metrics_best, recon


def grad_norm_summary(history: list[dict]) -> dict:
    """Median/max of the per-epoch grad-norm statistics, and the last epoch's (``final_``)."""
    out = {}
    for key in ("grad_norm_pre_median", "grad_norm_pre_max", "grad_norm_post_median",
                "grad_norm_post_max", "clip_fraction"):
        v = np.array([r.get(key, math.nan) for r in history], dtype=float)
        finite = v[np.isfinite(v)]
        agg = np.max if key.endswith("max") else np.median
        out[key] = float(agg(finite)) if finite.size else None
        out[f"final_{key}"] = float(v[-1]) if v.size else None
    return out


def peak_memory(device: torch.device) -> tuple[int, str]:
    """``(bytes, kind)``: CUDA's max allocated on a GPU, the process's max RSS on the CPU."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device)), "cuda_max_allocated"
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024, "host_max_rss"
