"""``lessor settings``: settings inherited org -> domain -> project (get, set, edit).

Scopes: ``*`` (org), ``*/DOMAIN`` (a domain), ``PROJECT/DOMAIN`` (a project, which
is a namespace). Files and the editor use TOML (or JSON for ``--from-file``):
one line per setting, ``"run.default_queue" = "fast"``; ``"~unset"`` blocks
inheritance.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import tempfile
import tomllib
from pathlib import Path
from typing import Any

import anyio

from lessor.cli.options import add_url, url_of

SCOPE_HELP = "* (org), */DOMAIN (a domain, e.g. */production) or PROJECT/DOMAIN (a project, e.g. demo/production)"


def add_commands(sub) -> None:
    """Add `settings get|set|edit` to the subparsers ``sub``."""
    p = sub.add_parser("settings", help="settings inherited org -> domain -> project (get, set, edit)",
                       description="Settings are defaults a namespace's submits use when they give none "
                                   "(run.default_queue, run.default_retries, run.timeout_s, run.durability, ...). "
                                   "A project inherits from its domain (*/DOMAIN), which inherits from the org "
                                   "(*): the most specific scope wins, maps merge, and \"~unset\" blocks "
                                   "inheritance. Writes are versioned: a write made from a stale read is "
                                   "refused with nothing written.")
    verbs = p.add_subparsers(dest="verb", metavar="VERB", required=True)

    s = verbs.add_parser("get", help="effective settings of a namespace, each with the scope it came from",
                         description="With a namespace (PROJECT/DOMAIN): every setting's effective value and "
                                     "the scope it came from. With * or */DOMAIN, or with --local: that "
                                     "scope's own overrides and their version.")
    add_url(s)
    s.add_argument("target", metavar="NS|SCOPE", help=SCOPE_HELP)
    s.add_argument("--local", action="store_true", help="only the scope's own overrides, with their version")
    s.add_argument("--json", action="store_true")
    s.set_defaults(handler=cmd_get)

    s = verbs.add_parser("set", help="set settings of a scope (key=value ..., or --from-file)",
                         description="key=value ... changes those keys and keeps the scope's others; "
                                     "--from-file replaces the scope's whole document (keys it leaves out "
                                     "are inherited again). Maps are JSON: run.labels='{\"team\": \"ml\"}'. "
                                     "--version makes the write conditional on the version you read.")
    add_url(s)
    s.add_argument("scope", metavar="SCOPE", help=SCOPE_HELP)
    s.add_argument("assignments", nargs="*", metavar="KEY=VALUE")
    s.add_argument("--from-file", metavar="F", help="a .toml or .json file of key = value: the new document")
    s.add_argument("--clear", action="append", default=[], metavar="KEY",
                   help="drop KEY from this scope (it is inherited again); repeatable")
    s.add_argument("--version", type=int, metavar="V",
                   help="write only if the scope is still at version V (as `settings get --local` showed)")
    s.set_defaults(handler=cmd_set)

    s = verbs.add_parser("edit", help="edit a scope's settings in $EDITOR (written with the version read)",
                         description="Opens $EDITOR (else vi) on the scope's overrides as TOML, with the "
                                     "inherited values and the other settings as comments. On save the "
                                     "document is written with the version it was read at: if someone changed "
                                     "the scope meanwhile, nothing is written and your edit is kept in a file.")
    add_url(s)
    s.add_argument("scope", metavar="SCOPE", help=SCOPE_HELP)
    s.set_defaults(handler=cmd_edit)


def _text(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False) if not isinstance(value, str) else value


def cmd_get(args: argparse.Namespace) -> int:
    """`lessor settings get NS|SCOPE`: effective values with their origin, or one scope's own document."""
    import lessor
    from lessor.core.settings import SETTINGS, check_scope, level_of
    from lessor.scheduler.settings import as_json

    scope = check_scope(args.target)
    local = args.local or level_of(scope) != "project"

    async def run():
        async with lessor.connect(url_of(args)) as client:
            return await (client.read_settings(scope) if local else client.get_settings(scope))

    got = anyio.run(run)
    if local:
        if args.json:
            print(json.dumps({"scope": scope, "version": got.version, "settings": got.document}))
            return 0
        print(f"settings of {scope} ({level_of(scope)}), version {got.version}"
              + ("" if got.document else ": none set here, all inherited"))
        for key, value in sorted(got.document.items()):
            print(f"  {key} = {_text(value)}")
        return 0
    if args.json:
        print(json.dumps(as_json(got)))
        return 0
    for key, e in got.items():
        if SETTINGS[key].kind == "map" and e.value:
            for k, v in e.value.items():
                print(f"{key}.{k} = {v}  (from {e.origins[k]})")
            continue
        origin = f"from {e.origin}" if e.origin != "default" else "default"
        if e.unset_at:
            origin += f", ~unset at {e.unset_at}"
        print(f"{key} = {_text(e.value) if e.value is not None else '(none)'}  ({origin})")
    return 0


def flatten(data: dict, prefix: str = "") -> dict[str, Any]:
    """A nested mapping (TOML's dotted keys, nested JSON) as setting key -> value; a map setting stays a map."""
    from lessor.core.settings import SETTINGS

    out: dict[str, Any] = {}
    for k, v in data.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and key not in SETTINGS:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def read_document(path: str) -> dict[str, Any]:
    """A settings document from a .toml or .json file (ConfigError naming the file and what is wrong)."""
    from lessor.errors import ConfigError

    p = Path(path)
    try:
        raw = p.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    try:
        data = json.loads(raw) if p.suffix == ".json" else tomllib.loads(raw)
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        kind = "JSON" if p.suffix == ".json" else "TOML"
        raise ConfigError(f"{path} is not valid {kind}: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a map of setting = value")
    return flatten(data)


