"""Where angular steering rotates: post-gain norm outputs (the study), pre-gain ``hook_normalized``,
and the b1/b2 adaptive gates.

The reference for ``site="post_gain"`` is the definition itself: a PyTorch forward hook on each norm
module (``blocks[l].ln1``/``ln2``) that rotates the module's OUTPUT ``y = g⊙x̂ (+ b)`` with
:func:`workbench.steering_math.rotate`. Tiny random models only: a few seconds on CPU.
"""

from __future__ import annotations

import copy
from contextlib import contextmanager

import pytest
import torch
from tiny_models import tiny_config, tiny_model

from workbench.interventions import rotation_hooks
from workbench.steering_math import gate_mode, rotate, rotate_by

D, VOCAB, LAYERS = 32, 50, 3
TOL = 1e-4  # float32 rounding on logits of O(1)


def _tl(norm: str):
    """A tiny random HookedTransformer with non-trivial norm gains (and biases for LayerNorm):
    Llama-like (GQA, rotary, gated MLP) with RMSNorm, GPT-2-like with LayerNorm."""
    rms = norm.startswith("RMS")
    model = tiny_model(
        llama=rms,
        n_layers=LAYERS,
        d_model=D,
        d_vocab=VOCAB,
        n_ctx=32,
        normalization_type=norm,
        n_key_value_heads=2 if rms else None,
    )
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for block in model.blocks:
            for ln in (block.ln1, block.ln2):
                if hasattr(ln, "w"):
                    ln.w.copy_(0.5 + torch.rand(D, generator=gen))
                if hasattr(ln, "b"):
                    ln.b.copy_(0.3 * torch.randn(D, generator=gen))
    return model


@pytest.fixture(scope="module")
def models():
    return {"RMS": _tl("RMS"), "LN": _tl("LN")}


@pytest.fixture(scope="module")
def tokens():
    return torch.randint(0, VOCAB, (2, 7), generator=torch.Generator().manual_seed(1))


