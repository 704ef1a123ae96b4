"""Renders the folder that scripts/bench/report filled (machine.txt, logs/, figures/)
into report.md and SVG plots beside it. Run by scripts/bench/report; run it alone to
render a folder again:  python scripts/bench/report-render.py docs/bench
"""

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("svg")
import matplotlib.pyplot as plt  # noqa: E402

plt.rcParams["svg.hashsalt"] = "icbt-gateway"  # the same figures give the same files
plt.rcParams["svg.fonttype"] = "none"

SHARED = "2 cores shared by the load client, the servers and PostgreSQL"
CARGO_NOISE = ("Compiling ", "Finished ", "Running ", "Downloaded ", "Downloading ",
               "Blocking ", "Updating ", "Locking ", "Adding ", "Fresh ", "Checking ")


def load(folder: Path, name: str):
    path = folder / "figures" / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def machine(folder: Path) -> dict:
    info = {}
    for line in (folder / "machine.txt").read_text().splitlines():
        key, _, value = line.partition("=")
        info[key] = value
    return info


def verdict(met: bool) -> str:
    return "met" if met else "**not met**"


def fmt(x, digits=0) -> str:
    return f"{x:,.{digits}f}".replace(",", " ")


def synapse_version(m: dict) -> str:
    """The release, without the build details Synapse may append."""
    return (m.get("synapse_version") or "?").split()[0]


def sends_section(folder: Path, m: dict, out: list):
    if not m or not m.get("sends"):
        return
    rows = m["sends"]
    peer = "synapse_rate" in rows[0]
    out.append("## Sends a second, beside the same rows committed raw and beside Synapse\n")
    out.append(
        "Closed loop, each client sending one sealed 2 KiB message after another into its own "
        "episode (the gateway: TLS, DPoP-bound token, policy, commit). *Raw*: a plain sqlx "
        "program committing, in one transaction a send, exactly the rows a send commits "
        "(DPoP proof id, sequence bump, message, outbox entry, access record) on the "
        "gateway's schema. *Synapse*: `PUT …/send/m.room.message/{txn}` with a body of the "
        f"envelope's size, one room per episode, over plain HTTP. {SHARED}.\n"
    )
    head = "| clients | gateway sends/s | p99 ms | raw tx/s | gateway ÷ raw (goal ≥ 60 % at 8 and 64) |"
    rule = "|---:|---:|---:|---:|---|"
    if peer:
        head += " Synapse sends/s | Synapse p99 ms | gateway ÷ Synapse (goal ≥ 5×) |"
        rule += "---:|---:|---|"
    out += [head, rule]
    for r in rows:
        ratio = r["rate"] / r["raw_rate"]
        line = (f"| {r['clients']} | {fmt(r['rate'])} | {r['p99_ms']:.1f} | {fmt(r['raw_rate'])} "
                f"| {fmt(r['rate'])} ÷ {fmt(r['raw_rate'])} = {ratio:.1%}"
                + (f": {verdict(ratio >= 0.6)} |" if r["clients"] >= 8 else " (no goal) |"))
        if peer:
            x = r["rate"] / r["synapse_rate"]
            line += (f" {fmt(r['synapse_rate'])} | {r['synapse_p99_ms']:.1f} "
                     f"| {fmt(r['rate'])} ÷ {fmt(r['synapse_rate'])} = {x:.1f}×: {verdict(x >= 5)} |")
        out.append(line)
    if peer:
        out.append(f"\nSynapse {synapse_version(m)}, one process, no workers, rate limits lifted.")
    out.append("\n![Sends a second against clients](sends.svg)\n")

    fig, ax = plt.subplots(figsize=(6.4, 4))
    clients = [r["clients"] for r in rows]
    ax.plot(clients, [r["rate"] for r in rows], "o-", label="gateway")
    ax.plot(clients, [r["raw_rate"] for r in rows], "s--", label="raw sqlx, same rows")
    if peer:
        ax.plot(clients, [r["synapse_rate"] for r in rows], "^-", label=f"Synapse {synapse_version(m)}")
    ax.set_xscale("log", base=2)
    ax.set_xticks(clients, [str(c) for c in clients])
    ax.set_xlabel("concurrent clients")
    ax.set_yscale("log")
    ax.set_ylabel("sends a second (log)")
    ax.set_title(f"Durable sends ({SHARED})", fontsize=8)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(folder / "sends.svg")
    plt.close(fig)


