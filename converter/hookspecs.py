"""Every hook a converter plugin can implement, in one place.

A plugin is a module or object with functions marked ``@converter.hookimpl``.
Built-in passes (``converter.passes``) and backends (``converter.plugins.*``)
are plugins like any other. Third-party plugins are found through the
entry-point group ``converter``::

    [project.entry-points.converter]
    myplugin = "my_package.converter_plugin"

Hooks hand the plugin a registry; it calls ``registry.add(...)`` for each thing it
contributes. Registries reject duplicate names, so two plugins never silently shadow
each other. Built-in plugins are the packages ``converter.commands``, ``converter.torch_export``,
``converter.debug``, ``converter.passes`` and ``converter.plugins``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from converter.command_api import CommandRegistry
    from converter.flags import OptionRegistry
    from converter.registry import BackendRegistry, PassRegistry

PROJECT = "converter"
ENTRY_POINT_GROUP = "converter"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def converter_register_passes(registry: PassRegistry) -> None:
    """Register pass classes.

    :param registry: call ``registry.add(PassClass)`` for each pass; a name that
        is already registered is rejected with a :class:`~converter.errors.PluginError`.
    :returns: nothing.

    .. versionadded:: 0.1
    """


@hookspec
def converter_register_backends(registry: BackendRegistry) -> None:
    """Register backend classes.

    :param registry: call ``registry.add(BackendClass)`` for each backend; duplicate
        names are rejected with a :class:`~converter.errors.PluginError`.
    :returns: nothing.

    .. versionadded:: 0.1
    """


@hookspec
def converter_register_commands(registry: CommandRegistry) -> None:
    """Register subcommands of ``convert`` (``convert NAME ...``).

    :param registry: call ``registry.add(CommandClass)`` for each
        :class:`~converter.command_api.Command` subclass; a name already taken (by a
        built-in or another plugin) is rejected with a :class:`~converter.errors.PluginError`.
    :returns: nothing.

    .. versionadded:: 0.2
    """


@hookspec
def converter_add_options(registry: OptionRegistry) -> None:
    """Add flags to the main ``convert MODEL`` command (and so to ``export --then``).

    :param registry: ``registry.add_pass_input(PassInput(...))`` for a value passes read
        from ``ctx.inputs``; ``registry.add_backend_flag(BackendFlag(...))`` for a flag whose
        value becomes an option of the chosen backend. A flag another plugin (or the core)
        already has is rejected with a :class:`~converter.errors.PluginError`.
    :returns: nothing.

    .. versionadded:: 0.2
    """
