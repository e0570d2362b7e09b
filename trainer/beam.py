"""Beam search over the decoder, batched: every image keeps ``beam`` hypotheses, all decoded together with the
same key/value cache as greedy decoding (reordered as hypotheses move between beams).

A finished hypothesis (it emitted EOS) stays in its beam at a fixed score, continued only by EOS at no
cost; the search ends when every beam of every image has finished or at the length limit. The final choice
among an image's hypotheses divides the summed log-probability by ``(length + 1) ** length_alpha`` (the EOS
counted), so that short readings are not preferred only for having fewer terms. With ``beam=1`` there is
one hypothesis and the search takes the argmax token at every step: greedy decoding, token for token.
"""

from __future__ import annotations

import torch

from trainer.model import ImageToLatex, strip_after_eos

LENGTH_ALPHA = 0.6


@torch.no_grad()
def beam_decode(model: ImageToLatex, images: torch.Tensor, bos: int, eos: int, *, beam: int,
                widths: torch.Tensor | None = None, max_len: int | None = None,
                length_alpha: float = LENGTH_ALPHA) -> list[list[int]]:
    """The best hypothesis of each image, as ids without BOS/EOS (free decoding, no reference)."""
    if beam < 1:
        raise ValueError(f"beam must be >= 1, got {beam}")
    vocab_size = model.cfg.vocab_size
    k = beam  # more than the vocabulary is allowed: the extra hypotheses start at -inf and stay there
    limit = min(max_len or model.cfg.max_len, model.cfg.max_len) - 1
    batch, device = images.shape[0], images.device
    memory, mask = model.encode(images, widths)
    memory = memory.repeat_interleave(k, dim=0)  # row b * k + j: image b, beam j
    mask = mask.repeat_interleave(k, dim=0) if mask is not None else None
    layers = model.decoder_layers()
    memory_kv = [layer.cross_attn.keys_values(memory) for layer in layers]
    caches: list[dict[str, torch.Tensor]] = [{} for _ in layers]
    scores = torch.full((batch, k), float("-inf"), device=device)
    scores[:, 0] = 0.0  # one live hypothesis at the start: the others would only copy it
    finished = torch.zeros(batch, k, dtype=torch.bool, device=device)
    lengths = torch.zeros(batch, k, dtype=torch.long, device=device)
    history = torch.zeros(batch, k, 0, dtype=torch.long, device=device)
    eos_only = torch.full((vocab_size,), float("-inf"), device=device)
    eos_only[eos] = 0.0
    offsets = torch.arange(batch, device=device)[:, None] * k
    tokens = torch.full((batch * k, 1), bos, dtype=torch.long, device=device)
    for position in range(limit):
        x = model.embed_tokens(tokens, offset=position)
        for layer, kv, cache in zip(layers, memory_kv, caches, strict=True):
            x = layer(x, kv, mask, cache)
        logits = model.head(model.norm(x[:, -1])).float()
        log_probs = torch.log_softmax(logits, dim=-1).view(batch, k, vocab_size)
        log_probs = torch.where(finished[..., None], eos_only, log_probs)
        top_scores, top_index = (scores[..., None] + log_probs).view(batch, k * vocab_size).topk(k, dim=1)
        source, token = top_index // vocab_size, top_index % vocab_size
        rows = (source + offsets).view(-1)
        for cache in caches:
            cache["k"], cache["v"] = cache["k"].index_select(0, rows), cache["v"].index_select(0, rows)
        history = torch.cat([history.gather(1, source[..., None].expand(-1, -1, history.shape[2])),
                             token[..., None]], dim=2)
        was_finished = finished.gather(1, source)
        lengths = lengths.gather(1, source) + (~was_finished).long()
        finished = was_finished | (token == eos)
        scores = top_scores
        tokens = token.view(-1, 1)
        if bool(finished.all()):
            break
    normalized = scores / (lengths.clamp(min=1).float() ** length_alpha)
    best = normalized.argmax(dim=1)
    chosen = history[torch.arange(batch, device=device), best]
    return strip_after_eos(chosen.tolist(), eos)


def decode_batch(model: ImageToLatex, images: torch.Tensor, bos: int, eos: int, *, beam: int = 1,
                 widths: torch.Tensor | None = None, max_len: int | None = None) -> list[list[int]]:
    """Greedy decoding for ``beam == 1`` (the same result, cheaper), beam search otherwise."""
    if beam == 1:
        return model.greedy_decode(images, bos, eos, widths=widths, max_len=max_len)
    return beam_decode(model, images, bos, eos, beam=beam, widths=widths, max_len=max_len)
