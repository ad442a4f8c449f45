"""The dynamic batcher, against a test double of the network: fast and fully deterministic."""

import asyncio
import functools
import threading
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass

import pytest

from service.batcher import Batcher
from service.errors import DeadlineExceeded, InferenceFailed, NotReady, Overloaded
from service.metrics import Metrics
from tests.service.helpers import TIMEOUT_S, wait_until

pytestmark = pytest.mark.anyio

SMALL = (32, 32)
LARGE = (64, 96)


@dataclass(frozen=True)
class Item:
    name: str
    padded_shape: tuple[int, int] = SMALL


class FakeNetwork:
    """Records every batch; can be held at a gate, and raises for batches holding a poison item."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.poison: set[str] = set()

    def __call__(self, items: Sequence[Item]) -> list[str]:
        self.entered.set()
        assert self.gate.wait(TIMEOUT_S)
        names = [item.name for item in items]
        self.batches.append(names)
        if self.poison & set(names):
            raise RuntimeError("poisoned batch")
        return [f"result of {name}" for name in names]

    def hold(self) -> None:
        self.gate.clear()
        self.entered.clear()


@pytest.fixture
def network() -> Iterator[FakeNetwork]:
    network = FakeNetwork()
    yield network
    network.gate.set()


@pytest.fixture
async def batcher(network: FakeNetwork) -> AsyncIterator[Batcher[Item, str]]:
    batcher = Batcher(network, max_batch_size=4, max_batch_delay_s=0.05, max_queue=8, metrics=Metrics())
    batcher.start()
    yield batcher
    network.gate.set()
    await batcher.close(timeout_s=TIMEOUT_S)


def deadline(seconds: float = TIMEOUT_S) -> float:
    return asyncio.get_running_loop().time() + seconds


async def hold_worker(batcher: Batcher[Item, str], network: FakeNetwork) -> asyncio.Future:
    """Occupy the worker with one batch that waits at the gate; returns that batch's future."""
    network.hold()
    [future] = batcher.submit([Item("blocker")], deadline=deadline())
    await wait_until(network.entered.is_set)
    return future


async def test_images_submitted_together_run_as_one_batch(batcher, network) -> None:
    futures = batcher.submit([Item("a"), Item("b"), Item("c")], deadline=deadline())
    results = await asyncio.gather(*futures)
    assert network.batches == [["a", "b", "c"]]
    assert [r.result for r in results] == ["result of a", "result of b", "result of c"]


async def test_batches_never_exceed_max_batch_size(batcher, network) -> None:
    blocker = await hold_worker(batcher, network)
    futures = batcher.submit([Item(str(i)) for i in range(6)], deadline=deadline())
    network.gate.set()
    await asyncio.gather(blocker, *futures)
    assert network.batches == [["blocker"], ["0", "1", "2", "3"], ["4", "5"]]


async def test_a_lone_image_waits_at_most_the_batch_delay(network) -> None:
    batcher = Batcher(network, max_batch_size=4, max_batch_delay_s=0.02, max_queue=8, metrics=Metrics())
    batcher.start()
    try:
        [future] = batcher.submit([Item("alone")], deadline=deadline())
        async with asyncio.timeout(TIMEOUT_S):
            assert (await future).result == "result of alone"
    finally:
        await batcher.close(timeout_s=TIMEOUT_S)
    assert network.batches == [["alone"]]


async def test_shapes_are_split_oldest_group_first(batcher, network) -> None:
    blocker = await hold_worker(batcher, network)
    futures = batcher.submit(
        [Item("small-1"), Item("large-1", LARGE), Item("small-2"), Item("large-2", LARGE)],
        deadline=deadline(),
    )
    network.gate.set()
    await asyncio.gather(blocker, *futures)
    assert network.batches == [["blocker"], ["small-1", "small-2"], ["large-1", "large-2"]]


async def test_a_full_queue_refuses_the_whole_submission(batcher, network) -> None:
    blocker = await hold_worker(batcher, network)
    queued = batcher.submit([Item(str(i)) for i in range(6)], deadline=deadline())
    with pytest.raises(Overloaded):
        batcher.submit([Item("x"), Item("y"), Item("z")], deadline=deadline())
    assert batcher.depth == 6
    network.gate.set()
    await asyncio.gather(blocker, *queued)
    assert all("x" not in batch for batch in network.batches)


async def test_put_waits_for_room_where_submit_refuses(batcher, network) -> None:
    blocker = await hold_worker(batcher, network)
    queued = batcher.submit([Item(str(i)) for i in range(8)], deadline=deadline())  # the queue is full
    waiting = asyncio.ensure_future(batcher.put(Item("paced"), deadline=deadline()))
    await asyncio.sleep(0)
    assert not waiting.done() and batcher.depth == 8
    network.gate.set()
    paced = await waiting  # room came as the worker took a batch
    await asyncio.gather(blocker, *queued, paced)
    assert (await paced).result == "result of paced"
    assert network.batches[-1][-1] == "paced"


