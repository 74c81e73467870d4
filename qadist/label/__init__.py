"""The label stage: pairs -> the teacher ensemble's soft labels, as Parquet shards, on Ray Data.

Entry function: `qadist.label.stage.run_label(LabelConfig)` (the run and its commit loop). `blocks`
cuts the input into row blocks (the unit of work and of resume), `stages` holds the three Ray Data
stages (window, teacher, write), `pipeline` puts them together (and the pre-pass over the ids),
`manifest` builds a generation's manifest and the run's summary, `teacher` the ensemble as a
callable class, `commit` the sweep after the manifest commit.
Readers of the result go through `qadist.shards`.
"""
