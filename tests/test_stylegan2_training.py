"""StyleGAN2 training: the discriminator (NVlabs parity, minibatch-stddev groups), the losses against their
definitions, the EMA and lazy-regularisation arithmetic, and a real `facelab-train experiment=...` fit
that is preempted, resumed to the same weights, and exported to a generator `load_generator` reads."""

from __future__ import annotations

import math

import pytest
import torch

from facelab.cli.convert import convert_main
from facelab.cli.train import run_train
from facelab.cluster import hpc_checkpoints
from facelab.losses.stylegan2 import (
    discriminator_logistic_loss,
    generator_logistic_loss,
    path_length_penalty,
    r1_penalty,
)
from facelab.nets.stylegan2_checkpoints import load_generator, nvlabs_to_rosinality
from facelab.nets.stylegan2_discriminator import Discriminator, MinibatchStdLayer
from lightning_modules.stylegan2_training import (
    StyleGAN2Training,
    ema_beta,
    export_generator,
    lazy_adam_settings,
    update_ema,
)
from tests.conftest import compose_config
from tests.test_stylegan2_parity import assert_close, nvlabs, randomise_inert_values  # noqa: F401 (fixture)

TINY_GENERATOR = dict(z_dim=8, w_dim=16, img_resolution=32, mapping_layers=2, channel_base=128,
                      channel_max=16)


# ----------------------------------------------------------------------------- discriminator


@pytest.mark.parametrize("conv_clamp", [None, 0.5])
def test_discriminator_matches_nvlabs(nvlabs, conv_clamp):  # noqa: F811 (the fixture)
    torch.manual_seed(0)
    reference = nvlabs.Discriminator(c_dim=0, img_resolution=32, img_channels=3, channel_base=256,
                                     channel_max=32, num_fp16_res=0, conv_clamp=conv_clamp,
                                     epilogue_kwargs=dict(mbstd_group_size=2)).eval()
    randomise_inert_values(reference, seed=1)
    ours = Discriminator(img_resolution=32, channel_base=256, channel_max=32, mbstd_group_size=2,
                         conv_clamp=conv_clamp)
    ours.load_state_dict(reference.state_dict(), strict=True)  # NVlabs parameter names, one for one
    images = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert_close(ours(images), reference(images, None), f"D logits, conv_clamp={conv_clamp}")
    # R1 differentiates D with respect to its input: the gradients must agree too.
    grads = []
    for network in (ours, reference):
        x = images.clone().requires_grad_(True)
        logits = network(x) if network is ours else network(x, None)
        grads.append(torch.autograd.grad(logits.sum(), x)[0])
    scale = grads[1].abs().max()
    assert_close(grads[0] / scale, grads[1] / scale, "d logits / d image (relative)")


def test_discriminator_output_shape_and_minibatch_stddev_groups():
    d = Discriminator(img_resolution=16, channel_base=64, channel_max=8, mbstd_group_size=2)
    assert d(torch.randn(6, 3, 16, 16)).shape == (6, 1)
    assert [name for name in ("b16", "b8", "b4") if hasattr(d, name)] == ["b16", "b8", "b4"]

    layer = MinibatchStdLayer(group_size=2)
    x = torch.randn(4, 3, 2, 2, generator=torch.Generator().manual_seed(0))
    out = layer(x)
    assert out.shape == (4, 4, 2, 2) and torch.equal(out[:, :3], x)
    # NVlabs groups sample i with sample i + N/G: here {0, 2} and {1, 3}.
    for members in ((0, 2), (1, 3)):
        group = x[list(members)]
        by_hand = ((group - group.mean(0)).square().mean(0) + 1e-8).sqrt().mean()
        for i in members:
            assert torch.allclose(out[i, 3], by_hand.expand(2, 2), atol=1e-6)
    changed = x.clone()
    changed[1] += 5  # only the other group's statistic may move
    assert torch.equal(layer(changed)[0, 3], out[0, 3]) and not torch.equal(layer(changed)[3, 3], out[3, 3])
    with pytest.raises(ValueError, match="mbstd_group_size"):
        MinibatchStdLayer(group_size=4)(torch.randn(6, 3, 2, 2))


# ----------------------------------------------------------------------------- losses


def test_logistic_losses_are_the_non_saturating_gan_loss():
    real, fake = torch.tensor([[0.5], [-2.0], [3.0]]), torch.tensor([[1.0], [-0.3], [0.0]])
    g_loss, _ = generator_logistic_loss(fake)
    assert torch.allclose(g_loss, -torch.log(torch.sigmoid(fake)).mean())
    d_loss, parts = discriminator_logistic_loss(real, fake)
    by_hand = -torch.log(torch.sigmoid(real)).mean() - torch.log(1 - torch.sigmoid(fake)).mean()
    assert torch.allclose(d_loss, by_hand) and torch.allclose(parts["d_real_logit"], real.mean())


