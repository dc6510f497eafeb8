"""Encoders, heads and build_model: parameter counts, shapes, hand-computed logits."""
import math

import pytest
import torch

from longtail.errors import ConfigError, DataError
from longtail.models import backbones
from longtail.models.factory import ENCODERS, LTModel, build_model
from longtail.models.heads import (HEADS, CosineHead, LinearHead, LWSHead, LWSPlusHead, NCMHead,
                                   TauNormHead)
from longtail.models.resnet_cifar import BasicBlockA, ResNetCifar, ShortcutA


def n_params(module):
    return sum(p.numel() for p in module.parameters())


# ---------------------------------------------------------------- CIFAR ResNets

@pytest.mark.parametrize("classes, expected", [(100, 470_004), (10, 464_154)])
def test_resnet32_parameter_count_matches_literature(classes, expected):
    # encoder 463,504 + 64·C + C (linear head with bias)
    assert n_params(build_model("resnet32", classes)) == expected


def test_other_depths_and_wide_variant_parameter_counts():
    assert n_params(build_model("resnet20", 10)) == 269_722  # Idelbayev's "0.27M"
    assert n_params(build_model("resnet110", 10)) == 1_727_962  # "1.7M"
    assert n_params(ENCODERS.get("resnet32x8")()) == 29_512_832  # IWB code's "ResNet-32"
    with pytest.raises(ConfigError, match="6n \\+ 2"):
        ResNetCifar(depth=33)


def test_resnet32_structure_and_shapes():
    net = ResNetCifar(32)
    assert [len(s) for s in (net.layer1, net.layer2, net.layer3)] == [5, 5, 5]
    assert net.conv1.weight.shape == (16, 3, 3, 3) and net.conv1.bias is None
    assert isinstance(net.layer2[0].shortcut, ShortcutA)
    assert isinstance(net.layer3[0].shortcut, ShortcutA)
    assert isinstance(net.layer1[0].shortcut, torch.nn.Identity)
    assert net.out_dim == 64
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 64)


def test_kaiming_normal_init():
    torch.manual_seed(0)
    weight = ResNetCifar(32).layer3[1].conv1.weight  # fan_in 64·9 = 576
    assert weight.mean().abs() < 0.002
    assert weight.std().item() == pytest.approx(math.sqrt(2 / 576), rel=0.03)


def test_one_channel_8x8_digits_input():
    net = ResNetCifar(in_channels=1)
    assert net(torch.randn(2, 1, 8, 8)).shape == (2, 64)


def test_option_a_shortcut_subsamples_and_zero_pads_channels():
    x = torch.arange(32.0).view(1, 2, 4, 4)
    out = ShortcutA(2, 4, stride=2)(x)
    expected = torch.tensor([[[0.0, 0.0], [0.0, 0.0]],
                             [[0.0, 2.0], [8.0, 10.0]],
                             [[16.0, 18.0], [24.0, 26.0]],
                             [[0.0, 0.0], [0.0, 0.0]]])
    assert torch.equal(out, expected[None])
    # the 16 -> 32 block of ResNet-32: 8 zero channels on each side, input channels in between
    y = ShortcutA(16, 32, 2)(torch.ones(1, 16, 4, 4))
    assert y.shape == (1, 32, 2, 2)
    assert y[:, :8].abs().sum() == 0 and y[:, 24:].abs().sum() == 0 and bool((y[:, 8:24] == 1).all())


def test_block_adds_shortcut_to_residual():
    block = BasicBlockA(2, 4, stride=2)
    torch.nn.init.zeros_(block.bn2.weight)  # residual branch -> 0 (bn2 bias is 0)
    x = torch.arange(32.0).view(1, 2, 4, 4)
    assert torch.equal(block(x), torch.relu(ShortcutA(2, 4, 2)(x)))
    assert n_params(ShortcutA(2, 4, 2)) == 0


# ---------------------------------------------------------------- torchvision backbones

def test_resnet10_forward_and_backbone_out_dims():
    net = backbones.resnet10()
    assert [len(getattr(net, f"layer{i}")) for i in (1, 2, 3, 4)] == [1, 1, 1, 1]
    assert net.out_dim == 512 and isinstance(net.fc, torch.nn.Identity)
    net.eval()
    assert net(torch.randn(2, 3, 64, 64)).shape == (2, 512)
    assert backbones.resnet50().out_dim == 2048
    assert backbones.resnext50_32x4d().out_dim == 2048
    assert backbones.resnet10(in_channels=1).conv1.in_channels == 1


