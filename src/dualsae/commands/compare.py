"""``dualsae compare A B``: how many latents of two SAEs of one modality are the same feature
(Hungarian matching on decoder cosine, and on activation correlation with ``--data``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from dualsae.commands.common import add_split_args, resolve_split
from dualsae.commands.flags import add_flags, dataclass_flags, given
from dualsae.core.distributed import resolve_device
from dualsae.core.errors import ConfigError
from dualsae.evaluation.feature_overlap import Overlap, OverlapMatch, OverlapOptions, compare_saes
from dualsae.evaluation.overlap_plot import plot_overlap
from dualsae.files.atomic import write_json
from dualsae.files.outdir import check_output, written_output
from dualsae.models.sae_spec import NamedSAE, open_sae
from dualsae.store.paired import open_store

FIGURE = "overlap.png"
RESULT = "compare.json"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compare", help="how many latents of two SAEs are the same feature (Hungarian matching on decoder cosine)",
        description="Match the latents of SAE A and SAE B one to one, maximising the total cosine of their unit-norm decoder "
        "directions (Hungarian algorithm, as Paulo & Belrose 2025), and the same on encoder rows; with --data also by the "
        "correlation of their activations on the same rows of one modality. Prints the share of latents matched at cosine "
        ">= 0.7 and >= 0.9 and the quantiles; writes compare.json and overlap.png into --out. Shares are over the smaller SAE "
        "when the widths differ. Name an SAE as PATH (a shared run, an SAE folder) or PATH:image / PATH:text (a specific "
        "run's or an aligned folder's SAE of that modality).",
    )
    p.add_argument("a", help="SAE A: PATH or PATH:image / PATH:text")
    p.add_argument("b", help="SAE B: PATH or PATH:image / PATH:text (A again is allowed: every share is then 1)")
    p.add_argument("--out", required=True, help="folder to write compare.json and overlap.png to")
    p.add_argument("--data", default=None, help="store folder: also match by activation correlation on its rows")
    p.add_argument("--modality", default=None, choices=("image", "text"),
                   help="store column both SAEs encode for --data (default: the member named in A or B, else image)")
    add_split_args(p, "all", model_default=False)
    add_flags(p.add_argument_group("matching"), OVERLAP_FLAGS)
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--overwrite", action="store_true", help="replace the content of an --out folder that holds something else")
    p.set_defaults(func=run)


#: Flags of :class:`OverlapOptions` (dualsae.evaluation.feature_overlap).
OVERLAP_FLAGS = dataclass_flags(OverlapOptions)


def overlap_options(args: argparse.Namespace) -> OverlapOptions:
    """The OverlapOptions of the flags given (the rest: the dataclass's defaults)."""
    kw = given(args, OVERLAP_FLAGS)
    if "thresholds" in kw:
        kw["thresholds"] = parse_thresholds(kw["thresholds"])
    if kw.get("batch_size", 1) < 1:
        raise ConfigError(f"--batch-size must be >= 1, found {kw['batch_size']}")
    if kw.get("max_dense", 1) < 1:
        raise ConfigError(f"--max-dense must be >= 1, found {kw['max_dense']}")
    return OverlapOptions(**kw)


def parse_thresholds(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise ConfigError(f"--thresholds must be comma-separated numbers in [0, 1], found {text!r}") from None
    if not values or any(not 0.0 <= v <= 1.0 for v in values):
        raise ConfigError(f"--thresholds must be comma-separated numbers in [0, 1], found {text!r}")
    return values


def default_modality(a: NamedSAE, b: NamedSAE) -> str:
    """The modality the user named in A (else B); image when neither names one."""
    return next((s.member for s in (a, b) if s.member in ("image", "text")), "image")


def run(args: argparse.Namespace) -> int:
    opt = overlap_options(args)
    device = resolve_device(args.device)
    a, b = open_sae(args.a, device), open_sae(args.b, device)
    if a.sae.d != b.sae.d:
        raise ConfigError(f"{args.b}: has d={b.sae.d}, {args.a} has d={a.sae.d}; compare SAEs of one embedding space")
    out = Path(args.out)
    rows, modality, split = None, None, None
    if args.data:
        modality = args.modality or default_modality(a, b)
        split, fraction, seed = resolve_split(args, None)
        store = open_store(args.data)
        rows = store if split == "all" else store.split(split, test_fraction=fraction, seed=seed)
        rows.require(modality, f"compare --modality {modality}")
        rows.require_width(a.sae.d, f"{args.a}")
    job = {"a": a.describe()["path"] + (f":{a.member}" if a.member else ""), "b": b.describe()["path"] + (f":{b.member}" if b.member else ""),
           "data": str(Path(args.data).resolve()) if args.data else None, "modality": modality, "split": split}
    check_output(out, "compare", job, overwrite=args.overwrite)  # refuse someone else's folder before the work
    result = compare_saes(a.sae, b.sae, rows, modality, opt, device=device, progress=not args.no_progress)
    result.info = {"a": a.describe(), "b": b.describe(),
                   "data": None if rows is None else {"path": str(args.data), "modality": modality, "split": split, "rows": rows.n}}
    with written_output(out, "compare", job, "this comparison", overwrite=args.overwrite):
        write_json(out / RESULT, result.to_json())
        plot_overlap(result, out / FIGURE, title=f"A = {args.a}   vs   B = {args.b}")
    for line in table_lines(result, args.a, args.b):
        print(line)
    print(f"  -> {out / RESULT}, {out / FIGURE}")
    return 0


def table_lines(result: Overlap, name_a: str, name_b: str) -> list[str]:
    """The console summary: one row per matching, shares over the smaller side."""
    info = result.info
    lines = [f"A  {name_a}  ({info['a']['activation']}, m={result.m_a:,}, d={result.d})",
             f"B  {name_b}  ({info['b']['activation']}, m={result.m_b:,}, d={result.d})"]
    ts = result.thresholds
    head = f"  {'matching':<24}{'pairs':>8}{'mean':>8}{'q10':>8}{'median':>8}{'q90':>8}" + "".join(f"{'>= ' + format(t, 'g'):>16}" for t in ts)
    lines.append(head)

    def row(label: str, m: OverlapMatch) -> str:
        js = m.summary(ts)
        q = js["quantiles"]
        fmt = lambda v: f"{v:8.3f}" if v is not None else f"{'-':>8}"  # noqa: E731
        cells = "".join(f"{c['count']:>8,} ({100 * (c['share'] or 0):5.1f}%)" for c in js["thresholds"].values())
        return f"  {label:<24}{len(m.a):>8,}{fmt(js['mean'])}{fmt(q['q10'])}{fmt(q['q50'])}{fmt(q['q90'])}{cells}"

    lines.append(row("decoder cosine", result.decoder))
    lines.append(row("encoder cosine", result.encoder))
    if result.baseline is not None:
        lines.append(row("random directions", result.baseline))
    small = min(result.m_a, result.m_b)
    pb = "".join(f"{result.pb_shared(t):>8,} ({100 * result.pb_shared(t) / small:5.1f}%)" for t in ts)
    lines.append(f"  {'P&B: enc+dec agree':<24}{'':>40}{pb}")
    if result.activation is not None:
        d = info["data"]
        lines.append(row(f"activation corr ({d['modality']})", result.activation))
        fa, fb = result.fired_a, result.fired_b
        lines.append(f"  on {d['rows']:,} {d['modality']} rows [{d['split']}]: live A {int((fa > 0).sum()):,}/{result.m_a:,}, "
                     f"live B {int((fb > 0).sum()):,}/{result.m_b:,} (dead {int((fa == 0).sum()):,} / {int((fb == 0).sum()):,})")
    side = "A" if result.m_a <= result.m_b else "B"
    lines.append(f"  shares over the smaller side ({side}, {small:,} latents{'; live latents for the correlation' if result.activation is not None else ''})")
    return lines
