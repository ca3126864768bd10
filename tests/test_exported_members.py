"""The public surface: ``proactive_async.__all__`` is sorted and names every public member."""

from __future__ import annotations

import importlib
import pkgutil
import types

import proactive_async


def _public_names() -> list[str]:
    """Public attributes of the package, submodules aside (importing ``cli`` adds ``cli``)."""
    return [
        name
        for name, value in vars(proactive_async).items()
        if (not name.startswith("_") or name == "__version__")
        and not isinstance(value, types.ModuleType)
    ]


def test_all_is_sorted() -> None:
    assert proactive_async.__all__ == sorted(proactive_async.__all__)


def test_all_has_no_duplicates() -> None:
    assert len(proactive_async.__all__) == len(set(proactive_async.__all__))


def test_all_names_exactly_the_public_members() -> None:
    assert set(proactive_async.__all__) == set(_public_names())


def test_every_name_in_all_resolves() -> None:
    for name in proactive_async.__all__:
        assert getattr(proactive_async, name) is not None, name


def test_public_classes_say_they_belong_to_the_package_modules() -> None:
    """No aiohttp or tenacity object leaks into the public namespace."""
    for name in proactive_async.__all__:
        module = getattr(getattr(proactive_async, name), "__module__", "proactive_async")
        assert module.startswith("proactive_async"), (name, module)


def test_each_private_module_all_is_sorted_and_exported_or_internal() -> None:
    for module_name in ("_client", "_errors", "_models", "_retry", "_transport"):
        module = importlib.import_module(f"proactive_async.{module_name}")
        names = list(module.__all__)
        assert names == sorted(names), module_name
        for name in names:
            assert hasattr(module, name), (module_name, name)


def test_every_public_module_has_an_all_naming_what_it_holds() -> None:
    """A type checker takes a module's ``__all__`` as its public names (``pyright
    --verifytypes`` in ``make lint`` scores them): each public module has one, and every
    module's names exist, once each."""
    for info in pkgutil.walk_packages(proactive_async.__path__, "proactive_async."):
        if info.name.endswith(".__main__"):
            continue
        try:
            module = importlib.import_module(info.name)
        except ModuleNotFoundError as exc:  # an engine not installed here (Celery's own venv)
            assert exc.name is not None, info.name
            assert not exc.name.startswith("proactive_async"), info.name
            continue
        public = not any(part.startswith("_") for part in info.name.split("."))
        names = getattr(module, "__all__", None)
        assert names is not None or not public, info.name
        for name in names or ():
            assert hasattr(module, name), (info.name, name)
        assert len(set(names or ())) == len(names or ()), info.name
