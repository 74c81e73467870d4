"""What every stage shares about SQuAD-style extractive QA: `features` (windows, character
offsets, gold positions), `postprocess` (best spans and no-answer scores), `metrics` (the official
SQuAD 2.0 metric) and `io` (pair validation and the single-process reader of pairs)."""
