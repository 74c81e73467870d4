"""The loop's stage: `qadist promote` (the gate and the registry's pointer). The question log writer
and the registry reader sit below the stages (qadist/question_log.py, qadist/registry.py): the
serving stage writes and reads them too."""
