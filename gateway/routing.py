"""The routing table: immutable per-route structures and `Route.pick`, the per-request version decision.

Sticky layout
-------------
A sticky key is hashed into a fixed space of `BUCKETS` buckets::

    bucket = int.from_bytes(blake2b(salt_utf8 + b"\\x00" + key_utf8, digest_size=8).digest(), "big") % BUCKETS

(`sticky_bucket`; any replica, or an offline job, computes the same bucket without shared state). Each version owns
one contiguous bucket range whose size is its weight share of `BUCKETS`, rounded to whole buckets by the
largest-remainder method (ties go to the version laid out first). The layout is: the non-baseline versions in the
order they are declared in `versions`, from bucket 0 upward, then the baseline at the high end. Versions with weight
0 own no buckets, so adding or removing a dark version moves nobody.

What keeps a key's version: the salt, the weights (as shares: 90/10 == 9/1), the baseline and the declaration order
of the non-baseline versions with weight > 0. Overrides, on_missing, dark versions, version names, repository version
numbers and other routes can change freely. A new salt is a new randomisation.

The monotonic ramp. A key changes version only when a range boundary crosses its bucket. With two versions
(candidate c, baseline b) the candidate owns [0, n_c) with n_c = share_c * BUCKETS rounded half up, which never
decreases when share_c grows. So raising the candidate's weight (and lowering the baseline's) only moves keys from
the baseline INTO the candidate, never back and never out; lowering it moves keys only back to the baseline.

Limits with 3+ versions (non-baseline v_1..v_k in declaration order, baseline last):
- raising v_j's share at the baseline's expense grows v_j's range upward: v_j keeps its keys, but the ranges of
  v_{j+1}..v_k shift up with it, so those versions lose their lowest keys to v_j (or to each other) and gain keys from
  the one above. Only v_k, the last declared, takes keys only from the baseline; so ramp the newest candidate by
  declaring it last, or ramp one candidate at a time;
- largest-remainder rounding is decided jointly: when the shares of v_j and the baseline change, a version whose
  share did not change can still gain or lose its one rounding bucket, so a boundary can move by at most one bucket
  (1/BUCKETS of keys) per version laid out below it, and v_j can lose that many of its lowest keys (tested:
  tests/test_routing.py bounds it by j + 1 buckets; in practice at most 1). With two versions this never happens.
"""

from __future__ import annotations

import hashlib
from bisect import bisect_right
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from types import MappingProxyType
from typing import Literal, TypeAlias

from gateway.config import GatewayConfig, OnMissing, RouteConfig, StickyKey
from gateway.errors import ProtocolError, UnknownModelError, UnknownVersionError

BUCKETS = 10_000  # fixed: changing it reshuffles every sticky key

# "fallback" is never picked: the data plane decides it when a remote version's endpoint is ejected (gateway/remote).
Reason: TypeAlias = Literal["override", "pin", "sticky", "weighted", "fallback"]


@dataclass(frozen=True, slots=True)
class Target:
    """One servable version of a route: `name` from the config, `model`/`version` in the model repository (a remote
    version's `version` is its name: gateway/remote)."""

    name: str
    model: str
    version: int | str


@dataclass(frozen=True, slots=True)
class Decision:
    target: Target
    reason: Reason


def sticky_bucket(salt: str, key: str) -> int:
    """The bucket of `key` under `salt`: stable across processes, machines and Python versions."""
    digest = hashlib.blake2b(salt.encode() + b"\x00" + key.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % BUCKETS


def apportion(weights: Sequence[float], total: int) -> tuple[int, ...]:
    """Split `total` whole units by weight with the largest-remainder method (exact arithmetic; ties go first)."""
    exact = [Fraction(weight) for weight in weights]
    whole = sum(exact)
    if whole <= 0:
        raise ValueError("at least one weight must be > 0")
    quotas = [weight * total / whole for weight in exact]
    counts = [int(quota) for quota in quotas]  # floor: quotas are >= 0
    by_remainder = sorted(range(len(quotas)), key=lambda i: (-(quotas[i] - counts[i]), i))
    for i in by_remainder[: total - sum(counts)]:
        counts[i] += 1
    return tuple(counts)


def _cookie(header: str, name: str) -> str | None:
    # A tiny split instead of http.cookies: that module is slow and drops a whole header on one odd cookie.
    for part in header.split(";"):
        key, eq, value = part.partition("=")
        if eq and key.strip() == name:
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] == '"':
                value = value[1:-1]
            return value
    return None


