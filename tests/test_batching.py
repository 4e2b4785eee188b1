import pytest
import torch

from chain_of_diffusion.batching import fixed_batches


def test_every_call_gets_exactly_rows_and_padding_is_dropped():
    seen = []

    def fn(x, y):
        seen.append(x.shape[0])
        return x * 10 + y

    x, y = torch.arange(10.0)[:, None], torch.ones(10, 1)
    out = fixed_batches(fn, 4, x, y)
    assert seen == [4, 4, 4]
    assert torch.equal(out, x * 10 + 1)


def test_a_row_does_not_depend_on_its_batch_mates():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 8, 3, padding=1)
    x = torch.randn(20, 3, 16, 16)
    with torch.no_grad():
        whole = fixed_batches(conv, 8, x)
        alone = fixed_batches(conv, 8, x[13:14])
        shifted = fixed_batches(conv, 8, x[5:])
    assert torch.equal(whole[13], alone[0]) and torch.equal(whole[13], shifted[8])


def test_no_rows_is_an_error():
    with pytest.raises(ValueError):
        fixed_batches(lambda x: x, 4, torch.empty(0, 3))
