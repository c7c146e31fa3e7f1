"""Render the deployment templates in deploy/ with this server's paths, user and ports.

    python3 deploy/render.py OUTDIR [NAME=VALUE ...]

Every ``@NAME@`` in the templates is replaced by VALUE, or by its default
below; the variables are documented in docs/DEPLOY.md ("The variables").
The rendered files land in OUTDIR with the same layout (nginx/notify.conf,
supervisor/notify.conf, systemd/notify.socket, systemd/notify@.service,
notify.env); copy them into place from there. Needs Python 3 alone.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

TEMPLATES = (
    "nginx/notify.conf",
    "supervisor/notify.conf",
    "systemd/notify.socket",
    "systemd/notify@.service",
    "notify.env",
)

# The variables and their defaults (docs/DEPLOY.md says what each one is).
DEFAULTS: dict[str, str] = {
    "PROJECT_DIR": "/srv/notify",
    "USER": "notify",
    "GROUP": "notify",
    "ENV_FILE": "/etc/notify/notify.env",
    "LOG_DIR": "/var/log/notify",
    "STATIC_ROOT": "/var/www/notify/static",
    "PORT": "8765",
    "BIND": "127.0.0.1",
    "UPSTREAMS": "",
    "PROCESSES": "2",
    "NOFILE": "65536",
    "SERVER_NAME": "notify.example.com",
    "LISTEN": "80",
}

PLACEHOLDER = re.compile(r"@([A-Z_]+)@")

# What each variable may hold, so that no value can break the syntax of the
# files it lands in: % is supervisord's %(...)s expansion and a systemd
# specifier, a space splits command= and ExecStart=, ; and } end an nginx
# directive or block.
_PATH = (r"/[A-Za-z0-9._/-]*", "an absolute path of letters, digits and . _ / -")
_NAME = (r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,31}", "a user or group name (letters, digits, _ . -)")
_NUMBER = (r"[1-9][0-9]{0,6}", "a positive whole number")
_HOST = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*"
_ADDRESS = rf"(?:{_HOST}|\[[0-9A-Fa-f:.]+\])"
FORMATS: dict[str, tuple[str, str]] = {
    "PROJECT_DIR": _PATH,
    "USER": _NAME,
    "GROUP": _NAME,
    "ENV_FILE": _PATH,
    "LOG_DIR": _PATH,
    "STATIC_ROOT": _PATH,
    "PORT": (r"[0-9]{1,5}", "a port number (1-65535)"),
    "BIND": (_ADDRESS, "an IP address or host name, an IPv6 address in brackets"),
    "UPSTREAMS": (
        rf"(?:{_ADDRESS}:[0-9]{{1,5}}(?:,{_ADDRESS}:[0-9]{{1,5}})*)?",
        "ADDRESS:PORT of each host's daphne socket, comma-separated (empty: BIND:PORT)",
    ),
    "PROCESSES": _NUMBER,
    "NOFILE": _NUMBER,
    "SERVER_NAME": (_HOST, "one host name (letters, digits, - and dots)"),
    "LISTEN": (
        rf"(?:(?:{_HOST}|\[[0-9A-Fa-f:.]+\]):)?[0-9]{{1,5}}",
        "a port (1-65535), or ADDRESS:PORT for nginx's listen",
    ),
}


class RenderError(Exception):
    """A bad variable or a template left with a placeholder: reported in one line."""


def variables(overrides: dict[str, str]) -> dict[str, str]:
    unknown = sorted(set(overrides) - set(DEFAULTS))
    if unknown:
        raise RenderError(f"unknown variable {unknown[0]}; known: {', '.join(DEFAULTS)}")
    values = {**DEFAULTS, **overrides}
    for name, value in values.items():
        pattern, description = FORMATS[name]
        if not re.fullmatch(pattern, value) or (name in {"PORT", "LISTEN"} and not 0 < port_of(value) < 65536):
            raise RenderError(f"{name}={value!r} is not {description}")
    for upstream in filter(None, values["UPSTREAMS"].split(",")):
        if not 0 < port_of(upstream) < 65536:
            raise RenderError(f"UPSTREAMS={values['UPSTREAMS']!r} has {upstream!r}, whose port is not 1-65535")
    # nginx on the daphne host by default: the one socket there.
    values["UPSTREAMS"] = values["UPSTREAMS"] or f"{values['BIND']}:{values['PORT']}"
    return values


def port_of(value: str) -> int:
    return int(value.rpartition(":")[2])


def render_text(text: str, values: dict[str, str], *, source: str = "template") -> str:
    """``text`` with its @NAME@ placeholders filled in; a line with @UPSTREAMS@ is written once per upstream."""

    def replace(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in values:
            raise RenderError(f"{source} uses @{name}@, which is no variable; known: {', '.join(values)}")
        return values[name]

    lines = []
    for line in text.splitlines(keepends=True):
        if "@UPSTREAMS@" in line:
            lines += [line.replace("@UPSTREAMS@", item) for item in values["UPSTREAMS"].split(",")]
        else:
            lines.append(line)
    return PLACEHOLDER.sub(replace, "".join(lines))


def render(name: str, overrides: dict[str, str] | None = None) -> str:
    """The template ``name`` (one of TEMPLATES) rendered with ``overrides`` over the defaults."""
    return render_text((HERE / name).read_text(), variables(overrides or {}), source=name)


def render_all(outdir: Path, overrides: dict[str, str] | None = None) -> list[Path]:
    values = variables(overrides or {})
    written = []
    for name in TEMPLATES:
        target = outdir / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(render_text((HERE / name).read_text(), values, source=name))
        written.append(target)
    return written


def main(argv: list[str]) -> int:
    if not argv or argv[0] in {"-h", "--help"}:
        print(__doc__.strip())
        print("\nVariables and defaults:")
        for name, value in DEFAULTS.items():
            print(f"  {name}={value}")
        return 0 if argv else 2
    overrides: dict[str, str] = {}
    for item in argv[1:]:
        name, sep, value = item.partition("=")
        if not sep:
            print(f"deploy/render.py: {item!r} is not NAME=VALUE", file=sys.stderr)
            return 2
        overrides[name] = value
    try:
        written = render_all(Path(argv[0]), overrides)
    except (RenderError, OSError) as exc:
        print(f"deploy/render.py: {exc}", file=sys.stderr)
        return 2
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
