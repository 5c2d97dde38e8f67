"""The ``bcnmf-sc`` command line: fit bcNMF on an h5ad file, or run a demo on bundled data.

::

    bcnmf-sc fit IN.h5ad --background-key condition --background ctrl -o OUT.h5ad [--plots DIR]
    bcnmf-sc sweep IN.h5ad --background-key condition --background ctrl -o OUT.h5ad \
        --n-topics 5 10 15 --n-target-topics 1 2 3 [--refit] [--plots DIR]
    bcnmf-sc demo [--out DIR]

Output is written to a temporary file next to the destination and renamed into place, so a failed run
never leaves a half-written file; the input is only read; an existing output needs ``--force``. User
errors print one line to stderr and exit with status 1 (2 for usage errors, as argparse does).
"""

from __future__ import annotations

import argparse
import inspect
import logging
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import anndata as ad
import numpy as np

from . import __version__

logger = logging.getLogger(__name__)

#: errors caused by the input or the arguments: one line on stderr, no traceback
_USER_ERRORS = (ValueError, KeyError, TypeError, OSError, RuntimeError)


class UsageError(Exception):
    """A problem with the command line itself (exit status 2)."""


def _defaults(function: str = "bcnmf") -> dict:
    from . import tl

    return {name: p.default for name, p in inspect.signature(getattr(tl, function)).parameters.items()}


def _add_fit_options(parser: argparse.ArgumentParser) -> None:
    """One flag per argument of :func:`bcnmf_sc.tl.bcnmf` (defaults taken from its signature)."""
    d = _defaults()
    group = parser.add_argument_group("model (see bcnmf_sc.tl.bcnmf)")
    group.add_argument("--n-topics", type=int, default=d["n_topics"], help="total number of topics (%(default)s)")
    group.add_argument("--n-target-topics", type=int, default=d["n_target_topics"],
                       help="shared_target model: target topics among n-topics (default max(1, n_topics // 5))")
    group.add_argument("--model", choices=("shared_target", "contrastive"), default=d["model"], help="%(default)s")
    group.add_argument("--alpha", type=float, default=d["alpha"],
                       help="contrastive model: weight of the background loss (%(default)s)")
    group.add_argument("--unsafe-alpha", choices=("raise", "clip"), default=d["unsafe_alpha"], help="%(default)s")
    _add_shared_options(parser, group, d)
    group.add_argument("--n-starts", type=int, default=d["n_starts"], help="independent starts (%(default)s)")
    group.add_argument("--key-added", default=d["key_added"], help="key of the results (%(default)s)")


def _add_sweep_options(parser: argparse.ArgumentParser) -> None:
    """One flag per argument of :func:`bcnmf_sc.tl.bcnmf_sweep`; the settings to try take several values."""
    d = _defaults("bcnmf_sweep")
    group = parser.add_argument_group("settings to try (see bcnmf_sc.tl.bcnmf_sweep)")
    group.add_argument("--n-topics", type=int, nargs="+", default=list(d["n_topics"]), metavar="K",
                       help="numbers of topics (%(default)s)")
    group.add_argument("--n-target-topics", type=int, nargs="+", default=d["n_target_topics"], metavar="K_T",
                       help="shared_target model: numbers of target topics (default max(1, K // 5) for each K)")
    group.add_argument("--model", choices=("shared_target", "contrastive"), default=d["model"], help="%(default)s")
    group.add_argument("--alpha", type=float, nargs="+", default=d["alpha"], metavar="A",
                       help="contrastive model: α values (default 0 0.25 0.5 1 2 4)")
    group.add_argument("--n-seeds", type=int, default=d["n_seeds"], help="seeds, each with its own split (%(default)s)")
    group.add_argument("--test-size", type=float, default=d["test_size"], help="held-out fraction (%(default)s)")
    group.add_argument("--max-leakage", type=float, default=d["max_leakage"], help="'leaky' flag (%(default)s)")
    group.add_argument("--min-stability", type=float, default=d["min_stability"],
                       help="'unstable' flag (%(default)s)")
    _add_shared_options(parser, group, d)
    group.add_argument("--n-starts", type=int, default=d["n_starts"], help="starts per fit (%(default)s)")
    group.add_argument("--key-added", default=d["key_added"], help="key of the sweep results (%(default)s)")
    group.add_argument("--refit", action="store_true",
                       help="also fit the recommended setting on all cells (tl.bcnmf, results under 'bcnmf')")


