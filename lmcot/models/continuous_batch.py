"""The running batch of the continuous engine: key/value caches whose rows join and leave at any
step, and the sampler that picks each row's next token.

Rows decode at different steps, so each row's self-attention cache is left-padded to the batch's
length and the padding is masked. That is exact for both families: T5's self-attention bias
depends only on the distance between query and key, and a causal model's rotary positions are
given explicitly (each row's own count of tokens), so a padded row computes what it computes
alone, up to float noise. A T5 row also carries its encoder's cross-attention keys and values,
concatenated along the batch in the :class:`~transformers.EncoderDecoderCache` (right-padded to
the longest prompt, masked by the encoder attention mask); their ``is_updated`` flags stay set,
so a decode step is one ordinary forward of the model.

A row joins through a prefill of its own (:meth:`Seq2SeqRows.prefill`: the encoder and the first
decoder step; :meth:`CausalRows.prefill`: the prompt), which also gives its first token's logits;
a prompt's ``n`` samples share that prefill, their caches repeated. A joining row takes the slot of
a row that ended (:meth:`replace`, written in place: the other rows' caches are not copied) or is
appended (:meth:`extend`); ended rows no newcomer replaces leave by batch-index selection
(:meth:`select`), and :meth:`compact` drops the left padding no remaining row needs.

:class:`RowSampler` picks tokens as ``generate`` does under the model's generation config, with
each row's own settings and random generator (the engine's docstring says which settings).

Only full-attention dynamic caches are handled: sliding-window, chunked or shared-KV layers
(none in T5 or Qwen2.5) raise :class:`UnsupportedModel`.
"""

from __future__ import annotations

from typing import Sequence

import torch
from transformers import DynamicCache, EncoderDecoderCache
from transformers.cache_utils import DynamicLayer
from transformers.modeling_outputs import BaseModelOutput


class UnsupportedModel(ValueError):
    """A model (or generation setting) the continuous engine cannot run exactly; the static engine can."""


def _layers(cache) -> list:
    layers = list(cache.layers)
    odd = sorted({type(layer).__name__ for layer in layers if type(layer) is not DynamicLayer})
    if odd:
        raise UnsupportedModel(f"the continuous engine handles full-attention caches only, this model has {odd} "
                               "layers; use generation.engine: static")
    return layers


def _pad_time(x: torch.Tensor, length: int, left: bool) -> torch.Tensor:
    """``x`` ([rows, heads, time, dim]) zero-padded along time to ``length``."""
    extra = length - x.shape[2]
    if extra <= 0:
        return x
    pad = x.new_zeros(x.shape[0], x.shape[1], extra, x.shape[3])
    return torch.cat([pad, x] if left else [x, pad], dim=2)


