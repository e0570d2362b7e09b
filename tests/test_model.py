"""The model: shapes, KV-cached greedy decoding against full recomputation, sizes, masks."""

from __future__ import annotations

import pytest
import torch

from trainer.model import ImageToLatex, ModelConfig, count_parameters, model_config_for, strip_after_eos

BOS, EOS = 1, 2


def tiny_model(vocab_size: int = 20, max_len: int = 12, seed: int = 0) -> ImageToLatex:
    torch.manual_seed(seed)
    return ImageToLatex(model_config_for("tiny", vocab_size=vocab_size, max_len=max_len)).eval()


def naive_greedy(model: ImageToLatex, images: torch.Tensor, widths: torch.Tensor, steps: int) -> list[list[int]]:
    """Greedy decoding by re-running the whole teacher-forced forward pass at every step."""
    tokens = torch.full((images.shape[0], 1), BOS, dtype=torch.long)
    with torch.no_grad():
        for _ in range(steps):
            next_token = model(images, tokens, widths)[:, -1].argmax(-1, keepdim=True)
            tokens = torch.cat([tokens, next_token], dim=1)
    return tokens[:, 1:].tolist()


def test_forward_shape() -> None:
    model = tiny_model()
    images = torch.rand(3, 1, 64, 96)
    tgt_in = torch.randint(0, 20, (3, 7))
    assert model(images, tgt_in, torch.tensor([96, 80, 48])).shape == (3, 7, 20)


def test_cached_greedy_equals_full_recomputation() -> None:
    model = tiny_model(max_len=10)
    images = torch.rand(4, 1, 64, 128)
    widths = torch.tensor([128, 112, 64, 32])
    cached = model.greedy_decode(images, BOS, EOS, widths=widths)
    reference = naive_greedy(model, images, widths, steps=9)
    for got, row in zip(cached, strip_after_eos(reference, EOS), strict=True):
        assert got == row


def test_greedy_respects_max_len_and_never_emits_eos() -> None:
    model = tiny_model(max_len=8)
    with torch.no_grad():  # force the head towards one non-EOS token: decoding must run to max_len
        model.head.weight.zero_()
        model.head.weight[5] = 1.0
        model.norm.bias.fill_(1.0)
    out = model.greedy_decode(torch.rand(2, 1, 64, 64), BOS, EOS)
    assert [len(row) for row in out] == [7, 7]
    assert all(EOS not in row for row in out)
    assert len(model.greedy_decode(torch.rand(1, 1, 64, 64), BOS, EOS, max_len=4)[0]) == 3


def test_greedy_stops_at_eos() -> None:
    model = tiny_model(max_len=30)
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.weight[EOS] = 1.0
        model.norm.bias.fill_(1.0)
    assert model.greedy_decode(torch.rand(2, 1, 64, 64), BOS, EOS) == [[], []]


def test_padding_columns_are_masked_from_cross_attention() -> None:
    model = tiny_model()
    images = torch.rand(1, 1, 64, 64)
    memory, mask = model.encode(images, torch.tensor([20]))
    assert mask is not None
    # 64 px / 8 (three width poolings) = 8 columns, 4 rows; 20 px covers ceil(20 / 8) = 3 columns.
    assert memory.shape[1] == 4 * 8
    assert mask.view(4, 8).sum(dim=1).tolist() == [3, 3, 3, 3]
    assert mask.view(4, 8)[:, :3].all()


def test_sizes_grow_and_config_round_trips() -> None:
    counts = [count_parameters(ImageToLatex(model_config_for(s, 500, 202))) for s in ("tiny", "small", "base")]
    assert counts[0] < counts[1] < counts[2]
    assert counts[0] < 500_000
    cfg = model_config_for("base", 500, 202)
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown model size"):
        model_config_for("huge", 10, 10)


def test_every_parameter_gets_a_gradient() -> None:
    # The user's old project never stepped its encoder: make sure encoder and decoder both learn.
    model = tiny_model().train()
    logits = model(torch.rand(2, 1, 64, 64), torch.randint(0, 20, (2, 5)), torch.tensor([64, 48]))
    logits.sum().backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


def test_channels_last_gives_the_same_logits_and_gradients() -> None:
    """The trainer's default layout must change the arithmetic's order only, not what is computed."""
    torch.manual_seed(1)
    images, widths = torch.rand(3, 1, 32, 96), torch.tensor([96, 64, 40])
    tokens = torch.randint(4, 20, (3, 7))
    results = []
    for layout in (torch.contiguous_format, torch.channels_last):
        model = tiny_model().to(memory_format=layout)
        logits = model(images.contiguous(memory_format=layout), tokens, widths)
        logits.square().mean().backward()
        results.append((logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    (nchw_logits, nchw_grads), (nhwc_logits, nhwc_grads) = results
    torch.testing.assert_close(nhwc_logits, nchw_logits, rtol=1e-4, atol=1e-5)
    for name, grad in nchw_grads.items():
        torch.testing.assert_close(nhwc_grads[name], grad, rtol=1e-3, atol=1e-5, msg=name)


def test_a_config_saved_before_the_residual_option_builds_the_plain_encoder() -> None:
    """Checkpoints written before ModelConfig.residual existed hold no such key: they must load unchanged."""
    saved = model_config_for("tiny", vocab_size=20, max_len=12).to_dict()
    del saved["residual"]
    old = ImageToLatex(ModelConfig.from_dict(saved))
    plain = ImageToLatex(model_config_for("tiny", vocab_size=20, max_len=12))
    assert old.cfg.residual is False
    assert old.state_dict().keys() == plain.state_dict().keys()


def test_shape_overrides_and_the_residual_encoder() -> None:
    cfg = model_config_for("tiny", vocab_size=20, max_len=12, d_model=128, ff_dim=256, residual=True,
                           cnn_channels=(16, 32, 64, 128), decoder_layers=None)
    assert (cfg.d_model, cfg.ff_dim, cfg.residual, cfg.cnn_channels, cfg.decoder_layers) == (128, 256, True,
                                                                                          (16, 32, 64, 128), 2)
    model = ImageToLatex(cfg).eval()
    assert model(torch.rand(2, 1, 64, 96), torch.randint(0, 20, (2, 5))).shape == (2, 5, 20)
    assert count_parameters(model) > count_parameters(ImageToLatex(model_config_for("tiny", 20, 12, d_model=128,
                                                                                    ff_dim=256)))
    with pytest.raises(ValueError, match="multiple of the 4 attention heads"):
        model_config_for("tiny", vocab_size=20, max_len=12, d_model=66)
