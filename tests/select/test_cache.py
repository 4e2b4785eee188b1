import shutil

import pytest
import torch

from chain_of_diffusion.select.cache import cached_features, file_digest


def _files(tmp_path, contents):
    paths = []
    for i, c in enumerate(contents):
        p = tmp_path / f"{i}.bin"
        p.write_bytes(c)
        paths.append(p)
    return paths


def test_computes_each_content_once_and_reuses_the_cache(tmp_path):
    calls = []

    def features_of(paths):
        """compute for ``paths``: (byte length, position) per file, recording what it was asked."""
        def compute(pos):
            calls.append(list(pos))
            return torch.tensor([[float(len(paths[i].read_bytes())), float(i)] for i in pos])
        return compute

    paths = _files(tmp_path, [b"a", b"bb", b"a", b"ccc"])
    cache = tmp_path / "c" / "features.safetensors"
    got = cached_features(paths, features_of(paths), cache)
    assert calls == [[0, 1, 3]]  # the second "a" is the first one's content
    assert got.tolist() == [[1.0, 0.0], [2.0, 1.0], [1.0, 0.0], [3.0, 3.0]]
    # renamed and reordered files hit the cache; only new content is computed
    moved = tmp_path / "moved.bin"
    shutil.copyfile(paths[3], moved)
    (extra,) = _files(tmp_path / "c", [b"dddd"])
    second = [moved, extra, paths[0]]
    again = cached_features(second, features_of(second), cache)
    assert calls[1:] == [[1]]
    assert again.tolist() == [[3.0, 3.0], [4.0, 1.0], [1.0, 0.0]]
    assert sorted(p.name for p in cache.parent.iterdir() if ".tmp" in p.name) == []  # no temp file left


def test_wrong_row_count_is_an_error(tmp_path):
    paths = _files(tmp_path, [b"a", b"b"])
    with pytest.raises(ValueError, match="1 rows for 2"):
        cached_features(paths, lambda pos: torch.zeros(1, 3), tmp_path / "c.safetensors")


def test_digest_is_content_sha256(tmp_path):
    (p,) = _files(tmp_path, [b"abc"])
    assert file_digest(p) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
