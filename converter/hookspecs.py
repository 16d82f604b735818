"""Every hook a converter plugin can implement, in one place.

A plugin is a module or object with functions marked ``@converter.hookimpl``.
Built-in passes (``converter.passes``) and backends (``converter.plugins.*``)
are plugins like any other. Third-party plugins are found through the
entry-point group ``converter``::

    [project.entry-points.converter]
    myplugin = "my_package.converter_plugin"

Hooks hand the plugin a registry; it calls ``registry.add(cls)`` for each class.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
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
