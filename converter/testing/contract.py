"""Checks that need no device: the class contract, registration, availability, options validation."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import re
import types
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

from converter.backend_api import Availability, Backend
from converter.errors import PluginError, UsageError, shorten
from converter.hookspecs import hookimpl
from converter.options import NoOptions, build_options
from converter.plugin_manager import load_plugins
from converter.registry import BackendRegistry
from converter.testing.subject import Subject, fail, raised

NAME = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
UNKNOWN_OPTION = "conformance_no_such_option"
SUPPORTED_TYPES = "bool, int, float, str, Literal[...], tuple[T, ...] or Optional of these"


def _problems(title: str, problems: list[str]) -> None:
    if problems:
        raise fail(title + ":\n  - " + "\n  - ".join(problems))


def check_class_contract(subject: Subject) -> None:
    """Backend subclass, not abstract; ``name`` a word users can type after -b; one-line ``summary``;
    ``Options`` a dataclass constructible with no arguments; ``suffix`` a file suffix; ``availability`` a classmethod."""
    cls = subject.cls
    if not (isinstance(cls, type) and issubclass(cls, Backend)):
        raise fail(f"{shorten(repr(cls), 80)} is not a subclass of converter.backend_api.Backend")
    problems = []
    abstract = sorted(getattr(cls, "__abstractmethods__", ()))
    if abstract:
        problems.append(f"it does not implement {', '.join(abstract)} (abstract in Backend)")
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not NAME.match(name):
        problems.append(f"name {name!r} is not a lowercase word of letters, digits, '_' or '-' (at most 32, first a letter): users type it after -b")
    summary = getattr(cls, "summary", None)
    if not isinstance(summary, str) or not summary.strip():
        problems.append(f"summary {summary!r} must be a non-empty string: 'convert backends' lists it")
    elif "\n" in summary.strip() or len(summary) > 200:
        problems.append(f"summary must be one line of at most 200 characters (it has {len(summary.splitlines())} lines, {len(summary)} characters)")
    options_cls = getattr(cls, "Options", None)
    if not (isinstance(options_cls, type) and dataclasses.is_dataclass(options_cls)):
        problems.append(f"Options {options_cls!r} is not a dataclass (use converter.options.NoOptions when the backend takes none)")
    else:
        required = [f.name for f in dataclasses.fields(options_cls) if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
        if required:
            problems.append(f"option(s) {', '.join(required)} have no default: '-b {name}' with no options must work")
        else:
            try:
                options_cls()
            except Exception as exc:  # noqa: BLE001 - the backend's code: whatever it raises is the finding
                problems.append(f"Options() with no arguments raised {raised(exc)}")
    suffix = getattr(cls, "suffix", None)
    if not isinstance(suffix, str) or not suffix.startswith(".") or len(suffix) < 2 or any(c in suffix for c in "/\\ \t\n"):
        problems.append(f"suffix {suffix!r} must be a file suffix starting with '.', e.g. '.onnx' or '.engine'")
    if not isinstance(inspect.getattr_static(cls, "availability", None), (classmethod, staticmethod)):
        problems.append("availability must be a classmethod: the CLI asks the class before making an instance")
    _problems(f"{cls.__module__}.{cls.__qualname__} breaks the Backend class contract", problems)


@functools.cache
def _installed() -> Any:
    """Built-ins and every installed entry-point plugin, loaded once (read only)."""
    return load_plugins()


def check_registration(subject: Subject) -> None:
    """It registers in a fresh registry; the same name twice is refused; the name is free among installed backends."""
    cls, name = subject.cls, subject.name
    registry = BackendRegistry()
    registry.current_source = "conformance-kit"
    try:
        registry.add(cls)
    except PluginError as exc:
        raise fail(f"registering the backend in a fresh registry failed: {exc}") from exc
    if registry.get(name).cls is not cls:
        raise fail(f"the registry holds another class under '{name}'")
    for again in (cls, type(f"Second{cls.__name__}", (cls,), {"__module__": "converter.testing.contract"})):
        try:
            registry.add(again)
        except PluginError as exc:
            if "already registered" not in str(exc):
                raise fail(f"registering '{name}' twice raised PluginError without saying it is already registered: {exc}") from exc
        else:
            raise fail(f"registering '{name}' twice ({again.__qualname__}) was accepted; a duplicate name must raise PluginError")

    class _Hook:
        @hookimpl
        def converter_register_backends(self, registry: BackendRegistry) -> None:
            registry.add(cls)

    builtins = load_plugins(entry_points_enabled=False)
    if name in builtins.backends:
        other = builtins.backends.get(name).cls
        if other is not cls:
            raise fail(f"name '{name}' is taken by the built-in backend {other.__module__}.{other.__qualname__}: choose another name")
    else:
        loaded = load_plugins(entry_points_enabled=False, extra={"conformance-kit": _Hook()})
        failed = [f.error for f in loaded.failures if f.name == "conformance-kit"]
        if failed:
            raise fail(f"registering through the converter_register_backends hook failed: {failed[0]}")
        if name not in loaded.backends or loaded.backends.get(name).cls is not cls:
            raise fail(f"after the converter_register_backends hook ran, backend '{name}' is not in the plugin set")
    installed = _installed()
    if name in installed.backends:
        entry = installed.backends.get(name)
        if entry.cls is not cls and not (entry.cls.__module__ == cls.__module__ and entry.cls.__qualname__ == cls.__qualname__):
            raise fail(f"name '{name}' is taken by {entry.cls.__module__}.{entry.cls.__qualname__} from plugin '{entry.source}': backend names must be unique")


def check_availability(subject: Subject) -> None:
    """``availability()`` never raises and returns an Availability; when not ok, its reason is one non-empty line."""
    avail = subject.availability()
    problems = []
    if not isinstance(avail.ok, bool):
        problems.append(f"ok is {avail.ok!r}, not a bool")
    if not isinstance(avail.reason, str):
        problems.append(f"reason is {avail.reason!r}, not a string")
    elif not avail.ok and not avail.reason.strip():
        problems.append("it is not ok but gives no reason: say what is missing and how to get it (users read it in 'convert backends' and in the exit-3 error)")
    elif "\n" in avail.reason.strip():
        problems.append("reason must be one line")
    if not isinstance(avail.versions, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in avail.versions.items()):
        problems.append(f"versions must map names to version strings, not {shorten(repr(avail.versions), 80)}")
    _problems(f"availability() returned a malformed {Availability.__name__}", problems)


def _supported(tp: Any) -> bool:
    """Whether ``converter.options.parse_value`` can read a value of ``tp`` from text."""
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        inner = [a for a in get_args(tp) if a is not type(None)]
        return len(inner) == 1 and len(get_args(tp)) == 2 and _supported(inner[0])
    if origin is Literal:
        return True
    if origin is tuple:
        args = get_args(tp)
        return len(args) == 2 and args[1] is Ellipsis and get_origin(args[0]) not in (Union, types.UnionType, tuple) and _supported(args[0])
    return tp in (bool, int, float, str)


def _bad_text(tp: Any) -> str | None:
    """Text that cannot be a value of ``tp`` (None when every text is one, e.g. str)."""
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        inner = [a for a in get_args(tp) if a is not type(None)]
        return _bad_text(inner[0]) if len(inner) == 1 else None
    if origin is Literal:
        return "conformance_not_a_choice"
    if origin is tuple:
        inner_bad = _bad_text(get_args(tp)[0])
        return None if inner_bad is None else f"[{inner_bad}]"
    return {bool: "maybe", int: "1.5x", float: "one"}.get(tp)


def check_options_validation(subject: Subject) -> None:
    """Options come from text with clear errors: an unknown name and a badly typed value are UsageErrors naming the option."""
    cls, where = subject.cls, f"backend '{subject.name}'"
    options_cls = getattr(cls, "Options", NoOptions)
    if not dataclasses.is_dataclass(options_cls):
        raise fail(f"Options {options_cls!r} is not a dataclass")
    try:
        hints = get_type_hints(options_cls)
    except Exception as exc:
        raise fail(f"the annotations of {options_cls.__qualname__} cannot be resolved: {raised(exc)}") from exc
    subject.backend()  # the defaults (or the options under test) parse, and construction needs no device
    problems = []
    try:
        build_options(options_cls, {UNKNOWN_OPTION: "1"}, where)
        problems.append(f"an unknown option '{UNKNOWN_OPTION}' was accepted")
    except UsageError as exc:
        if UNKNOWN_OPTION not in str(exc):
            problems.append(f"the error for an unknown option does not name it: {exc}")
    except Exception as exc:  # noqa: BLE001 - the backend's code: whatever it raises is the finding
        problems.append(f"an unknown option raised {raised(exc)}, not a UsageError")
    for f in dataclasses.fields(options_cls):
        if not str(f.metadata.get("help", "")).strip():
            problems.append(f"option '{f.name}' has no help: write field(..., metadata={{'help': '...'}}) ('convert backends' shows it)")
        if not _supported(hints[f.name]):
            problems.append(f"option '{f.name}' has type {hints[f.name]!r}, which option text cannot express (supported: {SUPPORTED_TYPES})")
            continue
        bad = _bad_text(hints[f.name])
        if bad is None:
            continue
        try:
            build_options(options_cls, {f.name: bad}, where)
            problems.append(f"option '{f.name}'={bad!r} (not a {hints[f.name]!r}) was accepted")
        except UsageError as exc:
            if f"'{f.name}'" not in str(exc):
                problems.append(f"the error for {f.name}={bad!r} does not name the option: {exc}")
        except Exception as exc:  # noqa: BLE001 - the backend's code: whatever it raises is the finding
            problems.append(f"option '{f.name}'={bad!r} raised {raised(exc)}, not a UsageError (validate in __post_init__ with ValueError)")
    _problems(f"options of backend '{subject.name}' are not validated as the contract expects", problems)
