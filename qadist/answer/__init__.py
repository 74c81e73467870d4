"""Answering with a trained model: `predict` (questions -> answers) and `evaluate` (the official
SQuAD 2.0 metric, optionally predicting first).

Entry functions: `qadist.answer.predict.run_predict(PredictConfig)` and
`qadist.answer.evaluate.run_evaluate(EvaluateConfig)`.
"""
