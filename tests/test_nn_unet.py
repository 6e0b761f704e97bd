"""SongUNet family: shapes, determinism, gradients, presets, and layer-level checks against
independent implementations (torch.nn.GroupNorm, explicit convolutions, naive attention)."""

from __future__ import annotations

import math

import pytest
import torch
from _nets import TINY_UNET as TINY, rand as _rand, randomise as _randomise
import torch.nn.functional as F

from xkmcast.errors import InvalidDataError
from xkmcast.nn import (
    SongUNet,
    SongUNetPosEmbd,
    SongUNetPosLtEmbd,
    RegressionUNet,
    StormCastUNet,
    match_physicsnemo_eval,
    regression_unet,
    songunet_preset,
)
from xkmcast.nn.layers import Conv2d, GroupNorm, PositionalEmbedding
from xkmcast.nn.unet_blocks import UNetAttention, UNetBlock
from xkmcast.nn.unet_posembd import positional_grid



@pytest.mark.parametrize("encoder_type", ["standard", "skip", "residual"])
@pytest.mark.parametrize("decoder_type", ["standard", "skip"])
def test_shapes_rectangular(encoder_type, decoder_type):
    net = SongUNet([8, 16], 3, 2, encoder_type=encoder_type, decoder_type=decoder_type, **TINY).eval()
    out = net(_rand(2, 3, 8, 16), _rand(2))
    assert out.shape == (2, 2, 8, 16)
    assert torch.isfinite(out).all()


def test_deterministic_in_eval_and_rebuild_from_config():
    net = _randomise(SongUNet(8, 3, 2, embedding_type="fourier", label_dim=2, **TINY)).eval()
    x, noise, labels = _rand(2, 3, 8, 8), _rand(2, seed=1), _rand(2, 2, seed=2)
    first = net(x, noise, labels)
    assert torch.equal(first, net(x, noise, labels))
    twin = type(net)(**net.config)
    twin.load_state_dict(net.state_dict())
    assert torch.equal(first, twin.eval()(x, noise, labels))


def test_deepcopy_and_pickle_keep_weights_and_config():
    import copy
    import pickle

    net = _randomise(SongUNetPosEmbd(8, 7, 2, gridtype="learnable", **TINY)).eval()
    x, noise = _rand(1, 3, 8, 8), _rand(1)
    for twin in (copy.deepcopy(net), pickle.loads(pickle.dumps(net))):
        assert twin.config == net.config
        assert torch.equal(twin(x, noise), net(x, noise))


def test_noise_and_class_labels_change_the_output():
    net = _randomise(SongUNet(8, 3, 2, label_dim=2, **TINY)).eval()
    x = _rand(1, 3, 8, 8)
    base = net(x, torch.tensor([0.1]), torch.zeros(1, 2))
    assert not torch.allclose(base, net(x, torch.tensor([0.9]), torch.zeros(1, 2)))
    assert not torch.allclose(base, net(x, torch.tensor([0.1]), torch.ones(1, 2)))


def test_zero_embedding_ignores_noise_labels():
    net = _randomise(SongUNet(8, 3, 2, embedding_type="zero", **TINY)).eval()
    x = _rand(1, 3, 8, 8)
    assert torch.equal(net(x, torch.tensor([0.0])), net(x, torch.tensor([5.0])))


def test_gradients_reach_every_parameter():
    net = SongUNetPosLtEmbd(8, 3 + 4 + 2, 2, lead_time_channels=2, lead_time_steps=3, gridtype="learnable",
                            label_dim=1, **TINY).train()  # fmt: skip
    out = net(_rand(2, 3, 8, 8), _rand(2), _rand(2, 1), lead_time_label=torch.tensor([0, 2]))
    out.square().mean().backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        if not name.startswith("lt_embd"):  # only the chosen lead-time maps receive gradient
            assert p.grad.abs().sum() > 0, name
    assert net.lt_embd.grad[1].abs().sum() == 0 and net.lt_embd.grad[2].abs().sum() > 0


def test_gradient_checkpointing_changes_nothing():
    plain = _randomise(SongUNet(16, 3, 2, **TINY)).train()
    ckpt = SongUNet(16, 3, 2, checkpoint_level=2, **TINY).train()
    ckpt.load_state_dict(plain.state_dict())
    x, noise = _rand(2, 3, 16, 16), _rand(2)
    a, b = plain(x, noise), ckpt(x, noise)
    torch.testing.assert_close(a, b)
    a.sum().backward()
    b.sum().backward()
    torch.testing.assert_close(plain.enc["16x16_conv"].weight.grad, ckpt.enc["16x16_conv"].weight.grad)


def test_channels_last_input_gives_the_same_result():
    net = _randomise(SongUNet(8, 3, 2, **TINY)).eval()
    x, noise = _rand(2, 3, 8, 8), _rand(2)
    ref = net(x, noise)
    cl = net.to(memory_format=torch.channels_last)(x.contiguous(memory_format=torch.channels_last), noise)
    torch.testing.assert_close(ref, cl, rtol=1e-5, atol=1e-5)


