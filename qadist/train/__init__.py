"""The train stage: distillation from soft labels and fine-tuning on gold labels, on Ray Train.

Entry functions: `qadist.train.stage.run_distill(DistillConfig)` and
`qadist.train.stage.run_finetune(FinetuneConfig)`. `launch` starts the TorchTrainer, `loop` is the
worker, `batches` the step arithmetic and collation, `checkpoint` the save/restore of training
state, `losses` the distillation loss. Soft labels are read only through `qadist.shards`.
"""
