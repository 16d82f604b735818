"""``convert passes | backends | plugins``: what is registered, with options, sources and availability."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from converter import reporting
from converter.command_api import Command
from converter.errors import EXIT_OK
from converter.options import option_infos
from converter.plugin_manager import Plugins


def _option_rows(cls: type) -> list[dict[str, Any]]:
    return [
        {"name": i.name, "type": i.type_text, "default": None if i.default is dataclasses.MISSING else (list(i.default) if isinstance(i.default, tuple) else i.default), "help": i.help}
        for i in option_infos(cls)
    ]


def _listing(plugins: Plugins, show_passes: bool, show_backends: bool, show_commands: bool) -> dict[str, Any]:
    data: dict[str, Any] = {}
    if show_passes:
        data["passes"] = [{"name": e.cls.name, "summary": e.cls.summary, "source": e.source, "options": _option_rows(e.cls.Options)} for e in plugins.passes.entries()]
    if show_backends:
        rows = []
        for e in plugins.backends.entries():
            a = e.cls.availability()
            rows.append({"name": e.cls.name, "summary": e.cls.summary, "source": e.source, "available": a.ok, "reason": a.reason, "versions": a.versions, "options": _option_rows(e.cls.Options)})
        data["backends"] = rows
    if show_commands:
        data["commands"] = [{"name": n, "help": plugins.commands.get(n).help, "source": plugins.commands.source(n)} for n in plugins.commands.names()]  # type: ignore[union-attr]
        data["flags"] = [{"flag": i.flag, "help": i.help} for i in plugins.options.pass_inputs] + [
            {"flag": f.flag, "help": f.help, "backend_option": f.option} for f in plugins.options.backend_flags
        ]
    data["failed_plugins"] = [{"name": f.name, "error": f.error} for f in plugins.failures]
    return data


def _print(data: dict[str, Any]) -> None:
    for section in ("passes", "backends"):
        if section not in data:
            continue
        print(f"{section}:")
        for row in data[section]:
            status = ""
            if section == "backends":
                status = "  [available]" if row["available"] else f"  [unavailable: {row['reason']}]"
            print(f"  {row['name']}  ({row['source']}){status}\n      {row['summary']}")
            for o in row["options"]:
                print(f"      {o['name']}: {o['type']} = {o['default']}  {o['help']}")
    if "commands" in data:
        print("commands:")
        for row in data["commands"]:
            print(f"  {row['name']}  ({row['source']})  {row['help']}")
    if data["failed_plugins"]:
        print("plugins that failed to load:")
        for f in data["failed_plugins"]:
            print(f"  {f['name']}: {f['error']}")


class _List(Command):
    passes = backends = commands = False

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        pass

    def run(self, args: argparse.Namespace, plugins: Plugins) -> int:
        data = _listing(plugins, self.passes, self.backends, self.commands)
        if args.json:
            reporting.emit(self.name, data)
        else:
            _print(data)
        return EXIT_OK


class PassesCommand(_List):
    name = "passes"
    help = "list passes and their options"
    passes = True


class BackendsCommand(_List):
    name = "backends"
    help = "list backends and whether they are available"
    backends = True


class PluginsCommand(_List):
    name = "plugins"
    help = "list passes, backends, subcommands and plugins"
    passes = backends = commands = True
