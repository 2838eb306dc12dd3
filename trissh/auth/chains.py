"""sshd's ``AuthenticationMethods``: chains of methods, any one of which logs a user in.

A chain like ``publickey,keyboard-interactive`` must be passed in that order; at each
stage only methods that come next in some chain are offered (sshd_config(5)).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence


class MethodChains:
    def __init__(self, chains: Iterable[Sequence[str]]) -> None:
        self.chains = tuple(tuple(chain) for chain in chains if chain)

    @classmethod
    def parse(cls, items: Iterable[str]) -> MethodChains:
        """``["publickey,password", "keyboard-interactive"]`` -> chains."""
        return cls(tuple(part.strip() for part in item.split(",")) for item in items)

    def next_methods(self, passed: Sequence[str]) -> tuple[str, ...]:
        """Methods that may come after ``passed``, in chain order, without repeats."""
        depth = len(passed)
        found: list[str] = []
        for chain in self.chains:
            if chain[:depth] == tuple(passed) and len(chain) > depth and chain[depth] not in found:
                found.append(chain[depth])
        return tuple(found)

    def complete(self, passed: Sequence[str]) -> bool:
        return tuple(passed) in self.chains
