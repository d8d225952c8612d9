"""Data layer (docs/method.md §4): corpus reading, tokenizer, Grain pipelines, passkey and recall samples."""

from gca_jax.data.corpus import CorpusError, CorpusStats, list_corpus_files, read_documents
from gca_jax.data.passkey import (
    PasskeyConfig,
    PasskeyInfo,
    PasskeySample,
    answer_start,
    insert_passkey,
    make_landmark_passkey_sample,
    make_passkey_sample,
)
from gca_jax.data.pipeline import (
    Gate,
    RecallIterator,
    Stage,
    TokenStream,
    curriculum_stages,
    make_eval_windows,
    make_train_dataset,
    num_windows,
    parse_stages,
    tokenize_corpus,
)
from gca_jax.data.recall import MixSpec, make_batch, make_recall_sample, prompt_ids
from gca_jax.data.tokenizer import EOT_PIECE, Tokenizer, train_tokenizer, training_sentences

__all__ = [
    "CorpusError", "CorpusStats", "EOT_PIECE", "Gate", "MixSpec", "PasskeyConfig", "PasskeyInfo",
    "PasskeySample", "RecallIterator", "Stage", "TokenStream", "Tokenizer", "answer_start",
    "curriculum_stages", "insert_passkey", "list_corpus_files", "make_batch",
    "make_eval_windows", "make_landmark_passkey_sample", "make_passkey_sample",
    "make_recall_sample", "make_train_dataset", "num_windows", "parse_stages", "prompt_ids",
    "read_documents", "tokenize_corpus", "train_tokenizer", "training_sentences",
]