def cmd_set(args: argparse.Namespace) -> int:
    """`lessor settings set SCOPE key=value ... | --from-file F`."""
    import lessor
    from lessor.core.settings import check_scope
    from lessor.errors import ConfigError
    from lessor.scheduler.settings import parse_assignment

    scope = check_scope(args.scope)
    if args.from_file and (args.assignments or args.clear):
        raise ConfigError("give either --from-file or key=value / --clear, not both")
    if not args.from_file and not args.assignments and not args.clear:
        raise ConfigError("nothing to set: give key=value ..., --clear KEY or --from-file F")
    changes = dict(parse_assignment(a) for a in args.assignments)
    document = read_document(args.from_file) if args.from_file else None

    async def run():
        async with lessor.connect(url_of(args)) as client:
            before = await client.read_settings(scope)
            if document is not None:
                version = before.version if args.version is None else args.version
                return before, await client.write_settings(scope, document, version=version)
            return before, await client.update_settings(scope, changes, version=args.version,
                                                        remove=tuple(args.clear))

    before, version = anyio.run(run)
    after = document if document is not None else (
        {k: v for k, v in before.document.items() if k not in args.clear} | changes)
    print(f"settings of {scope}: version {version}")
    for line in diff(before.document, after):
        print(line)
    return 0


def diff(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """The changes between two documents, a line each: + added, ~ changed, - removed (inherited again)."""
    out = []
    for key in sorted(set(before) | set(after)):
        if key not in before:
            out.append(f"  + {key} = {_text(after[key])}")
        elif key not in after:
            out.append(f"  - {key} (inherited again)")
        elif before[key] != after[key]:
            out.append(f"  ~ {key}: {_text(before[key])} -> {_text(after[key])}")
    return out


def _toml_value(value: Any) -> str:
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{json.dumps(k)} = {json.dumps(v, ensure_ascii=False)}"
                                for k, v in value.items()) + " }"
    return json.dumps(value, ensure_ascii=False)


def editor_text(scope: str, version: int, local: dict[str, Any], inherited: dict[str, Any] | None) -> str:
    """The file `settings edit` opens: the scope's overrides, then the inherited and the other settings as comments."""
    from lessor.core.settings import SETTINGS, level_of

    lines = [f"### Settings of {scope} ({level_of(scope)}), version {version}",
             "## Delete a line to inherit that setting again; set it to \"~unset\" to block inheritance.",
             "", "### Set here"]
    for key, value in sorted(local.items()):
        lines += [f"## {SETTINGS[key].what}", f"{json.dumps(key)} = {_toml_value(value)}"]
    others = [k for k in SETTINGS if k not in local]
    if others:
        lines += ["", "### Not set here (uncomment to set)"]
    for key in others:
        spec = SETTINGS[key]
        if inherited is not None and inherited[key].origin != "default":
            shown = f"{_toml_value(inherited[key].value)}   ## inherited from {inherited[key].origin}"
        else:
            shown = _toml_value(spec.default if spec.default is not None else "")
        lines += [f"## {spec.what}", f"# {json.dumps(key)} = {shown}"]
    return "\n".join(lines) + "\n"


def cmd_edit(args: argparse.Namespace) -> int:
    """`lessor settings edit SCOPE`: $EDITOR on the document, written with the version it was read at."""
    import lessor
    from lessor.core.settings import check_scope, level_of
    from lessor.errors import ConfigError, LessorError
    from lessor.scheduler.settings import SettingsConflict, check_settings

    scope = check_scope(args.scope)

    async def read():
        async with lessor.connect(url_of(args)) as client:
            doc = await client.read_settings(scope)
            inherited = await client.get_settings(scope) if level_of(scope) == "project" else None
            return doc, inherited

    doc, inherited = anyio.run(read)
    fd, path = tempfile.mkstemp(prefix=f"lessor-settings-{scope.replace('/', '_').replace('*', 'ALL')}-",
                                suffix=".toml")
    with os.fdopen(fd, "w") as f:
        f.write(editor_text(scope, doc.version, doc.document, inherited))
    editor = os.environ.get("VISUAL") or os.environ.get("EDITOR") or "vi"
    if subprocess.call([*shlex.split(editor), path]) != 0:
        raise ConfigError(f"the editor ({editor}) failed: nothing was written; your file is {path}")
    try:
        new = check_settings(read_document(path))
    except ValueError as exc:
        raise ConfigError(f"{exc}. Nothing was written; your edit is kept in {path}: fix it and apply it "
                          f"with `lessor settings set {scope} --from-file {path} --version {doc.version}`") from None
    changes = diff(doc.document, new)
    if not changes:
        os.unlink(path)
        print(f"settings of {scope}: no changes (version {doc.version})")
        return 0

    async def write():
        async with lessor.connect(url_of(args)) as client:
            return await client.write_settings(scope, new, version=doc.version)

    try:
        version = anyio.run(write)
    except SettingsConflict as exc:
        raise LessorError(f"{exc}. Your edit is kept in {path}: run `lessor settings edit {scope}` again, or "
                          f"apply the file as it is with `lessor settings set {scope} --from-file {path}`") from None
    os.unlink(path)
    print(f"settings of {scope}: version {version}")
    for line in changes:
        print(line)
    return 0
