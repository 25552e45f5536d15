"""Run the key measurements and print the table of docs/PERFORMANCE.md.

    .venv/bin/python benchmarks/report.py            # the full run (about a minute)
    .venv/bin/python benchmarks/report.py --quick    # a few seconds, numbers are rough
    .venv/bin/python benchmarks/report.py --json out.json   # also dump every raw number

Every comparison is measured alternately (A B B A ...) and the best of
many repeats is kept, so slow drifts of a noisy machine hit both sides.  Each
single measurement is short (about a millisecond, less than a scheduler time
slice) so that on a loaded machine some of them still run unpreempted.
Nothing here asserts anything: it reports, and marks each target met or not.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib as B  # noqa: E402

import lguest  # noqa: E402

IRQ = 5


def _empty():
    pass


def measure(quick: bool = False) -> dict:
    cy = lguest.load_core("cython")
    n, repeat = (5_000, 3) if quick else (20_000, 41)
    res: dict = {"machine": B.machine(), "n": n, "repeat": repeat, "quick": quick}

    # 1. delivery loop: compiled vs plain C, with the clock the guest uses
    for clock in ("system", "virtual"):
        guest, cpu = B.make_guest(cy, clock=clock)
        twin = B.c_twin(cpu)
        best = B.interleaved_ns_per_op({
            "compiled": lambda k, cpu=cpu: cy.bench_deliver(cpu, IRQ, k),
            "c": lambda k, twin=twin: twin.bench_deliver(IRQ, k),
        }, n, repeat)
        assert guest.dead is None and not twin.dead
        res[f"deliver_{clock}"] = best
        twin.close()

    # 2. copy_traps: compiled vs plain C (and C over the 33 direct vectors only)
    guest, cpu = B.make_guest(cy)
    twin = B.c_twin(cpu)
    idt1, idt2, defaults = B.host_idt(), B.host_idt(), B.defaults_table()
    res["copy_traps"] = B.interleaved_ns_per_op({
        "compiled": lambda k: cy.bench_copy_traps(cpu, idt1, defaults, k),
        "c": lambda k: twin.bench_copy_traps(idt2, defaults, k),
        "c_listed": lambda k: twin.bench_copy_traps_listed(idt2, defaults, k),
    }, n // 4, repeat)
    twin.close()

    # 3. from Python, both cores, timeit.  A delivery changes eip, cs, esp
    #    (kernel to kernel: cs and ss stay, eflags stays with a trap gate);
    #    only esp matters for the next delivery (the new eip, a handler, is
    #    outside the noirq range), so UNROLL deliveries run back to back and
    #    one `r.esp = ESP` puts the stack back.  The same statement without
    #    the calls is subtracted: what is left is the call alone.
    unroll = 16
    ns = {"f": _empty, "bit": 1 << IRQ, "ESP": B.KERNEL_ESP, "lo": B.gate(0x25)[0], "hi": B.gate(0x25)[1],
          "idt": B.host_idt(), "d": B.defaults_table()}
    from lguest.host.hypercalls import HcallArgs, do_hcall, do_hypercalls
    from lguest.host.traps import handle_trap

    ns.update({"do_hcall": do_hcall, "do_hypercalls": do_hypercalls, "handle_trap": handle_trap,
               "hargs": HcallArgs(lguest.LHCALL_LOAD_IDT_ENTRY, 0x21, ns["lo"], ns["hi"])})
    stmts = {"f": "f()", "pass": "pass"}
    for core in ("python", "cython"):
        guest, cpu = B.make_guest(lguest.load_core(core))
        c, r = f"{core}_cpu", f"{core}_regs"
        ns[c], ns[r] = cpu, cpu.regs
        # int $0x1f with LOAD_IDT_ENTRY in eax..edx, for the round trip below
        cpu.regs.eax, cpu.regs.ebx, cpu.regs.ecx, cpu.regs.edx = lguest.LHCALL_LOAD_IDT_ENTRY, 0x21, ns["lo"], ns["hi"]
        cpu.regs.trapnum = lguest.LGUEST_TRAP_ENTRY
        stmts.update({
            f"{core}_deliver": f"{c}.irqs_pending = bit; {c}.maybe_do_interrupt()\n" * unroll + f"{r}.esp = ESP",
            f"{core}_deliver_base": f"{c}.irqs_pending = bit\n" * unroll + f"{r}.esp = ESP",
            f"{core}_idle": f"{c}.maybe_do_interrupt()",
            f"{core}_sgi": f"{c}.set_guest_interrupt(lo, hi, False); {r}.esp = ESP",
            f"{core}_trap": f"{c}.deliver_trap(14); {r}.esp = ESP",
            f"{core}_esp": f"{r}.esp = ESP",
            f"{core}_send": f"{c}.send_irq(5); {c}.maybe_do_interrupt(); {r}.esp = ESP",
            f"{core}_idt": f"{c}.load_guest_idt_entry(0x21, lo, hi)",
            f"{core}_copy": f"{c}.copy_traps(idt, d)",
            f"{core}_hcall": f"do_hcall({c}, hargs)",
            f"{core}_roundtrip": f"handle_trap({c}); do_hypercalls({c}); {c}.maybe_do_interrupt()",
        })
    t = B.interleaved_stmt_ns(stmts, ns, 3 if quick else 31, 0.001 if quick else 0.002)
    py = {"raw": t, "unroll": unroll, "empty_call": t["f"] - t["pass"]}
    for core in ("python", "cython"):
        py[f"{core}_deliver"] = (t[f"{core}_deliver"] - t[f"{core}_deliver_base"]) / unroll
        py[f"{core}_idle"] = t[f"{core}_idle"] - t["pass"]
        py[f"{core}_set_guest_interrupt"] = t[f"{core}_sgi"] - t[f"{core}_esp"]
        py[f"{core}_deliver_trap"] = t[f"{core}_trap"] - t[f"{core}_esp"]
        py[f"{core}_send_irq_deliver"] = t[f"{core}_send"] - t[f"{core}_esp"]
        py[f"{core}_load_guest_idt_entry"] = t[f"{core}_idt"] - t["pass"]
        py[f"{core}_copy_traps"] = t[f"{core}_copy"] - t["pass"]
        py[f"{core}_do_hcall"] = t[f"{core}_hcall"] - t["pass"]
        py[f"{core}_hypercall_round_trip"] = t[f"{core}_roundtrip"] - t["pass"]
    res["python_api"] = py

    # 4. scaling with the number of pending irqs, in the compiled C loop
    guest, cpu = B.make_guest(cy)
    twin = B.c_twin(cpu)
    ks = [1, 2, 4, 8, 16, 32] if quick else list(range(1, 33))

    def compiled_k(k):
        mask, low = B.pending_mask(k)

        def loop(count):
            cpu.irqs_pending = mask
            return cy.bench_deliver(cpu, low, count)
        return loop

    def c_k(k):
        mask, low = B.pending_mask(k)

        def loop(count):
            twin.irqs_pending = mask
            return twin.bench_deliver(low, count)
        return loop

    res["pending_compiled"] = B.interleaved_ns_per_op({k: compiled_k(k) for k in ks}, n // 2, max(3, repeat // 2))
    res["pending_c"] = B.interleaved_ns_per_op({k: c_k(k) for k in ks}, n // 2, max(3, repeat // 2))
    twin.close()

    # 5. scaling with the number of guests (round-robin deliveries from Python, cython core)
    ms = [1, 2, 4, 8, 16, 32, 64]
    ns2, stmts2 = {}, {}
    for m in ms:
        _, fn = B.round_robin(cy, m)
        ns2[f"rr{m}"] = fn
        stmts2[m] = f"rr{m}()"
    t2 = B.interleaved_stmt_ns(stmts2, ns2, 3 if quick else 31, 0.001 if quick else 0.002)
    res["guests_cython"] = {m: v / B.DELIVERIES for m, v in t2.items()}
    # ... and each delivery timed inside C (bench_deliver(cpu, 5, 1)): Python's overhead left out
    loops = {}
    for m in ms:
        _, run = B.round_robin_timed_in_c(m)
        loops[m] = lambda passes, run=run: run(passes) / B.DELIVERIES
    res["guests_in_c"] = B.interleaved_ns_per_op(loops, 5 if quick else 20, 3 if quick else 31)
    return res


def _spread(d: dict) -> tuple[float, float, float]:
    lo, hi = min(d.values()), max(d.values())
    return lo, hi, hi / lo


def table(res: dict) -> str:
    def ok(cond):
        return "**met**" if cond else "**not met**"

    ds, dv, ct, py = res["deliver_system"], res["deliver_virtual"], res["copy_traps"], res["python_api"]
    r_sys = ds["compiled"] / ds["c"]
    r_virt = dv["compiled"] / dv["c"]
    r_ct = ct["compiled"] / ct["c"]
    r_pyc = py["python_deliver"] / py["cython_deliver"]
    r_call = py["cython_deliver"] / py["empty_call"]
    pk_lo, pk_hi, pk_r = _spread(res["pending_compiled"])
    pc_lo, pc_hi, pc_r = _spread(res["pending_c"])
    g_lo, g_hi, g_r = _spread(res["guests_cython"])
    gm = res["guests_cython"]
    gc_lo, gc_hi, gc_r = _spread(res["guests_in_c"])
    gc = res["guests_in_c"]
    rows = [
        ("Delivery loop, SystemClock guest (clock_gettime per delivery): compiled `bench_deliver` vs plain C",
         f"{ds['compiled']:.1f} vs {ds['c']:.1f} ns/delivery", f"{r_sys:.2f}x", "<= 1.2x", ok(r_sys <= 1.2)),
        ("Delivery loop, VirtualClock guest (int64 cell): compiled vs plain C",
         f"{dv['compiled']:.1f} vs {dv['c']:.1f} ns/delivery", f"{r_virt:.2f}x", "(info)", ""),
        ("copy_traps loop: compiled `bench_copy_traps` vs plain C (kernel loop over 256)",
         f"{ct['compiled']:.1f} vs {ct['c']:.1f} ns/call", f"{r_ct:.2f}x", "<= 1.2x", ok(r_ct <= 1.2)),
        ("copy_traps, plain C visiting only the 28 vectors that can be direct (reference)",
         f"{ct['c_listed']:.1f} ns/call", f"{ct['compiled'] / ct['c_listed']:.2f}x (compiled / this)", "(info)", ""),
        ("`cpu.maybe_do_interrupt()` from Python, one deliverable irq (net of setting it pending): python vs cython",
         f"{py['python_deliver']:.0f} vs {py['cython_deliver']:.1f} ns/call", f"{r_pyc:.0f}x", ">= 25x",
         ok(r_pyc >= 25)),
        ("the same, cython core vs an empty Python function call `f()` (net of timeit's loop)",
         f"{py['cython_deliver']:.1f} vs {py['empty_call']:.1f} ns/call", f"{r_call:.2f}x", "<= 3x", ok(r_call <= 3)),
        ("`cpu.maybe_do_interrupt()` from Python, nothing pending: python vs cython core",
         f"{py['python_idle']:.0f} vs {py['cython_idle']:.1f} ns/call",
         f"{py['python_idle'] / py['cython_idle']:.0f}x", "(info)", ""),
        (f"Scaling, pending irqs 1..32 ({len(res['pending_compiled'])} points), compiled C loop: min..max",
         f"{pk_lo:.1f}..{pk_hi:.1f} ns/delivery", f"{pk_r:.2f}x", "<= 1.2x", ok(pk_r <= 1.2)),
        ("Scaling, pending irqs 1..32, plain C loop: min..max",
         f"{pc_lo:.1f}..{pc_hi:.1f} ns/delivery", f"{pc_r:.2f}x", "(info)", ""),
        ("Scaling, guests/cpus 1..64, round-robin, each delivery timed in C (`bench_deliver(cpu, 5, 1)`): min..max",
         f"{gc_lo:.1f}..{gc_hi:.1f} ns/delivery (1: {gc[1]:.1f}, 64: {gc[64]:.1f})", f"{gc_r:.2f}x", "<= 1.2x",
         ok(gc_r <= 1.2)),
        ("Scaling, guests/cpus 1..64, round-robin from Python (cython core, incl. restore): min..max",
         f"{g_lo:.0f}..{g_hi:.0f} ns/delivery (1: {gm[1]:.0f}, 64: {gm[64]:.0f})", f"{g_r:.2f}x", "<= 1.2x",
         ok(g_r <= 1.2)),
    ]
    out = ["| measurement | raw | ratio | target | |", "|---|---|---|---|---|"]
    out += [f"| {a} | {b} | {c} | {d} | {e} |" for a, b, c, d, e in rows]
    return "\n".join(out)


def details(res: dict) -> str:
    py = res["python_api"]
    lines = ["Python API, ns per call net of the statement's restore (timeit, best of runs): python / cython core"]
    for op in ("deliver", "idle", "set_guest_interrupt", "deliver_trap", "send_irq_deliver", "load_guest_idt_entry",
               "copy_traps", "do_hcall", "hypercall_round_trip"):
        a, b = py[f"python_{op}"], py[f"cython_{op}"]
        lines.append(f"  {op:22s} {a:9.1f} / {b:7.1f}   ({a / b:.1f}x)")
    lines.append(f"  {'empty call f()':22s} {py['empty_call']:9.1f}")
    lines.append("Raw timeit numbers (ns per statement, timeit loop included; *_deliver* are "
                 f"{py['unroll']} deliveries):")
    lines += [f"  {k:22s} {v:9.1f}" for k, v in py["raw"].items()]
    lines.append("Pending-irq scaling, ns/delivery (k pending: compiled / plain C):")
    pk, pc = res["pending_compiled"], res["pending_c"]
    lines.append("  " + "  ".join(f"{k}:{pk[k]:.1f}/{pc[k]:.1f}" for k in pk))
    lines.append("Guest scaling, ns/delivery (m guests: timed in C / from Python incl. restore):")
    gc, gp = res["guests_in_c"], res["guests_cython"]
    lines.append("  " + "  ".join(f"{m}:{gc[m]:.1f}/{gp[m]:.0f}" for m in gp))
    return "\n".join(lines)


def header(res: dict) -> str:
    m = res["machine"]
    return "\n".join([
        f"- Machine: {m['cpu']}, nproc {m['nproc']}, clocksource {m['clocksource']}",
        f"- Python {m['python']}; {m['compiler']}; C flags: {m['cflags']}",
        f"- Date: {m['date']}; C loops: n={res['n']}, best of {res['repeat']}"
        + (" (QUICK: rough numbers)" if res["quick"] else ""),
    ])


def markdown(res: dict) -> str:
    """The results section of docs/PERFORMANCE.md."""
    m = res["machine"]
    return "\n".join([
        header(res), "", "```", "$ lscpu | head", m["lscpu_head"], "```", "",
        table(res), "", "```", details(res), "```",
    ])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small n and few repeats (seconds, rough)")
    ap.add_argument("--json", metavar="PATH", help="also write every raw number as JSON")
    args = ap.parse_args(argv)
    if lguest.load_core("cython") is None:  # pragma: no cover - load_core raises instead
        return 1
    res = measure(quick=args.quick)
    print(markdown(res))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
