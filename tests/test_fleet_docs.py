"""docs/deployment.md shows the fleet's files (docs/fleet/) exactly as the fleet test runs
them (tests/e2e/test_fleet.py): edit the file, and the page must follow."""

from __future__ import annotations

from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs"


@pytest.mark.parametrize("name", ["haproxy.cfg", "trissh.toml", "trissh@.service"])
def test_the_deployment_page_shows_the_tested_file(name: str) -> None:
    text = (DOCS / "fleet" / name).read_text()
    page = (DOCS / "deployment.md").read_text()
    assert f"\n{text}```\n" in page, f"docs/deployment.md does not show docs/fleet/{name} as is"
