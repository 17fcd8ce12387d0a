"""TenantRotation: round-robin across tenants, FIFO within one (pure logic, no root needed)."""

from __future__ import annotations

import pytest

from sandlot.fairness import TenantRotation


def _drain(rotation: TenantRotation[str]) -> list[str]:
    return [rotation.pop() for _ in range(len(rotation))]


def test_a_burst_of_one_tenant_waits_behind_the_others_and_keeps_its_order() -> None:
    rotation: TenantRotation[str] = TenantRotation()
    for i in range(4):
        rotation.push("a", f"a{i}")
    rotation.push("b", "b0")
    rotation.push("c", "c0")
    rotation.push("b", "b1")
    assert len(rotation) == 7
    assert _drain(rotation) == ["a0", "b0", "c0", "a1", "b1", "a2", "a3"]
    assert len(rotation) == 0
    assert not rotation


def test_a_tenant_that_comes_back_joins_at_the_back() -> None:
    rotation: TenantRotation[str] = TenantRotation()
    rotation.push("a", "a0")
    rotation.push("b", "b0")
    assert rotation.pop() == "a0"  # a leaves the rotation with its last item
    rotation.push("a", "a1")
    rotation.push("c", "c0")
    assert _drain(rotation) == ["b0", "a1", "c0"]


def test_remove_takes_one_item_out_and_an_emptied_tenant_leaves_the_rotation() -> None:
    rotation: TenantRotation[str] = TenantRotation()
    rotation.push("a", "a0")
    rotation.push("b", "b0")
    rotation.push("b", "b1")
    assert rotation.remove("a", "a0")
    assert not rotation.remove("a", "a0")  # already gone
    assert not rotation.remove("b", "a0")  # not that tenant's
    assert not rotation.remove("z", "z0")  # unknown tenant
    assert len(rotation) == 2
    rotation.push("a", "a1")  # a joins again, behind b
    assert rotation.remove("b", "b0")
    assert _drain(rotation) == ["b1", "a1"]


def test_iteration_sees_every_waiting_item_and_clear_empties_it() -> None:
    rotation: TenantRotation[int] = TenantRotation()
    for i in range(3):
        rotation.push("a" if i % 2 else "b", i)
    assert sorted(rotation) == [0, 1, 2]
    rotation.clear()
    assert len(rotation) == 0
    assert list(rotation) == []
    with pytest.raises(IndexError):
        rotation.pop()