@dataclass(frozen=True, slots=True)
class _Override:
    match: tuple[tuple[str, str], ...]  # (lower-cased header name, exact value); all must match
    decision: Decision


@dataclass(frozen=True, slots=True)
class Route:
    """One route's decision structures, all precomputed so that `pick` allocates nothing but a hash."""

    name: str
    targets: tuple[Target, ...]  # declaration order
    baseline: Target
    sticky_keys: tuple[StickyKey, ...]
    salt: str
    on_missing: OnMissing
    _shares: Mapping[str, float] = field(repr=False)
    _ranges: Mapping[str, range] = field(repr=False)
    _pins: Mapping[str, Decision] = field(repr=False)
    _overrides: tuple[_Override, ...] = field(repr=False)
    _salt_prefix: bytes = field(repr=False)
    _bounds: tuple[int, ...] = field(repr=False)  # upper bucket bound of each entry of _sticky
    _sticky: tuple[Decision, ...] = field(repr=False)
    _baseline_sticky: Decision = field(repr=False)
    _cumulative: tuple[float, ...] = field(repr=False)  # upper draw bound of each entry of _weighted
    _weighted: tuple[Decision, ...] = field(repr=False)
    _missing_key_message: str = field(repr=False)
    _versions_message: str = field(repr=False)

    @classmethod
    def from_config(cls, config: RouteConfig) -> Route:
        split = config.split
        targets = tuple(Target(name, config.model, spec.version) for name, spec in config.versions.items())
        by_name = {target.name: target for target in targets}
        baseline = by_name[split.baseline]
        # The sticky and weighted layouts are the same: non-baseline versions in declaration order, baseline last.
        layout = [target for target in targets if target is not baseline] + [baseline]
        weights = [split.weights.get(target.name, 0) for target in layout]
        total = sum(Fraction(weight) for weight in weights)
        counts = apportion(weights, BUCKETS)

        ranges: dict[str, range] = {}
        bounds: list[int] = []
        sticky: list[Decision] = []
        cumulative: list[float] = []
        weighted: list[Decision] = []
        start = 0
        running = Fraction(0)
        for target, weight, count in zip(layout, weights, counts, strict=True):
            ranges[target.name] = range(start, start + count)
            start += count
            if count:
                bounds.append(start)
                sticky.append(Decision(target, "sticky"))
            if weight > 0:
                running += Fraction(weight)
                cumulative.append(float(running / total))
                weighted.append(Decision(target, "weighted"))
        cumulative[-1] = 1.0  # exact, so every draw in [0, 1) lands on an entry

        pins: dict[str, Decision] = {}
        for target in targets:
            pin = Decision(target, "pin")
            pins[target.name] = pin
            pins[str(target.version)] = pin
        overrides = tuple(
            _Override(tuple(override.headers.items()), Decision(by_name[override.to], "override"))
            for override in split.overrides
        )
        sticky_config = split.sticky
        keys = sticky_config.keys if sticky_config is not None else ()
        salt = sticky_config.salt if sticky_config is not None else config.name
        described_keys = " or ".join(f"{key.source} {key.name}" for key in keys)
        return cls(
            name=config.name,
            targets=targets,
            baseline=baseline,
            sticky_keys=keys,
            salt=salt,
            on_missing=sticky_config.on_missing if sticky_config is not None else "random",
            _shares=MappingProxyType({t.name: float(Fraction(split.weights.get(t.name, 0)) / total) for t in targets}),
            _ranges=MappingProxyType({target.name: ranges[target.name] for target in targets}),
            _pins=MappingProxyType(pins),
            _overrides=overrides,
            _salt_prefix=salt.encode() + b"\x00",
            _bounds=tuple(bounds),
            _sticky=tuple(sticky),
            _baseline_sticky=Decision(baseline, "sticky"),
            _cumulative=tuple(cumulative),
            _weighted=tuple(weighted),
            _missing_key_message=f"model '{config.name}' routes by a sticky key: send {described_keys}",
            _versions_message=", ".join(f"{t.name} ({t.version})" for t in targets),
        )

    def pick(self, headers: Mapping[str, str], pin: str | None, draw: float) -> Decision:
        """Decide which version serves one request. Pure: the same inputs always give the same decision.

        `headers` maps lower-case names to values (starlette's `Headers` will do); `pin` is the `{v}` of
        `/versions/{v}`, a version name or its repository number; `draw` is uniform in [0, 1), used only when the
        decision is weighted. The order is: override, pin, sticky, weighted. An unknown pin is an error even when an
        override would match, since the URL names a version that does not exist. With `on_missing: baseline`, a
        request without a sticky key goes to the baseline with reason "sticky" (deterministic, not random).
        """
        pinned: Decision | None = None
        if pin is not None:
            pinned = self._pins.get(pin)
            if pinned is None:
                raise UnknownVersionError(f"model '{self.name}' has no version '{pin}' ({self._versions_message})")
        for override in self._overrides:
            for name, value in override.match:
                if headers.get(name) != value:
                    break
            else:
                return override.decision
        if pinned is not None:
            return pinned
        if self.sticky_keys:
            key = self._sticky_key(headers)
            if key is not None:
                digest = hashlib.blake2b(self._salt_prefix + key.encode(), digest_size=8).digest()
                return self._sticky[bisect_right(self._bounds, int.from_bytes(digest, "big") % BUCKETS)]
            if self.on_missing == "baseline":
                return self._baseline_sticky
            if self.on_missing == "reject":
                raise ProtocolError(self._missing_key_message)
        if not 0.0 <= draw < 1.0:
            raise ValueError(f"draw must be in [0, 1), got {draw!r}")
        return self._weighted[bisect_right(self._cumulative, draw)]

    def _sticky_key(self, headers: Mapping[str, str]) -> str | None:
        """The first configured key present and non-empty (an empty id would lump every such client together)."""
        for key in self.sticky_keys:
            if key.source == "header":
                value = headers.get(key.name)
            else:
                cookies = headers.get("cookie")
                value = _cookie(cookies, key.name) if cookies else None
            if value:
                return value
        return None

    def weights(self) -> Mapping[str, float]:
        """Each version's normalised share of weighted traffic (0 for dark versions), in declaration order."""
        return self._shares

    def bucket_range(self, name: str) -> range:
        """The sticky buckets version `name` owns (empty for weight 0)."""
        return self._ranges[name]

    def target(self, name: str) -> Target:
        """The target for a version name or repository number; `UnknownVersionError` otherwise."""
        pinned = self._pins.get(name)
        if pinned is None:
            raise UnknownVersionError(f"model '{self.name}' has no version '{name}' ({self._versions_message})")
        return pinned.target


@dataclass(frozen=True, slots=True)
class RoutingTable:
    """Every route, built once per config; a reload builds a new table and swaps it whole."""

    routes: Mapping[str, Route]

    @classmethod
    def from_config(cls, config: GatewayConfig) -> RoutingTable:
        return cls(MappingProxyType({name: Route.from_config(route) for name, route in config.routes.items()}))

    def route(self, name: str) -> Route:
        """The route serving model `name`; `UnknownModelError` if there is none."""
        route = self.routes.get(name)
        if route is None:
            raise UnknownModelError(f"unknown model '{name}'")
        return route