def test_bad_inputs_are_refused():
    net = SongUNet(8, 3, 2, **TINY)
    with pytest.raises(InvalidDataError):
        net(_rand(3, 8, 8), _rand(1))
    with pytest.raises(InvalidDataError):
        net(_rand(2, 3, 8, 8), _rand(3))
    with pytest.raises(ValueError):
        SongUNet(8, 3, 2, embedding_type="learned")


def test_presets():
    mini = songunet_preset("mini")
    assert mini == {"model_channels": 64, "channel_mult": [1, 2, 2], "attn_resolutions": [16], "num_blocks": 4}
    normal = songunet_preset("normal", num_blocks=2)
    assert normal["channel_mult"] == [1, 2, 2, 2, 2] and normal["attn_resolutions"] == [28] and normal["num_blocks"] == 2
    mini["channel_mult"].append(4)  # presets hand out copies
    assert songunet_preset("mini")["channel_mult"] == [1, 2, 2]
    with pytest.raises(ValueError, match="mini"):
        songunet_preset("huge")


def test_regression_variants():
    net = regression_unet(8, 3, 2, preset=None, **TINY)
    assert isinstance(net, SongUNetPosEmbd) and net.embedding_type == "zero" and net.config["in_channels"] == 7
    assert net(_rand(1, 3, 8, 8), torch.zeros(1)).shape == (1, 2, 8, 8)
    wrapped = _randomise(RegressionUNet(8, img_in_channels=3 + 4, img_out_channels=2, embedding_type="zero", **TINY)).eval()
    x, lr = _rand(1, 2, 8, 8), _rand(1, 3, 8, 8, seed=1)
    direct = wrapped.model(torch.cat([x, lr], 1), torch.zeros(1))
    torch.testing.assert_close(wrapped(x, lr), direct)
    storm = StormCastUNet(8, img_in_channels=5, img_out_channels=2, embedding_type="zero", **TINY)
    assert storm(_rand(1, 5, 8, 8)).shape == (1, 2, 8, 8)
    assert all(k.startswith("model.") for k in storm.state_dict())


# -- positional grids and lead-time maps ----------------------------------------------------------
def test_sinusoidal_grid_formula():
    grid = positional_grid("sinusoidal", 4, 5, 9)
    u = torch.linspace(0, 2 * math.pi, 9, dtype=torch.float64)
    v = torch.linspace(0, 2 * math.pi, 5, dtype=torch.float64)
    torch.testing.assert_close(grid[0], u.sin().expand(5, 9).float())
    torch.testing.assert_close(grid[1], v.sin()[:, None].expand(5, 9).float())
    torch.testing.assert_close(grid[3], v.cos()[:, None].expand(5, 9).float())
    octave = positional_grid("sinusoidal_octave", 8, 5, 9)
    torch.testing.assert_close(octave[4], (2 * u).sin().expand(5, 9).float())


def test_global_index_gathers_the_patch_of_the_grid():
    net = SongUNetPosLtEmbd([8, 12], 3 + 6 + 2, 2, gridtype="learnable", N_grid_channels=6, lead_time_channels=2,
                            lead_time_steps=3, **TINY)  # fmt: skip
    rows, cols = torch.meshgrid(torch.arange(4), torch.arange(4), indexing="ij")
    index = torch.stack([torch.stack([rows, cols]), torch.stack([rows + 4, cols + 8])])  # 2 patches
    lead = torch.tensor([2, 0])  # 2 samples -> batch of 4 (sample-major)
    emb = net.positional_embedding_indexing(torch.zeros(4, 3, 4, 4), index, lead)
    with torch.no_grad():
        for b, (sample, patch) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1)]):
            r0, c0 = (0, 0) if patch == 0 else (4, 8)
            torch.testing.assert_close(emb[b, :6], net.pos_embd[:, r0 : r0 + 4, c0 : c0 + 4])
            torch.testing.assert_close(emb[b, 6:], net.lt_embd[lead[sample], :, r0 : r0 + 4, c0 : c0 + 4])


def test_lead_time_label_is_required():
    net = SongUNetPosLtEmbd(8, 3 + 4 + 2, 2, lead_time_channels=2, **TINY)
    with pytest.raises(InvalidDataError):
        net(_rand(1, 3, 8, 8), _rand(1))
    with pytest.raises(ValueError):
        SongUNetPosEmbd(8, 9, 2, lead_time_channels=2, **TINY)


def test_prob_channels_softmax_in_eval():
    net = _randomise(SongUNetPosLtEmbd(8, 3 + 4 + 2, 4, lead_time_channels=2, prob_channels=[1, 3], **TINY)).eval()
    out = net(_rand(2, 3, 8, 8), _rand(2), lead_time_label=torch.tensor([0, 1]))
    torch.testing.assert_close(out[:, [1, 3]].sum(1), torch.ones(2, 8, 8))


