"""The GPU fast path: epoch-per-Lightning-step driver, lean monitors, graph step body, async
checkpoints, optimizer flags; and, marked ``gpu`` (skipped without CUDA), CUDA-graph capture,
compile and sync-freedom on a real device.

The CPU tests check everything that does not need a GPU: that the graph step's body (in-place
grad zeroing, device-side NaN injection, capturable optimizer path aside) computes exactly the
eager step, and that the deferred failure detectors equal the per-step ones.
"""

import math
import subprocess
import sys
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch

from ptychostab.models.layers.spectral import SpectralConv2d
from ptychostab.runs import records
from ptychostab.runs.checkpoint import CheckpointWriter, snapshot
from ptychostab.runs.job import run_job
from ptychostab.training.batches import EPOCH_RUN, EpochRun
from ptychostab.training.clipping import GradientClipper, unit_axis
from ptychostab.training.graphs import GraphedStep
from ptychostab.training.module import PtychoModule
from ptychostab.training.monitors import FailureSettings, StepMonitor
from ptychostab.training.optim import build_optimizer, restore_step_flags
from ptychostab.training.settings import TrainerSettings

ROOT = Path(__file__).resolve().parents[2]
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def run(cfg, run_dir):
    return run_job(cfg, run_dir=run_dir, arm={}, arm_id="fast", overrides=[])


def history(run_dir):
    return [{k: v for k, v in r.items() if k != "wall_s"}
            for r in records.read_history(run_dir / records.HISTORY).data]


def fit(module, epochs=None):
    trainer = L.Trainer(accelerator="gpu" if module.device_.type == "cuda" else "cpu",
                        devices=1, max_epochs=epochs or module.settings.max_epochs, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False)
    trainer.fit(module)
    return module


def make_module(cfg, device="cpu", **trainer):
    from ptychostab.data.simulate import load_or_build
    from ptychostab.models import build_generator

    data = load_or_build(dict(cfg.data), cache_dir=cfg.paths.cache_dir)
    torch.manual_seed(0)
    arch = dict(cfg.arch)
    gen = build_generator(arch.pop("name"), in_channels=1, N=cfg.data.N,
                          **{**arch, "fno_blocks": cfg.depth}).to(device)
    settings = TrainerSettings(**{**dict(cfg.trainer), **trainer})
    dev = torch.device(device)
    return PtychoModule(gen, torch.as_tensor(data.probe).to(dev),
                        torch.as_tensor(data.train_amp).to(dev),
                        torch.as_tensor(data.test_amp).to(dev), settings=settings,
                        clipper=GradientClipper.from_config(cfg.clip),
                        failure=FailureSettings.from_config(cfg.failure), seed=0, device=dev)


def losses(module):
    keys = ("train_loss", "val_loss", "grad_norm_pre_median", "grad_norm_post_max")
    return np.array([[r[k] for k in keys] for r in module.history], dtype=float)


# --- monitors: deferred detectors == per-step detectors -----------------------------------------
class StepwiseReference:
    """The detectors updated at every step (the definition)."""

    def __init__(self, s: FailureSettings):
        self.s, self.min, self.streak, self.step = s, math.inf, 0, 0
        self.nonfinite = self.diverged = None

    def record(self, loss, pre):
        if self.nonfinite is None and not (math.isfinite(loss) and math.isfinite(pre)):
            self.nonfinite = self.step
        over = loss > self.s.loss_factor * self.min or pre > self.s.grad_norm_bound
        self.streak = self.streak + 1 if over else 0
        if self.diverged is None and self.streak >= self.s.patience_steps:
            self.diverged = self.step
        if not math.isnan(loss):
            self.min = min(self.min, loss)
        self.step += 1


