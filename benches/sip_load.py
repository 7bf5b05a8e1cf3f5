#!/usr/bin/env python3
"""SIP load benchmark for civicline: call rate, memory and per-dialog cost, driven by SIPp.

What it does, all on 127.0.0.1 only:

1. Load phase. Starts the release server (``target/release/civicline serve``) with a temporary
   config and data directory (answer_delay_ms = 0), waits for ``/healthz``, then runs SIPp's
   built-in ``uac`` scenario (INVITE, 100, 200, ACK, BYE, 200) over one UDP socket at increasing
   call rates. Each step places ``rate * step_seconds`` calls. Between steps it waits until
   ``/healthz`` shows ``calls_active == 0`` and ``event_log.backlog == 0``. Per step it prints the
   target and achieved rate (successful calls / SIPp elapsed time), calls attempted, successful,
   failed, failure %, SIPp's average response time (INVITE -> 200, SIPp measures in whole ms), SIPp
   retransmissions, server overload drops and server CPU, and VmRSS / VmHWM of the server.
   "Sustained calls/s" is the highest achieved rate among steps with < 0.1 % failed calls.

2. Hold phase (per-dialog memory). Starts a fresh server, reads VmRSS, has SIPp open N calls and
   hold them (``-d``), waits until ``/healthz`` shows ``calls_active == N``, reads VmRSS again and
   prints (rss_held - rss_before) / N in KiB. Then kills SIPp, sends SIGTERM to the server and
   checks that it exits.

3. Prints a Markdown block (environment, exact command line, tables) for BENCHMARKS.md.

Exit status: 0 when everything ran, 1 on an error or when the server had to be killed because it
did not exit after SIGTERM, 130 when interrupted.

Every child process has a timeout; SIPp and the server are killed and the temporary directory is
removed on exit, on error and on Ctrl-C (``--keep-temp`` keeps it, with SIPp's logs).

Note on /healthz: the engine publishes its /healthz snapshot every 250 ms. While waiting on it
this script also sends a SIP OPTIONS each poll (answered 200, creates no call), which was needed
before that periodic refresh existed and is harmless now.

Usage:
    benches/sip_load.py --quick            # ~30 s sanity run
    benches/sip_load.py                    # full run: 100..1000 calls/s, 10 s per step, N = 5000
    benches/sip_load.py --rates 200,400 --step-seconds 5 --hold 2000
"""

import argparse
import csv
import datetime
import json
import os
import platform
import re
import resource
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid

HOST = "127.0.0.1"  # loopback only, never anything else
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_BINARY = os.path.join(REPO, "target", "release", "civicline")
DEFAULT_RATES = [100, 200, 300, 400, 500, 600, 800, 1000]
QUICK_RATES = [100, 300, 600]
CLK_TCK = os.sysconf("SC_CLK_TCK")


class BenchError(Exception):
    pass


# --------------------------------------------------------------------------------------------
# Process bookkeeping: everything we start is tracked here and killed on the way out.

_children = []  # subprocess.Popen objects started by this script


def spawn(argv, **kwargs):
    # Own process group, so Ctrl-C in the terminal does not hit the children before we clean up,
    # and so a child's helpers (none expected) go with it.
    proc = subprocess.Popen(argv, start_new_session=True, **kwargs)
    _children.append(proc)
    return proc


def stop_process(proc, sig=signal.SIGTERM, wait_s=10.0):
    """Signals one child we started and waits; SIGKILL if it does not exit in time.

    Returns (exit code, seconds it took to exit after the signal, whether SIGKILL was needed)."""
    if proc.poll() is not None:
        return proc.returncode, 0.0, False
    t0 = time.monotonic()
    try:
        proc.send_signal(sig)
    except ProcessLookupError:
        pass
    try:
        proc.wait(timeout=wait_s)
        return proc.returncode, time.monotonic() - t0, False
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)
        return proc.returncode, time.monotonic() - t0, True


def cleanup_children():
    for proc in reversed(_children):
        if proc.poll() is None:
            try:
                stop_process(proc, signal.SIGTERM, wait_s=5.0)
            except Exception:  # noqa: BLE001 - best effort on the way out
                try:
                    proc.kill()
                except Exception:  # noqa: BLE001
                    pass
    _children.clear()


def _on_signal(signum, _frame):
    # Turn SIGTERM (and SIGINT) into KeyboardInterrupt so the finally-blocks run.
    raise KeyboardInterrupt(f"signal {signum}")


