"""What containers are held in by, for hosts other than this one: the plan that
``trissh.backend.podman.containment`` makes from the settings and what ``podman info``
says. (This host's truth is checked with real containers in test_podman_backend.py and
tests/e2e/test_containment.py.)"""

from __future__ import annotations

import dataclasses
from typing import Any

from trissh.backend import BackendError, ContainerSettings
from trissh.backend.podman.containment import HostCaps, containment, containment_check, explained
from trissh.backend.podman.limits import subids_check

MIB = 1024 * 1024
V1 = HostCaps(controllers=frozenset(), cgroup_version="v1", subordinate_ids=1024 * 65536)
V2 = HostCaps(
    controllers=frozenset({"cpu", "memory", "pids"}),
    cgroup_version="v2",
    subordinate_ids=1024 * 65536,
)


def _ulimits(create: dict[str, Any]) -> dict[str, tuple[int, int]]:
    return {u["Name"]: (u["Soft"], u["Hard"]) for u in create["ulimits"]}


def test_cgroup_v1_holds_processes_and_memory_with_rlimits() -> None:
    settings = ContainerSettings(pids_limit=100, memory_limit=512 * MIB, nofile_limit=2048)
    plan = containment(settings, V1)
    assert plan.create["userns_mode"] == "auto"
    assert plan.create["idmappings"] == {"AutoUserNs": True, "AutoUserNsOpts": {"Size": 65536}}
    assert _ulimits(plan.create) == {
        "nproc": (100, 100), "data": (512 * MIB, 512 * MIB), "nofile": (2048, 2048), "core": (0, 0)
    }  # fmt: skip
    assert not {"pids_limit", "mem_limit", "memswap_limit"} & set(plan.create)
    assert plan.skipped == ()


def test_cgroup_v2_uses_the_controllers_and_keeps_the_process_rlimit() -> None:
    settings = ContainerSettings(pids_limit=100, memory_limit=512 * MIB, cpu_shares=512)
    plan = containment(settings, V2)
    assert plan.create["pids_limit"] == 100
    assert plan.create["mem_limit"] == plan.create["memswap_limit"] == 512 * MIB  # no swap
    assert plan.create["cpu_shares"] == 512
    assert set(_ulimits(plan.create)) == {"nproc", "nofile", "core"}  # no per-process memory
    assert "512 MiB of memory (memory controller)" in plan.enforced


def test_without_a_namespace_of_its_own_nproc_would_count_the_podman_user() -> None:
    """userns_size = 0: RLIMIT_NPROC would count every process of the podman user (the
    first fork fails), so it is left out; on cgroup v1 nothing then bounds processes."""
    settings = ContainerSettings(userns_size=0, cpu_shares=512)
    plan = containment(settings, V1)
    assert "userns_mode" not in plan.create
    assert "nproc" not in _ulimits(plan.create)
    assert plan.skipped == ("pids_limit", "cpu_shares")
    check = containment_check(settings, V1)
    assert check.ok
    assert check.warning
    assert "NOT enforced here: pids_limit, cpu_shares" in check.detail
    assert "share the podman user's UID" in check.detail


def test_the_check_counts_how_many_containers_fit() -> None:
    settings = ContainerSettings()
    assert "room for 1024 such containers at once" in containment_check(settings, V2).detail
    assert not containment_check(settings, V2).warning
    few = dataclasses.replace(V2, subordinate_ids=65536 * 3)
    assert containment_check(settings, few).warning
    assert containment_check(settings, few).ok
    none = dataclasses.replace(V2, subordinate_ids=65535)
    check = containment_check(settings, none)
    assert not check.ok
    assert "subordinate IDs" in check.fix


def test_doctor_s_two_lines_on_subordinate_ids_agree() -> None:
    """The ceilings' line divided by a fixed 1,024 ids: 65,536 containers, where the
    containment line (and the truth, with userns_size's 65,536) said 1,024."""
    settings = ContainerSettings()
    info = {"host": {"idMappings": {"uidmap": [
        {"container_id": 0, "host_id": 999, "size": 1},
        {"container_id": 1, "host_id": 100000, "size": 1024 * 65536},
    ]}}}  # fmt: skip
    check, allows = subids_check(info, settings.userns_size)
    assert allows == 1024
    assert "1,024 containers" in check.detail
    assert "room for 1024 such containers" in containment_check(settings, V2).detail
    shared, unbounded = subids_check(info, 0)
    assert unbounded is None
    assert "shared by every container" in shared.detail


def test_host_caps_read_podman_info() -> None:
    info = {
        "host": {
            "cgroupVersion": "v1",
            "cgroupControllers": None,
            "idMappings": {
                "uidmap": [
                    {"container_id": 0, "host_id": 999, "size": 1},
                    {"container_id": 1, "host_id": 131072, "size": 67108864},
                ]
            },
        }
    }
    assert HostCaps.from_info(info) == HostCaps(frozenset(), "v1", 67108864)


def test_running_out_of_id_ranges_is_explained() -> None:
    podman_says = BackendError(
        "podman: creating container storage: could not find enough available IDs"
    )
    explained_error = explained(podman_says, ContainerSettings(userns_size=65536))
    assert str(explained_error).startswith(str(podman_says))
    assert "no free range of 65536 IDs for the container's user namespace" in str(explained_error)
    other = BackendError("podman: something else")
    assert explained(other, ContainerSettings()) is other
