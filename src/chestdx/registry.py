"""One registry type for every pluggable part: models, objectives, mixing, inference procedures, tasks.

A :class:`Registry` maps a recipe name (``model.name: magsd``, ``objectives[i].name: supcon``, ...)
to a factory, refuses a second factory under the same name, and checks a recipe's ``params``
against the factory's signature before anything is built, so that a typo fails when the recipe
loads, not after hours of training::

    MODELS = Registry("model", fixed=("cfg", "num_classes", "in_chans"))

    @MODELS.register("magsd", accepts=MANet, fixed=("num_classes", "backbone", "in_chans", "weights", "dropout"))
    def _magsd(cfg, num_classes, in_chans): ...

    MODELS.check("magsd", {"num_maps": 32})      # ConfigError on an unknown or missing key
    MODELS.build("magsd", cfg, 3, 1)             # factory(cfg, 3, 1) after the check

``accepts`` names the callable whose keyword parameters are the ``params`` a recipe may set (the
factory itself by default; a class when the factory passes ``params`` on to its constructor);
``fixed`` names the parameters the engine supplies itself (never a recipe key); :meth:`Registry.build`
passes an engine-supplied keyword only to a factory that names it (an objective that needs no class
counts does not declare ``class_counts``), so a class can be registered as its own factory. A factory
whose accepted callable takes ``**kwargs`` must say which keys it reads with ``keys=``: a registry
never swallows an unknown key.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from chestdx.errors import ConfigError

F = TypeVar("F", bound=Callable[..., Any])


class RegistryError(ConfigError):
    """A name registered twice, or an entry whose accepted parameters cannot be read."""


@dataclass(frozen=True)
class Entry:
    """One registered factory and the ``params`` keys a recipe may give it."""

    name: str
    factory: Callable[..., Any]
    accepted: frozenset[str]
    required: frozenset[str]
    origin: str
    # the factory's own keyword parameters (None: it takes **kwargs, so every engine-supplied one)
    takes: frozenset[str] | None = None

    def describe(self) -> str:
        doc = inspect.getdoc(self.factory) or ""
        return doc.splitlines()[0] if doc else ""


def _origin(fn: Callable[..., Any]) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"


def _signature_keys(fn: Callable[..., Any], fixed: Iterable[str]) -> tuple[frozenset[str], frozenset[str], bool]:
    """``(accepted, required, has_var_keyword)`` keyword parameters of ``fn`` minus ``fixed``."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError) as e:
        raise RegistryError(f"cannot read the signature of {_origin(fn)}: {e}") from None
    skip = set(fixed) | {"self"}
    accepted, required, var_kw = set(), set(), False
    for p in sig.parameters.values():
        if p.kind is inspect.Parameter.VAR_KEYWORD:
            var_kw = True
        elif p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY) \
                and p.name not in skip:
            accepted.add(p.name)
            if p.default is inspect.Parameter.empty:
                required.add(p.name)
    return frozenset(accepted), frozenset(required), var_kw


def did_you_mean(word: str, choices: Iterable[str], cutoff: float = 0.6) -> str:
    """``"; did you mean x?"`` for the closest of ``choices``, or ``""``."""
    close = difflib.get_close_matches(word, sorted(choices), n=3, cutoff=cutoff)
    return f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""