def _pad_ids(prompts: Sequence[Sequence[int]], pad_id: int, left: bool, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and attention mask of ``prompts``, padded on the left or the right."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for r, p in enumerate(prompts):
        span = slice(width - len(p), width) if left else slice(0, len(p))
        ids[r, span] = torch.tensor(p, dtype=torch.long)
        mask[r, span] = 1
    return ids.to(device), mask.to(device)


def _repeat_index(repeats: Sequence[int], device) -> torch.Tensor:
    return torch.repeat_interleave(torch.arange(len(repeats)), torch.tensor(list(repeats))).to(device)


class LeftPaddedKV:
    """Per-layer self-attention keys and values, ``[rows, heads, time, dim]``, left-padded: row ``r``'s
    real entries are its last ``lengths[r]``."""

    def __init__(self, layers: list, lengths: torch.Tensor):
        self.layers, self.lengths = layers, lengths

    @property
    def time(self) -> int:
        return self.layers[0].keys.shape[2]

    def mask(self) -> torch.Tensor:
        """The attention mask of the next decode step: the cache and the token it adds, ``[rows, time + 1]``."""
        positions = torch.arange(self.time + 1, device=self.lengths.device)
        return (positions[None, :] >= (self.time - self.lengths)[:, None]).long()

    def select(self, index: torch.Tensor) -> None:
        for layer in self.layers:
            layer.keys, layer.values = layer.keys[index], layer.values[index]
        self.lengths = self.lengths[index]

    def extend(self, other: "LeftPaddedKV") -> None:
        time = max(self.time, other.time)
        for mine, theirs in zip(self.layers, other.layers):
            mine.keys = torch.cat([_pad_time(mine.keys, time, True), _pad_time(theirs.keys, time, True)])
            mine.values = torch.cat([_pad_time(mine.values, time, True), _pad_time(theirs.values, time, True)])
        self.lengths = torch.cat([self.lengths, other.lengths])

    def replace(self, slots: torch.Tensor, other: "LeftPaddedKV", index: torch.Tensor) -> None:
        """Write ``other``'s rows ``index`` over this batch's rows ``slots`` (in place; the rows the
        slots held are gone)."""
        if other.time > self.time:
            for layer in self.layers:
                layer.keys = _pad_time(layer.keys, other.time, True)
                layer.values = _pad_time(layer.values, other.time, True)
        start = self.time - other.time  # right-aligned: the newcomers' padding stays on the left
        for mine, theirs in zip(self.layers, other.layers):
            mine.keys[slots, :, start:] = theirs.keys[index]
            mine.values[slots, :, start:] = theirs.values[index]
        self.lengths = self.lengths.clone()
        self.lengths[slots] = other.lengths[index]

    def compact(self) -> None:
        """Drop the leading positions that are padding in every row."""
        common = self.time - int(self.lengths.max())
        if common > 0:
            for layer in self.layers:
                layer.keys, layer.values = layer.keys[:, :, common:], layer.values[:, :, common:]


class Seq2SeqRows:
    """Running rows of an encoder-decoder model (T5): left-padded self-attention, right-padded
    cross-attention, one :class:`~transformers.EncoderDecoderCache` for the whole batch."""

    def __init__(self, model, cache: EncoderDecoderCache, lengths: torch.Tensor, encoder_mask: torch.Tensor):
        self.model, self.cache, self.encoder_mask = model, cache, encoder_mask
        self.kv = LeftPaddedKV(_layers(cache.self_attention_cache), lengths)
        self.cross = _layers(cache.cross_attention_cache)

    @classmethod
    @torch.inference_mode()
    def prefill(cls, model, prompts: Sequence[Sequence[int]], repeats: Sequence[int], *, pad_id: int,
                start_id: int, device) -> tuple["Seq2SeqRows", torch.Tensor]:
        """The encoder and the first decoder step of ``prompts`` (each once), then each prompt's row
        repeated ``repeats[i]`` times; returns the rows and their first token's logits."""
        ids, mask = _pad_ids(prompts, pad_id, left=False, device=device)
        encoded = model.get_encoder()(input_ids=ids, attention_mask=mask, return_dict=True).last_hidden_state
        cache = EncoderDecoderCache(DynamicCache(config=model.config), DynamicCache(config=model.config))
        start = torch.full((len(prompts), 1), start_id, dtype=torch.long, device=device)
        logits = model(encoder_outputs=BaseModelOutput(last_hidden_state=encoded), attention_mask=mask,
                       decoder_input_ids=start, past_key_values=cache, use_cache=True).logits[:, -1].float()
        rows = cls(model, cache, torch.ones(len(prompts), dtype=torch.long, device=device), mask)
        index = _repeat_index(repeats, device)
        rows.select(index)
        return rows, logits[index]

    @torch.inference_mode()
    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """One step of every row: feed ``tokens`` (``[rows]``), return the next token's logits."""
        rows, source = self.encoder_mask.shape
        # The cross-attention keys and values are cached (is_updated): the encoder states only give
        # the mask its shape, so a broadcast zero stands in for them.
        stub = self.cross[0].keys.new_zeros(()).expand(rows, source, self.model.config.d_model)
        out = self.model(encoder_outputs=BaseModelOutput(last_hidden_state=stub), attention_mask=self.encoder_mask,
                         decoder_input_ids=tokens[:, None], decoder_attention_mask=self.kv.mask(),
                         past_key_values=self.cache, use_cache=True)
        self.kv.lengths = self.kv.lengths + 1
        return out.logits[:, -1].float()

    def select(self, index: torch.Tensor) -> None:
        self.kv.select(index)
        for layer in self.cross:
            layer.keys, layer.values = layer.keys[index], layer.values[index]
        self.encoder_mask = self.encoder_mask[index]

    def extend(self, other: "Seq2SeqRows") -> None:
        self.kv.extend(other.kv)
        source = max(self.encoder_mask.shape[1], other.encoder_mask.shape[1])
        for mine, theirs in zip(self.cross, other.cross):
            mine.keys = torch.cat([_pad_time(mine.keys, source, False), _pad_time(theirs.keys, source, False)])
            mine.values = torch.cat([_pad_time(mine.values, source, False), _pad_time(theirs.values, source, False)])
        pad = lambda m: torch.nn.functional.pad(m, (0, source - m.shape[1]))  # noqa: E731
        self.encoder_mask = torch.cat([pad(self.encoder_mask), pad(other.encoder_mask)])
        for layer in range(len(self.cross)):
            self.cache.is_updated[layer] = True

    def replace(self, slots: torch.Tensor, other: "Seq2SeqRows", index: torch.Tensor) -> None:
        self.kv.replace(slots, other.kv, index)
        source = other.encoder_mask.shape[1]
        if source > self.encoder_mask.shape[1]:
            for layer in self.cross:
                layer.keys, layer.values = _pad_time(layer.keys, source, False), _pad_time(layer.values, source, False)
            self.encoder_mask = torch.nn.functional.pad(self.encoder_mask, (0, source - self.encoder_mask.shape[1]))
        for mine, theirs in zip(self.cross, other.cross):
            mine.keys[slots, :, :source] = theirs.keys[index]
            mine.values[slots, :, :source] = theirs.values[index]
        self.encoder_mask = self.encoder_mask.clone()
        self.encoder_mask[slots] = 0
        self.encoder_mask[slots, :source] = other.encoder_mask[index]

    def compact(self) -> None:
        self.kv.compact()
        source = int(self.encoder_mask.sum(dim=1).max())  # right-padded: the longest remaining prompt
        if source < self.encoder_mask.shape[1]:
            for layer in self.cross:
                layer.keys, layer.values = layer.keys[:, :, :source], layer.values[:, :, :source]
            self.encoder_mask = self.encoder_mask[:, :source]


class CausalRows:
    """Running rows of a decoder-only model (Qwen-style): left-padded cache, explicit position ids."""

    def __init__(self, model, cache: DynamicCache, lengths: torch.Tensor):
        self.model, self.cache = model, cache
        self.kv = LeftPaddedKV(_layers(cache), lengths)

    @classmethod
    @torch.inference_mode()
    def prefill(cls, model, prompts: Sequence[Sequence[int]], repeats: Sequence[int], *, pad_id: int,
                device, **_) -> tuple["CausalRows", torch.Tensor]:
        """The forward pass over ``prompts`` (each once, left-padded as ``generate`` pads them), then
        each prompt's row repeated ``repeats[i]`` times; returns the rows and their first token's logits."""
        ids, mask = _pad_ids(prompts, pad_id, left=True, device=device)
        positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)  # as generate derives them
        cache = DynamicCache(config=model.config)
        logits = model(input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=cache,
                       use_cache=True, logits_to_keep=1).logits[:, -1].float()
        rows = cls(model, cache, mask.sum(dim=1))
        index = _repeat_index(repeats, device)
        rows.select(index)
        return rows, logits[index]

    @torch.inference_mode()
    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """One step of every row: feed ``tokens`` (``[rows]``) at each row's own next position."""
        out = self.model(input_ids=tokens[:, None], attention_mask=self.kv.mask(),
                         position_ids=self.kv.lengths[:, None], past_key_values=self.cache, use_cache=True)
        self.kv.lengths = self.kv.lengths + 1
        return out.logits[:, -1].float()

    def select(self, index: torch.Tensor) -> None:
        self.kv.select(index)

    def extend(self, other: "CausalRows") -> None:
        self.kv.extend(other.kv)

    def replace(self, slots: torch.Tensor, other: "CausalRows", index: torch.Tensor) -> None:
        self.kv.replace(slots, other.kv, index)

    def compact(self) -> None:
        self.kv.compact()


