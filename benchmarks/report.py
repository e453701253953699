"""Comparison results as values, the ratios between systems of one run, the issue's targets, and the Markdown."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from benchmarks.loadgen import LoadResult

GATEWAYS = ("gateway", "gateway-batching", "gateway-deployed")
BASELINES = ("raw", "raw-batching", "floor", "fastapi", "mlserver", "mlserver-default")
DEPLOYED_SHARE = 0.95  # the gateway as deployed keeps at least this share of the bare gateway's req/s
BATCH_CEILING_SHARE = 0.55  # the batched gateway reaches at least this share of the in-process batch ceiling
NOISY_BACKGROUND_CPU = 0.2  # cores used by other processes during a cell above which its numbers are suspect


@dataclass(frozen=True, slots=True, order=True)
class Cell:
    model: str
    batch: int
    connections: int

    def label(self) -> str:
        return f"{self.model} b{self.batch} c{self.connections}"


@dataclass(frozen=True, slots=True)
class Row:
    system: str
    cell: Cell
    result: LoadResult | None
    error: str | None = None
    server_cpu: float = 0.0  # server process tree CPU seconds / wall seconds over the cell (warm-up included)
    background_cpu: float = 0.0  # CPU used by other processes on the machine over the cell, in cores
    rounds: tuple[float, ...] = ()  # req/s of every round of this cell, in order; the row is the median round

    @property
    def ok(self) -> bool:
        return self.result is not None and self.error is None

    @property
    def rps(self) -> float:
        return self.result.rps if self.result is not None else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "system": self.system,
            **asdict(self.cell),
            "result": None if self.result is None else self.result.to_json(),
            "error": self.error,
            "server_cpu": self.server_cpu,
            "background_cpu": self.background_cpu,
            "rounds": list(self.rounds),
        }


@dataclass(frozen=True, slots=True)
class Ratio:
    cell: Cell
    gateway: str
    baseline: str
    rps: float  # gateway req/s / baseline req/s
    p99: float  # gateway p99 / baseline p99 (lower is better)


@dataclass(frozen=True, slots=True)
class Target:
    name: str
    passed: bool | None  # None: not measured in this run
    detail: str


@dataclass(frozen=True, slots=True)
class Ceiling:
    """The load generator against the raw fixed-reply server and the floor, per engine."""

    rows: tuple[tuple[str, str, LoadResult | None, str | None], ...]  # (server, engine, result, error)


@dataclass(frozen=True, slots=True)
class BatchCeiling:
    """A model's in-process rows/s at a batch size (`benchmarks.ceiling`), each measurement; the largest counts."""

    model: str
    batch: int
    measured: tuple[float, ...]

    @property
    def rows_per_s(self) -> float:
        return max(self.measured)