def test_r1_equals_the_gradient_penalty_by_hand():
    # D(x) = sum(w * x^2) per image, so dD/dx = 2 w x and R1 = gamma/2 * mean_i sum (2 w x_i)^2.
    w = torch.randn(1, 2, 3, 3).requires_grad_(True)
    x = torch.randn(4, 2, 3, 3).requires_grad_(True)
    logits = (w * x.square()).sum(dim=[1, 2, 3]).unsqueeze(1)  # [B, 1]
    gamma = 0.7
    total, parts = r1_penalty(logits, x, gamma)
    per_image = (2 * w * x).square().sum(dim=[1, 2, 3])
    assert torch.allclose(total, gamma / 2 * per_image.mean()) and torch.allclose(parts["d_r1_penalty"],
                                                                                per_image.mean())
    total.backward()  # D trains on the penalty: d/dw of gamma/2 mean_i sum 4 w^2 x_i^2
    assert torch.allclose(w.grad, gamma / 2 * (8 * w * x.square()).mean(0, keepdim=True), atol=1e-6)


def test_path_length_penalty_by_hand():
    # A linear G: image = ws @ M, reshaped, so J^T y has a closed form.
    batch, num_ws, w_dim, size = 3, 4, 5, 2
    matrix = torch.randn(num_ws * w_dim, 3 * size * size)
    ws = torch.randn(batch, num_ws, w_dim).requires_grad_(True)
    images = (ws.flatten(1) @ matrix).reshape(batch, 3, size, size)
    noise = torch.randn(batch, 3, size, size)
    pl_mean = torch.tensor(0.4)
    total, parts = path_length_penalty(images, ws, pl_mean, weight=2.0, decay=0.01, noise=noise)
    jt_y = ((noise / math.sqrt(size * size)).flatten(1) @ matrix.T).reshape(batch, num_ws, w_dim)
    lengths = jt_y.square().sum(2).mean(1).sqrt()
    new_mean = 0.4 + 0.01 * (lengths.mean() - 0.4)
    assert torch.allclose(pl_mean, new_mean) and torch.allclose(parts["g_pl_mean"], new_mean)
    assert torch.allclose(total, 2.0 * (lengths - new_mean).square().mean())


# ----------------------------------------------------------------------------- EMA and lazy regularisation


def test_ema_beta_and_update_follow_the_training_loop_formula():
    assert ema_beta(16, 10**6, 10.0, None) == pytest.approx(0.5 ** (16 / 10_000))
    assert ema_beta(16, 1000, 10.0, 0.05) == pytest.approx(0.5 ** (16 / 50))  # ramp-up caps the half-life
    assert ema_beta(16, 10**6, 10.0, 0.05) == pytest.approx(0.5 ** (16 / 10_000))
    model, ema = torch.nn.BatchNorm1d(3), torch.nn.BatchNorm1d(3)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([1.0, 2.0, 3.0]))
        model.running_mean.copy_(torch.tensor([7.0, 8.0, 9.0]))
        ema.weight.copy_(torch.tensor([3.0, 3.0, 3.0]))
    update_ema(ema, model, beta=0.9)
    assert torch.allclose(ema.weight, 0.9 * torch.tensor([3.0] * 3) + 0.1 * torch.tensor([1.0, 2.0, 3.0]))
    assert torch.equal(ema.running_mean, model.running_mean), "buffers (w_avg) are copied, not averaged"


def test_lazy_regularisation_corrects_adam():
    lr, betas = lazy_adam_settings(0.002, (0.0, 0.99), 16)
    assert lr == pytest.approx(0.002 * 16 / 17) and betas == pytest.approx((0.0, 0.99 ** (16 / 17)))
    assert lazy_adam_settings(0.002, (0.0, 0.99), None) == (0.002, (0.0, 0.99))
    module = StyleGAN2Training(generator=TINY_GENERATOR, discriminator=dict(channel_base=128, channel_max=16))
    g_opt, d_opt = module.configure_optimizers()
    assert g_opt.defaults["lr"] == pytest.approx(0.002 * 4 / 5)
    assert d_opt.defaults["betas"] == pytest.approx((0.0, 0.99 ** (16 / 17)))


# ----------------------------------------------------------------------------- the real entry point

FIT = [
    "experiment=stylegan2_synthetic64",
    "data.faces.size=32", "data.faces.train_length=8", "data.faces.val_length=4",
    "data.batch_size=4", "data.eval_batch_size=4",
    *[f"model.generator.{k}={v}" for k, v in TINY_GENERATOR.items() if k != "img_resolution"],
    "model.discriminator.channel_base=128", "model.discriminator.channel_max=16",
    "model.optim.g_reg_interval=2", "model.optim.d_reg_interval=2",  # lazy phases on batch 0, not 1
    "model.sample_seeds=[0,1,2,3]",
    "trainer.max_epochs=1", "+trainer.num_sanity_val_steps=0", "trainer.enable_progress_bar=false",
    # validate and checkpoint per epoch (the experiments do it every N steps of their long splits)
    "trainer.val_check_interval=null", "callbacks.model_checkpoint.every_n_train_steps=null",
    "callbacks.model_checkpoint.every_n_epochs=1",
    "~callbacks.rich_progress_bar", "~callbacks.model_summary", "logger=csv", "extras.print_config=false",
]


def _checkpoint(path):
    return torch.load(path, map_location="cpu", weights_only=False)


