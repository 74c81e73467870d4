"""The pairs stage: logged questions + documents -> question-document pairs, with a bi-encoder.

Entry function: `qadist.pairs.stage.run_pairs(PairsConfig)` (the run, its output folder and its
commit). `staging` streams the questions through the driver (rejects, merging, staged files),
`matching` builds the passage index and runs the matching actors. What pairs shares with serving
and selection lives below the stages: `qadist.passages` cuts documents into passages,
`qadist.encoder` embeds, `qadist.retrieval` is the index (dense cosine plus normalised BM25).
"""