def test_resnet34_cifar_stem():
    net = backbones.resnet34_cifar_stem()
    assert net.conv1.kernel_size == (3, 3) and net.conv1.stride == (1, 1)
    assert isinstance(net.maxpool, torch.nn.Identity) and net.out_dim == 512


# ---------------------------------------------------------------- heads

def base_head():
    """2 classes, 3-d: W = [[1, 0, 2], [0, -1, 1]], b = [0.5, 1]."""
    head = LinearHead(3, 2)
    with torch.no_grad():
        head.fc.weight.copy_(torch.tensor([[1.0, 0.0, 2.0], [0.0, -1.0, 1.0]]))
        head.fc.bias.copy_(torch.tensor([0.5, 1.0]))
    return head


X = torch.tensor([[1.0, 2.0, 3.0]])  # W x = [7, 1];  W x + b = [7.5, 2]


def test_linear_head():
    head = base_head()
    assert torch.allclose(head(X), torch.tensor([[7.5, 2.0]]))
    assert head.class_weight() is head.fc.weight


def test_lws_head_scales_logits_and_freezes_base():
    head = LWSHead(base_head())
    with torch.no_grad():
        head.scale.copy_(torch.tensor([2.0, 3.0]))
    assert torch.allclose(head(X), torch.tensor([[15.0, 6.0]]))
    assert [n for n, p in head.named_parameters() if p.requires_grad] == ["scale"]
    head(X).sum().backward()
    assert torch.allclose(head.scale.grad, torch.tensor([7.5, 2.0]))  # d/df of f·z = z
    assert torch.allclose(head.class_weight(), torch.tensor([[2.0, 0.0, 4.0], [0.0, -3.0, 3.0]]))


def test_lws_plus_head_adds_learnable_bias():
    head = LWSPlusHead(base_head())
    assert torch.allclose(head(X), torch.tensor([[7.5, 2.0]]))  # f = 1, g = 0 at init
    with torch.no_grad():
        head.scale.copy_(torch.tensor([2.0, 3.0]))
        head.logit_bias.copy_(torch.tensor([-1.0, 0.5]))
    assert torch.allclose(head(X), torch.tensor([[14.0, 6.5]]))
    trainable = sorted(n for n, p in head.named_parameters() if p.requires_grad)
    assert trainable == ["logit_bias", "scale"]


def test_tau_norm_head_drops_bias_and_sets_tau_in_place():
    head = TauNormHead(base_head())  # ‖w_0‖ = √5, ‖w_1‖ = √2
    assert torch.allclose(head(X), torch.tensor([[7 / math.sqrt(5), 1 / math.sqrt(2)]]))
    tau = head.tau
    head.set_tau(0.0)
    assert head.tau is tau
    assert torch.allclose(head(X), torch.tensor([[7.0, 1.0]]))
    head.set_tau(2.0)
    assert torch.allclose(head(X), torch.tensor([[1.4, 0.5]]))
    assert not any(p.requires_grad for p in head.parameters())


def test_wrapped_heads_need_a_linear_head():
    with pytest.raises(ConfigError, match="wraps a linear classifier"):
        LWSHead(CosineHead(3, 2))


def test_cosine_head():
    head = CosineHead(3, 2, scale=30.0)
    assert torch.allclose(head.weight.norm(dim=1), torch.ones(2))  # LDAM init: unit columns
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[3.0, 4.0, 0.0], [0.0, 0.0, 2.0]]))
    x = torch.tensor([[0.0, 3.0, 4.0]])  # cosines 0.48 and 0.8
    assert torch.allclose(head(x), torch.tensor([[14.4, 24.0]]))
    assert torch.allclose(head.class_weight().norm(dim=1), torch.full((2,), 30.0))