# -- layers against independent implementations ---------------------------------------------------
def test_groupnorm_matches_torch_and_the_unbiased_variant():
    x = _rand(2, 16, 5, 5)
    ours = GroupNorm(16, eps=1e-6)
    ref = torch.nn.GroupNorm(4, 16, eps=1e-6)  # min 4 channels per group -> 4 groups
    torch.testing.assert_close(ours(x), ref(x))
    match_physicsnemo_eval(ours.eval())
    g = x.reshape(2, 4, -1).double()
    expected = ((g - g.mean(-1, keepdim=True)) / (g.var(-1, keepdim=True, unbiased=True) + 1e-6).sqrt()).reshape(x.shape)
    torch.testing.assert_close(ours(x), expected.float())
    assert torch.equal(ours.train()(x), ref(x))  # training always uses the biased variance


def test_resampling_shortcuts_equal_the_filter_convolutions():
    x = _rand(2, 3, 8, 8)
    down = Conv2d(3, 3, kernel=0, down=True)
    box = torch.full((3, 1, 2, 2), 0.25)
    torch.testing.assert_close(down(x), F.conv2d(x, box, groups=3, stride=2))
    up = Conv2d(3, 3, kernel=0, up=True)
    torch.testing.assert_close(up(x), F.conv_transpose2d(x, 4 * box, groups=3, stride=2))
    up1 = Conv2d(3, 5, kernel=1, up=True)
    expected = F.conv2d(F.conv_transpose2d(x, 4 * box, groups=3, stride=2), up1.weight, up1.bias)
    torch.testing.assert_close(up1(x), expected)
    up3 = Conv2d(3, 5, kernel=3, up=True, init_bias=1.0)  # computed polyphase at low resolution
    expected = F.conv2d(F.conv_transpose2d(x, 4 * box, groups=3, stride=2), up3.weight, up3.bias, padding=1)
    torch.testing.assert_close(up3(x), expected)
    binomial = Conv2d(3, 3, kernel=0, down=True, resample_filter=[1, 3, 3, 1])
    f = torch.tensor([1.0, 3, 3, 1])
    kernel = (torch.outer(f, f) / 64).expand(3, 1, 4, 4)
    torch.testing.assert_close(binomial(x), F.conv2d(x, kernel, groups=3, stride=2, padding=1))


def test_unet_attention_equals_naive_attention():
    attn = _randomise(UNetAttention(8, num_heads=2))
    x = _rand(2, 8, 3, 4)
    h = attn.norm(x).reshape(2, 8, 12)
    qkv = torch.einsum("oc,bcl->bol", attn.qkv.weight[:, :, 0, 0], h) + attn.qkv.bias[None, :, None]
    qkv = qkv.reshape(2, 2, 4, 3, 12)  # (B, head, d, q/k/v, L): the published layout
    q, k, v = qkv[:, :, :, 0], qkv[:, :, :, 1], qkv[:, :, :, 2]
    w = torch.softmax(torch.einsum("bhdq,bhdk->bhqk", q, k) / 2.0, dim=-1)
    a = torch.einsum("bhqk,bhdk->bhdq", w, v).reshape(2, 8, 12)
    out = torch.einsum("oc,bcl->bol", attn.proj.weight[:, :, 0, 0], a) + attn.proj.bias[None, :, None]
    torch.testing.assert_close(attn(x), x + out.reshape(x.shape), rtol=1e-5, atol=1e-5)


def test_legacy_attention_keys_load():
    block = UNetBlock(8, 8, emb_channels=4, attention=True, num_heads=1)
    state = {k.replace("attn.norm.", "norm2.").replace("attn.", ""): v for k, v in block.state_dict().items()}
    assert "norm2.weight" in state and "qkv.weight" in state
    fresh = UNetBlock(8, 8, emb_channels=4, attention=True, num_heads=1)
    fresh.load_state_dict(state)
    assert torch.equal(fresh.attn.qkv.weight, block.attn.qkv.weight)


def test_positional_embedding_formula_and_old_checkpoints():
    emb = PositionalEmbedding(8, endpoint=True)
    t = torch.tensor([0.5, -1.0])
    freqs = torch.tensor([1.0, 10000 ** (-1 / 3), 10000 ** (-2 / 3), 1e-4])
    torch.testing.assert_close(emb(t), torch.cat([torch.outer(t, freqs).sin(), torch.outer(t, freqs).cos()], 1))
    emb.load_state_dict({})  # checkpoints without the (deterministic) frequencies still load


def test_unet_attention_keeps_no_token_by_token_matrix_for_backward():
    """The attention's memory is linear in the pixels: nothing of L x L (L = H W tokens) is saved for the
    backward pass (PyTorch's math fallback, taken for strided q / k / v, saves the softmax weights)."""
    attn = _randomise(UNetAttention(8, num_heads=2))
    x = _rand(2, 8, 12, 16).requires_grad_()
    tokens = 12 * 16
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.shape) or t, lambda t: t):
        attn(x).square().sum().backward()
    assert saved and x.grad is not None and torch.isfinite(x.grad).all()
    assert not [s for s in saved if list(s).count(tokens) >= 2], saved