def _add_shared_options(parser: argparse.ArgumentParser, group, d: dict) -> None:
    """The data and engine flags that tl.bcnmf and tl.bcnmf_sweep have in common."""
    group.add_argument("--likelihood", choices=("poisson", "gaussian"), default=d["likelihood"],
                       help="poisson for raw counts, gaussian for continuous data (%(default)s)")
    group.add_argument("--layer", default=d["layer"], help="layer holding the data (default: X)")
    group.add_argument("--mask-var", default=None, metavar="COLUMN",
                       help="boolean var column of the genes to fit; 'none' for all genes "
                       "(default: highly_variable when present, else all)")
    group = parser.add_argument_group("fitting")
    group.add_argument("--batch-size", type=int, default=d["batch_size"], help="cells per minibatch (%(default)s)")
    group.add_argument("--usage-steps", type=int, default=d["usage_steps"],
                       help="usage updates per batch visit (%(default)s)")
    group.add_argument("--w-update", choices=("epoch", "online"), default=d["w_update"], help="%(default)s")
    group.add_argument("--max-epochs", type=int, default=d["max_epochs"], help="%(default)s")
    group.add_argument("--tol", type=float, default=d["tol"], help="relative objective change to stop (%(default)s)")
    group.add_argument("--device", default=d["device"], help="auto, cpu or cuda[:i] (%(default)s)")
    group.add_argument("--random-state", type=int, default=d["random_state"], help="seed (%(default)s)")
    group.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bcnmf-sc", description="Background-contrastive NMF (bcNMF) on AnnData h5ad files."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log messages (-vv: debug)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    fit = commands.add_parser("fit", help="fit bcNMF on an h5ad file", description="Fit bcNMF on IN and write OUT.")
    _add_file_options(fit)
    _add_fit_options(fit)

    sweep = commands.add_parser(
        "sweep", help="choose the number of topics and α (or the shared/target split) without labels",
        description="Run tl.bcnmf_sweep on IN, write OUT with the sweep in uns, and report the recommended "
        "setting (with --refit, also fit it on all cells).",
    )
    _add_file_options(sweep)
    _add_sweep_options(sweep)

    demo = commands.add_parser(
        "demo", help="run on the bundled Kang PBMC data (ctrl vs IFN-β)",
        description="Fit bcNMF on the bundled Kang et al. 2018 PBMCs (background: ctrl) and write "
        "DIR/demo.h5ad and PNG plots.",
    )
    demo.add_argument("--out", type=Path, default=Path("bcnmf_demo"), metavar="DIR", help="(%(default)s)")
    demo.add_argument("--force", action="store_true", help="overwrite an existing DIR/demo.h5ad")
    _add_fit_options(demo)
    return parser


def _add_file_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", type=Path, metavar="IN.h5ad", help="input file (only read)")
    parser.add_argument("-o", "--output", type=Path, required=True, metavar="OUT.h5ad", help="output file")
    parser.add_argument("--background-key", required=True, help="obs column telling target and background apart")
    parser.add_argument("--background", nargs="+", default=None, metavar="V",
                        help="value(s) of the column marking background cells (omit for a boolean column)")
    parser.add_argument("--target", nargs="+", default=None, metavar="V", help="value(s) marking target cells")
    parser.add_argument("--backed", action="store_true", help="read the input backed (cells in chunks from disk)")
    parser.add_argument("--plots", type=Path, default=None, metavar="DIR", help="also write PNG plots into DIR")
    parser.add_argument("--force", action="store_true", help="overwrite an existing output")


def _common_kwargs(args: argparse.Namespace) -> dict:
    kwargs = dict(
        model=args.model, likelihood=args.likelihood, layer=args.layer, batch_size=args.batch_size,
        usage_steps=args.usage_steps, w_update=args.w_update, max_epochs=args.max_epochs, tol=args.tol,
        n_starts=args.n_starts, device=args.device, random_state=args.random_state, progress=not args.no_progress,
        key_added=args.key_added,
    )
    if args.mask_var is not None:
        kwargs["mask_var"] = None if args.mask_var.lower() == "none" else args.mask_var
    return kwargs


