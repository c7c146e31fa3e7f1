"""The suite by kind: which fixtures make a test a server, deploy or browser test rather than a unit test."""

from __future__ import annotations

from collections.abc import Iterable

# The suite by kind: each test gets exactly one of these markers, the heaviest
# that the fixtures it uses (directly or through other fixtures) call for.
# A test that starts a process of ours does it through one of these fixtures.
KINDS: dict[str, frozenset[str]] = {
    "browser": frozenset({"browser"}),
    "deploy": frozenset(
        {"nginx_binary", "nginx_factory", "deployments", "systemd_analyze", "socket_activate", "systemd_services"}
    ),
    "server": frozenset(
        {
            "daphne",
            "daphne_factory",
            "redis_daphne_pair",
            "redis_url",
            "own_redis",
            "manage",
            "run_python",
            "collected_static",
            "bin_serve",
            "installed_wheel",
            "old_server",
            "wheel",
        }
    ),
}
UNIT = "unit"


def kind_of(fixturenames: Iterable[str]) -> str:
    """The heaviest kind that ``fixturenames`` call for: browser, deploy, server, else unit."""
    names = set(fixturenames)
    return next((kind for kind, fixtures in KINDS.items() if names & fixtures), UNIT)