def cdf_plot(path: Path, title: str, curves: list):
    fig, ax = plt.subplots(figsize=(6.4, 4))
    for label, cdf in curves:
        ax.plot(cdf, [p / 100 for p in range(len(cdf))], label=label)
    ax.set_xscale("log")
    ax.set_xlabel("send to delivery, ms (log)")
    ax.set_ylabel("fraction of deliveries")
    ax.set_title(title, fontsize=8)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def push_sections(folder: Path, m: dict, p: dict, out: list):
    beside = (m or {}).get("push_beside_synapse")
    if beside:
        g, s = beside["gateway"], beside["synapse"]
        ratio = g["p99_ms"] / s["p99_ms"] if s["p99_ms"] else float("inf")
        out.append("## Push latency beside Synapse's `/sync`\n")
        out.append(
            f"{beside['listeners']} listeners of the receiving side hold the gateway's event stream "
            f"or a Synapse `/sync` long poll; 30 messages, 200 ms apart; latency from the start of "
            f"the send to each delivery. {SHARED}.\n")
        out += ["| | p50 ms | p99 ms |", "|---|---:|---:|",
                f"| gateway event stream | {g['p50_ms']:.1f} | {g['p99_ms']:.1f} |",
                f"| Synapse `/sync` ({s.get('deliveries', '?')} deliveries) | {s['p50_ms']:.1f} | {s['p99_ms']:.1f} |",
                "",
                f"p99: {g['p99_ms']:.1f} ÷ {s['p99_ms']:.1f} = {ratio:.2f} (goal ≤ 0.33): {verdict(ratio <= 1 / 3)}.",
                "", "![Push latency CDF beside Synapse](push-synapse.svg)", ""]
        cdf_plot(folder / "push-synapse.svg", f"{beside['listeners']} listeners ({SHARED})",
                 [("gateway event stream", g["cdf_ms"]), ("Synapse /sync", s["cdf_ms"])])
    real = (p or {}).get("realistic")
    if real:
        g, n, r = real["gateway"], real["notify"], real["rows_and_notify"]
        logged = real.get("logged_reads")
        sequenced = real.get("logged_and_sequenced")
        out.append("## Realistic push\n")
        out.append(
            f"{fmt(real['streams'])} open streams over {fmt(real['episodes'])} episodes (one patient stream and "
            f"50 streams of the episode's therapist, who holds 50 episodes); {real['rate']} sends a second "
            f"spread over the episodes, {fmt(real['sends'])} in all; latency from the start of the send "
            f"(before its commit) to each delivery. Baselines at the same rate on the same PostgreSQL: a "
            f"bare `NOTIFY` round trip; a `NOTIFY` in a transaction that commits a send's rows; and that, "
            f"followed by what the receiving side must commit before it may deliver (the message read and "
            f"one access record for each of the message's readers)"
            + ("; and that again while every access record is added to the log's tree each second, as the "
               "gateway's sequencer does" if sequenced else "") + f". {SHARED}.\n")
        ratio = g["p99_ms"] / n["p99_ms"]
        ratio_rows = g["p99_ms"] / r["p99_ms"]
        out += ["| | p50 ms | p99 ms |", "|---|---:|---:|",
                f"| gateway, send to delivery ({fmt(real['delivered'])} of {fmt(real['expected'])} delivered) | {g['p50_ms']:.1f} | {g['p99_ms']:.1f} |",
                f"| gateway, send answered | {real['answered']['p50_ms']:.1f} | {real['answered']['p99_ms']:.1f} |",
            ] + ([
                f"| gateway, a send's first delivery | {real['first_delivery']['p50_ms']:.1f} | {real['first_delivery']['p99_ms']:.1f} |",
                f"| gateway, a send's last delivery | {real['last_delivery']['p50_ms']:.1f} | {real['last_delivery']['p99_ms']:.1f} |",
                f"| gateway, from the answer to a delivery ({fmt(real['after_answer']['before_answer'])} came before it) | {real['after_answer']['p50_ms']:.1f} | {real['after_answer']['p99_ms']:.1f} |",
            ] if "first_delivery" in real else []) + [
                f"| raw `NOTIFY` round trip | {n['p50_ms']:.2f} | {n['p99_ms']:.2f} |",
                f"| raw send's rows + `NOTIFY` | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} |",
            ] + ([f"| raw send's rows + `NOTIFY`, then read + {logged['readers']} access records committed | {logged['p50_ms']:.2f} | {logged['p99_ms']:.2f} |"] if logged else []) + ([
                f"| the same, while the access records are added to the log's tree every second | {sequenced['p50_ms']:.2f} | {sequenced['p99_ms']:.2f} |",
            ] if sequenced else []) + [
                "",
                f"p99 beside the bare `NOTIFY`: {g['p99_ms']:.1f} ÷ {n['p99_ms']:.2f} = {ratio:.1f}× (goal ≤ 2×): {verdict(ratio <= 2)}. "
                f"Beside the send's rows + `NOTIFY`: {g['p99_ms']:.1f} ÷ {r['p99_ms']:.2f} = {ratio_rows:.1f}×. "
                + (f"Beside the durable, logged raw push: {g['p99_ms']:.1f} ÷ {logged['p99_ms']:.2f} = {g['p99_ms'] / logged['p99_ms']:.1f}×. " if logged else "")
                + (f"Beside that push with its log's tree built (the proposed baseline, goal ≤ 2×): {g['p99_ms']:.1f} ÷ {sequenced['p99_ms']:.2f} = {g['p99_ms'] / sequenced['p99_ms']:.1f}×: {verdict(g['p99_ms'] / sequenced['p99_ms'] <= 2)}. " if sequenced else "") +
                f"Gateway memory with the streams open: {fmt(real['gateway_rss_kib'] / 1024)} MiB.",
                "", "![Realistic push CDF](push-realistic.svg)", ""]
        cdf_plot(folder / "push-realistic.svg", f"{fmt(real['streams'])} streams, {real['rate']} sends/s ({SHARED})",
                 [("gateway", g["cdf_ms"]), ("raw NOTIFY", n["cdf_ms"]), ("raw send's rows + NOTIFY", r["cdf_ms"])]
                 + ([("raw, + read and access records", logged["cdf_ms"])] if logged else [])
                 + ([("raw, + read, access records and tree", sequenced["cdf_ms"])] if sequenced else []))
    stress = (m or {}).get("push_1000_subscribers")
    if stress:
        out.append("## Push to 1 000 subscribers of one message (stress figure, no goal)\n")
        out.append(f"p50 {stress['p50_ms']:.1f} ms, p99 {stress['p99_ms']:.1f} ms ({SHARED}).\n")


