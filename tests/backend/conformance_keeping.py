"""The part of the conformance suite about what outlives a server process (workspaces): a
kept sandbox found by its labels and adopted, removed by order, left alone by the sweep,
and named volumes. Every test leaves nothing behind."""

from __future__ import annotations

import dataclasses
import uuid

import pytest
import trio

from trissh.backend import BackendError, FoundSandbox, ProcessSpec, SandboxSpec, Volume
from trissh.backend.base import LABEL_RECIPE, LABEL_USER, LABEL_WORKSPACE

from .conformance import TEST_BOUND, Harness, run


def workspace_spec(h: Harness, user: str, **changes: object) -> SandboxSpec:
    spec = dataclasses.replace(h.sandbox_spec(), username=user, workspace=user, recipe="r1")
    return dataclasses.replace(spec, **changes)  # type: ignore[arg-type]


async def echo(h: Harness, sandbox: object, text: str) -> bytes:
    async with sandbox.open_process(ProcessSpec(argv=h.sh(f"echo {text}"))) as process:  # type: ignore[attr-defined]
        out, _, status = await run(process)
    assert status.code == 0
    return out


class KeepingConformance:
    async def test_a_kept_sandbox_is_found_by_its_labels_and_adopted(
        self, harness: Harness
    ) -> None:
        """Kept: still there after its context, labelled with its user and recipe; adopted:
        the same container runs programs again; leaving the adopter's context removes it."""
        user = f"ws-{uuid.uuid4().hex[:8]}"
        with trio.fail_after(TEST_BOUND):
            async with harness.backend.open_sandbox(workspace_spec(harness, user)) as sandbox:
                first_id = sandbox.container_id
                sandbox.keep()
            [found] = await harness.backend.find_sandboxes({LABEL_WORKSPACE: user})
            assert (found.container_id, found.running) == (first_id, True)
            assert found.labels[LABEL_USER] == user
            assert found.labels[LABEL_RECIPE] == "r1"
            assert await harness.backend.find_sandboxes({LABEL_WORKSPACE: user + "x"}) == []
            async with harness.backend.adopt_sandbox(
                found, workspace_spec(harness, user)
            ) as adopted:
                assert adopted.container_id == first_id
                assert await echo(harness, adopted, "again") == b"again\n"
            assert await harness.backend.find_sandboxes({LABEL_WORKSPACE: user}) == []

    async def test_adopting_what_is_gone_fails(self, harness: Harness) -> None:
        gone = FoundSandbox(container_id="0" * 64, labels={}, running=True)
        with trio.fail_after(TEST_BOUND), pytest.raises(BackendError):
            async with harness.backend.adopt_sandbox(gone, workspace_spec(harness, "nobody")):
                pytest.fail("adopted a container that does not exist")

    async def test_remove_sandbox_and_the_sweep_leaves_workspaces(self, harness: Harness) -> None:
        """A kept workspace of another (gone) instance survives the sweep; an operator's
        removal takes it; a second removal finds nothing."""
        user = f"ws-{uuid.uuid4().hex[:8]}"
        spec = workspace_spec(harness, user, instance=f"gone-{uuid.uuid4().hex[:8]}")
        with trio.fail_after(TEST_BOUND):
            async with harness.backend.open_sandbox(spec) as sandbox:
                sandbox.keep()
            await harness.backend.sweep(keep_instance=harness.instance)
            [found] = await harness.backend.find_sandboxes({LABEL_WORKSPACE: user})
            assert await harness.backend.remove_sandbox(found.container_id) is True
            assert await harness.backend.find_sandboxes({LABEL_WORKSPACE: user}) == []
            assert await harness.backend.remove_sandbox(found.container_id) is False

    async def test_named_volumes(self, harness: Harness) -> None:
        """Created once (a second create keeps it), found by label, in use while a sandbox
        mounts it (and not removable then), removable after."""
        name = f"trissh-conformance-{uuid.uuid4().hex[:10]}"
        labels = {"trissh.home": name}
        backend = harness.backend
        settings = dataclasses.replace(
            harness.settings,
            volumes=(Volume(source=name, destination="/mnt", named=True, read_only=False),),
        )
        with trio.fail_after(TEST_BOUND):
            await backend.create_volume(name, labels)
            await backend.create_volume(name, labels)
            [volume] = await backend.find_volumes(labels)
            assert (volume.name, volume.in_use) == (name, False)
            async with backend.open_sandbox(harness.sandbox_spec(settings=settings)):
                [volume] = await backend.find_volumes(labels)
                assert volume.in_use
                with pytest.raises(BackendError):
                    await backend.remove_volume(name)
            assert await backend.remove_volume(name) is True
            assert await backend.find_volumes(labels) == []
            assert await backend.remove_volume(name) is False

    async def test_put_files_before_a_program_reads_them(self, harness: Harness) -> None:
        """Files land at their absolute paths, parents made, a second write replaces; a
        relative path is refused."""
        files = {"/etc/trissh-conf/a.txt": b"alpha\n", "/tmp/b.txt": b"beta\n"}
        with trio.fail_after(TEST_BOUND):
            async with harness.backend.open_sandbox(harness.sandbox_spec()) as sandbox:
                await sandbox.put_files(files)
                await sandbox.put_files({"/tmp/b.txt": b"beta again\n"})
                cat = ProcessSpec(argv=harness.sh("cat /etc/trissh-conf/a.txt /tmp/b.txt"))
                async with sandbox.open_process(cat) as process:
                    out, _, status = await run(process)
                with pytest.raises(BackendError):
                    await sandbox.put_files({"relative.txt": b"x"})
        assert (out, status.code) == (b"alpha\nbeta again\n", 0)