DEFAULT_TOP_K = 50
"""transformers' top-k when the model's generation config leaves ``top_k`` unset."""

_NEUTRAL = {  # generation-config settings the engine does not apply, with the values that mean "off"
    "min_length": (None, 0), "min_new_tokens": (None, 0), "no_repeat_ngram_size": (None, 0),
    "encoder_no_repeat_ngram_size": (None, 0), "encoder_repetition_penalty": (None, 1.0), "bad_words_ids": (None,),
    "sequence_bias": (None,), "forced_bos_token_id": (None,), "forced_eos_token_id": (None,),
    "exponential_decay_length_penalty": (None,), "remove_invalid_values": (None, False), "guidance_scale": (None, 1.0),
    "typical_p": (None, 1.0), "epsilon_cutoff": (None, 0.0), "eta_cutoff": (None, 0.0), "min_p": (None,),
    "top_h": (None,), "num_beams": (None, 1), "renormalize_logits": (None, False), "stop_strings": (None,),
    "watermarking_config": (None,),
}


class RowSampler:
    """The next token of each row from its logits, as ``generate`` picks it under the model's generation config."""

    def __init__(self, generation_config, device):
        gc = generation_config
        odd = {name: getattr(gc, name) for name, off in _NEUTRAL.items() if getattr(gc, name, None) not in off}
        if odd:
            raise UnsupportedModel(f"the model's generation config sets {odd}, which the continuous engine does not "
                                   "apply; use generation.engine: static")

        def ids(value) -> torch.Tensor:
            values = [value] if isinstance(value, int) else list(value or [])
            return torch.tensor(values, dtype=torch.long, device=device)

        self.eos = set(ids(gc.eos_token_id).tolist())
        self.suppress, self.begin_suppress = ids(gc.suppress_tokens), ids(gc.begin_suppress_tokens)
        self.top_k = gc.top_k if gc.top_k is not None else DEFAULT_TOP_K
        self.penalty = gc.repetition_penalty if gc.repetition_penalty is not None else 1.0

    def __call__(self, logits: torch.Tensor, rows: Sequence, seen: torch.Tensor | None,
                 first: bool) -> torch.Tensor:
        """``logits`` ([rows, vocab], float32) to token ids. Each of ``rows`` has ``generator`` (None:
        greedy), ``temperature`` and ``top_p``; ``seen`` marks each row's tokens so far (for the
        repetition penalty); ``first``: the rows' first generated token (``begin_suppress_tokens``)."""
        scores = logits
        if seen is not None and self.penalty != 1.0:
            scores = torch.where(seen, torch.where(scores < 0, scores * self.penalty, scores / self.penalty), scores)
        if self.suppress.numel():
            scores = scores.index_fill(1, self.suppress, float("-inf"))
        if first and self.begin_suppress.numel():
            scores = scores.index_fill(1, self.begin_suppress, float("-inf"))
        tokens = scores.argmax(dim=-1)
        sampled = [r for r, row in enumerate(rows) if row.generator is not None]
        if not sampled:
            return tokens
        index = torch.tensor(sampled, device=scores.device)
        candidates, probs = self.distribution(scores[index], [rows[r] for r in sampled])
        drawn = [torch.multinomial(probs[j:j + 1], 1, generator=rows[r].generator) for j, r in enumerate(sampled)]
        tokens[index] = candidates.gather(1, torch.cat(drawn)).view(-1)
        return tokens

    def distribution(self, scores: torch.Tensor, rows: Sequence) -> tuple[torch.Tensor, torch.Tensor]:
        """Each sampled row's candidates (token ids, ``[rows, c]``) and their probabilities: transformers'
        temperature, top-k and top-p warpers in ``generate``'s order, one temperature and top_p per row.

        The draw is made among the top-k candidates only (a row's tokens past its k-th likeliest have
        probability zero after top-k, so the distribution is the same), which makes each row's draw
        k numbers instead of the vocabulary's; where several tokens tie with the k-th, k of them stay."""
        temperature = torch.tensor([row.temperature for row in rows], device=scores.device)[:, None]
        warped = scores / temperature
        top_k = min(self.top_k, warped.shape[-1])
        if top_k > 0:
            warped, candidates = torch.topk(warped, top_k)
        else:
            candidates = torch.arange(warped.shape[-1], device=scores.device).expand_as(warped)
        # transformers' TopPLogitsWarper, one top_p per row
        top_p = torch.tensor([row.top_p for row in rows], device=scores.device)[:, None]
        ascending, order = torch.sort(warped, descending=False)
        remove = ascending.softmax(dim=-1).cumsum(dim=-1) <= (1 - top_p)
        remove[..., -1:] = False
        warped = warped.masked_fill(remove.scatter(1, order, remove), float("-inf"))
        return candidates, torch.softmax(warped, dim=-1)


ROWS = {"seq2seq": Seq2SeqRows, "causal": CausalRows}
"""The running-batch class of each model family."""