def _basis(seed=0):
    q, _ = torch.linalg.qr(torch.randn(D, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return q.T.contiguous().float()


def _angle(y, basis):
    c = y.double() @ basis.double().T
    return torch.rad2deg(torch.atan2(c[..., 1], c[..., 0])) % 360


def _angle_err(a, b):
    return ((a - b + 180) % 360 - 180).abs().max().item()


def _bits(t):
    return t.view(torch.int32) if t.dtype == torch.float32 else t.view(torch.int64)


def _run(model, tokens, hooks):
    with model.hooks(fwd_hooks=hooks):
        return model(tokens)


def _points(n_layers):
    """(layer, norm) pairs the default hooks cover: ln1 of layers ≥ 1, ln2 of every layer."""
    return [(layer, ln) for layer in range(n_layers) for ln in ("ln1", "ln2") if not (layer == 0 and ln == "ln1")]


@contextmanager
def _rotate_module_outputs(modules_by_point, basis, theta, mode="to", adaptive="off"):
    """The definition: rotate each norm module's output (forward hook on the module itself)."""
    fn = rotate if mode == "to" else rotate_by
    handles = [
        module.register_forward_hook(lambda _m, _i, out: fn(out, basis, theta, adaptive=adaptive))
        for module in modules_by_point
    ]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _tl_norms(model):
    return [getattr(model.blocks[layer], ln) for layer, ln in _points(model.cfg.n_layers)]


# ---------------------------------------------------------------------------------------------- equivalence

CASES = [("to", 200.0, "off"), ("by", 70.0, "b1"), ("to", torch.tensor([40.0, 250.0]), "b2")]


@pytest.mark.parametrize("norm", ["RMS", "LN"])
@pytest.mark.parametrize("mode,theta,adaptive", CASES, ids=["to-off", "by-b1", "to-perrow-b2"])
def test_post_gain_equals_rotating_the_norm_outputs(models, tokens, norm, mode, theta, adaptive):
    model, b = models[norm], _basis(seed=5)
    ours = _run(model, tokens, rotation_hooks(model, b, theta, mode=mode, adaptive=adaptive))
    with _rotate_module_outputs(_tl_norms(model), b, theta, mode, adaptive):
        ref = model(tokens)
    pre = _run(model, tokens, rotation_hooks(model, b, theta, site="pre_gain", mode=mode, adaptive=adaptive))
    assert (ours - ref).abs().max().item() <= TOL
    assert (pre - ref).abs().max().item() > 100 * TOL  # the gain matters: the test can fail
    assert (ours - model(tokens)).abs().max().item() > 100 * TOL  # and the steering does something


def test_layer_subset_and_default_site(models, tokens):
    model, b = models["RMS"], _basis(seed=6)
    hooks = rotation_hooks(model, b, 120.0, layers=[0, 2])
    assert [n for n, _ in hooks] == [
        "blocks.0.ln2.hook_normalized",
        "blocks.2.ln1.hook_normalized",
        "blocks.2.ln2.hook_normalized",
    ]
    with _rotate_module_outputs([model.blocks[0].ln2, model.blocks[2].ln1, model.blocks[2].ln2], b, 120.0):
        ref = model(tokens)
    assert (_run(model, tokens, hooks) - ref).abs().max().item() <= TOL
    normalized = _run(model, tokens, rotation_hooks(model, b, 120.0, layers=[0, 2], site="normalized"))
    assert torch.equal(normalized, _run(model, tokens, rotation_hooks(model, b, 120.0, layers=[0, 2], site="pre_gain")))


# ---------------------------------------------------------------------------------------------- what the sublayers read


@pytest.mark.parametrize("norm", ["RMS", "LN"])
def test_sublayer_input_has_angle_theta_and_keeps_rho(models, tokens, norm):
    model, b = models[norm], _basis(seed=7)
    seen: dict[str, torch.Tensor] = {}

    def record(x, hook):
        seen[hook.name] = x.detach().clone()  # before our hook (registered first, runs first)

    modules = {"blocks.1.ln1.hook_normalized": model.blocks[1].ln1, "blocks.2.ln2.hook_normalized": model.blocks[2].ln2}
    outs: dict[str, torch.Tensor] = {}
    capture = [
        m.register_forward_hook(lambda _m, _i, out, name=n: outs.__setitem__(name, out.detach().clone()))
        for n, m in modules.items()
    ]
    try:
        for mode, theta in (("to", 123.0), ("by", -35.0)):
            _run(model, tokens, [(n, record) for n in modules] + rotation_hooks(model, b, theta, mode=mode))
            _check_sublayer_inputs(modules, seen, outs, b, mode, theta)
    finally:
        for handle in capture:
            handle.remove()


def _check_sublayer_inputs(modules, seen, outs, b, mode, theta):
    """Per token, in post-gain coordinates: angle θ (to) or φ + θ (by), ρ and complement kept."""
    rho = lambda y: (y.double() @ b.double().T).norm(dim=-1)  # noqa: E731
    comp = lambda y: y.double() - (y.double() @ b.double().T) @ b.double()  # noqa: E731
    for name, module in modules.items():
        bias = module.b.detach() if hasattr(module, "b") else 0.0
        y_before = seen[name] * module.w.detach() + bias  # what the module would have output
        y_after = outs[name]  # what attention / the MLP actually read
        want = torch.full(y_after.shape[:-1], theta) if mode == "to" else _angle(y_before, b) + theta
        assert _angle_err(_angle(y_after, b), want) < 1e-3, (mode, name)
        assert torch.allclose(rho(y_after), rho(y_before), rtol=1e-5), (mode, name)
        assert (comp(y_after) - comp(y_before)).abs().max() < 1e-5, (mode, name)
        if mode == "to":  # TL's pre-gain x̂' is not at θ: the rotation happened in y's coordinates
            assert _angle_err(_angle((y_after - bias) / module.w.detach(), b), want) > 1.0


# ---------------------------------------------------------------------------------------------- errors


def test_zero_gain_and_cfg_only_raise(models):
    model, b = copy.deepcopy(models["LN"]), _basis()
    with torch.no_grad():
        model.blocks[1].ln2.w[[3, 7]] = 0.0
    with pytest.raises(ValueError, match=r"blocks\.1\.ln2\.w has 2 zero entries .*site='pre_gain'"):
        rotation_hooks(model, b, 90.0)
    assert len(rotation_hooks(model, b, 90.0, site="pre_gain")) == 2 * LAYERS - 1
    assert len(rotation_hooks(model, b, 90.0, layers=[2])) == 2  # layer 1 not chosen: fine
    with pytest.raises(ValueError, match="needs the model, not its cfg"):
        rotation_hooks(model.cfg, b, 90.0)
    assert len(rotation_hooks(model.cfg, b, 90.0, site="pre_gain")) == 2 * LAYERS - 1
    with pytest.raises(ValueError, match="unknown rotation site 'post'"):
        rotation_hooks(model, b, 90.0, site="post")


def test_norms_without_gain_rotate_pre_gain(tokens):
    """Folded norms (RMSNormPre) have no gain: post_gain is then exactly pre_gain."""
    model, b = _tl("RMSPre"), _basis(seed=2)
    post = _run(model, tokens, rotation_hooks(model, b, 200.0, adaptive="b1"))
    assert torch.equal(post, _run(model, tokens, rotation_hooks(model, b, 200.0, site="pre_gain", adaptive="b1")))


# ---------------------------------------------------------------------------------------------- gates


def _x(seed=3, shape=(8, 16, D)):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_gate_modes_pure():
    x, b = _x(), _basis(seed=2)
    i, j = divmod(int((x @ b.T)[..., 1].argmin()), x.shape[1])
    x[i, j, 5] = -0.0  # a signed zero in a token the b2 gate leaves alone must survive
    c = x @ b.T
    assert c[i, j, 1] <= 0
    for fn, theta in ((rotate, 150.0), (rotate_by, 40.0)):
        y = fn(x, b, theta, adaptive="b2")
        off = c[..., 1] <= 0
        assert off.any() and (~off).any()
        assert torch.equal(_bits(y[off]), _bits(x[off]))  # bit-for-bit
        want = torch.tensor(theta) if fn is rotate else _angle(x[~off], b) + theta
        assert _angle_err(_angle(y[~off], b), want) < 1e-3
        assert torch.equal(_bits(fn(x, b, theta, adaptive=True)), _bits(fn(x, b, theta, adaptive="b1")))
        assert torch.equal(fn(x, b, theta, adaptive=False), fn(x, b, theta, adaptive="off"))
        on1 = c[..., 0] > 0
        y1 = fn(x, b, theta, adaptive="b1")
        assert torch.equal(_bits(y1[~on1]), _bits(x[~on1])) and not torch.equal(y1[on1], x[on1])
    assert [gate_mode(a) for a in (False, True, "off", "b1", "b2")] == ["off", "b1", "off", "b1", "b2"]
    for bad in ("b3", "B1", None, 1, "on"):
        with pytest.raises(ValueError, match="unknown adaptive gate .*'b2'"):
            rotate(x, b, 10.0, adaptive=bad)


def test_post_gain_gate_reads_the_norm_output(models):
    """The b2 gate is decided on y = g⊙x̂ + b (what is rotated), not on x̂; gated-off tokens are
    returned bit-identical, the others land at θ in post-gain coordinates."""
    model, b = models["LN"], _basis(seed=4)
    ln = model.blocks[1].ln2
    g, bias = ln.w.detach(), ln.b.detach()
    hooks = dict(rotation_hooks(model, b, 150.0, adaptive="b2", layers=[1]))
    fn = hooks["blocks.1.ln2.hook_normalized"]
    for dtype in (torch.float32, torch.float64):
        x_hat = _x(seed=9).to(dtype)
        y = x_hat * g.to(dtype) + bias.to(dtype)
        off = (y @ b.to(dtype).T)[..., 1] <= 0
        assert ((x_hat @ b.to(dtype).T)[..., 1] <= 0).ne(off).any()  # the two gates disagree somewhere
        out = fn(x_hat, None)
        assert out.dtype == dtype
        assert torch.equal(_bits(out[off]), _bits(x_hat[off]))
        y_after = out * g.to(dtype) + bias.to(dtype)
        assert _angle_err(_angle(y_after[~off], b), torch.tensor(150.0)) < 1e-3
    with pytest.raises(ValueError, match="unknown adaptive gate"):
        rotation_hooks(model, b, 150.0, adaptive="sometimes")


# ---------------------------------------------------------------------------------------------- fast path, HF, Gemma


@pytest.fixture(scope="module")
def tiny_llama():
    """A tiny random Llama as HF model and as the workbench's HookedTransformer (fast paths on)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from workbench.models import hooked_from_hf

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=D,
        intermediate_size=64,
        num_hidden_layers=LAYERS,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        architectures=["LlamaForCausalLM"],
    )
    hf = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for layer in hf.model.layers:
            for norm in (layer.input_layernorm, layer.post_attention_layernorm):
                norm.weight.copy_(0.5 + torch.rand(D))
    return hf, hooked_from_hf(hf, _word_tokenizer(), device="cpu", dtype="float32")


def _word_tokenizer():
    """A VOCAB-word tokenizer (HookedTransformer loads one by name when given None)."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    vocab = {f"w{i}": i for i in range(VOCAB)}
    tok = Tokenizer(WordLevel(vocab, unk_token="w0"))
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="w0", pad_token="w0", eos_token="w2"
    )  # no BOS: TL keeps it as is


@torch.inference_mode()
def test_fast_attention_path_and_hf_reference(tiny_llama, tokens):
    from workbench.fastpath import attention

    hf, model = tiny_llama
    if not hasattr(model.blocks[0].attn, "_workbench_tl_forward"):
        pytest.skip("the fast attention path is not engaged on this transformer-lens")
    assert torch.equal(model.blocks[1].ln1.w, hf.model.layers[1].input_layernorm.weight)  # stored as-is
    b = _basis(seed=8)
    calls = []
    count = [("blocks.1.ln1.hook_normalized", lambda x, hook: calls.append(hook.name))]
    hooks = rotation_hooks(model, b, 210.0, adaptive="b1")
    fast = _run(model, tokens, count + hooks)
    assert len(calls) == 3  # ln1 runs once each for the q, k and v inputs
    attention.uninstall(model)
    try:
        tl = _run(model, tokens, hooks)
    finally:
        attention.install(model)
    assert (fast - tl).abs().max().item() <= 1e-5
    # the study's definition on Hugging Face: rotate the outputs of input_layernorm (layers ≥ 1)
    # and post_attention_layernorm
    norms = [
        hf.model.layers[layer].input_layernorm if ln == "ln1" else hf.model.layers[layer].post_attention_layernorm
        for layer, ln in _points(LAYERS)
    ]
    with _rotate_module_outputs(norms, b, 210.0, adaptive="b1"):
        ref = hf(tokens).logits
    assert (fast - ref).abs().max().item() <= TOL
    pre = _run(model, tokens, rotation_hooks(model, b, 210.0, adaptive="b1", site="pre_gain"))
    assert (pre - ref).abs().max().item() > 100 * TOL


def test_kv_cached_decoding_on_fast_path(tiny_llama, tokens, generate_both_ways):
    _, model = tiny_llama
    hooks = rotation_hooks(model, _basis(seed=1), torch.tensor([30.0, 200.0]), adaptive="b2")
    cached, recomputed = generate_both_ways(model, tokens, hooks)
    assert torch.equal(cached, recomputed)


def test_gemma2_gains_include_the_plus_one():
    """TL's Gemma converter stores ``w = 1 + weight`` (HF's GemmaRMSNorm multiplies by 1 + weight),
    and its ln2 is ``pre_feedforward_layernorm``: post_gain reads ``w`` as it is."""
    from transformer_lens.pretrained.weight_conversions.gemma import convert_gemma_weights
    from transformers import Gemma2Config, Gemma2ForCausalLM

    hf_cfg = Gemma2Config(
        vocab_size=VOCAB,
        hidden_size=D,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        max_position_embeddings=64,
    )
    torch.manual_seed(0)
    hf = Gemma2ForCausalLM(hf_cfg).eval()
    with torch.no_grad():
        for p in hf.parameters():
            if p.ndim == 1:
                p.normal_()
    cfg = tiny_config(
        llama=True,
        d_model=D,
        d_vocab=VOCAB,
        n_key_value_heads=2,
        act_fn="gelu_pytorch_tanh",
        final_rms=True,
        use_normalization_before_and_after=True,
        original_architecture="Gemma2ForCausalLM",
        seed=None,
    )
    state = convert_gemma_weights(hf, cfg)
    layer = hf.model.layers[1]
    assert torch.equal(state["blocks.1.ln1.w"], 1 + layer.input_layernorm.weight)
    assert torch.equal(state["blocks.1.ln2.w"], 1 + layer.pre_feedforward_layernorm.weight)
    assert torch.equal(state["blocks.1.ln1_post.w"], 1 + layer.post_attention_layernorm.weight)