async def test_a_put_waiting_while_the_batcher_closes_is_told_so(batcher, network) -> None:
    blocker = await hold_worker(batcher, network)
    queued = batcher.submit([Item(str(i)) for i in range(8)], deadline=deadline())
    waiting = asyncio.ensure_future(batcher.put(Item("late"), deadline=deadline()))
    await asyncio.sleep(0)
    await batcher.close(timeout_s=0)
    with pytest.raises(NotReady):
        await (await waiting)
    with pytest.raises(NotReady):
        await batcher.put(Item("after"), deadline=deadline())
    network.gate.set()
    await asyncio.gather(blocker, *queued, return_exceptions=True)


async def test_cancelled_images_never_reach_the_network(batcher, network) -> None:
    blocker = await hold_worker(batcher, network)
    gone, kept = batcher.submit([Item("gone"), Item("kept")], deadline=deadline())
    gone.cancel()
    network.gate.set()
    await asyncio.gather(blocker, kept)
    assert network.batches == [["blocker"], ["kept"]]


async def test_images_past_their_deadline_are_dropped_with_deadline_exceeded(batcher, network) -> None:
    blocker = await hold_worker(batcher, network)
    late_deadline = deadline(0.05)
    [late] = batcher.submit([Item("late")], deadline=late_deadline)
    [on_time] = batcher.submit([Item("on-time")], deadline=deadline())
    loop = asyncio.get_running_loop()
    await wait_until(lambda: loop.time() >= late_deadline)
    network.gate.set()
    await asyncio.gather(blocker, on_time)
    with pytest.raises(DeadlineExceeded):
        await late
    assert network.batches == [["blocker"], ["on-time"]]


async def test_a_failing_batch_is_retried_in_halves_down_to_single_images(batcher, network) -> None:
    network.poison = {"poison"}
    blocker = await hold_worker(batcher, network)
    futures = batcher.submit([Item("a"), Item("poison"), Item("b")], deadline=deadline())
    network.gate.set()
    results = await asyncio.gather(blocker, *futures, return_exceptions=True)
    assert isinstance(results[2], InferenceFailed)
    assert [r.result for r in (results[1], results[3])] == ["result of a", "result of b"]
    assert network.batches[1:] == [["a", "poison", "b"], ["a"], ["poison", "b"], ["poison"], ["b"]]
    # The worker carries on.
    [after] = batcher.submit([Item("after")], deadline=deadline())
    assert (await after).result == "result of after"


async def test_a_wrong_number_of_results_fails_the_batch(network) -> None:
    batcher = Batcher(
        lambda items: ["one"], max_batch_size=4, max_batch_delay_s=0.05, max_queue=8, metrics=Metrics()
    )
    batcher.start()
    try:
        futures = batcher.submit([Item("a"), Item("b")], deadline=deadline())
        results = await asyncio.gather(*futures, return_exceptions=True)
        # Retried alone, each image gets the one result it asked for.
        assert [r.result for r in results] == ["one", "one"]
    finally:
        await batcher.close(timeout_s=TIMEOUT_S)


async def test_close_finishes_queued_images(batcher, network) -> None:
    blocker = await hold_worker(batcher, network)
    queued = batcher.submit([Item("a"), Item("b")], deadline=deadline())
    closing = asyncio.ensure_future(batcher.close(timeout_s=TIMEOUT_S))
    network.gate.set()
    await closing
    assert [r.result for r in await asyncio.gather(blocker, *queued)] == [
        "result of blocker",
        "result of a",
        "result of b",
    ]
    assert not batcher.is_running


async def test_close_gives_up_after_its_timeout(batcher, network) -> None:
    blocker = await hold_worker(batcher, network)
    [queued] = batcher.submit([Item("a")], deadline=deadline())
    await batcher.close(timeout_s=0.01)
    with pytest.raises(NotReady):
        await queued
    with pytest.raises(NotReady):
        await blocker
    network.gate.set()


async def test_metrics_record_batches_and_waits(network) -> None:
    metrics = Metrics()
    batcher = Batcher(network, max_batch_size=4, max_batch_delay_s=0.05, max_queue=8, metrics=metrics)
    batcher.start()
    try:
        await asyncio.gather(*batcher.submit([Item("a"), Item("b")], deadline=deadline()))
    finally:
        await batcher.close(timeout_s=TIMEOUT_S)
    registry = metrics.registry
    assert registry.get_sample_value("centermask_batch_size_count") == 1
    assert registry.get_sample_value("centermask_batch_size_sum") == 2
    assert registry.get_sample_value("centermask_queue_wait_seconds_count") == 2
    assert registry.get_sample_value("centermask_batch_inference_seconds_count") == 1


async def test_warm_up_runs_every_step_in_the_inference_thread_outside_the_metrics(network) -> None:
    metrics = Metrics()
    batcher = Batcher(network, max_batch_size=3, max_batch_delay_s=0.05, max_queue=8, metrics=metrics)
    threads = []

    def step(size: int) -> None:
        threads.append(threading.current_thread().name)
        network([Item("w")] * size)

    try:
        steps = [({"batch_size": size}, functools.partial(step, size)) for size in (1, 2, 3)]
        assert await batcher.warm_up(steps) > 0
    finally:
        await batcher.close(timeout_s=TIMEOUT_S)
    assert network.batches == [["w"], ["w", "w"], ["w", "w", "w"]]
    assert threads == ["centermask-infer"] * 3
    assert metrics.registry.get_sample_value("centermask_batch_size_count") == 0
