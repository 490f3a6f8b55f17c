"""Every knob of cfg.arch / cfg.clip / cfg.trainer / cfg.failure reaches the code.

Each case changes one knob from the tiny config, builds the job (no training) and reads the
value back from the *built objects* (the manifest's ``effective`` block or the objects
themselves). Behaviour-level checks of the failure knobs, sync_every and the injections are in
test_job.py. A completeness test fails when a config field has no case here.
"""

import pytest
import torch

from ptychostab.models.layers import StablePtychoBlock
from ptychostab.runs import job as job_mod
from ptychostab.runs.signals import PreemptionGuard
from ptychostab.training.testing import TINY


def built(cfg, tmp_path):
    job = job_mod.Job(cfg, tmp_path / "run", {}, "knob", [], PreemptionGuard())
    job.run_dir.mkdir(parents=True, exist_ok=True)
    job.setup()
    return job


def eff(job):
    return job.effective


def gen_cfg(job):
    return eff(job)["generator"]["config"]


def spectral_weights(job):
    return [m.weight for m in job.module.generator.modules() if type(m).__name__ ==
            "SpectralConv2d"]


def sink_names(job):
    return [type(s).__name__ for s in job.rec.sinks]


def sched(job):
    return eff(job)["scheduler"]


def opt(job):
    return eff(job)["optimizer"]


# knob -> (extra overrides needed for it to apply, new value, check(job, value))
CASES = {
    "arch.name": ({}, "fno", lambda j, v: gen_cfg(j)["name"] == v
                  and eff(j)["generator"]["class"] == "CascadedFNO"),
    "arch.hidden_channels": ({}, 6, lambda j, v: eff(j)["generator"]["channels"][0] == v),
    "arch.n_modes": ({}, 3, lambda j, v: gen_cfg(j)["n_modes"] == v
                     and tuple(spectral_weights(j)[0].shape[-2:]) == (3, 3)),
    "arch.fno_blocks": ({}, 4, lambda j, v: sum(eff(j)["generator"]["blocks_per_level"]) == v),
    "arch.corners": ({}, 1, lambda j, v: spectral_weights(j)[0].dim() == 4),
    "arch.max_hidden_channels": ({}, 4, lambda j, v: eff(j)["generator"]["channels"] == [4, 4]),
    "arch.max_levels": ({}, 1, lambda j, v: eff(j)["generator"]["levels"] == 1),
    "arch.levels": ({}, 2, lambda j, v: gen_cfg(j)["levels"] == 2
                    and eff(j)["generator"]["levels"] == 2),
    "arch.gamma_init": ({"arch.name": "stable_hybrid"}, 0.5, lambda j, v: all(
        torch.all(m.norm.weight == v) for m in j.module.generator.modules()
        if isinstance(m, StablePtychoBlock))),
    "arch.layerscale_init": ({"arch.name": "layerscale_hybrid"}, 0.05, lambda j, v: all(
        torch.allclose(p, torch.full_like(p, v)) for n, p in
        j.module.generator.named_parameters() if n.endswith("layerscale.weight"))),
    "arch.fno_cnn_blocks": ({"arch.name": "fno"}, 3, lambda j, v: gen_cfg(j)["fno_cnn_blocks"]
                            == v and len(j.module.generator.refiner) > 2 * v),
    "clip.algorithm": ({"clip.value": 0.5}, "value",
                       lambda j, v: eff(j)["clip"]["algorithm"] == v),
    "clip.value": ({"clip.algorithm": "norm", "clip.value": 1.0}, 0.25,
                   lambda j, v: eff(j)["clip"]["value"] == v),
    "clip.agc_eps": ({"clip.algorithm": "agc", "clip.value": 0.01}, 0.02,
                     lambda j, v: eff(j)["clip"]["eps"] == v),
    "clip.agc_exclude": ({"clip.algorithm": "agc", "clip.value": 0.01}, ["head", "lifter"],
                         lambda j, v: eff(j)["clip"]["exclude"] == v and
                         "lifter.0.weight" in eff(j)["clip"]["excluded_params"]),
    "clip.agc_unitwise": ({"clip.algorithm": "agc", "clip.value": 0.01}, False,
                          lambda j, v: eff(j)["clip"]["unitwise"] is False
                          and eff(j)["clip"]["units"] == eff(j)["clip"]["clipped_params"]),
    "trainer.max_epochs": ({}, 7, lambda j, v: eff(j)["max_epochs"] == v
                           and j.trainer.max_epochs == v),
    "trainer.batch_size": ({}, 5, lambda j, v: eff(j)["batch_size"] == v
                           and eff(j)["steps_per_epoch"] == 10),
    "trainer.lr": ({}, 0.02, lambda j, v: opt(j)["lr"] == v),
    "trainer.optimizer": ({}, "sgd", lambda j, v: opt(j)["class"] == "SGD"),
    "trainer.weight_decay": ({}, 0.01, lambda j, v: opt(j)["weight_decay"] == v),
    "trainer.momentum": ({"trainer.optimizer": "sgd"}, 0.5,
                         lambda j, v: opt(j)["momentum"] == v),
    "trainer.betas": ({}, [0.8, 0.9], lambda j, v: opt(j)["betas"] == v),
    "trainer.scheduler": ({}, "exponential",
                          lambda j, v: sched(j)["class"] == "ExponentialLR"),
    "trainer.warmup_epochs": ({"trainer.scheduler": "cosine"}, 1,
                              lambda j, v: sched(j)["warmup_epochs"] == v
                              and opt(j)["lr"] == pytest.approx(0.1 * opt(j)["initial_lr"])),
    "trainer.lr_min_ratio": ({"trainer.scheduler": "cosine"}, 0.3,
                             lambda j, v: sched(j)["eta_min"] == pytest.approx(0.3e-3)),
    "trainer.plateau_factor": ({"trainer.scheduler": "plateau"}, 0.25,
                               lambda j, v: sched(j)["factor"] == v),
    "trainer.plateau_patience": ({"trainer.scheduler": "plateau"}, 5,
                                 lambda j, v: sched(j)["patience"] == v),
    "trainer.plateau_min_lr": ({"trainer.scheduler": "plateau"}, 1e-4,
                               lambda j, v: sched(j)["min_lr"] == v),
    "trainer.exp_gamma": ({"trainer.scheduler": "exponential"}, 0.7,
                          lambda j, v: sched(j)["gamma"] == v),
    "trainer.loss": ({}, "poisson", lambda j, v: eff(j)["loss"]["function"] == "poisson_loss"
                     and eff(j)["loss"]["val"] == "poisson_val_loss"),
    "trainer.accelerator": ({}, "auto", lambda j, v: eff(j)["device"] ==
                            ("cuda:0" if torch.cuda.is_available() else "cpu")),
    "trainer.tf32": ({}, False, lambda j, v: eff(j)["tf32"]["requested"] is False),
    "trainer.compile": ({}, True, lambda j, v: eff(j)["compile"] is True
                        and j.module.forward_fn is not j.module.generator),
    "trainer.cuda_graphs": ({}, True, "refused"),
    "trainer.sync_every": ({}, 3, lambda j, v: eff(j)["sync_every"] == v),
    "trainer.eval_batch_size": ({}, 4, lambda j, v: eff(j)["eval_batch_size"] == v),
    # run-only: how the run is watched (the recorder's sinks)
    "trainer.progress": ({}, "none", lambda j, v: "ProgressSink" not in sink_names(j)),
    "trainer.log_every_n_steps": ({"logger.csv": {"enabled": True}}, 100, lambda j, v:
                                  next(s for s in j.rec.sinks
                                       if type(s).__name__ == "TrackerSink").every == v),
    "trainer.max_data_on_device_gb": ({}, 0.0, lambda j, v:
                                      eff(j)["data_on_device"]["train"] is False),
    "failure.loss_factor": ({}, 3.0, lambda j, v: eff(j)["failure"]["loss_factor"] == v),
    "failure.grad_norm_bound": ({}, 7.0, lambda j, v: eff(j)["failure"]["grad_norm_bound"] == v),
    "failure.patience_steps": ({}, 9, lambda j, v: eff(j)["failure"]["patience_steps"] == v),
    "failure.collapse_rel_std": ({}, 0.2, lambda j, v:
                                 eff(j)["failure"]["collapse_rel_std"] == v),
    "failure.collapse_ssim": ({}, 0.4, lambda j, v: eff(j)["failure"]["collapse_ssim"] == v),
    "failure.test_inject_nan_step": ({}, 3, lambda j, v:
                                     j.module.monitor.settings.test_inject_nan_step == v),
    "failure.test_inject_exception_step": ({}, 3, lambda j, v:
                                           eff(j)["failure"]["test_inject_exception_step"] == v),
}


