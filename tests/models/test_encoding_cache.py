import torch

from chain_of_diffusion.models.cache import EncodingCache, file_key, text_key


def test_fill_encodes_only_what_is_missing_and_load_returns_key_order(tmp_path):
    cache = EncodingCache(tmp_path / "cache")
    calls = []

    def encode(positions):
        calls.append(list(positions))
        return torch.stack([torch.full((2, 2), float(p)) for p in positions])

    keys = [text_key("a"), text_key("b"), text_key("a")]  # a duplicate is encoded once
    assert cache.fill(keys, encode) == 2 and calls == [[0, 1]]
    assert cache.fill(keys, encode) == 0 and len(calls) == 1  # all cached: nothing encoded
    more = [text_key("c"), text_key("b")]
    assert cache.fill(more, encode) == 1 and calls[-1] == [0]
    out = cache.load([text_key("b"), text_key("c"), text_key("a")])
    assert out.shape == (3, 2, 2) and out[:, 0, 0].tolist() == [1.0, 0.0, 0.0]
    assert len(list((tmp_path / "cache").glob("shard-*.safetensors"))) == 2
    assert not [p for p in (tmp_path / "cache").iterdir() if ".tmp" in p.name]  # no temp file left


def test_keys_follow_content_not_names(tmp_path):
    (tmp_path / "x.png").write_bytes(b"same bytes")
    (tmp_path / "y.png").write_bytes(b"same bytes")
    (tmp_path / "z.png").write_bytes(b"other bytes")
    assert file_key(tmp_path / "x.png") == file_key(tmp_path / "y.png") != file_key(tmp_path / "z.png")
    assert file_key(tmp_path / "x.png", "flip") != file_key(tmp_path / "x.png")
    assert text_key("a cat") != text_key("a cat ")


def test_load_of_a_missing_key_names_it(tmp_path):
    import pytest

    with pytest.raises(KeyError, match="missing"):
        EncodingCache(tmp_path).load([text_key("never")])