@pytest.mark.parametrize("seed", range(6))
def test_deferred_detectors_equal_per_step_detectors(seed):
    rng = np.random.default_rng(seed)
    s = FailureSettings(loss_factor=3.0, grad_norm_bound=50.0,
                        patience_steps=int(rng.integers(1, 5)))
    steps_per_epoch = 7
    mon, ref = StepMonitor(steps_per_epoch, s), StepwiseReference(s)
    for _epoch in range(4):
        for _ in range(steps_per_epoch):
            loss = float(rng.choice([rng.random() + 0.5, 5.0 * rng.random() + 2.0,
                                     math.nan, math.inf], p=[0.6, 0.34, 0.03, 0.03]))
            pre = float(rng.choice([rng.random(), 60.0, math.nan], p=[0.85, 0.13, 0.02]))
            post = min(pre, 1.0) if math.isfinite(pre) else pre
            mon.record(torch.tensor(loss), torch.tensor(pre), torch.tensor(post))
            ref.record(loss, pre)
            if rng.random() < 0.3:  # polls at random moments, as sync_every would
                assert mon.poll() == {"nonfinite": ref.nonfinite, "diverged": ref.diverged}
            if rng.random() < 0.1:  # a checkpoint mid-epoch, then carry on from it
                clone = StepMonitor(steps_per_epoch, s)
                clone.load_state_dict(mon.state_dict())
                mon = clone
        summary = mon.epoch_summary()
        assert (summary["nonfinite"], summary["diverged"]) == (ref.nonfinite, ref.diverged)
        mon.start_epoch()


def test_record_is_three_device_ops():
    """The per-step monitor work: stack, index_copy_, one foreach add (CUDA-graph safe)."""
    m = StepMonitor(4, FailureSettings())
    t = torch.tensor(1.0)
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        m.record_device(t, t, t)
    names = {e.name for e in prof.events() if e.name.startswith("aten::")}
    assert {"aten::stack", "aten::index_copy_", "aten::_foreach_add_"} <= names
    assert not names & {"aten::isfinite", "aten::where", "aten::fmin", "aten::item"}


# --- the epoch driver -----------------------------------------------------------------------
def test_lightning_calls_training_step_once_per_epoch(make_cfg, monkeypatch):
    """Lightning hands EPOCH_RUN to training_step once per epoch; the module's own loop then
    calls training_step(index_batch, i) for each step (so per-step hooks still see steps)."""
    m = make_module(make_cfg(**{"trainer.max_epochs": 2}))
    calls = []
    real = PtychoModule.training_step

    def spy(self, batch, batch_idx=0):
        calls.append("epoch" if isinstance(batch, EpochRun) else (batch.dtype, batch_idx))
        return real(self, batch, batch_idx)

    monkeypatch.setattr(PtychoModule, "training_step", spy)
    fit(m)
    step = [(torch.int64, i) for i in range(4)]
    assert calls == ["epoch", *step, "epoch", *step]
    assert m.global_step_count == 8 and m.trainer.global_step == 0  # we own the position
    assert m.effective_settings()["step_driver"].startswith("one Lightning training_step")


def test_training_step_accepts_an_input_batch(make_cfg):
    m = make_module(make_cfg())
    m.training_step(m.train_data[:5], 0)
    m.training_step(torch.arange(3), 1)
    assert m.global_step_count == 2 and m.monitor.count == 2
    assert repr(EPOCH_RUN) == "EPOCH_RUN"


# --- the graph step's body, eagerly on a CPU ----------------------------------------------------
@pytest.mark.parametrize("clip", [("norm", 0.5), ("agc", 0.01)])
def test_graph_step_body_gives_the_eager_losses_exactly(make_cfg, clip):
    """Zeroing grads in place + accumulating, the device-side NaN switch (x 1.0) and the
    monitor's device half: bit for bit the eager step (the CPU runs deterministic kernels)."""
    cfg = make_cfg(**{"clip.algorithm": clip[0], "clip.value": clip[1],
                      "trainer.max_epochs": 3, "trainer.scheduler": "exponential",
                      "failure.test_inject_nan_step": 10_000})
    eager = fit(make_module(cfg))
    graphed = make_module(cfg)
    graphed.graphed = GraphedStep(graphed, allow_cpu=True)
    fit(graphed)
    assert graphed.graphed.eager_steps == 12 and graphed.graphed.captures == 0
    np.testing.assert_array_equal(losses(graphed), losses(eager))
    for a, b in zip(graphed.generator.parameters(), eager.generator.parameters(), strict=True):
        assert torch.equal(a, b)


