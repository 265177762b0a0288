"""The one quiescent checker, :func:`avcm.testing.check_quiescent`: it passes on consistent
contexts, returning the checks it made, and for each broken rule raises
:class:`avcm.testing.InvariantViolation` naming the rule by its number in the contract.

The inconsistent states are caught mid-operation from a sync hook (a lock held, a count in
flight, a phys counted bound before its reservation is), which is what a cancelled or failed
operation leaving them behind would look like at quiescence.
"""

from __future__ import annotations

import pickle
from collections.abc import Awaitable, Callable

import pytest

import avcm
import drivers
from avcm import testing
from avcm.lowlevel import sync_hook
from tests._recording import make_context

pytestmark = pytest.mark.anyio

MiB = 1 << 20
KiB = 1 << 10
ZERO = drivers.Latency.profile("zero")


@pytest.fixture
def memory() -> avcm.PhysicalMemory:
    return avcm.PhysicalMemory(size=64 * MiB)


async def caught_at(
    point: str, operation: Callable[[], Awaitable[object]], check: Callable[[], object]
) -> testing.InvariantViolation:
    """Run *operation*; at its sync point *point*, run *check*, which must raise a violation."""
    caught: list[testing.InvariantViolation] = []

    async def hook(at: str, obj: object) -> None:
        if at == point and not caught:
            with pytest.raises(testing.InvariantViolation) as info:
                check()
            caught.append(info.value)

    with sync_hook(hook):
        await operation()
    assert caught, f"the operation never reached {point}"
    return caught[0]


async def test_passes_on_consistent_contexts_sharing_a_phys(
    memory: avcm.PhysicalMemory,
) -> None:
    """A phys bound in two contexts counts two bindings: the contexts are checked together."""
    iommu = drivers.create_iommu(memory, latency=ZERO)
    cpu = drivers.create_cpu(memory, latency=ZERO)
    res = await iommu.make_binding(64 * KiB)
    assert res.phys is not None
    await cpu.map(res.phys)
    await iommu.activate()
    spare = avcm.phys_alloc(8 * KiB, memory=memory)
    checks = testing.check_quiescent([iommu, cpu], physes=[spare], activations={iommu: 1, cpu: 0})
    assert checks == {
        "rule 3 count": 2,
        "rule 7 locks": 2,
        "rule 4 model": 2,
        "rule 5 bindings": 2,  # the shared phys and the spare one
        "rule 9 overlap": 1,
    }
    with pytest.raises(testing.InvariantViolation) as info:
        testing.check_quiescent([iommu], physes=[spare])  # the cpu's binding is not seen
    assert info.value.rule == 5


async def test_rule_3_the_count_the_caller_expects(memory: avcm.PhysicalMemory) -> None:
    vcm, _ = make_context(memory)
    await vcm.activate()
    with pytest.raises(testing.InvariantViolation) as info:
        testing.check_quiescent([vcm], activations={vcm: 2})
    assert info.value.rule == 3
    assert str(info.value) == "rule 3: test: activations=1, expected 2"
    testing.check_quiescent([vcm], activations={vcm: 1})


async def test_rule_4_hardware_that_forgot_a_mapping(memory: avcm.PhysicalMemory) -> None:
    vcm, driver = make_context(memory)
    res = await vcm.make_binding(8 * KiB)
    await vcm.activate()
    del driver.mapped[res]
    with pytest.raises(testing.HardwareMismatch) as info:
        testing.check_quiescent([vcm])
    assert info.value.rule == 4 and "missing in hardware" in info.value.description


async def test_rule_5_bindings_that_count_an_unbound_reservation(
    memory: avcm.PhysicalMemory,
) -> None:
    vcm, _ = make_context(memory)
    res = await vcm.reserve(8 * KiB)
    phys = await vcm.alloc(8 * KiB)
    # at the driver's bind the phys counts the binding; the reservation is not bound yet
    violation = await caught_at(
        "driver.bind", lambda: res.bind(phys), lambda: testing.check_quiescent([], physes=[phys])
    )
    assert violation.rule == 5
    assert "bindings=1 but it is bound to 0 reservation(s)" in violation.description


async def test_rule_5_statistics_that_miscount_the_bound_reservations(
    memory: avcm.PhysicalMemory,
) -> None:
    vcm, _ = make_context(memory)
    await vcm.make_binding(8 * KiB)
    await vcm.reserve(8 * KiB)
    assert vcm.statistics().bound_reservations == 1
    testing.check_quiescent([vcm])
    vcm._bound += 1  # avcm-private: the count statistics() reads, made to drift
    with pytest.raises(testing.InvariantViolation) as caught:
        testing.check_quiescent([vcm])
    assert caught.value.rule == 5
    assert "statistics count 2 bound reservations, but 1 are bound" in caught.value.description


async def test_rule_6_a_reservation_bound_to_freed_memory(memory: avcm.PhysicalMemory) -> None:
    vcm, _ = make_context(memory)
    res = await vcm.make_binding(8 * KiB)
    assert res.phys is not None
    # no operation can do this (free refuses a bound phys): corrupt it as a core bug would
    res.phys._freed = True
    with pytest.raises(testing.InvariantViolation) as info:
        testing.check_quiescent([vcm])
    assert info.value.rule == 6
    res.phys._freed = False


async def test_rule_7_a_context_mutex_held(memory: avcm.PhysicalMemory) -> None:
    vcm, _ = make_context(memory)
    res = await vcm.reserve(8 * KiB)
    phys = await vcm.alloc(8 * KiB)
    violation = await caught_at(
        "driver.bind", lambda: res.bind(phys), lambda: testing.check_quiescent([vcm])
    )
    assert violation.rule == 7 and "mutex still held" in violation.description


async def test_rule_7_a_phys_lock_held(memory: avcm.PhysicalMemory) -> None:
    vcm, _ = make_context(memory)
    phys = await vcm.alloc(8 * KiB)
    violation = await caught_at("driver.free", phys.free, lambda: testing.check_quiescent([vcm]))
    assert violation.rule == 7 and "lock still held" in violation.description


async def test_rule_7_a_creation_in_flight(memory: avcm.PhysicalMemory) -> None:
    vcm, _ = make_context(memory)
    violation = await caught_at(
        "driver.phys", lambda: vcm.alloc(8 * KiB), lambda: testing.check_quiescent([vcm])
    )
    assert violation.rule == 7 and "in flight" in violation.description


async def test_rule_9_two_live_allocations_overlapping() -> None:
    """Two simulated memories at the same base hand out the same addresses: as one allocator
    handing out memory twice would."""
    first, second = avcm.PhysicalMemory(size=MiB), avcm.PhysicalMemory(size=MiB)
    a = avcm.phys_alloc(8 * KiB, memory=first)
    b = avcm.phys_alloc(8 * KiB, memory=second)
    with pytest.raises(testing.InvariantViolation) as info:
        testing.check_quiescent([], physes=[a, b], name=lambda phys: "A" if phys is a else "B")
    assert info.value.rule == 9
    assert info.value.description.startswith(f"live allocations overlap at {b.parts[0].start:#x}")
    assert "A and B" in info.value.description
    await b.free()
    testing.check_quiescent([], physes=[a, b])  # a freed phys is skipped


def test_violations_pickle_with_their_rule() -> None:
    for violation in (testing.InvariantViolation(5, "x"), testing.HardwareMismatch("y")):
        copy = pickle.loads(pickle.dumps(violation))
        assert type(copy) is type(violation)
        assert (copy.rule, copy.description, str(copy)) == (
            violation.rule,
            violation.description,
            str(violation),
        )