def _sweep_kwargs(args: argparse.Namespace) -> dict:
    return dict(
        n_topics=args.n_topics, n_target_topics=args.n_target_topics, alpha=args.alpha, n_seeds=args.n_seeds,
        test_size=args.test_size, max_leakage=args.max_leakage, min_stability=args.min_stability,
        **_common_kwargs(args),
    )


def _fit_kwargs(args: argparse.Namespace) -> dict:
    return dict(n_topics=args.n_topics, n_target_topics=args.n_target_topics, alpha=args.alpha,
                unsafe_alpha=args.unsafe_alpha, **_common_kwargs(args))


def _levels(adata: ad.AnnData, key: str, values: Sequence[str] | None) -> list | None:
    """Command-line strings → the column's own values (so ``--background 0`` finds an integer level 0)."""
    if values is None or key not in adata.obs.columns:
        return values  # tl.bcnmf reports a missing column with the list of columns
    column = adata.obs[key]
    present = list(column.cat.categories) if hasattr(column, "cat") else list(dict.fromkeys(column.tolist()))
    by_text = {str(level): level for level in present}
    return [by_text.get(value, value) for value in values]


def _check_output(path: Path, *, force: bool, inputs: Sequence[Path] = ()) -> None:
    if any(path.resolve() == p.resolve() for p in inputs):
        raise UsageError(f"output {path} is the input file; the input is never overwritten, choose another path.")
    if path.exists() and not force:
        raise UsageError(f"output {path} exists; pass --force to overwrite it.")
    if path.exists() and path.is_dir():
        raise UsageError(f"output {path} is a directory.")
    if not path.parent.exists():
        raise UsageError(f"directory {path.parent} does not exist.")


