"""Concurrent logins needing the same image share one pull (``Images.ensure``), and a pull
whose login went away does not leave the others without their image.

What is tested is the coordination in ``ensure``; the pull itself (podman's
``/images/pull``) is replaced below it by a recorder, and the image is never present.
"""

from __future__ import annotations

from typing import Any

import trio
import trio.testing

from trissh.backend.podman.images import Images

IMAGE = "registry.example:5000/team/dev:1"


class RecordingPulls(Images):
    def __init__(self) -> None:
        super().__init__(api=None, registries={})  # type: ignore[arg-type]
        self.pulls: list[str] = []
        self.release = trio.Event()
        #: What podman's local storage holds (a pull adds the image).
        self.stored: set[str] = set()
        self.exists_asked = 0

    async def _exists(self, image: str) -> bool:
        await trio.lowlevel.checkpoint()
        self.exists_asked += 1
        return image in self.stored

    async def _pull(self, image: str) -> None:
        self.pulls.append(image)
        await self.release.wait()
        self.stored.add(image)


async def test_logins_waiting_for_the_same_image_share_one_pull(
    autojump_clock: trio.testing.MockClock,
) -> None:
    images = RecordingPulls()
    done: list[int] = []

    async def login(n: int) -> None:
        await images.ensure(IMAGE, "if-not-present")
        done.append(n)

    async with trio.open_nursery() as nursery:
        for n in range(3):
            nursery.start_soon(login, n)
        await trio.sleep(1)
        images.release.set()
    assert images.pulls == [IMAGE]
    assert sorted(done) == [0, 1, 2]


async def test_a_pull_whose_login_left_is_taken_over_by_a_waiting_one(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The first login starts the pull and its client leaves (cancelled); the second, which
    waited on that pull, must not go on as if the image were there (its create would fail
    with "image not found"): it pulls itself."""
    images = RecordingPulls()
    second: list[Any] = []
    async with trio.open_nursery() as nursery:
        first = trio.CancelScope()

        async def first_login() -> None:
            with first:
                await images.ensure(IMAGE, "if-not-present")

        async def second_login() -> None:
            await images.ensure(IMAGE, "if-not-present")
            second.append(len(images.pulls))

        nursery.start_soon(first_login)
        await trio.sleep(1)
        nursery.start_soon(second_login)
        await trio.sleep(1)
        first.cancel()
        await trio.sleep(1)
        assert second == []  # still waiting: for a pull of its own now
        images.release.set()
    assert images.pulls == [IMAGE, IMAGE]
    assert second == [2]


async def test_an_image_seen_present_is_not_asked_for_again_until_forgotten() -> None:
    """if-not-present: the first start asks podman whether the image is there, later ones
    do not; an image podman lost since (forget, after a create found none) is asked for and
    pulled again. always pulls every time."""
    images = RecordingPulls()
    images.release.set()
    images.stored.add(IMAGE)
    for _ in range(3):
        await images.ensure(IMAGE, "if-not-present")
    assert (images.exists_asked, images.pulls) == (1, [])
    images.stored.clear()  # an operator removed it
    images.forget(IMAGE)
    images.forget(IMAGE)  # a second start that found it missing at the same time
    assert Images.may_pull(IMAGE, "if-not-present")
    assert not Images.may_pull(IMAGE, "never")
    assert not Images.may_pull("localhost/team/dev:1", "always")
    await images.ensure(IMAGE, "if-not-present")
    await images.ensure(IMAGE, "if-not-present")
    assert (images.exists_asked, images.pulls) == (2, [IMAGE])
    await images.ensure(IMAGE, "always")
    assert images.pulls == [IMAGE, IMAGE]
