"""The train stages on Ray Train: distillation from soft labels, fine-tuning on gold labels, and
masked-LM pretraining on documents.

Entry functions: `qadist.train.stage.run_distill(DistillConfig)`,
`qadist.train.stage.run_finetune(FinetuneConfig)` and `qadist.train.pretrain.run_pretrain`. Each
describes its run as a `launch.TrainJob` (with a `task.TaskSpec`); `launch` starts the TorchTrainer,
`loop` is the one worker loop, holding a task (`qa` for distillation/fine-tuning, `masked_lm`);
`batches` the step arithmetic and collation, `checkpoint` the save/restore of training state,
`losses` the distillation loss. Soft labels are read only through `qadist.shards`.
"""