def _write_atomic(adata: ad.AnnData, path: Path) -> None:
    """Write to a temporary file in the destination directory, then rename it into place."""
    handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    try:
        adata.write_h5ad(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    logger.info("wrote %s", path)


def _save_plots(adata: ad.AnnData, key: str, directory: Path,
                names: Sequence[str] = ("topic_genes", "usage", "history")) -> list[Path]:
    """PNG plots of a fit (ranked topic genes, target-vs-background usage, training history) or of a sweep."""
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    from . import pl

    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name in names:
        plot = getattr(pl, name, None)
        if plot is None:
            raise RuntimeError(f"bcnmf_sc.pl.{name} is not available in this installation; no plots written.")
        fig = plot(adata, key=key, show=False, return_fig=True)
        path = directory / f"{key}_{name}.png"
        fig.savefig(path, dpi=150, bbox_inches="tight")
        plt.close(fig)
        written.append(path)
        logger.info("wrote %s", path)
    return written


def _summary(adata: ad.AnnData, key: str, n_genes: int = 15) -> str:
    """One line on the most target-enriched topic: its statistics and top genes."""
    from .tl._enrichment import most_enriched_topic

    enrichment = adata.uns[key]["enrichment"]
    topic = most_enriched_topic(enrichment)
    row = enrichment.loc[topic]
    genes = np.asarray(adata.uns[f"{key}_genes"]["names"][topic][:n_genes]).astype(str)
    return (
        f"most target-enriched topic {topic}: log2FC {row['log2fc']:.2f}, AUROC {row['auroc']:.3f}, "
        f"active share {row['active_share']:.2f}, "
        f"background leakage {row['leakage']:.3f}, enriched={bool(row['enriched'])}; "
        f"top genes: {', '.join(genes)}"
    )


def _run_fit(args: argparse.Namespace) -> None:
    from .tl import bcnmf

    if not args.input.is_file():
        raise FileNotFoundError(f"input {args.input} does not exist or is not a file.")
    _check_output(args.output, force=args.force, inputs=[args.input])
    adata = ad.read_h5ad(args.input, backed="r" if args.backed else None)
    try:
        logger.info("read %s: %d cells × %d genes%s", args.input, adata.n_obs, adata.n_vars,
                    " (backed)" if args.backed else "")
        bcnmf(
            adata,
            background_key=args.background_key,
            background=_levels(adata, args.background_key, args.background),
            target=_levels(adata, args.background_key, args.target),
            **_fit_kwargs(args),
        )
        _write_atomic(adata, args.output)
        logger.info(_summary(adata, args.key_added))
        if args.plots is not None:
            _save_plots(adata, args.key_added, args.plots)
    finally:
        if adata.isbacked:
            adata.file.close()


def _sweep_summary(adata: ad.AnnData, key: str) -> str:
    """One line on the recommended setting of a sweep."""
    result = adata.uns[key]
    recommended = result.get("recommended")
    if not recommended:
        return "sweep: no setting could be recommended (every setting unsafe, collapsed or a poor fit)"
    table = result["table"]
    row = table[table["recommended"].astype(bool)].iloc[0]
    shown = {k: recommended[k] for k in ("model", "n_topics", "n_target_topics", "alpha") if k in recommended}
    flags = row["flags"] or "none"
    return (f"sweep: recommended {', '.join(f'{k}={v}' for k, v in shown.items())} "
            f"(held-out target loss {row['target_loss']:.4g}, leakage {row['leakage']:.3f}, "
            f"stability {row['stability_min']:.3f}, flags: {flags}); refit with tl.bcnmf(adata, "
            f"**adata.uns[{key!r}]['recommended'])")


def _run_sweep(args: argparse.Namespace) -> None:
    from .tl import bcnmf, bcnmf_sweep

    if not args.input.is_file():
        raise FileNotFoundError(f"input {args.input} does not exist or is not a file.")
    _check_output(args.output, force=args.force, inputs=[args.input])
    adata = ad.read_h5ad(args.input, backed="r" if args.backed else None)
    try:
        logger.info("read %s: %d cells × %d genes%s", args.input, adata.n_obs, adata.n_vars,
                    " (backed)" if args.backed else "")
        background = _levels(adata, args.background_key, args.background)
        target = _levels(adata, args.background_key, args.target)
        bcnmf_sweep(adata, background_key=args.background_key, background=background, target=target,
                    **_sweep_kwargs(args))
        logger.info(_sweep_summary(adata, args.key_added))
        recommended = adata.uns[args.key_added].get("recommended")
        if args.refit and recommended:
            bcnmf(adata, **{**recommended, "progress": not args.no_progress})
        elif args.refit:
            raise ValueError("--refit: the sweep recommended no setting, so there is nothing to refit.")
        _write_atomic(adata, args.output)
        if args.refit:
            logger.info(_summary(adata, "bcnmf"))
        if args.plots is not None:
            _save_plots(adata, args.key_added, args.plots, names=("sweep", "stability"))
            if args.refit:
                _save_plots(adata, "bcnmf", args.plots)
    finally:
        if adata.isbacked:
            adata.file.close()


def _run_demo(args: argparse.Namespace) -> None:
    from . import datasets
    from .tl import bcnmf

    output = args.out / "demo.h5ad"
    args.out.mkdir(parents=True, exist_ok=True)
    _check_output(output, force=args.force)
    adata = datasets.kang_pbmc()
    logger.info("demo: Kang et al. 2018 PBMCs, %d cells × %d genes, background 'ctrl' (unstimulated)",
                adata.n_obs, adata.n_vars)
    bcnmf(adata, background_key="condition", background="ctrl", **_fit_kwargs(args))
    _write_atomic(adata, output)
    logger.info(_summary(adata, args.key_added))
    _save_plots(adata, args.key_added, args.out)


def _configure_logging(verbose: int) -> logging.Handler:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("bcnmf-sc: %(message)s" if verbose == 0 else
                                           "bcnmf-sc %(levelname)s %(name)s: %(message)s"))
    package = logging.getLogger("bcnmf_sc")
    package.addHandler(handler)
    package.setLevel(logging.DEBUG if verbose > 1 else logging.INFO)
    # the library's own INFO messages only with -v; the CLI always says what it wrote
    handler.addFilter(lambda record: verbose > 0 or record.levelno >= logging.WARNING or record.name == __name__)
    return handler


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``bcnmf-sc``; returns the exit status (0 on success)."""
    parser = _parser()
    args = parser.parse_args(argv)
    handler = _configure_logging(args.verbose)
    try:
        {"fit": _run_fit, "sweep": _run_sweep, "demo": _run_demo}[args.command](args)
    except UsageError as error:
        sys.stderr.write(f"bcnmf-sc: error: {error}\n")
        return 2
    except _USER_ERRORS as error:
        message = error.args[0] if isinstance(error, KeyError) and error.args else str(error)
        if args.verbose > 1:
            logger.exception("details")
        sys.stderr.write(f"bcnmf-sc: error: {message}\n")
        return 1
    finally:
        logging.getLogger("bcnmf_sc").removeHandler(handler)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