def test_graph_replay_logic_with_a_stand_in_capture(make_cfg, monkeypatch):
    """The capture/replay bookkeeping without a GPU: a stand-in capture whose replay runs the
    graph body (gather from the static index, then the step). Warm-up, the static index fill
    before each replay, re-capture when the scheduler changes the learning rate, the eager
    remainder batch and the monitor's host count must give the eager losses exactly."""
    cfg = make_cfg(**{"trainer.max_epochs": 4, "trainer.scheduler": "exponential",
                      "clip.algorithm": "agc", "clip.value": 0.01})
    eager = fit(make_module(cfg))

    def stand_in_capture(self, key):
        self.graph, self.key = None, None
        self.graph = type("Replay", (), {"replay": staticmethod(self._graph_body)})()
        self.key = key
        self.captures += 1

    monkeypatch.setattr(GraphedStep, "_capture", stand_in_capture)
    m = make_module(cfg)
    g = m.graphed = GraphedStep(m, allow_cpu=True)
    g.warmup_steps, g.gather_in_graph = 3, True
    fit(m)
    # 4 epochs of 3 full batches + 1 of 1: 3 warm-up steps, then a capture per learning rate
    assert (g.captures, g.replays, g.eager_steps) == (3, 9, 7)
    np.testing.assert_array_equal(losses(m), losses(eager))
    g.reset()
    assert g.graph is None and g.warm == 0


@pytest.mark.slow
def test_compile_with_the_graph_step_body_gives_the_eager_losses(make_cfg):
    """trainer.compile under the graph step's body, on a CPU (inductor; slow)."""
    cfg = make_cfg(**{"trainer.max_epochs": 2, "clip.algorithm": "agc", "clip.value": 0.01})
    eager = fit(make_module(cfg))
    compiled = make_module(cfg, compile=True)
    compiled.graphed = GraphedStep(compiled, allow_cpu=True)
    fit(compiled)
    np.testing.assert_allclose(losses(compiled), losses(eager), rtol=1e-5)


def test_graph_step_nan_switch_is_caught_at_its_step(make_cfg):
    from ptychostab.training.monitors import TrainingFailure

    m = make_module(make_cfg(**{"trainer.max_epochs": 3, "trainer.sync_every": 2,
                                "failure.test_inject_nan_step": 5}))
    m.graphed = GraphedStep(m, allow_cpu=True)
    with pytest.raises(TrainingFailure) as err:
        fit(m)
    assert (err.value.kind, err.value.step, err.value.epoch) == ("nonfinite", 5, 1)
    assert m.global_step_count == 6  # the next read (sync_every=2)


def test_cuda_graphs_refused_on_a_cpu_with_a_clear_error(make_cfg):
    with pytest.raises(ValueError, match="cuda_graphs=true needs a CUDA device"):
        make_module(make_cfg(**{"trainer.cuda_graphs": True}))


# --- optimizer flags, AGC axis, checkpoints ----------------------------------------------------
def test_loaded_state_keeps_this_runs_optimizer_flags():
    p = torch.nn.Parameter(torch.randn(3))
    settings = TrainerSettings()
    saved = torch.optim.Adam([p], foreach=False, capturable=False)
    p.grad = torch.ones(3)
    saved.step()
    opt = build_optimizer([p], settings)
    opt.load_state_dict(saved.state_dict())
    assert opt.param_groups[0]["foreach"] is False  # what load_state_dict does
    restore_step_flags(opt, {"foreach": True, "capturable": False})
    assert opt.param_groups[0]["foreach"] is True
    assert opt.state[p]["step"].device.type == "cpu"
    opt.step()


def test_spectral_conv_declares_its_agc_unit_axis():
    layer = SpectralConv2d(3, 5, 4)
    assert SpectralConv2d.agc_unit_axis == {"weight": 1}
    assert unit_axis(layer, "weight", layer.weight) == (1, False)
    from ptychostab.models import build_generator

    gen = build_generator("hybrid", in_channels=1, N=16, hidden_channels=4, n_modes=4,
                          fno_blocks=2)
    assert GradientClipper("agc", 0.01).describe(gen)["default_axis_params"] == []


