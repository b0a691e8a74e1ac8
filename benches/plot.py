"""Draws benches/results/plot.svg from `kgate bench --json` results, or prints
them as markdown tables with --table.

    python benches/plot.py benches/results
    python benches/plot.py --table benches/results
"""
import json
import sys
from pathlib import Path


def load(results: Path, prefix: str) -> dict[int, list[dict]]:
    """Rows of each `<prefix>-<clients>.json`, by client count."""
    runs = {}
    for f in sorted(results.glob(f"{prefix}-*.json")):
        clients = f.stem.split("-")[-1]
        if clients.isdigit():
            runs[int(clients)] = json.loads(f.read_text())
    return dict(sorted(runs.items()))


def value(rows: list[dict], starts: str) -> float | None:
    return next((r["value"] for r in rows if r["metric"].startswith(starts)), None)


def table(results: Path) -> None:
    for f in sorted(results.glob("*.json")):
        rows = json.loads(f.read_text())
        print(f"\n### {f.stem}\n\n| metric | value | unit | ratio |\n|---|---:|---|---:|")
        for r in rows:
            ratio = "" if r["ratio"] is None else f"{r['ratio']:.2f}"
            print(f"| {r['metric']} | {r['value']:,.2f} | {r['unit']} | {ratio} |")


def plot(results: Path) -> Path:
    import matplotlib

    matplotlib.use("svg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    fanout = load(results, "fanout")
    for label, starts, style in [
        ("kgate", "kgate: messages delivered", "o-"),
        ("Centrifugo", "peer: Centrifugo", "D-"),
        ("floor (no Kafka)", "floor:", "x:"),
        ("nchan", "baseline: nchan", "s--"),
        ("kafkajs + ws bridge", "baseline: kafkajs", "^--"),
    ]:
        points = [(c, value(rows, starts)) for c, rows in fanout.items()]
        points = [(c, v) for c, v in points if v is not None]
        if points:
            left.plot(*zip(*points), style, label=label)
    left.set(xscale="log", yscale="log", xlabel="clients on one channel",
             ylabel="messages delivered per second", title="Fan-out at saturation")
    left.grid(True, which="both", alpha=0.3)
    left.legend()

    latency = load(results, "latency")
    for name, style in [("p50", "o-"), ("p90", "s-"), ("p99", "^-"), ("p99.9", "v-")]:
        points = [(c, value(rows, f"kgate client {name}")) for c, rows in latency.items()]
        points = [(c, v) for c, v in points if v is not None]
        if points:
            right.plot(*zip(*points), style, label=f"kgate {name}")
    raw = [(c, value(rows, "baseline: raw rdkafka consumer p99")) for c, rows in latency.items()]
    raw = [(c, v) for c, v in raw if v is not None]
    if raw:
        right.plot(*zip(*raw), "k:", label="raw consumer p99")
    right.set(xscale="log", xlabel="live clients (100,000 messages/s delivered in all)",
              ylabel="produce to receive (ms)", title="Latency percentiles")
    right.grid(True, which="both", alpha=0.3)
    right.legend()

    fig.suptitle("kgate bench on 2 cores (broker: tansu, fetch.wait.max.ms = 5)")
    fig.tight_layout()
    out = results / "plot.svg"
    fig.savefig(out)
    return out


if __name__ == "__main__":
    args = sys.argv[1:]
    if args[:1] == ["--table"]:
        table(Path(args[1] if len(args) > 1 else "benches/results"))
    else:
        print(plot(Path(args[0] if args else "benches/results")))