@dataclass(frozen=True, slots=True)
class Report:
    title: str
    settings: dict[str, Any]
    rows: tuple[Row, ...]
    ceiling: Ceiling | None = None
    notes: tuple[str, ...] = field(default=())
    batch_ceiling: BatchCeiling | None = None

    def row(self, system: str, cell: Cell) -> Row | None:
        return next((r for r in self.rows if r.system == system and r.cell == cell), None)

    def cells(self) -> list[Cell]:
        return sorted({r.cell for r in self.rows}, key=lambda c: (c.model != "tiny", c.model, c.batch, c.connections))

    def systems(self) -> list[str]:
        seen: dict[str, None] = {}
        for r in self.rows:
            seen.setdefault(r.system, None)
        return list(seen)

    def ratios(self) -> list[Ratio]:
        out = []
        for cell in self.cells():
            for gateway in GATEWAYS:
                g = self.row(gateway, cell)
                if g is None or not g.ok or g.result is None:
                    continue
                for baseline in BASELINES:
                    b = self.row(baseline, cell)
                    if b is None or not b.ok or b.result is None or b.rps <= 0:
                        continue
                    b_p99 = b.result.latency_ms["p99"]
                    p99 = g.result.latency_ms["p99"] / b_p99 if b_p99 > 0 else float("inf")
                    out.append(Ratio(cell, gateway, baseline, g.rps / b.rps, p99))
        return out

    def targets(self) -> list[Target]:
        ratios = {(r.cell, r.gateway, r.baseline): r for r in self.ratios()}
        tiny = Cell("tiny", 1, 32)
        medium = Cell("medium", 1, 32)
        out: list[Target] = []

        def ratio_target(name: str, key: tuple[Cell, str, str], minimum: float) -> None:
            r = ratios.get(key)
            if r is None:
                out.append(Target(name, None, "not measured"))
            else:
                out.append(Target(name, r.rps >= minimum, f"{r.rps:.2f}x"))

        ratio_target("tiny b1 c32: gateway >= 0.6x floor req/s", (tiny, "gateway", "floor"), 0.6)
        ratio_target("tiny b1 c32: gateway >= 3x fastapi req/s", (tiny, "gateway", "fastapi"), 3.0)
        ratio_target("medium b1 c32, batching: >= 4x fastapi req/s", (medium, "gateway-batching", "fastapi"), 4.0)
        deployed, bare = self.row("gateway-deployed", tiny), self.row("gateway", tiny)
        name = f"tiny b1 c32: gateway as deployed >= {DEPLOYED_SHARE:g}x the bare gateway's req/s"
        if deployed is None or bare is None or not deployed.ok or not bare.ok or bare.rps <= 0:
            out.append(Target(name, None, "not measured"))
        else:
            share = deployed.rps / bare.rps
            out.append(Target(name, share >= DEPLOYED_SHARE, f"{share:.3f}x"))
        name = f"medium b1 c32, batching: >= {BATCH_CEILING_SHARE:g}x the in-process batch ceiling (rows/s)"
        batched = self.row("gateway-batching", medium)
        if self.batch_ceiling is None or batched is None or not batched.ok:
            out.append(Target(name, None, "not measured"))
        else:
            ceiling = self.batch_ceiling.rows_per_s
            share = batched.rps / ceiling
            batch = self.batch_ceiling.batch
            detail = f"{share:.2f}x ({batched.rps:,.0f} req/s of {ceiling:,.0f} rows/s at batch {batch})"
            raw = self.row("raw-batching", medium)
            if raw is not None and raw.ok:  # what batching over HTTP reaches here with no framework at all
                detail += f"; raw-batching {raw.rps / ceiling:.2f}x ({raw.rps:,.0f} req/s)"
            out.append(Target(name, share >= BATCH_CEILING_SHARE, detail))
        r = ratios.get((medium, "gateway-batching", "fastapi"))
        out.append(
            Target("medium b1 c32, batching: p99 <= fastapi p99", None, "not measured")
            if r is None
            else Target("medium b1 c32, batching: p99 <= fastapi p99", r.p99 <= 1.0, f"{r.p99:.2f}x")
        )
        for mlserver in ("mlserver", "mlserver-default"):
            compared = []
            for cell in self.cells():
                m = self.row(mlserver, cell)
                gateways = [g for g in (self.row(n, cell) for n in GATEWAYS) if g is not None and g.ok]
                best = max((g.rps for g in gateways), default=None)
                if m is not None and m.ok and best is not None:
                    compared.append((cell, best, m.rps))
            name = f"{mlserver} below the gateway in every row"
            if not compared:
                out.append(Target(name, None, "not measured"))
            else:
                worse = [c.label() for c, best, m_rps in compared if m_rps >= best]
                out.append(Target(name, not worse, f"{len(compared)} rows" + (f"; not in {worse}" if worse else "")))
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "settings": self.settings,
            "rows": [r.to_json() for r in self.rows],
            "ratios": [
                {**asdict(r.cell), "gateway": r.gateway, "baseline": r.baseline, "rps": r.rps, "p99": r.p99}
                for r in self.ratios()
            ],
            "targets": [asdict(t) for t in self.targets()],
            "ceiling": None
            if self.ceiling is None
            else [
                {"server": s, "engine": e, "result": None if res is None else res.to_json(), "error": err}
                for s, e, res, err in self.ceiling.rows
            ],
            "notes": list(self.notes),
            "batch_ceiling": None if self.batch_ceiling is None else asdict(self.batch_ceiling),
        }

    def markdown(self) -> str:
        lines = [f"# {self.title}", ""]
        lines += [f"- {key}: {value}" for key, value in self.settings.items()]
        lines += [f"- note: {n}" for n in self.notes]
        disturbed = [r for r in self.rows if r.ok and r.background_cpu > NOISY_BACKGROUND_CPU]
        if disturbed:
            lines.append(
                f"- **warning**: in {len(disturbed)} of {len(self.rows)} rows other processes used more than "
                f"{NOISY_BACKGROUND_CPU:.0%} of a core (column 'other cpu'); those rows are unreliable, rerun them on "
                "a quiet machine"
            )
        lines += ["", "## Results", ""]
        lines += _table(
            [
                "model",
                "batch",
                "conns",
                "system",
                "req/s",
                "p50 ms",
                "p99 ms",
                "errors",
                "server cpu",
                "lg cpu",
                "other cpu",
                "rounds req/s",
                "note",
            ],
            [_result_cells(r) for cell in self.cells() for r in self.rows if r.cell == cell],
        )
        ratios = self.ratios()
        if ratios:
            lines += [
                "",
                "## Ratios",
                "",
                "Gateway req/s divided by the other system's req/s in the same run; in brackets the p99 ratio "
                "(below 1 means the gateway's tail is shorter).",
                "",
            ]
            baselines = [b for b in BASELINES if any(r.baseline == b for r in ratios)]
            body = []
            for cell in self.cells():
                for gateway in GATEWAYS:
                    found = {r.baseline: r for r in ratios if r.cell == cell and r.gateway == gateway}
                    if found:
                        body.append(
                            [cell.model, str(cell.batch), str(cell.connections), gateway]
                            + [f"{found[b].rps:.2f}x ({found[b].p99:.2f}x)" if b in found else "-" for b in baselines]
                        )
            lines += _table(["model", "batch", "conns", "gateway"] + [f"vs {b}" for b in baselines], body)
        lines += ["", "## Targets", ""]
        for t in self.targets():
            mark = {True: "PASS", False: "FAIL", None: "n/a"}[t.passed]
            lines.append(f"- **{mark}** {t.name}: {t.detail}")
        if self.ceiling is not None:
            lines += [
                "",
                "## Load generator ceiling",
                "",
                "The same load (tiny b1 body, 32 connections) against a raw asyncio fixed-reply server, which "
                "saturates the load generator before itself, and against the floor.",
                "",
            ]
            body = []
            for server, engine, result, error in self.ceiling.rows:
                if result is None:
                    body.append([server, engine, "-", "-", "-", "-", error or ""])
                else:
                    body.append(
                        [
                            server,
                            engine,
                            f"{result.rps:,.0f}",
                            f"{result.latency_ms['p50']:.3f}",
                            f"{result.latency_ms['p99']:.3f}",
                            f"{result.loadgen_cpu:.0%}",
                            "",
                        ]
                    )
            lines += _table(["server", "engine", "req/s", "p50 ms", "p99 ms", "lg cpu", "note"], body)
        return "\n".join(lines) + "\n"


def _result_cells(r: Row) -> list[str]:
    head = [r.cell.model, str(r.cell.batch), str(r.cell.connections), r.system]
    if r.result is None:
        return head + ["-", "-", "-", "-", "-", "-", "-", "-", _short(r.error or "failed")]
    lat = r.result.latency_ms
    return head + [
        f"{r.result.rps:,.0f}",
        f"{lat['p50']:.2f}",
        f"{lat['p99']:.2f}",
        str(r.result.errors),
        f"{r.server_cpu:.0%}",
        f"{r.result.loadgen_cpu:.0%}",
        f"{r.background_cpu:.0%}",
        " / ".join(f"{rps:,.0f}" for rps in r.rounds) if len(r.rounds) > 1 else "-",
        _short(r.error or ""),
    ]


def _short(text: str, limit: int = 120) -> str:
    flat = " ".join(text.split()).replace("|", "/")
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def _table(header: Sequence[str], body: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return lines