# --------------------------------------------------------------------------------------------
# Small helpers


def free_port(both=False):
    """A free port on 127.0.0.1 (TCP); with both=True also free for UDP."""
    for _ in range(200):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
            t.bind((HOST, 0))
            port = t.getsockname()[1]
            if not both:
                return port
            try:
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                    u.bind((HOST, port))
                return port
            except OSError:
                continue
    raise BenchError("no free port found on 127.0.0.1")


def free_udp_pair():
    """An even UDP port p with p+2 free as well (SIPp binds media on p and p+2)."""
    for _ in range(200):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.bind((HOST, 0))
            port = u.getsockname()[1] & ~1
        ok = True
        for p in (port, port + 1, port + 2, port + 3):
            try:
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                    s.bind((HOST, p))
            except OSError:
                ok = False
                break
        if ok:
            return port
    raise BenchError("no free UDP port pair found on 127.0.0.1")


def read_proc_status(pid):
    """VmRSS and VmHWM of a process in KiB (None if gone)."""
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    key, value = line.split(":", 1)
                    out[key] = int(value.split()[0])
    except (FileNotFoundError, ProcessLookupError):
        return None
    return out


def read_cpu_seconds(pid):
    """utime + stime of a process (all threads), in seconds."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            data = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = data[data.rfind(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def run_quiet(argv, timeout=10):
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
        return (r.stdout + r.stderr).strip()
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"({e})"


def sipp_version(sipp):
    text = run_quiet([sipp, "-v"])
    for line in text.splitlines():
        if "SIPp v" in line:
            return line.strip()
    return "unknown"


def git_rev():
    text = run_quiet(["git", "-C", REPO, "rev-parse", "--short", "HEAD"])
    if not text or " " in text:
        return "unknown"
    dirty = run_quiet(["git", "-C", REPO, "status", "--porcelain", "--untracked-files=no"])
    return text + ("-dirty" if dirty and not dirty.startswith("(") else "")


def tail(path, lines=20):
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError:
        return ""


def fmt_ms(value):
    """SIPp measures response times in whole milliseconds; 0 means under 1 ms."""
    if value is None:
        return "n/a"
    return "<1" if value < 1 else f"{value:.0f}"


def fmt(value, digits=1):
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def log(msg):
    print(msg, flush=True)


# --------------------------------------------------------------------------------------------
# The server under test


class Server:
    def __init__(self, args, workdir, name):
        self.args = args
        self.dir = os.path.join(workdir, name)
        os.makedirs(os.path.join(self.dir, "data"))
        self.sip_port = free_port(both=True)
        self.http_port = free_port()
        self.config = os.path.join(self.dir, "civicline.toml")
        self.log_path = os.path.join(self.dir, "server.log")
        self.proc = None
        self._nudge = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._nudge.bind((HOST, 0))
        self._nudge.setblocking(False)

    def write_config(self):
        with open(self.config, "w") as f:
            f.write(
                "[sip]\n"
                f'udp = ["{HOST}:{self.sip_port}"]\n'
                f'tcp = ["{HOST}:{self.sip_port}"]\n'
                "answer_delay_ms = 0\n"
                f"t1_ms = {self.args.t1_ms}\n"
                "[http]\n"
                f'listen = "{HOST}:{self.http_port}"\n'
                "[media]\n"
                f'rtp_ip = "{HOST}"\n'
                f"rtp_port_min = {self.args.rtp_port_min}\n"
                f"rtp_ports = {self.args.rtp_ports}\n"
                "[store]\n"
                f'data_dir = "{os.path.join(self.dir, "data")}"\n'
                # The default 311 flow, so every call is answered and played its greeting.
                "[ivr]\n"
                f'flow = "{os.path.join(REPO, "routing-rules", "ivr.toml")}"\n'
                f'prompts_dir = "{os.path.join(REPO, "prompts")}"\n'
            )

    def start(self):
        self.write_config()
        env = dict(os.environ)
        env.setdefault("RUST_LOG", "info")
        env.pop("NO_COLOR", None)
        self.logfile = open(self.log_path, "wb")
        self.proc = spawn(
            [self.args.binary, "serve", "--config", self.config],
            stdout=self.logfile,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
        )
        if self.args.server_cpus:
            os.sched_setaffinity(self.proc.pid, self.args.server_cpus)
        deadline = time.monotonic() + self.args.startup_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BenchError(
                    f"server exited with {self.proc.returncode} during start-up; log:\n"
                    + tail(self.log_path)
                )
            try:
                self.health(timeout=1.0)
                return
            except (OSError, ValueError):
                time.sleep(0.1)
        raise BenchError(
            f"/healthz did not answer within {self.args.startup_timeout} s; log:\n" + tail(self.log_path)
        )

    @property
    def pid(self):
        return self.proc.pid

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def health(self, timeout=2.0):
        url = f"http://{HOST}:{self.http_port}/healthz"
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return json.loads(resp.read())

    def nudge(self):
        """One SIP OPTIONS, so the engine loop runs and refreshes its /healthz snapshot."""
        port = self._nudge.getsockname()[1]
        call_id = uuid.uuid4().hex
        msg = (
            f"OPTIONS sip:bench@{HOST}:{self.sip_port} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {HOST}:{port};branch=z9hG4bK{call_id[:16]};rport\r\n"
            "Max-Forwards: 70\r\n"
            f"From: <sip:bench@{HOST}>;tag={call_id[16:24]}\r\n"
            f"To: <sip:bench@{HOST}:{self.sip_port}>\r\n"
            f"Call-ID: {call_id}@{HOST}\r\n"
            "CSeq: 1 OPTIONS\r\n"
            "Content-Length: 0\r\n\r\n"
        )
        try:
            self._nudge.sendto(msg.encode(), (HOST, self.sip_port))
            while True:  # drain replies so the socket buffer never fills
                self._nudge.recv(65535)
        except (BlockingIOError, OSError):
            pass

    def wait_for(self, predicate, timeout, what, progress=None):
        """Polls /healthz (nudging the engine) until predicate(health) or timeout.

        Returns (last health that answered, reached). progress(health or None) is called on
        every poll."""
        deadline = time.monotonic() + timeout
        last = None
        while True:
            if not self.alive():
                raise BenchError(
                    f"server exited ({self.proc.returncode}) while waiting for {what}; log:\n"
                    + tail(self.log_path)
                )
            self.nudge()
            time.sleep(0.15)
            try:
                current = self.health()
            except (OSError, ValueError):
                current = None
            if current is not None:
                self.health_failures = 0
                last = current
            else:
                self.health_failures = getattr(self, "health_failures", 0) + 1
            if progress is not None:
                progress(current)
            if current is not None and predicate(current):
                return last, True
            if time.monotonic() >= deadline:
                return last, False

    def wait_idle(self, timeout):
        return self.wait_for(
            lambda h: h["calls_active"] == 0 and h["event_log"]["backlog"] == 0,
            timeout,
            "calls_active == 0 and backlog == 0",
        )

    def stop(self, wait_s):
        """SIGTERM and wait; returns (exit code, seconds to exit, needed SIGKILL)."""
        result = stop_process(self.proc, signal.SIGTERM, wait_s=wait_s)
        self.logfile.close()
        self._nudge.close()
        return result


# --------------------------------------------------------------------------------------------
# SIPp


def parse_sipp_time(text):
    """'hh:mm:ss:uuuuuu' (SIPp stat file) -> milliseconds."""
    try:
        h, m, s, us = text.split(":")
        return ((int(h) * 60 + int(m)) * 60 + int(s)) * 1000 + int(us) / 1000.0
    except (ValueError, AttributeError):
        return None


def parse_epoch(text):
    """'2026-01-01\t12:00:00.123456\t1767268800.123456' -> epoch seconds."""
    try:
        return float(text.split("\t")[-1])
    except (ValueError, AttributeError):
        return None


def read_stat_file(path):
    try:
        with open(path, newline="") as f:
            rows = list(csv.reader(f, delimiter=";"))
    except OSError:
        return None
    if len(rows) < 2:
        return None
    header = rows[0]
    data = [dict(zip(header, r)) for r in rows[1:] if len(r) >= len(header) - 1]
    return data or None


def sipp_base(args, server, workdir, tag):
    d = os.path.join(workdir, tag)
    os.makedirs(d, exist_ok=True)
    files = {
        "dir": d,
        "stat": os.path.join(d, "stat.csv"),
        "err": os.path.join(d, "errors.log"),
        "screen": os.path.join(d, "screen.log"),
    }
    argv = [
        args.sipp,
        "-sn", "uac",
        f"{HOST}:{server.sip_port}",
        "-i", HOST,
        "-p", str(free_port(both=True)),
        "-mi", HOST,
        "-mp", str(free_udp_pair()),
        "-t", "u1",
        "-nostdin",
        "-trace_stat", "-stf", files["stat"], "-fd", "1",
        "-trace_err", "-error_file", files["err"],
        "-trace_screen", "-screen_file", files["screen"],
    ]
    return argv, files


def start_sipp(argv, files, args):
    out = open(os.path.join(files["dir"], "stdout.log"), "wb")
    proc = spawn(argv, cwd=files["dir"], stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    out.close()
    if args.sipp_cpus:
        try:
            os.sched_setaffinity(proc.pid, args.sipp_cpus)
        except ProcessLookupError:
            pass
    return proc


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_SIPP_ERR_ENTRY = re.compile(r"(?=\d{4}-\d{2}-\d{2}\t\d{2}:\d{2}:\d{2}\.\d+\t\d+\.\d+: )")


def error_excerpt(files, entries=8):
    """A digest of SIPp's error log: how often each kind of error occurred, then the last few.

    SIPp writes its entries without newlines between them, so they are split on the timestamps."""
    try:
        with open(files["err"], errors="replace") as f:
            text = f.read()
    except OSError:
        text = ""
    items = [e.strip() for e in _SIPP_ERR_ENTRY.split(text) if e.strip()]
    items = [e for e in items if not e.startswith("The following events occurred")]
    if not items:
        return tail(os.path.join(files["dir"], "stdout.log"), entries)
    kinds = {}
    first = {}
    for e in items:
        body = e.split(": ", 1)[-1]
        kind = re.sub(r"\d+-\d+@[\d.]+", "<call>", body)
        kind = re.sub(r"\d+", "N", kind)[:120]
        kinds[kind] = kinds.get(kind, 0) + 1
        first.setdefault(kind, e.split("\t")[1] if "\t" in e else "")
    out = [f"{len(items)} SIPp error entries, by kind (first seen):"]
    for kind, n in sorted(kinds.items(), key=lambda kv: -kv[1]):
        out.append(f"  {n:>6} x {kind} (first {first[kind]})")
    out.append("last entries:")
    out.extend("  " + e[:300] for e in items[-entries:])
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------------------------
# Phases


def load_step(args, server, workdir, rate, idx):
    count = max(1, int(round(rate * args.step_seconds)))
    limit = max(args.min_limit, rate * 3)
    expected = count / rate
    sipp_timeout = int(expected * 3 + 30)
    argv, files = sipp_base(args, server, workdir, f"step{idx}-{rate}cps")
    argv += [
        "-r", str(rate),
        "-rp", "1000",
        "-m", str(count),
        "-l", str(limit),
        "-recv_timeout", str(args.recv_timeout_ms),
        "-timeout", f"{sipp_timeout}s",
        "-timeout_error",
    ]
    before = server.health()
    cpu0 = read_cpu_seconds(server.pid)
    t0 = time.monotonic()
    proc = start_sipp(argv, files, args)
    try:
        rc = proc.wait(timeout=sipp_timeout + 15)
    except subprocess.TimeoutExpired:
        stop_process(proc, signal.SIGTERM, wait_s=5)
        rc = "timeout"
    wall = time.monotonic() - t0
    cpu1 = read_cpu_seconds(server.pid)
    if not server.alive():
        raise BenchError(
            f"server died during the {rate} calls/s step (exit {server.proc.returncode}); log:\n"
            + tail(server.log_path)
            + "\nSIPp errors:\n"
            + error_excerpt(files)
        )
    mem_at_end = read_proc_status(server.pid) or {}
    idle, drained = server.wait_idle(args.drain_timeout)
    mem = read_proc_status(server.pid) or {}

    rows = read_stat_file(files["stat"])
    step = {
        "rate": rate,
        "count": count,
        "limit": limit,
        "sipp_rc": rc,
        "wall_s": wall,
        "cmd": argv,
        "drained": drained,
        "calls_active_after": idle["calls_active"] if idle else None,
        "backlog_after": idle["event_log"]["backlog"] if idle else None,
        "rss_kib": max(mem.get("VmRSS", 0), mem_at_end.get("VmRSS", 0)) or None,
        "hwm_kib": mem.get("VmHWM") or mem_at_end.get("VmHWM"),
    }
    if rows:
        last = rows[-1]
        start = parse_epoch(last.get("StartTime"))
        end = parse_epoch(last.get("CurrentTime"))
        elapsed = (end - start) if start and end and end > start else wall

        def num(key):
            try:
                return int(float(last.get(key, "0")))
            except ValueError:
                return 0

        attempted = num("OutgoingCall(C)") or num("TotalCallCreated")
        ok = num("SuccessfulCall(C)")
        failed = num("FailedCall(C)")
        periodic_rt = [parse_sipp_time(r.get("ResponseTime1(P)")) for r in rows[:-1]]
        periodic_rt = [x for x in periodic_rt if x is not None]
        step.update(
            attempted=attempted,
            ok=ok,
            failed=failed,
            unfinished=max(0, attempted - ok - failed),
            elapsed_s=elapsed,
            achieved=ok / elapsed if elapsed > 0 else 0.0,
            rt_avg_ms=parse_sipp_time(last.get("ResponseTime1(C)")),
            rt_worst_1s_ms=max(periodic_rt) if periodic_rt else None,
            call_len_ms=parse_sipp_time(last.get("CallLength(C)")),
            retrans=num("Retransmissions(C)"),
            fail_timeout=num("FailedTimeoutOnRecv(C)"),
            fail_unexpected=num("FailedUnexpectedMessage(C)"),
            fail_retrans=num("FailedMaxUDPRetrans(C)"),
            fail_rejected=num("FailedCallRejected(C)"),
        )
    else:
        step.update(attempted=0, ok=0, failed=0, unfinished=0, elapsed_s=wall, achieved=0.0,
                    rt_avg_ms=None, rt_worst_1s_ms=None, call_len_ms=None, retrans=None)
        step["no_stats"] = True
    # "Failed" for the failure % counts calls SIPp failed plus any it never finished.
    bad = step["failed"] + step["unfinished"]
    step["fail_pct"] = 100.0 * bad / step["attempted"] if step["attempted"] else 100.0
    if idle and before:
        step["udp_dropped"] = (idle["sip"]["udp_dropped_overload"]
                               - before["sip"]["udp_dropped_overload"])
        step["server_calls"] = idle["calls_total"] - before["calls_total"]
    if cpu0 is not None and cpu1 is not None and step["elapsed_s"] > 0:
        step["server_cpu_pct"] = 100.0 * (cpu1 - cpu0) / step["elapsed_s"]
    if bad or step.get("no_stats") or rc not in (0,):
        step["errors"] = error_excerpt(files)
    return step


def print_step(s):
    log(
        f"  target {s['rate']:>5}/s  achieved {s['achieved']:8.1f}/s  attempted {s['attempted']:>6}  "
        f"ok {s['ok']:>6}  failed {s['failed'] + s['unfinished']:>5} ({s['fail_pct']:.3f} %)  "
        f"rt avg {fmt_ms(s['rt_avg_ms'])} ms (worst 1 s {fmt_ms(s['rt_worst_1s_ms'])} ms)  "
        f"retrans {fmt(s['retrans'])}  udp_dropped {fmt(s.get('udp_dropped'))}  "
        f"server cpu {fmt(s.get('server_cpu_pct'), 0)} %  RSS {fmt(s['rss_kib'])} KiB  "
        f"HWM {fmt(s['hwm_kib'])} KiB"
    )
    if s["sipp_rc"] != 0:
        log(f"    sipp exit status: {s['sipp_rc']}")
    if not s["drained"]:
        log(
            f"    WARNING: server did not drain within the timeout: calls_active="
            f"{s['calls_active_after']} backlog={s['backlog_after']}"
        )
    if s.get("errors"):
        log("    SIPp error log (last lines):")
        for line in s["errors"].rstrip().splitlines():
            log("      " + line)


def load_phase(args, workdir):
    log(f"== load phase: rates {args.rates} calls/s, {args.step_seconds} s per step")
    server = Server(args, workdir, "server-load")
    server.start()
    base = read_proc_status(server.pid) or {}
    log(f"server pid {server.pid}, SIP udp {HOST}:{server.sip_port}, idle RSS {fmt(base.get('VmRSS'))} KiB")
    steps = []
    try:
        for idx, rate in enumerate(args.rates):
            step = load_step(args, server, workdir, rate, idx)
            steps.append(step)
            print_step(step)
            if step["fail_pct"] > args.stop_fail_pct:
                log(f"  failure above {args.stop_fail_pct} %: skipping higher rates")
                break
    finally:
        if server.alive():
            code, secs, killed = server.stop(args.shutdown_timeout)
            log(f"server stopped: exit {code} after {secs:.2f} s{' (SIGKILL needed)' if killed else ''}")
    final = {"idle_rss_kib": base.get("VmRSS")}
    return steps, final


def hold_phase(args, workdir):
    n = args.hold
    log(f"== hold phase: {n} dialogs held open ({args.hold_ms} ms each), established at {args.hold_rate}/s")
    server = Server(args, workdir, "server-hold")
    server.start()
    result = {"n": n}
    proc = None
    files = None
    try:
        server.wait_idle(10)
        time.sleep(0.5)
        before = read_proc_status(server.pid)
        result["rss_before_kib"] = before["VmRSS"]
        argv, files = sipp_base(args, server, workdir, "hold")
        establish_s = n / args.hold_rate
        argv += [
            "-r", str(args.hold_rate),
            "-rp", "1000",
            "-m", str(n),
            "-l", str(n),
            "-d", str(args.hold_ms),
            "-recv_timeout", str(args.recv_timeout_ms),
            "-timeout", f"{int(establish_s + args.hold_ms / 1000 + 60)}s",
        ]
        result["cmd"] = argv
        t0 = time.monotonic()
        proc = start_sipp(argv, files, args)
        reach_timeout = min(args.hold_ms / 1000 * 0.8, establish_s * 3 + 20)
        next_report = [t0 + 1.0]

        def progress(h):
            now = time.monotonic()
            if now < next_report[0]:
                return
            next_report[0] = now + 2.0
            mem = read_proc_status(server.pid) or {}
            if h is None:
                log(f"    t={now - t0:5.1f}s  /healthz did not answer; RSS {fmt(mem.get('VmRSS'))} KiB")
                return
            log(
                f"    t={now - t0:5.1f}s  calls_active {h['calls_active']}  calls_total {h['calls_total']}  "
                f"responses {h['sip']['responses_sent']}  udp_dropped {h['sip']['udp_dropped_overload']}  "
                f"RSS {fmt(mem.get('VmRSS'))} KiB"
            )

        health, reached = server.wait_for(lambda h: h["calls_active"] >= n, reach_timeout,
                                          f"calls_active == {n}", progress)
        result["establish_s"] = time.monotonic() - t0
        result["reached"] = reached
        # Let allocations settle (answer timers, store writes) before reading memory.
        time.sleep(1.0)
        health, _ = server.wait_for(lambda h: h["event_log"]["backlog"] == 0, 10, "backlog == 0")
        held = read_proc_status(server.pid)
        result["calls_active"] = health["calls_active"] if health else None
        result["rss_held_kib"] = held["VmRSS"]
        result["hwm_kib"] = held["VmHWM"]
        active = result["calls_active"] or 0
        if active > 0:
            result["kib_per_dialog"] = (held["VmRSS"] - before["VmRSS"]) / active
        if not reached:
            result["errors"] = error_excerpt(files)
            result["health_last"] = health
        if proc.poll() is not None:
            result["sipp_exited_early"] = proc.returncode
    finally:
        if proc is not None:
            code, _, killed = stop_process(proc, signal.SIGTERM, wait_s=5)
            result["sipp_stop"] = f"exit {code}{' (SIGKILL)' if killed else ''}"
        if server.alive():
            code, secs, killed = server.stop(args.shutdown_timeout)
            result["server_exit"] = code
            result["server_exit_s"] = secs
            result["server_killed"] = killed
            log(
                f"server stopped with SIGTERM: exit {code} after {secs:.2f} s"
                f"{' (did NOT exit, SIGKILL needed)' if killed else ''}"
            )
        result["server_log_tail"] = _ANSI.sub("", tail(server.log_path, 8))
    log(
        f"  RSS before {fmt(result.get('rss_before_kib'))} KiB, held {fmt(result.get('rss_held_kib'))} KiB "
        f"with calls_active={fmt(result.get('calls_active'))} (reached {n}: {result.get('reached')}, "
        f"after {fmt(result.get('establish_s'))} s) -> {fmt(result.get('kib_per_dialog'), 2)} KiB/dialog"
    )
    if result.get("errors"):
        log(f"  last /healthz that answered: {json.dumps(result.get('health_last'))}")
        log("  server log (last lines):")
        for line in result["server_log_tail"].rstrip().splitlines():
            log("    " + line)
        log("  SIPp error log:")
        for line in result["errors"].rstrip().splitlines():
            log("    " + line)
    return result


# --------------------------------------------------------------------------------------------
# Report


def markdown(args, steps, load_final, hold, started):
    lines = []
    lines.append(f"### civicline SIP load ({started:%Y-%m-%d %H:%M %Z})")
    lines.append("")
    lines.append(f"- Date: {started.isoformat(timespec='seconds')}")
    lines.append(f"- Machine: `{platform.machine()}`, nproc {os.cpu_count()}, CPU: {cpu_model()}")
    try:
        built = datetime.datetime.fromtimestamp(os.path.getmtime(args.binary)).astimezone()
        built = built.isoformat(timespec="seconds")
    except OSError:
        built = "unknown"
    lines.append(f"- Kernel: {platform.release()}; {sipp_version(args.sipp)}; "
                 f"civicline checkout {git_rev()}, binary built {built}")
    command = os.environ.get("CIVICLINE_BENCH_COMMAND") or shlex.join([sys.argv[0]] + sys.argv[1:])
    lines.append(f"- Command: `{command}`")
    lines.append(
        f"- SIPp `uac` scenario over one UDP socket (`-t u1`), answer_delay_ms = 0, "
        f"{args.step_seconds} s per step, client and server on the same host"
        + (f" (server CPUs {sorted(args.server_cpus)}, SIPp CPUs {sorted(args.sipp_cpus)})"
           if args.server_cpus or args.sipp_cpus else "")
    )
    lines.append("")
    if steps:
        lines.append("| target calls/s | achieved calls/s | attempted | successful | failed | failure % "
                     "| avg INVITE→200 ms | SIPp retrans | server CPU % | RSS KiB | VmHWM KiB |")
        lines.append("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for s in steps:
            lines.append(
                f"| {s['rate']} | {s['achieved']:.1f} | {s['attempted']} | {s['ok']} | "
                f"{s['failed'] + s['unfinished']} | {s['fail_pct']:.3f} | {fmt_ms(s['rt_avg_ms'])} | "
                f"{fmt(s['retrans'])} | {fmt(s.get('server_cpu_pct'), 0)} | {fmt(s['rss_kib'])} | "
                f"{fmt(s['hwm_kib'])} |"
            )
        lines.append("")
        good = [s for s in steps if s["fail_pct"] < 0.1]
        sustained = max((s["achieved"] for s in good), default=None)
        peak = max((s["hwm_kib"] or 0 for s in steps), default=0)
        lines.append(f"- Sustained: **{fmt(sustained)} calls/s** (highest achieved rate with < 0.1 % failed)")
        lines.append(f"- Peak memory (VmHWM) during load: **{peak / 1024:.1f} MiB** "
                     f"(idle after start-up: {fmt(load_final.get('idle_rss_kib'))} KiB RSS)")
    if hold:
        lines.append(
            f"- Per-dialog memory: **{fmt(hold.get('kib_per_dialog'), 2)} KiB/dialog** "
            f"({fmt(hold.get('calls_active'))} dialogs held; RSS {fmt(hold.get('rss_before_kib'))} -> "
            f"{fmt(hold.get('rss_held_kib'))} KiB; RTP sockets are bound at start-up, so not included)"
        )
        if "server_exit" in hold:
            lines.append(
                f"- Shutdown with {fmt(hold.get('calls_active'))} dialogs up (SIPp killed first): "
                f"exit {hold['server_exit']} after {hold['server_exit_s']:.2f} s"
                + (" — did NOT exit, SIGKILL needed" if hold.get("server_killed") else "")
            )
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Main


def parse_args(argv):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--binary", default=DEFAULT_BINARY, help="civicline binary (default: %(default)s)")
    p.add_argument("--sipp", default=shutil.which("sipp") or "/usr/bin/sipp", help="sipp binary")
    p.add_argument("--quick", action="store_true",
                   help=f"fast sanity run: rates {','.join(map(str, QUICK_RATES))}, 2 s per step, 1000 held dialogs, 15 s hold")
    p.add_argument("--rates", help="comma-separated call rates per second (default: "
                   + ",".join(map(str, DEFAULT_RATES)) + ")")
    p.add_argument("--step-seconds", type=float, help="seconds of traffic per step: calls = rate * this (default 10)")
    p.add_argument("--hold", type=int, help="dialogs held open at once in the hold phase (default 5000; 0 skips it)")
    p.add_argument("--hold-rate", type=int, default=1000, help="calls/s used to establish the held dialogs")
    p.add_argument("--hold-ms", type=int, help="how long SIPp holds each dialog (default 60000)")
    p.add_argument("--skip-load", action="store_true", help="only the hold phase")
    p.add_argument("--stop-fail-pct", type=float, default=5.0,
                   help="skip higher rates once a step fails more than this %% of calls (default %(default)s)")
    p.add_argument("--recv-timeout-ms", type=int, default=5000, help="SIPp -recv_timeout per message")
    p.add_argument("--min-limit", type=int, default=1000, help="lower bound for SIPp -l (it is max(this, 3 * rate))")
    p.add_argument("--drain-timeout", type=float, default=60.0,
                   help="seconds to wait for calls_active == 0 and backlog == 0 after a step")
    p.add_argument("--startup-timeout", type=float, default=30.0)
    p.add_argument("--shutdown-timeout", type=float, default=20.0,
                   help="seconds the server gets to exit after SIGTERM before SIGKILL")
    p.add_argument("--t1-ms", type=int, default=500)
    p.add_argument("--rtp-port-min", type=int, default=10000,
                   help="first RTP port (kept below the ephemeral range; 0 lets the OS pick)")
    p.add_argument("--rtp-ports", type=int, help="RTP ports bound in advance (default max(6000, hold + 1000))")
    p.add_argument("--server-cpus", help="pin the server to these CPUs, e.g. 0 or 0,1")
    p.add_argument("--sipp-cpus", help="pin SIPp to these CPUs, e.g. 1")
    p.add_argument("--keep-temp", action="store_true", help="keep the temporary directory (logs, stat files)")
    args = p.parse_args(argv)

    if args.quick:
        args.rates = args.rates or ",".join(map(str, QUICK_RATES))
        args.step_seconds = args.step_seconds or 2.0
        args.hold = 1000 if args.hold is None else args.hold
        args.hold_ms = args.hold_ms or 15000
    args.rates = [int(r) for r in (args.rates or ",".join(map(str, DEFAULT_RATES))).split(",") if r.strip()]
    if any(r <= 0 for r in args.rates):
        p.error("--rates must be positive")
    args.step_seconds = args.step_seconds or 10.0
    args.hold = 5000 if args.hold is None else args.hold
    args.hold_ms = args.hold_ms or 60000
    if args.hold_rate <= 0:
        p.error("--hold-rate must be positive")
    args.rtp_ports = args.rtp_ports or max(6000, args.hold + 1000)
    if args.rtp_ports > 65535:
        p.error("--rtp-ports must fit in 16 bits")
    if args.rtp_port_min and args.rtp_port_min + 2 * args.rtp_ports > 32768:
        # A fixed range would run into the ephemeral port range; let the OS pick instead.
        args.rtp_port_min = 0
    args.server_cpus = {int(c) for c in args.server_cpus.split(",")} if args.server_cpus else None
    args.sipp_cpus = {int(c) for c in args.sipp_cpus.split(",")} if args.sipp_cpus else None
    return args


def main(argv):
    args = parse_args(argv)
    if not os.access(args.binary, os.X_OK):
        print(f"error: {args.binary} not found or not executable (build it with `cargo build --release`)",
              file=sys.stderr)
        return 2
    if not os.access(args.sipp, os.X_OK):
        print(f"error: sipp not found at {args.sipp}", file=sys.stderr)
        return 2

    # Held dialogs and pre-bound RTP sockets need file descriptors (children inherit this).
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 2 * args.rtp_ports + args.hold + 4096
    if soft != resource.RLIM_INFINITY and soft < want:
        new = want if hard == resource.RLIM_INFINITY else min(want, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)

    started = datetime.datetime.now().astimezone()
    workdir = tempfile.mkdtemp(prefix="civicline-bench-")
    log(f"civicline SIP benchmark — {started.isoformat(timespec='seconds')}")
    log(f"binary {args.binary}; workdir {workdir}")
    steps, load_final, hold = [], {}, None
    status = 0
    try:
        if not args.skip_load and args.rates:
            steps, load_final = load_phase(args, workdir)
        if args.hold > 0:
            hold = hold_phase(args, workdir)
    except KeyboardInterrupt:
        log("interrupted: cleaning up")
        status = 130
    except BenchError as e:
        log(f"error: {e}")
        status = 1
    finally:
        # A second Ctrl-C must not interrupt the cleanup itself.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        cleanup_children()
        if args.keep_temp:
            log(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    if steps or hold:
        log("")
        log("----- summary (Markdown) -----")
        log(markdown(args, steps, load_final, hold, started))
        log("----- end of summary -----")
    if hold and hold.get("server_killed"):
        status = status or 1
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
