"""Reports over evaluated runs: the paper's Table 1, paired DeLong tests, ROC curves and Fig. 3.

    python -m fundax.report RUN_DIR [RUN_DIR ...] [--split=test] [--out=report]
        [--figure3 [--images=ID,ID] [--num_images=4]]

Each RUN_DIR is a training workdir evaluated with ``python -m fundax.evaluate``.
Writes ``table1.md`` and ``table1.csv``, ``delong.csv``, ``roc.png`` and with ``--figure3``
one Fig. 3 panel per finding (what each holds: :mod:`fundax.reporting`), and prints the
table, the DeLong tests and every run's provenance.
"""

from __future__ import annotations

import sys

from absl import flags
from absl import logging as absl_logging

from fundax import cli, pictures, reporting, storage

FLAGS = flags.FLAGS
flags.DEFINE_string("split", "test", "The evaluated split to report.")
flags.DEFINE_string("out", "report", "Where the tables and pictures go.")
flags.DEFINE_bool("figure3", False, "Also draw a Fig. 3 panel per finding.")
flags.DEFINE_list("images", None, "Image ids for the Fig. 3 panel (default: the top-scoring true positives).")
flags.DEFINE_integer("num_images", 4, "Photographs in a Fig. 3 panel when --images is not given.")


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        raise cli.UsageError("give one or more evaluated run directories")
    absl_logging.set_verbosity(absl_logging.ERROR)
    out_dir = storage.path(FLAGS.out)
    try:
        runs = [reporting.load_run(d, FLAGS.split) for d in argv[1:]]
        out_dir.mkdir(parents=True, exist_ok=True)
        rows = reporting.table1(runs)
        markdown = reporting.table1_markdown(rows)
        localisation = reporting.table1_markdown(rows, reporting.LOCALISATION_COLUMNS)
        if localisation:
            markdown += "\nOn the lesion itself, where its pixels are known:\n\n" + localisation
        (out_dir / "table1.md").write_text(markdown)
        reporting.write_csv(out_dir / "table1.csv", rows)
        pairs = reporting.delong_pairs(runs, FLAGS.split)
        reporting.write_csv(out_dir / "delong.csv", pairs)
        curves = []
        for run in runs:
            from sklearn.metrics import roc_curve

            out = run.outputs(FLAGS.split)
            scored = out["weight"] > 0
            if run.metrics.get("auroc") is None:
                continue
            fpr, tpr, _ = roc_curve(out["label"][scored], out["probability"][scored])
            curves.append({"fpr": fpr, "tpr": tpr, "auroc": run.metrics["auroc"],
                           "operating_point": (1 - run.metrics["specificity"], run.metrics["sensitivity"]),
                           "label": f"{run.finding} {run.model} ({run.workdir.name})"})
        if curves:
            pictures.draw_rocs(curves, out_dir / "roc.png", title=f"ROC on {FLAGS.split}")
        panels = reporting.figure3(runs, FLAGS.split, out_dir, FLAGS.images, FLAGS.num_images) if FLAGS.figure3 else []
    except (ValueError, OSError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(markdown)
    for run in runs:
        for line in run.provenance_lines():
            print(f"{run.workdir}: {line}")
    for pair in pairs:
        p = "n/a" if pair["p_value"] is None else f"{pair['p_value']:.4g}"
        print(f"DeLong {pair['finding']}: {pair['model_a']} vs {pair['model_b']} on {pair['n_examples']} "
              f"examples, p = {p}")
    print(f"wrote {out_dir}/table1.md, table1.csv, delong.csv" + (", roc.png" if curves else "")
          + "".join(f", {p.name}" for p in panels))
    return 0


if __name__ == "__main__":
    cli.run(main)
