"""The per-batch Lightning contender of ``benchmarks/train_step.py`` (issue 21): it trains, its
per-step clipping is applied, and it does bare's arithmetic (same weights on a CPU)."""

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("train_step_bench",
                                                  ROOT / "benchmarks" / "train_step.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    yield mod
    sys.modules.pop(spec.name, None)


@pytest.fixture(autouse=True)
def _restore_determinism():
    """The contender's CPU Trainer (``deterministic=True``, as the job's) flips a process-wide
    torch flag: put it back for the tests that follow."""
    saved = torch.are_deterministic_algorithms_enabled()
    yield
    torch.use_deterministic_algorithms(saved)


def contender(bench, tmp_path, clip: str, value: float | None = None, steps: int = 3):
    args = bench.parse(["--device", "cpu", "--sizes", "tiny", "--steps", str(steps),
                        "--warmup", "1", "--variants", f"1:{clip}"])
    cfg = bench.variant_config(args, 1, clip)
    if value is not None:
        cfg.clip.value = value
    data = bench.make_data(args, cfg)
    torch.manual_seed(args.seed)
    init = {k: v.clone() for k, v in bench.job_mod.build_model(cfg).state_dict().items()}
    device = torch.device("cpu")
    lit = bench.PerBatchLightning(args, cfg, data, init, device, tmp_path / clip)
    bare = bench.Bare(args, cfg, data, init, device)
    return lit, bare, init


def flat(state: dict) -> torch.Tensor:
    return torch.cat([torch.view_as_real(t).reshape(-1) if t.is_complex() else t.reshape(-1)
                      for t in state.values()])


def test_lightning_contender_trains_and_matches_bare(bench, tmp_path):
    lit, bare, init = contender(bench, tmp_path, "norm")
    losses = []
    for _ in range(2):
        seconds, _ = lit.round()
        assert seconds > 0
        losses.append(float(lit.trainer.callback_metrics["train_loss"]))  # self.log'ed
        bare.round()
    assert losses[0] != losses[1]
    moved = (flat(lit.weights()) - flat(init)).abs().max()
    assert moved > 0
    assert lit.module.epoch == 2  # two epochs, two seeded orders
    assert bench.compare(lit.weights(), bare.weights()) == 0.0  # the same arithmetic


def test_lightning_norm_clip_is_applied_per_step(bench, tmp_path):
    """Lightning clips after ``on_before_optimizer_step`` and before ``optimizer.step``: the
    pre-clip norm is seen in the hook, the post-clip gradient after the step (gradients are
    zeroed only in the next step's closure). A tiny norm also bounds Adam's update."""
    limit = 1e-3
    lit, _, init = contender(bench, tmp_path, "norm", value=limit)
    assert lit.clip_kwargs == {"gradient_clip_val": limit, "gradient_clip_algorithm": "norm"}
    pre, post = [], []
    params = list(lit.module.generator.parameters())

    class Seen(bench.L.Callback):
        def on_before_optimizer_step(self, trainer, pl_module, optimizer):
            pre.append(float(torch.nn.utils.get_total_norm([p.grad for p in params])))

    lit.module.optimizer.register_step_post_hook(
        lambda *_: post.append(float(torch.nn.utils.get_total_norm([p.grad for p in params]))))
    lit.trainer = lit.make_trainer([Seen()])
    lit.trainer.fit(lit.module)
    assert len(pre) == len(post) == 4  # warmup 1 + 3 steps
    assert min(pre) > 10 * limit  # clipping had something to do ...
    assert max(post) <= limit * (1 + 1e-5)  # ... and did it, at every step
    clipped_move = (flat(lit.weights()) - flat(init)).abs().max()

    tiny, _, init = contender(bench, tmp_path, "norm", value=1e-12)
    free, _, _ = contender(bench, tmp_path, "none")
    assert free.clip_kwargs == {}
    tiny.round()
    free.round()
    tiny_move = (flat(tiny.weights()) - flat(init)).abs().max()
    free_move = (flat(free.weights()) - flat(init)).abs().max()
    assert tiny_move < 1e-2 * free_move  # Adam's eps dominates a 1e-12-norm gradient
    assert clipped_move > 0


@pytest.mark.parametrize("clip", ["agc", "value"])
def test_lightning_agc_and_value_clips_match_bare(bench, tmp_path, clip):
    """AGC in ``on_before_optimizer_step`` and the complex-aware value clip in
    ``configure_gradient_clipping`` give bare's weights (bare clips with GradientClipper)."""
    lit, bare, init = contender(bench, tmp_path, clip, steps=2)
    lit.round()
    bare.round()
    assert (flat(lit.weights()) - flat(init)).abs().max() > 0
    assert bench.compare(lit.weights(), bare.weights()) == 0.0
    assert (lit.module.agc is not None) == (clip == "agc")
