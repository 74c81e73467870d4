"""The pairs stage: logged questions + documents -> question-document pairs, with a bi-encoder.

Entry function: `qadist.pairs.stage.run_pairs(PairsConfig)`. `passages` cuts documents into
passages, `retrieval` is the index (dense cosine plus normalised BM25) and its search actors.
"""
