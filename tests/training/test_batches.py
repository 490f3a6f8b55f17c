"""Seeded, device-resident batches: reproducible per (seed, epoch), resumable mid-epoch."""

import torch

from ptychostab.training.batches import SeededBatches, epoch_permutation, place


def test_permutation_depends_on_seed_and_epoch_only():
    a = epoch_permutation(50, seed=0, epoch=3)
    assert torch.equal(a, epoch_permutation(50, seed=0, epoch=3))
    assert sorted(a.tolist()) == list(range(50))
    assert not torch.equal(a, epoch_permutation(50, seed=0, epoch=4))
    assert not torch.equal(a, epoch_permutation(50, seed=1, epoch=3))


def test_batches_cover_each_sample_once_with_a_remainder_batch():
    data = torch.arange(10).float().view(10, 1)
    pos = {"epoch": 0, "first": 0}
    b = SeededBatches(data, 4, seed=7, cursor=lambda: (pos["epoch"], pos["first"]))
    batches = list(b)
    assert [len(x) for x in batches] == [4, 4, 2] and b.batches_per_epoch == 3
    seen = torch.cat(batches).view(-1)
    assert torch.equal(seen, epoch_permutation(10, 7, 0).float())
    pos.update(epoch=1)
    assert not torch.equal(torch.cat(list(b)).view(-1), seen)


def test_resume_in_the_middle_of_an_epoch_gives_the_same_tail():
    data = torch.randn(11, 2)
    pos = {"epoch": 5, "first": 0}
    b = SeededBatches(data, 3, seed=1, cursor=lambda: (pos["epoch"], pos["first"]))
    full = list(b)
    pos["first"] = 2
    tail = list(b)
    assert len(tail) == 2
    assert all(torch.equal(x, y) for x, y in zip(full[2:], tail, strict=True))


def test_cursor_is_read_at_the_first_batch_not_at_iter():
    pos = {"epoch": 0}
    b = SeededBatches(torch.arange(6).float(), 6, seed=0, cursor=lambda: (pos["epoch"], 0))
    it = iter(b)
    pos["epoch"] = 2
    assert torch.equal(next(it), epoch_permutation(6, 0, 2).float())


def test_place_respects_the_budget():
    x = torch.zeros(1000).numpy()
    t, on = place(x, torch.device("cpu"), budget_bytes=4000)
    assert on and t.shape == (1000,)
    _, on = place(x, torch.device("cpu"), budget_bytes=3999)
    assert not on