class Registry(Generic[F]):
    """Names to factories for one kind of part (``kind``: the word used in error messages).

    Args:
        kind: what the entries are (``"model"``, ``"objective"``, ``"mixing"``, ...).
        fixed: parameter names every factory of this kind receives from the engine (not from a
            recipe's ``params``); an entry may add its own with ``register(..., fixed=...)``.
    """

    def __init__(self, kind: str, fixed: Iterable[str] = ()):
        self.kind = kind
        self.fixed = tuple(fixed)
        self._entries: dict[str, Entry] = {}

    def register(self, name: str, factory: F | None = None, *, accepts: Callable[..., Any] | None = None,
                 fixed: Iterable[str] = (), keys: Iterable[str] | None = None) -> Any:
        """Register ``factory`` under ``name`` (use as ``@REG.register("name")`` or call directly).

        Args:
            accepts: the callable whose keyword parameters are the recipe ``params`` (default: the
                factory).
            fixed: more engine-supplied parameter names for this entry.
            keys: the accepted ``params`` keys, given explicitly (for a callable taking ``**kwargs``).

        Raises:
            RegistryError: ``name`` is taken, or the accepted callable takes ``**kwargs`` and
                ``keys`` was not given.
        """

        def deco(fn: F) -> F:
            if name in self._entries:
                raise RegistryError(f"{self.kind} '{name}' is registered twice: by {self._entries[name].origin} "
                                    f"and by {_origin(fn)}")
            target = accepts or fn
            accepted, required, var_kw = _signature_keys(target, (*self.fixed, *fixed))
            if keys is not None:
                accepted = frozenset(keys)
                required = required & accepted
            elif var_kw:
                raise RegistryError(f"{self.kind} '{name}': {_origin(target)} takes **kwargs; register it with "
                                    "keys=(...) naming the params it reads")
            own, _, own_var_kw = _signature_keys(fn, ())
            self._entries[name] = Entry(name, fn, accepted, required, _origin(fn), None if own_var_kw else own)
            return fn

        return deco(factory) if factory is not None else deco

    def names(self) -> list[str]:
        """Every registered name, sorted."""
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)

    def entry(self, name: str, where: str = "") -> Entry:
        """The entry of ``name``.

        Raises:
            ConfigError: unknown name; says where it was set, the closest names and all the names.
        """
        try:
            return self._entries[name]
        except KeyError:
            raise ConfigError(self._unknown(name, where)) from None

    def _unknown(self, name: object, where: str) -> str:
        at = f"{where}: " if where else ""
        return (f"{at}unknown {self.kind} '{name}'{did_you_mean(str(name), self._entries)}; "
                f"choose one of {', '.join(self.names())}")

    def get(self, name: str, where: str = "") -> Callable[..., Any]:
        """The factory of ``name`` (ConfigError when unknown)."""
        return self.entry(name, where).factory

    def check(self, name: str, params: Mapping[str, Any] | None = None, where: str = "") -> Entry:
        """Check that ``name`` is registered and ``params`` are keys its factory accepts.

        Args:
            where: the recipe key that set them (``"objectives[1]"``), named in the error.

        Raises:
            ConfigError: unknown name, unknown ``params`` key (with did-you-mean and the accepted
                keys), or a required key missing.
        """
        e = self.entry(name, where)
        found = self.problems(name, params, where)
        if found:
            raise ConfigError("\n".join(msg for _, msg in found))
        return e

    def problems(self, name: str, params: Mapping[str, Any] | None = None,
                 where: str = "") -> list[tuple[str | None, str]]:
        """Every problem :meth:`check` would report, without raising: ``(key, message)`` pairs, ``key``
        the ``params`` key at fault or None for an unknown name (then the only problem)."""
        if name not in self._entries:
            return [(None, self._unknown(name, where))]
        e = self._entries[name]
        params = dict(params or {})
        at = f"{where}." if where else ""
        found: list[tuple[str | None, str]] = []
        for k in sorted(set(params) - e.accepted, key=str):
            accepted = ", ".join(sorted(e.accepted)) or "none"
            found.append((k, f"{at}params.{k}: {self.kind} '{name}' has no parameter '{k}'"
                             f"{did_you_mean(str(k), e.accepted)} (it accepts: {accepted})"))
        for k in sorted(e.required - set(params)):
            found.append((k, f"{at}params.{k}: {self.kind} '{name}' needs this parameter"))
        return found

    def build(self, name: str, *args: Any, params: Mapping[str, Any] | None = None, where: str = "",
              **fixed: Any) -> Any:
        """``factory(*args, **fixed, **params)`` after :meth:`check`; an engine-supplied keyword (one of
        the registry's ``fixed`` names) goes only to a factory that names it or takes ``**kwargs``.

        Raises:
            ConfigError: as :meth:`check`, or the factory rejected a value (``TypeError`` /
                ``ValueError``), with the name and the params in the message.
        """
        e = self.check(name, params, where)
        if e.takes is not None:
            fixed = {k: v for k, v in fixed.items() if k in e.takes or k not in self.fixed}
        try:
            return e.factory(*args, **fixed, **dict(params or {}))
        except (TypeError, ValueError) as err:
            if isinstance(err, ConfigError):
                raise
            at = f"{where}: " if where else ""
            raise ConfigError(f"{at}{self.kind} '{name}': bad params {dict(params or {})}: {err}") from None