@pytest.mark.slow
def test_fit_preempted_and_resumed_equals_uninterrupted_and_exports_a_loadable_generator(tmp_path):
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    run_train(compose_config("train", straight, FIT))
    signal = ["+callbacks.signal._target_=tests.signal_helpers.SendSignalAt", "+callbacks.signal.epoch=0",
              "+callbacks.signal.batch=0"]
    assert run_train(compose_config("train", interrupted, [*FIT, *signal])) is None
    (saved,) = hpc_checkpoints(interrupted)
    assert _checkpoint(saved)["global_step"] == 4, "batch 0 runs Gmain, Greg, Dmain, Dreg"
    run_train(compose_config("train", interrupted, [*FIT, "ckpt_path=last"]))

    expected = _checkpoint(straight / "checkpoints" / "last.ckpt")
    got = _checkpoint(interrupted / "checkpoints" / "last.ckpt")
    assert got["global_step"] == expected["global_step"] == 4 + 2  # batch 1 has no regularisation
    assert {k for k in expected["state_dict"] if k.split(".")[0] in ("generator", "discriminator",
            "generator_ema")} and int(expected["state_dict"]["images_seen"]) == 8
    for key, value in expected["state_dict"].items():
        assert torch.equal(got["state_dict"][key], value), f"{key} differs after the mid-epoch resume"
    for mine, theirs in zip(got["optimizer_states"], expected["optimizer_states"], strict=True):
        for index, state in theirs["state"].items():
            assert torch.equal(mine["state"][index]["exp_avg_sq"], state["exp_avg_sq"]), "Adam state differs"
    w_avg = expected["state_dict"]["generator_ema.mapping.w_avg"]
    assert w_avg.abs().sum() > 0, "training tracks w_avg (truncation, Barbershop and DragGAN start there)"
    assert sorted(p.name for p in (straight / "samples").glob("seeds_step*.png")) == ["seeds_step0000006.png"]

    # The exported G_ema gives the module's G_ema images, through every reader.
    module = StyleGAN2Training.load_from_checkpoint(straight / "checkpoints" / "last.ckpt")
    z = torch.randn(3, TINY_GENERATOR["z_dim"], generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        reference = module.generator_ema(z, truncation_psi=0.7)
    assert reference.abs().max() > 0.01
    exported = load_generator(straight / "generator.pt")
    assert torch.equal(exported(z, truncation_psi=0.7), reference)
    export_generator(straight / "checkpoints" / "last.ckpt", tmp_path / "from_ckpt.pt")
    assert convert_main([str(tmp_path / "from_ckpt.pt"), str(tmp_path / "converted.pt")]) == 0
    assert torch.equal(load_generator(tmp_path / "converted.pt")(z, truncation_psi=0.7), reference)
    torch.save(nvlabs_to_rosinality(exported.state_dict()), tmp_path / "rosinality.pt")
    rosinality = load_generator(tmp_path / "rosinality.pt")
    assert (rosinality(z, truncation_psi=0.7) - reference).abs().max() < 1e-5


def test_export_names_a_foreign_or_missing_checkpoint(tmp_path):
    bogus = tmp_path / "other.ckpt"
    torch.save({"state_dict": {"net.weight": torch.zeros(1)}, "hyper_parameters": {}}, bogus)
    with pytest.raises(ValueError, match="other.ckpt.*not a StyleGAN2Training"):
        export_generator(bogus, tmp_path / "g.pt")
    with pytest.raises(FileNotFoundError, match="missing.ckpt"):
        export_generator(tmp_path / "missing.ckpt", tmp_path / "g.pt")


def test_experiments_compose_with_the_official_defaults(tmp_path):
    for name, expected_size in (("stylegan2_synthetic64", 64), ("stylegan2_synthetic128", 128)):
        small = compose_config("train", tmp_path / name, [f"experiment={name}"])
        size, batch = small.data.faces.size, small.data.batch_size
        # stylegan2-ada-pytorch --cfg=auto at this resolution and batch (train.py:166-175)
        assert small.model.loss.r1_gamma == pytest.approx(0.0002 * size**2 / batch)
        assert small.model.ema.half_life_kimg == pytest.approx(batch * 10 / 32)
        assert small.model.ema.rampup == 0.05 and small.model.optim.lr == 0.0025
        assert batch % small.model.discriminator.mbstd_group_size == 0
        assert small.model.generator.img_resolution == size == expected_size
        assert "image_grid" not in small.callbacks and "preemption" in small.callbacks
    paper = compose_config("train", tmp_path / "paper", ["experiment=stylegan2_paper256"])
    # cfg_specs['paper256']: gamma=1, ema=20, mb=64
    assert (paper.model.loss.r1_gamma, paper.model.ema.half_life_kimg, paper.data.batch_size) == (1, 20, 64)
    assert paper.model.generator.channel_base == 16384 and paper.model.loss.pl_weight == 2.0
    module = StyleGAN2Training(**{k: v for k, v in small.model.items() if k != "_target_"})
    assert module.discriminator.img_resolution == 128 and module.generator.z_dim == 128
