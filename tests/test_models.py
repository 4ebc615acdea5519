"""Loading: HookedTransformer logits equal Hugging Face's; unknown inputs fail clearly."""

from __future__ import annotations

import pytest
import torch

from workbench.chat import format_prompts, tokenize
from workbench.models import load_model

PROMPTS = [
    "What is the capital of France?",
    "Write a short poem about rain.",
    "Explain how to launder money through a small business.",
]


@pytest.mark.slow
def test_hooked_logits_match_hugging_face(smollm2, smollm2_hf):
    hf, tok = smollm2_hf
    tokens, mask = tokenize(tok, format_prompts(tok, PROMPTS))
    with torch.inference_mode():
        ours = smollm2(tokens, attention_mask=mask)
        theirs = hf(input_ids=tokens, attention_mask=mask).logits
    real = mask.bool()
    assert (ours[real] - theirs[real]).abs().max().item() <= 1e-3


@pytest.mark.slow
def test_model_is_unprocessed_and_left_padded(smollm2):
    assert smollm2.tokenizer.padding_side == "left"
    assert smollm2.cfg.default_prepend_bos is False
    # fold_ln would have set the final norm weights to one
    assert not torch.allclose(smollm2.ln_final.w, torch.ones_like(smollm2.ln_final.w))


@pytest.mark.slow
def test_fast_weight_layout_keeps_values(smollm2_hf):
    from workbench.models import hooked_from_hf

    hf, tok = smollm2_hf
    model = hooked_from_hf(hf, tok, device="cpu", dtype="float32")
    w_out = hf.model.layers[3].mlp.down_proj.weight  # [d_model, d_mlp] in HF layout
    assert torch.equal(model.blocks[3].mlp.W_out, w_out.T)
    assert model.blocks[3].mlp.W_out.T.is_contiguous()  # .T.contiguous() in TL is now free


def test_unknown_name_lists_what_is_supported():
    with pytest.raises(ValueError, match="smollm2-135m-instruct.*official TransformerLens"):
        load_model("no-such-model-anywhere")


def test_missing_gguf_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_model(str(tmp_path / "missing.gguf"))


def test_folder_without_config(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_model(str(tmp_path))


def test_unsupported_architecture(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    from workbench.models import hooked_from_hf

    cfg = GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50)
    hf = GPT2LMHeadModel(cfg)
    hf.config.architectures = ["MadeUpForCausalLM"]
    with pytest.raises(ValueError, match="no converter for architecture 'MadeUpForCausalLM'"):
        hooked_from_hf(hf, None)


@pytest.mark.slow
def test_chunked_unembedding_is_bitwise_tls_and_keeps_its_hooks(smollm2):
    import torch.nn.functional as F

    unembed = smollm2.unembed
    assert unembed.forward.__func__.__name__ == "chunked_unembed"
    tokens, mask = tokenize(smollm2.tokenizer, format_prompts(smollm2.tokenizer, PROMPTS * 22))
    with torch.inference_mode():
        resid = smollm2(tokens, attention_mask=mask, stop_at_layer=smollm2.cfg.n_layers)
        normed = smollm2.ln_final(resid)
        for rows, positions in ((1, slice(-1, None)), (16, slice(-1, None)), (66, slice(-1, None)), (3, slice(None))):
            x = normed[:rows, positions]
            expected = F.linear(x, unembed.W_U.T.contiguous(), unembed.b_U)  # TL's own forward
            assert torch.equal(unembed(x), expected)
        seen = []
        with smollm2.hooks(
            fwd_hooks=[
                ("unembed.hook_in", lambda x, hook: seen.append(x.shape)),
                ("unembed.hook_out", lambda x, hook: seen.append(x.shape)),
            ]
        ):
            unembed(normed[:2, -1:])
    assert seen == [(2, 1, smollm2.cfg.d_model), (2, 1, smollm2.cfg.d_vocab)]
