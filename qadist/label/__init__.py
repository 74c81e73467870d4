"""The label stage: pairs -> the teacher ensemble's soft labels, as Parquet shards, on Ray Data.

Entry function: `qadist.label.stage.run_label(LabelConfig)`. `blocks` cuts the input into row
blocks (the unit of work and of resume), `stages` holds the three Ray Data stages (window, teacher,
write), `teacher` the ensemble as a callable class, `commit` the sweep after the manifest commit.
Readers of the result go through `qadist.shards`.
"""