def audit_section(a: dict, out: list):
    if not a:
        return
    out.append("## Access log\n")
    out += ["| | |", "|---|---:|",
            f"| WAL written by the sequencer, bytes an access record | {a['sequencing_wal_bytes_per_record']:.0f} |"]
    if "sequencing_growth_bytes_per_record" in a:
        out.append("| growth of the access log's tables while sequencing, bytes an access record | "
                   f"{a['sequencing_growth_bytes_per_record']:.0f} |")
    out += [f"| records sequenced a second | {fmt(a['sequenced_per_second'])} |",
            f"| records verified a second | {fmt(a['verified_per_second'])} |"]
    for w in (1, 8):
        c = a.get(f"commits_{w}_writers")
        if c:
            out.append(f"| commits a second at {w} writer(s): message alone, message + access record | "
                       f"{fmt(c['message_alone'])}, {fmt(c['message_and_audit'])} |")
    out.append("")


def logs_section(folder: Path, statuses: list, out: list):
    out.append("## What each bench printed\n")
    for name, status, _ in statuses:
        path = folder / "logs" / f"{name}.txt"
        lines = [l.rstrip() for l in path.read_text(errors="replace").splitlines()] if path.exists() else []
        kept = [l for l in lines if not l.strip().startswith(CARGO_NOISE) and l.strip()]
        out.append(f"<details><summary><code>scripts/bench/{name}</code>: {status}</summary>\n")
        out.append("```text")
        out += kept[-200:]
        out.append("```\n</details>\n")


def main():
    folder = Path(sys.argv[1])
    info = machine(folder)
    statuses = []
    for line in (folder / "logs" / "status.txt").read_text().splitlines():
        name, status, seconds = line.split()
        statuses.append((name, status, int(seconds)))
    m, p, a = load(folder, "messaging"), load(folder, "push"), load(folder, "audit")
    out = ["# icbt-gateway bench report", "",
           "Written by `scripts/bench/report`; every figure below comes from this one run. "
           "Figures from a run at another commit or on another machine are not comparable "
           "one for one: run it again.", "",
           "| | |", "|---|---|",
           f"| commit | `{info.get('commit', '?')}` |",
           f"| date | {info.get('date', '?')} |",
           f"| machine | {info.get('cpu', '?')}, {info.get('cores', '?')} cores, {info.get('memory', '?')}, {info.get('kernel', '?')} |",
           f"| PostgreSQL | {info.get('postgres', '?')} |",
           f"| Rust, Node | {info.get('rustc', '?')}; Node {info.get('node', '?')} |",
           "",
           f"Every server and every client of a bench runs on this machine: {SHARED}.", "",
           "| bench | result | seconds |", "|---|---|---:|"]
    out += [f"| `{n}` | {s if s == 'ok' else '**' + s + '**'} | {t} |" for n, s, t in statuses]
    out.append("")
    sends_section(folder, m, out)
    push_sections(folder, m, p, out)
    audit_section(a, out)
    logs_section(folder, statuses, out)
    (folder / "report.md").write_text("\n".join(out) + "\n")


if __name__ == "__main__":
    main()
