"""The regional annotation tool: the paper's data collection system (Fig. 1, §2.1), in the browser.

``python -m fundax.annotate --images DIR --out annotations.jsonl --grader ID`` serves
a local web page: the photograph with the 8 regions drawn from the disc and fovea
on the left, the findings on the right. The grader picks a finding and clicks the
regions where it shows, or marks the eye normal; each reading is merged into the
image's line of ``annotations.jsonl`` (``docs/DATA_FORMAT.md``), which
``fundax.prepare --source=manual`` reads.

* :mod:`fundax.annotate.store` — locked, atomic merges into the annotations file.
* :mod:`fundax.annotate.catalogue` — which photographs a session shows, their ids.
* :mod:`fundax.annotate.photos` — the photographs as the browser gets them: checked, decoded, cached;
  and the disc and fovea :mod:`fundax.landmarks` suggests for a line without them.
* :mod:`fundax.annotate.app` — the web app; :mod:`fundax.annotate.cli` — the command line.
"""