def test_snapshot_is_isolated_and_keeps_metadata():
    gen = torch.nn.Linear(2, 2)
    state = {"w": gen.state_dict(), "rows": [{"a": 1.0}], "t": (1, torch.ones(1))}
    snap = snapshot(state)
    with torch.no_grad():
        gen.weight.add_(1.0)
    state["rows"][0]["a"] = 2.0
    assert not torch.equal(snap["w"]["weight"], gen.weight)
    assert snap["rows"][0]["a"] == 1.0 and hasattr(snap["w"], "_metadata")


def test_writer_keeps_order_and_reports_errors(tmp_path):
    done = []
    w = CheckpointWriter()
    for i in range(5):
        w.submit(done.append, i)
    w.wait()
    assert done == list(range(5))

    def boom():
        raise OSError("disk full")

    w.submit(boom)
    w.submit(done.append, 5)
    with pytest.raises(OSError, match="disk full"):
        w.wait()
    w.close()
    assert done[-1] == 5


def test_job_writes_are_drained_before_the_result(make_cfg, tmp_path):
    result = run(make_cfg(), tmp_path)
    assert result["status"] == "ok"
    ckpt = torch.load(tmp_path / records.LAST_CKPT, weights_only=False)
    assert ckpt["training"]["epoch"] == 2 and len(history(tmp_path)) == 2
    assert not list(tmp_path.glob(".*.tmp"))  # every atomic write finished


# --- the benchmark runs --------------------------------------------------------------------------
def test_benchmark_smoke_on_cpu(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "train_step.py"), "--device", "cpu",
         "--sizes", "tiny", "--variants", "1:agc", "--steps", "3", "--warmup", "2",
         "--repeats", "1", "--json", str(out)],
        capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "ours/bare" in proc.stdout
    import json

    res = json.loads(out.read_text())["results"][0]["impls"]
    assert res["ours"]["weights_rel_diff_vs_bare"] == 0.0  # same work, same numbers
    assert res["ours"]["steps_per_s"] > 0 and res["bare"]["ratio"] == 1.0


# === on a GPU ===================================================================================
def gpu_cfg(make_cfg, **kw):
    return make_cfg(**{"trainer.accelerator": "cuda", "trainer.tf32": False, **kw})


