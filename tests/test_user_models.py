"""A user's own models: ``python -m longtail``, stage-2 heads on a bare nn.Linear (torchvision,
timm), every CIFAR ResNet depth, and timm encoders (``timm:<name>``)."""
import math
import subprocess
import sys

import pytest
import torch
from torch import nn
from torchvision.models import resnet18

import longtail.engine.runner as runner
from longtail.config import load_config
from longtail.errors import ConfigError
from longtail.losses import InverseWeightBalancingLoss
from longtail.models import backbones
from longtail.models.factory import ENCODERS, build_model
from longtail.models.heads import LinearHead, LWSHead, LWSPlusHead, TauNormHead, as_head
from longtail.models.resnet_cifar import CIFAR_DEPTHS, ResNetCifar
from tests.conftest import tiny_dataset

# ---------------------------------------------------------------- python -m longtail


def test_python_dash_m_longtail_prints_the_sub_commands():
    done = subprocess.run([sys.executable, "-m", "longtail", "--help"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert "usage: longtail" in done.stdout
    for command in ("train", "eval", "report", "data", "bench"):
        assert command in done.stdout


# ---------------------------------------------------------------- heads on a bare nn.Linear

W = torch.tensor([[1.0, 0.0, 2.0], [0.0, -1.0, 1.0]])
B = torch.tensor([0.5, 1.0])
X = torch.tensor([[1.0, 2.0, 3.0], [-1.0, 0.5, 2.0]])


def bare_linear():
    lin = nn.Linear(3, 2)
    with torch.no_grad():
        lin.weight.copy_(W)
        lin.bias.copy_(B)
    return lin


@pytest.mark.parametrize("cls", [LWSHead, LWSPlusHead, TauNormHead])
def test_stage2_heads_wrap_a_bare_linear_without_copying(cls):
    lin = bare_linear()
    head = cls(lin)
    assert head.base.fc is lin and head.base.fc.weight is lin.weight and head.base.fc.bias is lin.bias
    assert head.base.fc.weight.data_ptr() == lin.weight.data_ptr()
    assert (head.in_dim, head.num_classes) == (3, 2)
    assert not lin.weight.requires_grad  # frozen in place, as for a LinearHead base
    # the state-dict keys of a head built from sizes, so that checkpoints load either way
    assert set(head.state_dict()) == set(cls.build(3, 2).state_dict())
    with torch.no_grad():
        lin.weight.mul_(2)  # shared, not copied: the head sees the change
    assert torch.equal(head.base.class_weight(), 2 * W)


def test_lws_on_a_bare_linear_is_f_times_wx_plus_b():
    head = LWSHead(bare_linear())
    f = torch.tensor([2.0, 3.0])
    with torch.no_grad():
        head.scale.copy_(f)
    torch.testing.assert_close(head(X), f * (X @ W.T + B))
    torch.testing.assert_close(head.class_weight(), f[:, None] * W)


def test_lws_plus_on_a_bare_linear_adds_g_and_can_train_the_linear():
    lin = bare_linear()
    head = LWSPlusHead(lin, train_base=True)
    f, g = torch.tensor([2.0, 3.0]), torch.tensor([-1.0, 0.5])
    with torch.no_grad():
        head.scale.copy_(f)
        head.logit_bias.copy_(g)
    out = head(X)
    torch.testing.assert_close(out, f * (X @ W.T + B) + g)
    out.sum().backward()
    torch.testing.assert_close(lin.weight.grad, f[:, None] * X.sum(0))  # the user's own Parameter trains


def test_tau_norm_on_a_bare_linear_divides_by_the_norm_to_the_tau():
    head = TauNormHead(bare_linear(), tau=0.5)
    norms = W.norm(dim=1, keepdim=True)
    torch.testing.assert_close(head.class_weight(), W / norms.sqrt())
    torch.testing.assert_close(head(X), X @ (W / norms.sqrt()).T)  # bias dropped


def test_lws_wraps_a_torchvision_classifier_in_place():
    torch.manual_seed(0)
    net = resnet18(num_classes=5).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        before = net(x)
    fc = net.fc
    net.fc = LWSHead(fc)
    assert net.fc.base.fc.weight is fc.weight
    with torch.no_grad():
        torch.testing.assert_close(net(x), before)  # f = 1 at init
        net.fc.scale.copy_(torch.arange(1.0, 6.0))
        torch.testing.assert_close(net(x), before * torch.arange(1.0, 6.0))
    trainable = [n for n, p in net.named_parameters() if p.requires_grad]
    assert "fc.scale" in trainable and "fc.base.fc.weight" not in trainable


def test_replace_head_and_iwb_take_a_bare_linear():
    model = build_model("identity", 2, in_dim=3)
    lin = bare_linear()
    model.replace_head(lin)
    assert isinstance(model.head, LinearHead) and model.head.fc is lin
    torch.testing.assert_close(model(X), X @ W.T + B)
    counts = [30, 3]
    y = torch.tensor([0, 1])
    iwb = InverseWeightBalancingLoss(counts, head=lin, base="ce")
    reference = InverseWeightBalancingLoss(counts, head=LinearHead.wrap(bare_linear()), base="ce")
    torch.testing.assert_close(iwb(lin(X), y, features=X), reference(lin(X), y, features=X))


def test_as_head_names_what_it_takes():
    lin = bare_linear()
    assert as_head(lin).fc is lin
    head = LinearHead(3, 2)
    assert as_head(head) is head
    with pytest.raises(ConfigError, match="nn.Linear"):
        as_head(nn.Conv2d(3, 2, 1))
    with pytest.raises(ConfigError, match="wraps a linear classifier"):
        LWSHead(nn.Conv2d(3, 2, 1))


# ---------------------------------------------------------------- CIFAR ResNet depths


@pytest.mark.parametrize("depth", CIFAR_DEPTHS)
def test_every_cifar_depth_is_registered_with_6n_plus_2_layers(depth):
    model = build_model(f"resnet{depth}", 10)
    n = (depth - 2) // 6
    encoder = model.encoder
    assert [len(s) for s in (encoder.layer1, encoder.layer2, encoder.layer3)] == [n, n, n]
    convs = sum(isinstance(m, nn.Conv2d) for m in encoder.modules())
    assert convs + 1 == depth  # stem + 2 per block, plus the linear layer
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_resnet32_is_the_0_46m_network_and_bad_depths_say_so():
    params = sum(p.numel() for p in build_model("resnet32", 10).parameters())
    assert params == 464_154 and round(params / 1e6, 2) == 0.46
    assert {f"resnet{d}" for d in (8, 14, 20, 32, 44, 56, 110)} <= set(ENCODERS.names())
    with pytest.raises(ConfigError, match=r"6n \+ 2 .*8, 14, 20, 32, 44, 56, 110\); got 33"):
        ResNetCifar(depth=33)
    with pytest.raises(KeyError, match="unknown encoder 'resnet33'"):
        build_model("resnet33", 10)


# ---------------------------------------------------------------- timm encoders


@pytest.fixture
def timm():
    return pytest.importorskip("timm")


@pytest.mark.parametrize("head", ["linear", "cosine", "lws", "lws_plus", "tau_norm"])
def test_timm_encoder_under_every_head(timm, head):
    torch.manual_seed(0)
    model = build_model("timm:resnet10t", 7, head=head).eval()
    assert model.encoder.out_dim == 512 == model.head.in_dim
    with torch.no_grad():
        assert model(torch.randn(4, 3, 32, 32)).shape == (4, 7)


def test_timm_out_dim_is_the_pooled_feature_width(timm):
    # MobileNetV3 pools 288 channels (num_features) then widens them to 1024 before the classifier
    model = build_model("timm:mobilenetv3_small_050", 3, in_channels=1).eval()
    with torch.no_grad():
        assert model.features(torch.randn(2, 1, 32, 32)).shape == (2, model.encoder.out_dim)
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 3)


def test_timm_errors_name_the_fix(timm, monkeypatch):
    with pytest.raises(ConfigError, match="timm has no model 'resnet10x'.*did you mean"):
        build_model("timm:resnet10x", 10)
    seen = {}

    def offline(name, **options):
        seen.update(options)
        raise OSError("cannot reach the Hub and the files are not in the local cache")

    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(ConfigError, match="network access.*pretrained=False"):
        build_model("timm:resnet10t", 10, pretrained=True)
    assert seen["pretrained"] is True and seen["num_classes"] == 0


def test_timm_missing_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm -> ImportError
    with pytest.raises(ConfigError, match=r"pip install 'longtail\[timm\]'"):
        backbones.timm_encoder("resnet10t")


def test_a_timm_encoder_trains_both_stages_of_a_run(timm, tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "load_dataset", tiny_dataset)
    config = load_config(mapping={"method": "lws", "name": "lws"}, overrides=[
        f"output_dir={tmp_path}", "engine.progress=false", "model.encoder=timm:resnet10t",
        "stages.0.epochs=1", "stages.0.batch_size=16", "stages.0.schedule.milestones=[]",
        "stages.0.schedule.warmup_epochs=0", "stages.1.epochs=1", "stages.1.batch_size=16",
    ])
    assert config.model.encoder == "timm:resnet10t"
    results = runner.run_config(config)
    assert len(results["weight_norms"]) == 4 and math.isfinite(results["test"]["top1"])
    after = torch.load(tmp_path / "lws" / "seed0" / "stage1_lws.pt")["model"]
    assert "head.scale" in after and any(k.startswith("encoder.") for k in after)  # LWS on the timm encoder
