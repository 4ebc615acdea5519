"""Chat formatting and batching on the real SmolLM2: batched equals one-by-one."""

from __future__ import annotations

import pytest
import torch

from workbench import data
from workbench.chat import format_prompts, length_sorted_batches, post_instruction_tokens, tokenize
from workbench.generation import generate, last_token_logprobs

PROMPTS = data.load_split("harmless", "validation")[:3] + data.load_split("harmful", "validation")[:3]


def test_length_sorted_batches_cover_every_index_once():
    batches = length_sorted_batches([5, 1, 9, 3, 7], 2)
    assert sorted(i for b in batches for i in b) == [0, 1, 2, 3, 4]
    assert batches[0] == [2, 4]


def test_balanced_batches_sort_by_length_and_differ_by_at_most_one():
    lengths = [5, 9, 7, 3, 8, 6, 4, 10, 2, 1]
    batches = length_sorted_batches(lengths, 4, balanced=True)
    assert sorted(len(b) for b in batches) == [3, 3, 4]  # not 4 + 4 + 2
    assert [lengths[i] for b in batches for i in b] == sorted(lengths, reverse=True)
    assert length_sorted_batches(lengths, 64, balanced=True) == [sorted(range(10), key=lambda i: -lengths[i])]
    assert length_sorted_batches([], 4, balanced=True) == []
    grouped = length_sorted_batches([3, 9, 5, 7], 2, balanced=True, groups=[1, 0, 1, 0])
    assert grouped == [[1, 3], [2, 0]]  # group 0 first, longest first within each group
    with pytest.raises(ValueError, match="batch_size"):
        length_sorted_batches(lengths, 0, balanced=True)


@pytest.mark.slow
def test_template_has_one_bos_and_left_padding(smollm2):
    tok = smollm2.tokenizer
    texts = format_prompts(tok, ["Hi", "Tell me a much longer story about a dragon and a knight."])
    tokens, mask = tokenize(tok, texts)
    start = tok.convert_tokens_to_ids("<|im_start|>")
    first_real = [row[m.bool()][0].item() for row, m in zip(tokens, mask)]
    second_real = [row[m.bool()][1].item() for row, m in zip(tokens, mask)]
    assert first_real == [start, start] and start not in second_real  # never doubled
    assert mask[0, 0] == 0 and mask[:, -1].all()  # left padding: every row ends on real tokens
    assert post_instruction_tokens(tok)[-3:] == ["ass", "istant", "Ċ"]


@pytest.mark.slow
def test_batched_logits_equal_one_by_one(smollm2):
    batched = last_token_logprobs(smollm2, PROMPTS, batch_size=len(PROMPTS))
    single = torch.cat([last_token_logprobs(smollm2, [p]) for p in PROMPTS])
    assert (batched - single).abs().max().item() <= 1e-4


@pytest.mark.slow
def test_batched_greedy_generation_equals_one_by_one(smollm2):
    batched = generate(smollm2, PROMPTS, max_new_tokens=20, batch_size=len(PROMPTS))
    single = [generate(smollm2, [p], max_new_tokens=20)[0] for p in PROMPTS]
    assert batched == single
    assert all(text.strip() for text in batched)


@pytest.mark.slow
def test_generation_matches_hugging_face_greedy(smollm2, smollm2_hf):
    hf, tok = smollm2_hf
    ours = generate(smollm2, PROMPTS[:4], max_new_tokens=16, batch_size=4)
    tokens, mask = tokenize(tok, format_prompts(tok, PROMPTS[:4]))
    with torch.inference_mode():
        out = hf.generate(
            input_ids=tokens, attention_mask=mask, max_new_tokens=16, do_sample=False, pad_token_id=tok.pad_token_id
        )
    theirs = [tok.decode(row[tokens.shape[1] :], skip_special_tokens=True).strip() for row in out]
    assert ours == theirs


def test_empty_prompt_set_is_a_clear_error():
    with pytest.raises(ValueError, match="instructions is empty"):
        format_prompts(None, [])
    with pytest.raises(ValueError, match="blank prompt"):
        format_prompts(None, ["ok", "  "])
    with pytest.raises(TypeError, match="list of strings"):
        format_prompts(None, "one string")