def test_ncm_head_from_features():
    features = torch.tensor([[1.0, 0.0], [3.0, 0.0], [0.0, 2.0]])
    labels = torch.tensor([0, 0, 1])  # means [2, 0] and [0, 2]
    x = torch.tensor([[2.0, 1.0]])
    cos = NCMHead.from_features(features, labels, 2)
    assert torch.allclose(cos.class_weight(), torch.tensor([[2.0, 0.0], [0.0, 2.0]]))
    assert torch.allclose(cos(x), torch.tensor([[2 / math.sqrt(5), 1 / math.sqrt(5)]]))
    euc = NCMHead.from_features(features, labels, 2, metric="euclidean")
    # on unit vectors: x̂ = (2, 1)/√5, μ̂ = (1, 0), (0, 1): ‖x̂ − μ̂‖² = 2 − 4/√5 and 2 − 2/√5
    assert torch.allclose(euc(x), -torch.tensor([[2 - 4 / math.sqrt(5), 2 - 2 / math.sqrt(5)]]).sqrt())
    with pytest.raises(DataError, match=r"empty classes \[2\]"):
        NCMHead.from_features(features, labels, 3)
    with pytest.raises(ConfigError, match="metric"):
        NCMHead(torch.zeros(2, 2), metric="l2")


def test_every_registered_head_builds_on_a_stage_one_head_and_gives_logits():
    """What a stage's ``head:`` asks for: each registered head, made from the stage-1 linear head
    (wrappers wrap it), has its classes and gives [B, C] logits; a wrapper starts from the wrapped
    head's weights."""
    from longtail.engine.stages import make_head

    torch.manual_seed(0)
    base, x = LinearHead(5, 3), torch.randn(4, 5)
    assert "linear" in HEADS and "lws" in HEADS
    for kind in HEADS:
        head = make_head(kind, base, {})
        assert head.num_classes == 3 and head(x).shape == (4, 3), kind
        if getattr(head, "base", None) is not None:
            assert head.base is base, kind
    with pytest.raises(KeyError, match="did you mean 'lws'"):
        HEADS.get("lsw")


# ---------------------------------------------------------------- build_model

def test_build_model_forward_features_and_channels_last():
    torch.manual_seed(0)
    model = build_model("resnet32", 10).eval()
    x = torch.randn(2, 3, 32, 32)
    logits = model(x)
    assert logits.shape == (2, 10) and model.features(x).shape == (2, 64)
    model_cl = model.to(memory_format=torch.channels_last)
    out_cl = model_cl(x.to(memory_format=torch.channels_last))
    assert torch.allclose(out_cl, logits, atol=1e-5, rtol=1e-5)


def test_build_model_heads_and_options():
    model = build_model("resnet20", 5, head="cosine", scale=30.0)
    assert isinstance(model.head, CosineHead) and model.head.scale == 30.0
    lws = build_model("resnet32", 5, head="lws")
    assert isinstance(lws.head, LWSHead) and not lws.head.base.fc.weight.requires_grad
    tau = build_model("resnet32", 5, head="tau_norm", tau=0.5)
    assert tau.head.tau.item() == 0.5
    ncm = build_model("identity", 4, head="ncm", in_dim=7, metric="euclidean")
    assert ncm.head.class_means.shape == (4, 7)


def test_identity_encoder_and_replace_head():
    model = build_model("identity", 3, in_dim=3)
    head = base_head()
    model.replace_head(LWSPlusHead(head))
    assert torch.allclose(model(X), torch.tensor([[7.5, 2.0]]))
    assert torch.equal(model.features(X), X)
    with pytest.raises(ConfigError, match="in_dim=3"):
        model.replace_head(LinearHead(4, 2))
    assert isinstance(model, LTModel)


def test_build_model_errors():
    with pytest.raises(KeyError, match="did you mean 'resnet32'"):
        build_model("resnt32", 10)
    with pytest.raises(ConfigError, match="needs in_dim"):
        build_model("identity", 10)
    with pytest.raises(ConfigError, match="needs in_dim"):
        build_model("resnet32", 10, in_dim=64)
    with pytest.raises(ConfigError, match="no pretrained weights"):
        build_model("resnet10", 10, pretrained=True)
    assert {"resnet32", "resnet20", "resnet44", "resnet56", "resnet110", "resnet32x8", "resnet10",
            "resnet50", "resnext50_32x4d", "identity"} <= set(ENCODERS.names())


def test_prior_bias_init_starts_every_sigmoid_at_one_over_C():
    head = LinearHead(8, 10, bias_init="prior")
    torch.testing.assert_close(torch.sigmoid(head.fc.bias), torch.full((10,), 0.1))
    model = build_model("resnet20", 10, head="linear", bias_init="prior")
    torch.testing.assert_close(model.head.fc.bias, torch.full((10,), -math.log(9)))
    with pytest.raises(ConfigError, match="bias_init"):
        LinearHead(8, 10, bias_init="zeros")
