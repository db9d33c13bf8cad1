"""The demo's methods at more seeds and a larger budget: does ERD weighting help, does SGDF beat AdamW, does ERD
accelerate convergence, with 95% intervals.

This is ``python -m sgdf_erd.demo`` (same model, data, instruments, learning rates, paired seeds) run with
--seeds 5 and 3x the demo's default steps, its report, figures and results.json written to
benchmarks/results/quality_diffusion_cpu/, and a one-page summary (the headline table, the paired differences and
the convergence statements) to benchmarks/results/quality_diffusion_cpu.md. The learning rates are the demo's, chosen
at the demo's budget (benchmarks/results/demo_lr_sweep_cpu.md); at a longer budget each pair's best lr may differ.

    python benchmarks/quality_diffusion.py                         # full study: 5 methods x 5 seeds x 900 steps
    python benchmarks/quality_diffusion.py --steps 600 --methods erd+sgdf,constant+sgdf   # a smaller one
    python benchmarks/quality_diffusion.py --quick                 # smoke run (seconds; numbers meaningless)

Extra arguments after ``--`` go to the demo unchanged (e.g. ``-- --workers 2``).
"""

import argparse
import json
import shlex
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "python"))
from sgdf_erd.demo.__main__ import build_parser, main as demo_main  # noqa: E402
from sgdf_erd.demo.methods import DEFAULT_LR  # noqa: E402
from sgdf_erd.demo.stats import format_interval  # noqa: E402

BUDGET_FACTOR = 3  # the study's steps per run, in units of the demo's default


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    demo = build_parser().parse_args([])
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--steps", type=int, default=BUDGET_FACTOR * demo.steps,
                   help=f"steps per run (default {BUDGET_FACTOR}x the demo's {demo.steps})")
    p.add_argument("--methods", default=demo.methods)
    p.add_argument("--quick", action="store_true", help="smoke run: 2 seeds, 8 steps, few samples")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    p.add_argument("demo_args", nargs="*", help="after --: passed to python -m sgdf_erd.demo")
    args = p.parse_args()
    stem = "quality_diffusion_cpu" + ("_quick" if args.quick else "")
    out = Path(args.out)
    folder = out / stem
    demo_argv = ["--seeds", str(2 if args.quick else args.seeds), "--steps", str(8 if args.quick else args.steps),
                 "--methods", args.methods, "--out", str(folder), "--no-progress"]
    if args.quick:
        demo_argv += ["--num-samples", "24", "--sample-steps", "3"]
    demo_main(demo_argv + args.demo_args)
    res = json.loads((folder / "results.json").read_text())
    command = "python benchmarks/quality_diffusion.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    (out / f"{stem}.md").write_text(summary(res, command, folder.name))
    print(f"wrote {out / stem}.md")


def summary(res: dict, command: str, folder: str) -> str:
    cfg = res["config"]
    analysis = res["analysis"]
    n = analysis["seeds"]
    full = (n >= 5 and cfg["steps"] >= BUDGET_FACTOR * build_parser().parse_args([]).steps
            and set(DEFAULT_LR) <= {m["name"] for m in res["methods"]})
    md = ["# Diffusion quality study: the demo's methods, paired seeds, 95% intervals", "",
          f"- date: {res['date']}", f"- device: {res['device_name']}", f"- torch: {res['torch']}",
          f"- command: `{command}` (ran `{res['command']}`)",
          f"- budget: {len(res['methods'])} methods x {n} seeds ({', '.join(map(str, res['seeds']))}) x "
          f"{cfg['steps']} steps, batch {cfg['batch_size']}, U-Net {res['model_params']:,} parameters, "
          f"{res['data']['source']}; samples: {cfg['num_samples']} per run and checkpoint, DDIM "
          f"{cfg['sample_steps']} steps; wall time {res['wall_s']:.0f} s",
          "- " + ("the full study (5 seeds, 3x the demo's steps)." if full else
                  "**a smaller run than the full study** (5 methods x 5 seeds x 3x the demo's steps: "
                  "`python benchmarks/quality_diffusion.py`), as the shared CPU allowed."),
          f"- learning rates: " + ", ".join(f"{m['name']} {m['lr']:g}" for m in res["methods"])
          + " (the demo's, each pair's best at the demo's budget: demo_lr_sweep_cpu.md)",
          f"- statistics: mean +- half-width of the 95% Student-t interval over the {n} seeds; A - B paired by "
          "seed; unresolved = the interval includes 0",
          f"- full report with figures: [{folder}/report.md]({folder}/report.md), convergence plot "
          f"[{folder}/convergence.png]({folder}/convergence.png)", ""]
    md += ["| method | FD (lower better) | held-out eps-MSE | confidence |", "|---|---|---|---|"]
    for m in res["methods"]:
        a = analysis["methods"][m["name"]]
        md.append(f"| {m['name']} | {format_interval(a['fd'])} | {format_interval(a['heldout_mse'], 4)} | "
                  f"{format_interval(a['confidence'], 3)} |")
    fr = cfg["checkpoint_fractions"]
    md += ["", "Convergence (FD / held-out eps-MSE at " + ", ".join(
        f"{100 * f:.0f}%" for f in fr) + " of the steps):", "",
           "| method | " + " | ".join(f"FD {100 * f:.0f}%" for f in fr) + " | "
           + " | ".join(f"eps-MSE {100 * f:.0f}%" for f in fr) + " |", "|---|" + "---|" * (2 * len(fr))]
    for m in res["methods"]:
        pts = analysis["methods"][m["name"]]["checkpoints"]
        md.append(f"| {m['name']} | " + " | ".join(format_interval(c["fd"]) for c in pts) + " | "
                  + " | ".join(format_interval(c["heldout_mse"], 4) for c in pts) + " |")
    md += ["", "## Reading (generated from the numbers)", ""]
    md += [f"- {line}" for line in res["summary"]]
    return "\n".join(md) + "\n"


if __name__ == "__main__":
    main()