@pytest.fixture
def strict_fp32():
    """Module-level comparisons bypass the job, which sets TF32: turn it off here (cuDNN
    allows TF32 by default) so that eager and fast-path runs differ only by rounding."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("clip", [("norm", 0.5), ("agc", 0.01)])
def test_gpu_cuda_graphs_give_the_eager_losses(make_cfg, strict_fp32, clip):
    """4 epochs of 3 full batches + 1 remainder; exponential schedule: a re-capture per
    epoch."""
    cfg = gpu_cfg(make_cfg, **{"clip.algorithm": clip[0], "clip.value": clip[1],
                               "trainer.max_epochs": 4, "trainer.scheduler": "exponential"})
    eager = fit(make_module(cfg, "cuda"))
    graphed = fit(make_module(cfg, "cuda", cuda_graphs=True))
    g = graphed.graphed
    assert g.replays > 0 and g.captures >= 2, g.describe()
    np.testing.assert_allclose(losses(graphed), losses(eager), rtol=2e-4)


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("graphs", [False, True])
def test_gpu_steps_do_not_synchronise(make_cfg, monkeypatch, graphs):
    """torch.cuda.set_sync_debug_mode('error') inside every step, except the monitor's
    scheduled reads and the (one-off) capture."""
    cfg = gpu_cfg(make_cfg, **{"trainer.max_epochs": 3, "trainer.sync_every": 1000,
                               "clip.algorithm": "agc", "clip.value": 0.01})
    m = make_module(cfg, "cuda", cuda_graphs=graphs)
    real_step, real_poll = PtychoModule.training_step, StepMonitor.poll
    real_capture = GraphedStep._capture

    def relaxed(fn):
        def wrapped(*a, **k):
            mode = torch.cuda.get_sync_debug_mode()
            torch.cuda.set_sync_debug_mode(0)
            try:
                return fn(*a, **k)
            finally:
                torch.cuda.set_sync_debug_mode(mode)
        return wrapped

    def step(self, batch, batch_idx=0):
        if isinstance(batch, EpochRun):
            return real_step(self, batch, batch_idx)
        torch.cuda.set_sync_debug_mode("error")
        try:
            return real_step(self, batch, batch_idx)
        finally:
            torch.cuda.set_sync_debug_mode(0)

    monkeypatch.setattr(PtychoModule, "training_step", step)
    monkeypatch.setattr(StepMonitor, "poll", relaxed(real_poll))
    monkeypatch.setattr(GraphedStep, "_capture", relaxed(real_capture))
    fit(m)
    assert m.global_step_count == 12 and len(m.history) == 3
    if graphs:
        assert m.graphed.replays > 0


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("sync_every, stopped_at", [(1, 6), (4, 8), (50, 8)])
def test_gpu_graphs_nan_is_nonfinite_at_its_step(make_cfg, tmp_path, sync_every, stopped_at):
    cfg = gpu_cfg(make_cfg, **{"trainer.cuda_graphs": True, "trainer.max_epochs": 4,
                               "trainer.sync_every": sync_every,
                               "failure.test_inject_nan_step": 5})
    result = run(cfg, tmp_path)
    f = result["failure"]
    assert (result["status"], f["step"], f["epoch"]) == ("nonfinite", 5, 1)
    assert result["global_step"] == stopped_at


@pytest.mark.gpu
@cuda
def test_gpu_graphs_job_records_and_resumes(make_cfg, tmp_path):
    """The job on CUDA with graphs: tf32 and the fast path in the manifest; a run resumed from
    last.ckpt (optimizer state replaced -> re-capture) ends where an uninterrupted one does."""
    full_cfg = make_cfg(**{"trainer.accelerator": "cuda", "trainer.cuda_graphs": True,
                           "trainer.max_epochs": 4})
    full = run(full_cfg, tmp_path / "full")
    assert full["status"] == "ok", full["failure"]
    eff = records.read_json(tmp_path / "full" / records.MANIFEST).data["effective"]
    assert eff["tf32"]["requested"] is True and eff["tf32"]["applies"] is True
    assert eff["tf32"]["matmul"] is True and eff["cuda_graphs"] is True
    assert eff["optimizer"]["capturable"] is True and eff["data_on_device"]["train"] is True

    part = run(make_cfg(**{"trainer.accelerator": "cuda", "trainer.cuda_graphs": True,
                           "trainer.max_epochs": 2}), tmp_path / "part")
    assert part["status"] == "ok"
    (tmp_path / "part" / records.RESULT).unlink()  # else the rerun is skipped as finished
    resumed = run(full_cfg, tmp_path / "part")  # same dir, more epochs: resumes at epoch 2
    segments = records.read_json(tmp_path / "part" / records.MANIFEST).data["segments"]
    assert segments[-1]["resumed_from"]["epoch"] == 2
    assert resumed["status"] == "ok" and resumed["global_step"] == full["global_step"]
    a, b = history(tmp_path / "full"), history(tmp_path / "part")
    np.testing.assert_allclose([r["train_loss"] for r in b], [r["train_loss"] for r in a],
                               rtol=1e-3)


@pytest.mark.gpu
@cuda
def test_gpu_benchmark_smoke(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "train_step.py"), "--device", "cuda",
         "--sizes", "tiny", "--variants", "2:agc", "--steps", "20", "--warmup", "5",
         "--repeats", "1", "--impls", "bare,ours,graphs"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "graphs" in proc.stdout and "ERROR" not in proc.stdout, proc.stdout


# last: inductor compiles for a while (the GPU check's per-test time limit applies)
@pytest.mark.gpu
@cuda
def test_gpu_compile_gives_the_eager_losses(make_cfg, strict_fp32):
    cfg = gpu_cfg(make_cfg, **{"trainer.max_epochs": 2})
    eager = fit(make_module(cfg, "cuda"))
    compiled = fit(make_module(cfg, "cuda", compile=True))
    np.testing.assert_allclose(losses(compiled), losses(eager), rtol=2e-4)