def test_every_config_knob_has_a_case():
    fields = {f"{group}.{key}" for group in ("arch", "clip", "trainer", "failure")
              for key in TINY[group]}
    assert fields == set(CASES)


@pytest.mark.parametrize("knob", sorted(CASES))
def test_knob_reaches_the_built_objects(knob, make_cfg, tmp_path):
    extra, value, check = CASES[knob]
    cfg = make_cfg(**{**extra, knob: value})
    if check == "refused":
        with pytest.raises(ValueError, match="cuda_graphs"):
            built(cfg, tmp_path)
        return
    baseline = built(make_cfg(**extra), tmp_path / "baseline")
    job = built(cfg, tmp_path)
    assert check(job, value), f"{knob}={value!r} did not reach the code: {job.effective}"
    if knob != "trainer.accelerator" or torch.cuda.is_available():
        # the same check must fail on the baseline, or it proves nothing
        assert not check(baseline, value), f"check for {knob} passes without the knob"


def test_every_arch_field_is_passed_to_build_generator(make_cfg, tmp_path, monkeypatch):
    import ptychostab.models as models

    seen = {}
    real = models.build_generator

    def spy(name, **kwargs):
        seen.update(kwargs, name=name)
        return real(name, **kwargs)

    monkeypatch.setattr(models, "build_generator", spy)
    built(make_cfg(), tmp_path)
    assert set(seen) == set(TINY["arch"]) | {"in_channels", "N"}
    assert seen["fno_blocks"] == TINY["depth"] and seen["in_channels"] == 1


def test_under_slurm_lightning_does_not_requeue(make_cfg, tmp_path, monkeypatch):
    """submitit owns requeueing: Lightning gets SLURMEnvironment(auto_requeue=False)."""
    from lightning.pytorch.plugins.environments import SLURMEnvironment

    for key, value in {"SLURM_NTASKS": "1", "SLURM_JOB_NAME": "train", "SLURM_JOB_ID": "123",
                       "SLURM_ARRAY_TASK_ID": "7"}.items():
        monkeypatch.setenv(key, value)
    job = built(make_cfg(), tmp_path)
    env = job.trainer._accelerator_connector.cluster_environment
    assert isinstance(env, SLURMEnvironment) and env.auto_requeue is False
    assert job.effective["lightning"]["slurm_plugin"] is True
    from ptychostab.runs import records

    manifest = records.read_json(job.run_dir / records.MANIFEST).data
    assert manifest["slurm"]["SLURM_JOB_ID"] == "123"
    assert manifest["slurm"]["SLURM_ARRAY_TASK_ID"] == "7"
