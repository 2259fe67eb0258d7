"""Design-space sweeps on Dask: `hwq sweep SPEC.yaml -o results/`, `hwq.sweep(spec)`.

    spec.py     the spec file: validated, expanded into points (models x hardware bases x
                the `vary` grid x seeds)
    point.py    one point on a worker: compile, ISS, RTL, bitstream; its row of figures;
                the hash of its inputs, under which a finished row is kept
    engine.py   the sweep: points as Dask tasks on a LocalCluster or a scheduler's cluster,
                finished rows cached in the output directory, the progress display
    report.py   results.csv, pareto.png and summary.md

This file imports nothing: a point's cache key digests the hwq sources point.py reads,
and the package's __init__ is among them (the scheduling and reports stay out).
"""
